"""GLUEDataModule on tiny GLUE-shaped data and on the real offline mirror; GLUE metric choice."""

from __future__ import annotations

import pytest
import torch

from lkd.data import GLUEDataModule
from lkd.metrics import glue_metric_names, glue_metrics
from tests.conftest import SHARED_DATA
from tests.glue_fixtures import MINILM


def _ready(root, task, stage="fit", **kwargs) -> GLUEDataModule:
    data = GLUEDataModule(task, hub_id=str(root), batch_size=4, eval_batch_size=5, **kwargs)
    data.connect(MINILM, model_max_length=128)  # what the LightningModule's setup does (model -> data)
    data.setup(stage)
    return data


def test_single_sentence_task(tiny_glue):
    data = _ready(tiny_glue, "sst2")
    assert data.text_columns == ["sentence"] and data.num_classes == 2 and not data.is_regression
    assert len(data.split("train")) == 64 and len(data.split("validation")) == 16
    batch = next(iter(data.val_dataloader()))
    assert batch["input_ids"].shape[0] == 5 and batch["labels"].dtype == torch.long
    assert (batch["token_type_ids"] == 0).all()  # one segment
    # dynamic padding: the batch is as long as its longest example, not max_length
    assert batch["input_ids"].shape[1] == int(batch["attention_mask"].sum(1).max()) < 32
    assert batch["idx"].tolist() == [0, 1, 2, 3, 4]  # sample ids (GLUE's idx), in order: the cache key


def test_tokenisation_is_lazy_and_needs_the_connected_tokenizer(tiny_glue):
    data = GLUEDataModule("sst2", hub_id=str(tiny_glue), batch_size=4)
    data.setup("fit")  # checks the splits; tokenises nothing, and has no tokenizer to do it with
    assert data.splits == {} and data.tokenizer is None
    with pytest.raises(ValueError, match=r"no tokenizer yet: set data.init_args.tokenizer.*call connect\(tokenizer_name\)"):
        data.split("train")
    data.connect(MINILM, model_max_length=128)
    assert data.tokenizer_name == MINILM and data.splits == {}  # still nothing tokenised
    train = data.split("train")
    assert list(data.splits) == ["train"] and data.split("train") is train  # once, on first use
    # row 0 is "the film was awful and boring" (label 0), encoded with the connected tokenizer, not truncated
    assert train[0]["input_ids"].tolist() == data.tokenizer("the film was awful and boring")["input_ids"]
    assert train[0]["labels"] == 0 and train[0]["idx"] == 0


def test_a_tokenizer_given_to_the_data_wins_over_the_models(tiny_glue):
    data = GLUEDataModule("sst2", hub_id=str(tiny_glue), tokenizer=MINILM)
    data.setup("fit")  # binds its own tokenizer
    assert data.tokenizer_name == MINILM and data.tokenizer is not None
    train = data.split("train")
    data.connect("no-such-org/no-such-tokenizer", model_max_length=128)  # would fail to load if it were used
    assert data.tokenizer_name == MINILM and data.split("train") is train  # kept, not tokenised again


def test_pair_task_has_two_segments(tiny_glue):
    data = _ready(tiny_glue, "mrpc")
    assert data.text_columns == ["sentence1", "sentence2"]
    batch = next(iter(data.train_dataloader()))
    assert (batch["token_type_ids"] == 1).any(dim=1).all()  # every example has a second segment
    sep = data.tokenizer.sep_token_id
    assert ((batch["input_ids"] == sep).sum(1) == 2).all()


def test_float_label_is_regression(tiny_glue):
    data = _ready(tiny_glue, "stsb")
    assert data.is_regression and data.num_classes == 1 and data.label_names is None
    assert next(iter(data.val_dataloader()))["labels"].dtype == torch.float32


def test_train_subset_is_seeded(tiny_glue):
    a = _ready(tiny_glue, "sst2", train_size=10, seed=3).split("train")["idx"][:].tolist()
    b = _ready(tiny_glue, "sst2", train_size=10, seed=3).split("train")["idx"][:].tolist()
    c = _ready(tiny_glue, "sst2", train_size=10, seed=4).split("train")["idx"][:].tolist()
    assert len(a) == 10 and a == b and a != c


def test_unknown_task_lists_the_configs(tiny_glue):
    with pytest.raises(ValueError, match=r"unknown task 'sts2'.*available configs: mrpc, sst2, stsb"):
        GLUEDataModule("sts2", hub_id=str(tiny_glue))


def test_missing_text_column_is_named(tiny_glue):
    data = GLUEDataModule("sst2", hub_id=str(tiny_glue), text_columns=["question", "sentence"])
    with pytest.raises(ValueError, match=r"\['question'\] not in .*its columns: \['sentence', 'label', 'idx'\]"):
        data.text_columns


def test_max_length_over_the_model_limit(tiny_glue):
    data = GLUEDataModule("sst2", hub_id=str(tiny_glue), max_length=1024)
    with pytest.raises(ValueError, match=r"max_length=1024 is over the model's limit of 512"):
        data.connect(MINILM, model_max_length=512)


def test_scoring_a_split_without_labels_is_an_error(tiny_glue):
    with pytest.raises(ValueError, match="split 'test' has no labels"):
        _ready(tiny_glue, "sst2", stage="test", test_split="test")
    assert _ready(tiny_glue, "mrpc", stage="test", test_split="test").has_labels("test")  # MRPC's test is labelled


@pytest.mark.skipif(not (SHARED_DATA / "glue").is_dir(), reason="offline GLUE mirror not present")
def test_real_mirror():
    sst2 = GLUEDataModule("sst2")
    assert {k: len(v) for k, v in sst2.raw.items()} == {"train": 67349, "validation": 872, "test": 1821}
    assert sst2.text_columns == ["sentence"] and sst2.label_names == ["negative", "positive"]
    assert not sst2.has_labels("test")
    mrpc = GLUEDataModule("mrpc")
    assert mrpc.text_columns == ["sentence1", "sentence2"] and len(mrpc.raw["validation"]) == 408
    assert mrpc.has_labels("test")  # see the mirror's PROVENANCE.md
    rte = _ready(SHARED_DATA / "glue", "rte", stage="validate")
    assert len(rte.split("validation")) == 277 and rte.label_names == ["entailment", "not_entailment"]


def test_metrics_follow_the_task():
    assert glue_metric_names("sst2", 2) == ("acc",) and glue_metric_names("rte", 2) == ("acc",)
    assert glue_metric_names("mrpc", 2) == ("acc", "f1")
    assert glue_metric_names("cola", 2) == ("mcc",)
    assert glue_metric_names("stsb", 1) == ("pearson", "spearman")
    m = glue_metrics("mrpc", 2)
    preds, labels = torch.tensor([1, 1, 0, 0]), torch.tensor([1, 0, 0, 0])
    values = m(preds, labels)
    assert values["acc"] == pytest.approx(0.75) and values["f1"] == pytest.approx(2 / 3)
    mcc = glue_metrics("cola", 2)(torch.tensor([1, 0, 1, 0]), torch.tensor([0, 1, 0, 1]))["mcc"]
    assert mcc == pytest.approx(-1.0)
