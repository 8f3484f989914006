"""TinyBERT-style changed copies from word-embedding neighbours (lkd.data.transfer): the neighbours themselves, the
replacement, and `transfer_words: neighbours` in the text data module."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lkd.data import TextClassificationDataModule
from lkd.data.transfer import embedding_neighbours, replace_with_neighbours, split_word
from tests.glue_fixtures import MINILM
from tests.test_text_classification_data import GOOD, _ready, reviews  # noqa: F401 - the fixture


def test_neighbours_are_the_nearest_known_words_by_cosine():
    vocab = {"run": 0, "runs": 1, "ran": 2, "blue": 3, "green": 4, "##ing": 5, "sky": 6}
    embeddings = torch.tensor([[1.0, 0.0], [0.9, 0.1], [2.0, 0.3], [0.0, 1.0], [0.1, 1.0], [1.0, 0.0], [0.5, 0.5]])
    near = embedding_neighbours(["Run,", "runs", "ran.", "blue", "green", "##ing", "unknown", "Sky"], vocab, embeddings, k=2)
    assert near["run"] == ["runs", "ran"]  # by cosine, not length: ran is twice as long as run but nearly as aligned
    assert near["blue"] == ["green", "sky"] and "##ing" not in near and "unknown" not in near  # whole known words only
    assert all(w not in options for w, options in near.items())  # never the word itself
    assert embedding_neighbours(["run"], vocab, embeddings) == {}  # one word has no neighbour


def test_replacing_keeps_punctuation_capitals_and_words_without_neighbours():
    near = {"run": ["ran"], "dogs": ["dog"]}
    rng = np.random.default_rng(0)
    assert replace_with_neighbours('"Dogs run, quickly.', near, 1.0, rng) == '"Dog ran, quickly.'
    assert replace_with_neighbours("Dogs run", near, 1e-9, rng) == "Dogs run"
    assert split_word("(well-known).") == ("(", "well-known", ").")


def test_neighbour_copies_change_words_into_their_neighbours(reviews):  # noqa: F811 - the fixture
    data = _ready(data_files=reviews, text_columns=["review"], label_column="stars", transfer_copies=2,
                  transfer_word_prob=0.5, transfer_words="neighbours")
    train = data.split("train")
    assert len(train) == 90 and train["labels"][:].tolist()[30:] == [-1] * 60
    from lkd.data.transfer import encoder_word_embeddings

    words = {w for i in range(30) for w in data.tokenizer.decode(train[i]["input_ids"], skip_special_tokens=True).split()}
    near = embedding_neighbours(words, data.tokenizer.get_vocab(), encoder_word_embeddings(MINILM))
    assert set(near["superb"]) <= words and {"lovely", "great"} & set(near["superb"])  # kin words of the data's own
    changed = 0
    for i in range(60):
        original = data.tokenizer.decode(train[i % 30]["input_ids"], skip_special_tokens=True).split()
        copy = data.tokenizer.decode(train[30 + i]["input_ids"], skip_special_tokens=True).split()
        assert len(copy) == len(original)
        for a, b in zip(original, copy):
            assert a == b or b in near[a]  # a word stays or becomes one of its neighbours
            changed += a != b
    assert changed > 60  # about half of the 360 words that have neighbours
    assert set(GOOD) & {w for i in range(30, 90) for w in data.tokenizer.decode(train[i]["input_ids"]).split()}


def test_bad_transfer_words_are_named(reviews):  # noqa: F811 - the fixture
    with pytest.raises(ValueError, match=r"transfer_words must be one of \['frequency', 'neighbours'\], got 'nearest'"):
        TextClassificationDataModule(data_files=reviews, text_columns=["review"], label_column="stars", transfer_words="nearest")
    data = TextClassificationDataModule(data_files=reviews, text_columns=["review"], label_column="stars", transfer_copies=1,
                                        transfer_words="neighbours", tokenizer="bytes", max_length=64)
    data.connect("bytes")
    with pytest.raises(ValueError, match=r"neighbours needs an encoder's word embeddings, and tokenizer 'bytes' has none.*HINT"):
        data.setup("fit")
        data.split("train")  # the training split is made before the first step
