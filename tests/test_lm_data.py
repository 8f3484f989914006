"""TextDataModule on a tiny WikiText-shaped corpus: tokenise, concatenate, block; split slicing; sample ids;
the model's tokenizer through connect(); errors."""

import datasets
import pytest
import torch

from lkd.data.text import BlockSizeError, TextColumnError, TextDataModule, detect_text_column, group_into_blocks
from lkd.tokenizers import ByteTokenizer, load_tokenizer
from tests.conftest import write_hub_dataset
from tests.lm_fixtures import WIKITEXT_CONFIG, make_lines


def test_group_into_blocks_concatenates_and_drops_the_rest():
    blocks = group_into_blocks([[1, 2, 3], [4], [5, 6, 7, 8, 9]], 4)
    assert torch.equal(blocks, torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]]))


def test_blocks_are_the_tokenised_text(tiny_wikitext):
    dm = TextDataModule(str(tiny_wikitext), WIKITEXT_CONFIG, tokenizer="bytes", block_size=16, batch_size=4)
    dm.setup("fit")
    assert dm.datasets == {}  # tokenised lazily, on the first use of a split
    lines = [t for t in make_lines(300, 0)[:270] if t.strip()]  # validation[:90%] of 300 lines
    expected = [b for t in lines for b in list(t.encode()) + [ByteTokenizer.eos_token_id]]
    train = dm.split("train").blocks
    assert set(dm.datasets) == {"train"}
    assert train.shape == (len(expected) // 16, 16)
    assert train.flatten().tolist() == expected[: train.numel()]
    val_lines = [t for t in make_lines(300, 0)[270:] if t.strip()]
    assert dm.split("val").blocks.shape[0] == sum(len(t.encode()) + 1 for t in val_lines) // 16
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 16) and batch["input_ids"].dtype == torch.int64
    # every batch carries the blocks' row ids (the key of a teacher cache), shuffled or not
    assert batch["sample_id"].shape == (4,) and batch["sample_id"].dtype == torch.int64
    assert torch.equal(batch["input_ids"], train[batch["sample_id"]])
    val_ids = torch.cat([b["sample_id"] for b in dm.val_dataloader()])
    assert torch.equal(val_ids, torch.arange(len(dm.split("val"))))  # in order: what cache_sample_ids promises
    assert torch.equal(dm.cache_sample_ids("val"), val_ids)
    dm.setup("test")
    assert len(dm.test_dataloader().dataset) > 0


def test_max_blocks_and_tokenizer_object(tiny_wikitext):
    dm = TextDataModule(str(tiny_wikitext), WIKITEXT_CONFIG, tokenizer=ByteTokenizer(), block_size=8, max_blocks=5)
    dm.setup("fit")
    assert len(dm.split("train")) == 5
    assert dm.tokenizer_name == "ByteTokenizer"


def test_text_column_detection(tmp_path):
    feats = datasets.Features({"id": datasets.Value("int64"), "body": datasets.Value("string")})
    assert detect_text_column(feats) == "body"
    two = datasets.Features({"title": datasets.Value("string"), "body": datasets.Value("string")})
    with pytest.raises(TextColumnError, match="several string columns.*title.*body.*text_column"):
        detect_text_column(two)
    assert detect_text_column(two, "title") == "title"
    with pytest.raises(TextColumnError, match="'txt' is not in the corpus"):
        detect_text_column(two, "txt")


def test_corpus_without_text_column_is_a_clear_error(tmp_path):
    root = write_hub_dataset(tmp_path / "numbers", "default", {"validation": datasets.Dataset.from_dict({"x": [1, 2]}),
                                                               "test": datasets.Dataset.from_dict({"x": [3]})})
    dm = TextDataModule(str(root), "default", tokenizer="bytes")
    dm.setup("fit")  # nothing is read yet
    with pytest.raises(TextColumnError, match=r"no string columns; columns: x"):
        dm.split("train")


def test_block_size_over_the_model_context(tiny_wikitext):
    import lightning.pytorch as pl

    from lkd.modules.lm import CausalLMModule
    from tests.lm_fixtures import tiny_student

    module = CausalLMModule(tiny_student(), tokenizer="bytes")  # context 64
    dm = TextDataModule(str(tiny_wikitext), WIKITEXT_CONFIG, block_size=65)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False, max_steps=1)
    with pytest.raises(BlockSizeError, match="block_size=65.*64 positions"):
        trainer.fit(module, dm)


def test_connect_binds_the_models_tokenizer_and_checks_the_model(tiny_wikitext):
    dm = TextDataModule(str(tiny_wikitext), WIKITEXT_CONFIG, block_size=16)
    dm.connect("bytes", context_length=16, vocab_size=257)
    assert dm.tokenizer is load_tokenizer("bytes") and dm.tokenizer_name == "bytes"  # one cached instance
    first = dm.split("train")
    dm.connect("bytes", context_length=64, vocab_size=300)  # same tokenizer: the tokenised data is kept
    assert dm.split("train") is first
    with pytest.raises(BlockSizeError, match=r"block_size=16 is longer than the model's context \(8 positions\).*<= 8"):
        dm.connect("bytes", context_length=8)
    with pytest.raises(ValueError, match=r"tokenizer bytes has 257 tokens but the model's vocabulary has 100"):
        dm.connect("bytes", vocab_size=100)
    # another tokenizer: the blocks are tokenised again with it
    dm.connect(LowercaseBytes())
    assert dm.tokenizer_name == "LowercaseBytes" and dm.datasets == {}
    assert not torch.equal(dm.split("train").blocks, first.blocks)


def test_a_tokenizer_given_to_the_data_module_wins_over_the_models(tiny_wikitext):
    dm = TextDataModule(str(tiny_wikitext), WIKITEXT_CONFIG, block_size=16, tokenizer="bytes")
    dm.connect("smollm2", vocab_size=49152)  # the model says smollm2; the data module keeps its own
    assert isinstance(dm.tokenizer, ByteTokenizer) and dm.tokenizer_name == "bytes"


class LowercaseBytes(ByteTokenizer):
    def __call__(self, texts, **kw):
        return super().__call__(texts.lower() if isinstance(texts, str) else [t.lower() for t in texts], **kw)


def test_bad_arguments():
    with pytest.raises(ValueError, match="block_size must be >= 2"):
        TextDataModule(block_size=1)
    with pytest.raises(ValueError, match="batch sizes must be >= 1.*max_blocks must be >= 1"):
        TextDataModule(batch_size=0, max_blocks=0)
    with pytest.raises(ValueError, match="no tokenizer"):
        TextDataModule().split("train")
