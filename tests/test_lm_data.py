"""TextDataModule on a tiny WikiText-shaped corpus: tokenise, concatenate, block; split slicing; errors."""

import datasets
import pytest
import torch

from lkd.data.text import BlockSizeError, TextColumnError, TextDataModule, detect_text_column, group_into_blocks
from lkd.models.causal_lm import ByteTokenizer
from tests.conftest import write_hub_dataset
from tests.lm_fixtures import WIKITEXT_CONFIG, make_lines, tiny_wikitext, _one_torch_thread  # noqa: F401


def test_group_into_blocks_concatenates_and_drops_the_rest():
    blocks = group_into_blocks([[1, 2, 3], [4], [5, 6, 7, 8, 9]], 4)
    assert torch.equal(blocks, torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]]))


def test_blocks_are_the_tokenised_text(tiny_wikitext):
    dm = TextDataModule(str(tiny_wikitext), WIKITEXT_CONFIG, tokenizer="bytes", block_size=16, batch_size=4)
    dm.setup("fit")
    lines = [t for t in make_lines(300, 0)[:270] if t.strip()]  # validation[:90%] of 300 lines
    expected = [b for t in lines for b in list(t.encode()) + [ByteTokenizer.eos_token_id]]
    train = dm.datasets["train"].blocks
    assert train.shape == (len(expected) // 16, 16)
    assert train.flatten().tolist() == expected[: train.numel()]
    val_lines = [t for t in make_lines(300, 0)[270:] if t.strip()]
    assert dm.datasets["val"].blocks.shape[0] == sum(len(t.encode()) + 1 for t in val_lines) // 16
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 16) and batch["input_ids"].dtype == torch.int64
    dm.setup("test")
    assert len(dm.test_dataloader().dataset) > 0


def test_max_blocks_and_tokenizer_object(tiny_wikitext):
    dm = TextDataModule(str(tiny_wikitext), WIKITEXT_CONFIG, tokenizer=ByteTokenizer(), block_size=8, max_blocks=5)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 5


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
    with pytest.raises(TextColumnError, match=r"no string columns; columns: x"):
        dm.setup("fit")


def test_block_size_over_the_model_context(tiny_wikitext):
    from lkd.modules.lm import CausalLMModule
    from tests.lm_fixtures import tiny_student
    import lightning.pytorch as pl

    module = CausalLMModule(tiny_student(), tokenizer="bytes")  # context 64
    dm = TextDataModule(str(tiny_wikitext), WIKITEXT_CONFIG, block_size=65)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False, max_steps=1)
    with pytest.raises(BlockSizeError, match="block_size=65.*64 positions"):
        trainer.fit(module, dm)


def test_bad_arguments():
    with pytest.raises(ValueError, match="block_size must be >= 2"):
        TextDataModule(block_size=1)
    with pytest.raises(ValueError, match="no tokenizer"):
        TextDataModule().resolve_tokenizer()
