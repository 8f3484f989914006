"""The transfer set: texts without labels for a teacher to label. Either changed copies of the training texts
(TinyBERT's augmentation: each word replaced, with some probability, by a word drawn by its frequency in the training
text, or by one of its nearest words in the encoder's word embeddings), or real text from another data set
(:class:`TransferTexts`: Hinton et al.'s transfer set of unlabelled data)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import datasets
import numpy as np
import torch

TransferWords = Literal["frequency", "neighbours"]
TRANSFER_WORDS: tuple[str, ...] = ("frequency", "neighbours")
NEIGHBOURS = 15  # candidates per word: TinyBERT's K
_WORD = re.compile(r"(\W*)(.*?)(\W*)", re.DOTALL)  # leading punctuation, the word, trailing punctuation


def replace_words(text: str, words: np.ndarray, weights: np.ndarray, prob: float, rng: np.random.Generator) -> str:
    """``text`` with each whitespace-separated word replaced, with probability ``prob``, by a word drawn from
    ``words`` with probabilities ``weights`` (the training text's word frequencies): a transfer-set example
    near the data that a teacher labels (TinyBERT's augmentation, with frequency-drawn instead of
    MLM-predicted replacements)."""
    tokens = text.split()
    if not tokens:
        return text
    swap = rng.random(len(tokens)) < prob
    if swap.any():
        drawn = rng.choice(words, size=int(swap.sum()), p=weights)
        for i, w in zip(np.flatnonzero(swap), drawn):
            tokens[i] = str(w)
    return " ".join(tokens)


def data_words(data: datasets.Dataset, columns: list[str]) -> Iterator[str]:
    """Every whitespace-separated word of ``data``'s text ``columns``, in order (an empty text has none)."""
    return (w for c in columns for text in data[c] for w in (text or "").split())


def split_word(word: str) -> tuple[str, str, str]:
    """``word`` as (leading punctuation, the word itself, trailing punctuation): ``'"Hello,'`` → ``('"', 'Hello', ',')``."""
    return _WORD.fullmatch(word).groups()


def embedding_neighbours(words: Iterable[str], vocab: dict[str, int], embeddings: torch.Tensor, k: int = NEIGHBOURS,
                         chunk: int = 2048) -> dict[str, list[str]]:
    """Each of ``words`` (lower-cased, punctuation stripped) that is one alphabetic token of ``vocab``, mapped to the
    ``k`` other such words nearest to it by the cosine of its row of ``embeddings`` (V, d), nearest first.

    TinyBERT (Jiao et al. 2020, "TinyBERT: Distilling BERT for Natural Language Understanding", sec. 3.1) replaces a
    word by one of its K = 15 nearest words in GloVe when its masked-LM candidates are not available; here the
    encoder's own input word embeddings play GloVe's part, and the candidates are limited to ``words`` (the data's own
    words: no word pieces or rare tokens). Their neighbours are mostly other forms of the word and words of its kind
    (ran → run, running, runs; himself → herself, themselves), so a changed copy is often one a grammar task labels
    differently. Computed ``chunk`` words at a time (a (chunk, n) similarity block).
    """
    known = sorted({core.lower() for w in words if (core := split_word(w)[1]).isalpha() and core.lower() in vocab})
    if len(known) < 2:
        return {}
    unit = torch.nn.functional.normalize(embeddings[torch.tensor([vocab[w] for w in known])].float(), dim=1)  # (n, d)
    out: dict[str, list[str]] = {}
    for start in range(0, len(known), chunk):
        sims = unit[start:start + chunk] @ unit.T  # (chunk, n)
        sims[torch.arange(len(sims)), torch.arange(start, start + len(sims))] = -torch.inf  # not the word itself
        nearest = sims.topk(min(k, len(known) - 1), dim=1).indices
        out.update({known[start + i]: [known[j] for j in row] for i, row in enumerate(nearest.tolist())})
    return out


def encoder_word_embeddings(name: str) -> torch.Tensor:
    """The input word embeddings (V, d) of the pretrained encoder ``name`` (a hub id, packaged model or folder,
    :func:`lkd.hub.resolve_pretrained`), for :func:`embedding_neighbours`.

    Raises:
        ValueError: ``name`` is not a model with word embeddings (e.g. the ``bytes`` tokenizer).
    """
    from transformers import AutoModel

    from lkd.hub import resolve_pretrained

    if name in ("bytes", "smollm2"):
        raise ValueError(f"transfer_words: neighbours needs an encoder's word embeddings, and tokenizer {name!r} has none here. "
                         "HINT: use transfer_words: frequency, or a tokenizer named by a pretrained encoder "
                         "(sentence-transformers/all-MiniLM-L6-v2)")
    with torch.no_grad():
        return AutoModel.from_pretrained(resolve_pretrained(name)).get_input_embeddings().weight.detach().clone()


def replace_with_neighbours(text: str, neighbours: dict[str, list[str]], prob: float, rng: np.random.Generator) -> str:
    """``text`` with each whitespace-separated word replaced, with probability ``prob``, by one of its ``neighbours``
    drawn uniformly (punctuation and a leading capital kept); a word without neighbours stays."""
    tokens = text.split()
    for i in np.flatnonzero(rng.random(len(tokens)) < prob):
        lead, core, trail = split_word(tokens[i])
        if options := neighbours.get(core.lower()):
            new = options[rng.integers(len(options))]
            tokens[i] = lead + (new[:1].upper() + new[1:] if core[:1].isupper() else new) + trail
    return " ".join(tokens)


def transfer_set(data: datasets.Dataset, columns: list[str], *, copies: int, word_prob: float, seed: int,
                 neighbours: dict[str, list[str]] | None = None) -> datasets.Dataset:
    """``copies`` changed copies of ``data`` (every text column in ``columns``, a ``word_prob`` of the words replaced:
    by one of their ``neighbours`` (:func:`replace_with_neighbours`) when given, else by words drawn from ``data``'s own
    word frequencies (:func:`replace_words`)), seeded by ``(seed, copy)``, with new ``idx`` values after the split's
    own; every other column as in ``data``."""
    n, offset = len(data), int(max(data["idx"])) + 1
    if neighbours is not None:
        def replace(text: str, rng: np.random.Generator) -> str:
            return replace_with_neighbours(text, neighbours, word_prob, rng)
    else:
        counts = Counter(data_words(data, columns))
        words, weights = np.array(list(counts)), np.array(list(counts.values()), dtype=float)
        weights /= weights.sum()

        def replace(text: str, rng: np.random.Generator) -> str:
            return replace_words(text, words, weights, word_prob, rng)
    changed = []
    for copy in range(copies):
        rng = np.random.default_rng([seed, copy])
        texts = {c: [replace(t or "", rng) for t in data[c]] for c in columns}
        ids = np.arange(n) + offset + copy * n
        changed.append(data.remove_columns([*columns, "idx"]).add_column("idx", ids.tolist())
                       .map(lambda _, i: {c: texts[c][i] for c in columns}, with_indices=True, desc="transfer set")
                       .cast(data.features))
    return datasets.concatenate_datasets(changed)


@dataclass(frozen=True)
class TransferTexts:
    """Unlabelled text from another data set, added to the training split as a transfer set that the teacher labels
    (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network", sec. 3: the student learns from the teacher's
    soft targets on data without labels). E.g. SST-2's 67,349 movie-review sentences beside CoLA's 8,551. In YAML::

        transfer_texts: {dataset: nyu-mll/glue, config: sst2, column: sentence}

    Args:
        dataset: hub id or folder, resolved to its offline mirror like the task's own data (:mod:`lkd.hub`).
        config: the data set's config (GLUE's ``sst2``), or None.
        split: the split whose texts are read.
        column: the text column; it fills the task's one text column (a sentence-pair task needs pairs: refused).
        size: a seeded random subset of this many texts (None: all of them).
    """

    dataset: str
    config: str | None = None
    split: str = "train"
    column: str = "sentence"
    size: int | None = None

    def __post_init__(self):
        if self.size is not None and self.size <= 0:
            raise ValueError(f"transfer_texts.size must be > 0 or null (every text), got {self.size}")

    @property
    def name(self) -> str:
        """``dataset/config``, for messages."""
        return f"{self.dataset}/{self.config}" if self.config else self.dataset

    @property
    def source(self) -> str:
        """The data set, split and column, for messages."""
        return f"{self.name} split {self.split!r} column {self.column!r}"


def texts_from(source: TransferTexts, like: datasets.Dataset, column: str, *, seed: int) -> datasets.Dataset:
    """The texts of ``source`` as rows of ``like`` (its ``column`` and ``idx`` only, the same features), with new
    ``idx`` values after ``like``'s own; empty texts dropped, a ``size`` subset seeded by ``seed``.

    Raises:
        ValueError: the split or column is not in the source (naming the ones it has).
    """
    from lkd.hub import load_hub_dataset

    splits = load_hub_dataset(source.dataset, source.config)
    if source.split not in splits:
        raise ValueError(f"transfer_texts: {source.name} has no split {source.split!r}. HINT: one of {sorted(splits)}")
    data = splits[source.split]
    if source.column not in data.column_names:
        raise ValueError(f"transfer_texts: {source.source} is not a column; its columns: {data.column_names}. HINT: set "
                         "transfer_texts.column to the one that holds the text")
    if not isinstance(data.features[source.column], datasets.Value) or data.features[source.column].dtype not in ("string", "large_string"):
        raise ValueError(f"transfer_texts: {source.source} holds {data.features[source.column]}, not text. HINT: name a string column")
    if source.size is not None and source.size < len(data):
        data = data.shuffle(seed=seed).select(range(source.size))
    texts = [t for t in data[source.column] if t and t.strip()]
    first = int(max(like["idx"])) + 1
    features = like.select_columns([column, "idx"]).features
    return datasets.Dataset.from_dict({column: texts, "idx": list(range(first, first + len(texts)))}, features=features)
