"""TextClassificationDataModule on local CSV / JSON Lines / parquet files: columns, labels, splits, errors; a GLUE
config run on a CSV by overrides alone."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from lkd.data import GLUEDataModule, TextClassificationDataModule, TextDataError
from tests.glue_fixtures import MINILM, tiny_model_args

GOOD, BAD, MEH = ["superb", "lovely", "great"], ["awful", "dull", "bad"], ["fine", "okay", "average"]


def _rows(n: int, offset: int = 0) -> list[dict]:
    classes = [("pos", GOOD), ("neg", BAD), ("meh", MEH)]
    out = []
    for i in range(offset, offset + n):
        name, words = classes[i % 3]
        out.append({"id": i, "review": f"the food was {words[i % 3]} and {words[(i + 1) % 3]}", "stars": name,
                    "venue": f"place {i % 5}"})
    return out


def write_csv(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def reviews(tmp_path) -> dict[str, str]:
    return {"train": str(write_csv(tmp_path / "train.csv", _rows(30))),
            "validation": str(write_csv(tmp_path / "dev.csv", _rows(9, offset=30)))}


def _ready(stage="fit", **kwargs) -> TextClassificationDataModule:
    data = TextClassificationDataModule(**{"batch_size": 4, "eval_batch_size": 4, **kwargs})
    data.connect(MINILM, model_max_length=128)
    data.setup(stage)
    return data


def test_csv_with_its_own_columns_and_string_labels(reviews):
    data = _ready(data_files=reviews, text_columns=["review"], label_column="stars")
    assert data.num_classes == 3 and data.label_names == ["meh", "neg", "pos"] and not data.is_regression  # sorted names
    assert data.task == "classification"
    train = data.split("train")
    assert len(train) == 30 and train[0]["labels"] == 2 and train[1]["labels"] == 1  # row 0 "pos", row 1 "neg"
    assert train[0]["input_ids"].tolist() == data.tokenizer("the food was superb and lovely")["input_ids"]
    batch = next(iter(data.val_dataloader()))
    assert batch["idx"][:].tolist() == [0, 1, 2, 3] and batch["labels"].dtype == torch.long  # row ids added: the cache key
    assert batch["input_ids"].shape[1] == int(batch["attention_mask"].sum(1).max())  # dynamic padding


def test_label_names_fix_the_class_order_and_columns_are_detected(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "venue"} | {"label": r["stars"]} for r in _rows(12)]
    rows = [{k: v for k, v in r.items() if k != "stars"} for r in rows]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    data = _ready(data_files=str(path), label_names=["neg", "meh", "pos"], validation_size=3)
    assert data.label_column == "label" and data.text_columns == ["review"]  # "id" is an int, not text
    assert data.label_names == ["neg", "meh", "pos"] and data.num_classes == 3
    train, val = data.split("train"), data.split("validation")
    assert len(train) == 9 and len(val) == 3  # carved from train, seeded
    assert set(train["idx"][:].tolist()).isdisjoint(val["idx"][:].tolist())
    first = {int(i): int(y) for i, y in zip(train["idx"][:], train["labels"][:])}
    assert all(first[i] == ["neg", "meh", "pos"].index(rows[i]["label"]) for i in first)
    again = _ready(data_files=str(path), label_names=["neg", "meh", "pos"], validation_size=3)
    other = _ready(data_files=str(path), label_names=["neg", "meh", "pos"], validation_size=3, seed=1)
    assert again.split("validation")["idx"][:].tolist() == val["idx"][:].tolist() != other.split("validation")["idx"][:].tolist()


def test_float_labels_are_regression_and_int_labels_class_ids(tmp_path):
    import datasets

    rows = {"premise": [f"a {w}" for w in GOOD * 4], "hypothesis": [f"b {w}" for w in BAD * 4], "target": [0.5 * i for i in range(12)]}
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "train.parquet"))
    data = _ready(data_files={"train": str(tmp_path / "train.parquet")}, validation_size=0.25)
    assert data.is_regression and data.num_classes == 1 and data.text_columns == ["premise", "hypothesis"]
    assert data.split("train")["labels"][:].dtype == torch.float32
    ids = rows | {"target": [i % 4 for i in range(12)]}
    datasets.Dataset.from_dict(ids).to_parquet(str(tmp_path / "ids.parquet"))
    data = _ready(data_files=str(tmp_path / "ids.parquet"), validation_size=4, label_names=["a", "b", "c", "d"])
    assert data.num_classes == 4 and data.label_names == ["a", "b", "c", "d"]
    assert sorted(set(data.split("train")["labels"][:].tolist())) == [0, 1, 2, 3]


def test_a_glue_config_runs_on_a_csv_by_overrides_alone(reviews, tmp_path):
    from lkd.cli import LKDCLI

    config = Path(__file__).resolve().parents[1] / "configs" / "glue" / "student_alone.yaml"
    cli = LKDCLI(args=[
        "fit", "-c", str(config), *tiny_model_args(config), f"--data.init_args.data_files={json.dumps(reviews)}",
        "--data.init_args.text_columns=[review]", "--data.init_args.label_column=stars", "--data.init_args.task=reviews",
        "--data.init_args.batch_size=8", "--data.init_args.group_by_length=true", "--trainer.fast_dev_run=2", f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}", f"--best_checkpoint.path={tmp_path / 'best.ckpt'}",
    ])
    assert cli.datamodule.hub_id is None and cli.datamodule.num_classes == 3
    assert cli.model.num_classes == 3 and cli.model.task == "reviews"  # linked from the data
    assert cli.model.trained_model.classifier.out_features == 3
    assert cli.trainer.global_step == 2 and "val/acc" in cli.trainer.callback_metrics
    from lkd.data.text_classification import LengthGroupedSampler

    assert isinstance(cli.trainer.train_dataloader.sampler, LengthGroupedSampler)
    from lkd.callbacks import GLUEPredictionWriter

    writer = GLUEPredictionWriter(output_dir=str(tmp_path / "predictions"))
    cli.trainer.callbacks.append(writer)
    cli.datamodule.predict_split = "validation"
    cli.trainer.predict(cli.model, datamodule=cli.datamodule)
    lines = writer.written.read_text().splitlines()
    assert writer.written.name == "reviews.tsv" and lines[0] == "index\tprediction" and len(lines) == 10
    assert {line.split("\t")[1] for line in lines[1:]} <= {"meh", "neg", "pos"}  # your own data: class names


@pytest.mark.parametrize("kwargs, message", [
    ({"text_columns": ["reviw"], "label_column": "stars"}, r"\['reviw'\] not in .*did you mean 'review'\?.*HINT: set data.init_args.text_columns"),
    ({"text_columns": ["review"], "label_column": "star"}, r"label_column 'star' is not a column .*did you mean 'stars'\?.*columns: \['id', 'review', 'stars', 'venue'\]"),
    ({"text_columns": ["review"]}, r"no column is named like a label .*columns: \['id', 'review', 'stars', 'venue'\].*HINT: set data.init_args.label_column"),
    ({"label_column": "id"}, r"expected 1 or 2 text columns, found \['review', 'stars', 'venue'\]"),
    ({"text_columns": ["review"], "label_column": "stars", "label_names": ["neg", "pos"]},
     r"label 'meh' \(split 'train', row 2\) is not one of the known classes \['neg', 'pos'\]"),
])
def test_bad_columns_and_labels_are_named(reviews, kwargs, message):
    data = TextClassificationDataModule(data_files=reviews, **kwargs)
    data.connect(MINILM)
    with pytest.raises(TextDataError, match=message):
        data.setup("fit")
        data.split("train")


def test_label_outside_the_known_classes_in_validation(tmp_path):
    train = write_csv(tmp_path / "train.csv", _rows(9))
    dev = write_csv(tmp_path / "dev.csv", _rows(3) + [{"id": 99, "review": "so so", "stars": "mixed", "venue": "x"}])
    data = _ready(data_files={"train": str(train), "validation": str(dev)}, text_columns=["review"], label_column="stars")
    with pytest.raises(TextDataError, match=r"label 'mixed' \(split 'validation', row 3\) is not one of the known classes \['meh', 'neg', 'pos'\]"):
        data.split("validation")
    ints = write_jsonl(tmp_path / "ints.jsonl", [{"text": "a", "label": i % 2} for i in range(6)])
    dev_ints = write_jsonl(tmp_path / "dev_ints.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 5}])
    data = _ready(data_files={"train": str(ints), "validation": str(dev_ints)})
    with pytest.raises(TextDataError, match=r"label 5 \(split 'validation', row 1\) is outside the 2 known classes"):
        data.split("validation")


def test_labels_that_are_neither_names_nor_numbers(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"text": f"t{i}", "label": [i, i + 1]} for i in range(6)])
    with pytest.raises(TextDataError, match=r"label column 'label' is .*neither class names \(strings\), class ids \(integers\) nor numbers"):
        _ready(data_files=str(path), validation_size=2)
    empty = write_jsonl(tmp_path / "gaps.jsonl", [{"text": f"t{i}", "label": None if i == 3 else "a"} for i in range(6)])
    with pytest.raises(TextDataError, match=r"label of row \d in split 'train' is empty"):
        _ready(data_files=str(empty), validation_size=1, seed=5)


def test_empty_split_and_bad_files_are_refused(tmp_path, reviews):
    empty = tmp_path / "empty.csv"
    empty.write_text("id,review,stars,venue\n")
    with pytest.raises(TextDataError, match=r"split 'validation' is empty"):
        _ready(data_files={"train": reviews["train"], "validation": str(empty)}, text_columns=["review"], label_column="stars")
    with pytest.raises(FileNotFoundError, match=r"no such file .*nope.csv"):
        TextClassificationDataModule(data_files=str(tmp_path / "nope.csv")).raw
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(TextDataError, match=r"named by the file ending; known endings: .csv, .tsv"):
        TextClassificationDataModule(data_files=str(tmp_path / "a.txt")).raw
    with pytest.raises(ValueError, match=r"give exactly one of dataset .* and data_files"):
        TextClassificationDataModule()
    with pytest.raises(ValueError, match=r"validation_size must be a fraction in \(0, 1\) or a count >= 1, got 1.5"):
        TextClassificationDataModule(data_files=reviews, validation_size=1.5)


def test_tsv_and_the_teacher_cache_identity(tmp_path):
    train = write_csv(tmp_path / "train.tsv", _rows(12), delimiter="\t")
    data = _ready(data_files=str(train), text_columns=["review"], label_column="stars", validation_size=3, train_size=6)
    identity = data.cache_identity("train")
    assert identity.rows == 6 and data.cache_sample_ids("train").tolist() == data.split("train")["idx"][:].tolist()
    assert data.cache_stages() == ["train", "val"]


def test_glue_preset_still_reads_glue(tiny_glue):
    data = GLUEDataModule("mrpc", hub_id=str(tiny_glue))
    assert data.dataset == str(tiny_glue) and data.config == "mrpc" and data.label_column == "label"
    assert data.text_columns == ["sentence1", "sentence2"] and data.test_split == "validation"


def test_transfer_set_adds_changed_unlabelled_copies(reviews):
    data = _ready(data_files=reviews, text_columns=["review"], label_column="stars", transfer_copies=2, transfer_word_prob=0.5)
    train = data.split("train")
    assert len(train) == 90
    labels, ids = train["labels"][:].tolist(), train["idx"][:].tolist()
    assert labels[30:] == [-1] * 60 and min(labels[:30]) >= 0  # the copies carry no label: the teacher labels them
    assert len(set(ids)) == 90 and min(ids[30:]) == 30  # their own ids after the split's, so a teacher cache keys them
    originals = [data.tokenizer.decode(train[i]["input_ids"], skip_special_tokens=True) for i in range(30)]
    copies = [data.tokenizer.decode(train[30 + i]["input_ids"], skip_special_tokens=True) for i in range(30)]
    changed = sum(a != b for a, b in zip(originals, copies))
    assert changed >= 20 and all(len(a.split()) == len(b.split()) for a, b in zip(originals, copies))  # words replaced, not dropped
    again = _ready(data_files=reviews, text_columns=["review"], label_column="stars", transfer_copies=2, transfer_word_prob=0.5)
    assert again.split("train")["input_ids"][30:].__len__() == 60
    assert [again.split("train")[30 + i]["input_ids"].tolist() for i in range(5)] == [train[30 + i]["input_ids"].tolist() for i in range(5)]


def test_labelled_size_labels_the_rows_train_size_would_keep_and_unlabels_the_rest(reviews):
    subset = _ready(data_files=reviews, text_columns=["review"], label_column="stars", train_size=10, seed=3).split("train")
    data = _ready(data_files=reviews, text_columns=["review"], label_column="stars", labelled_size=10, seed=3)
    train = data.split("train")
    assert len(train) == 30  # every row stays, with its text
    labels = dict(zip(train["idx"][:].tolist(), train["labels"][:].tolist(), strict=True))
    kept = {i for i, y in labels.items() if y >= 0}
    assert kept == set(subset["idx"][:].tolist())  # the same rows, with the same labels
    assert all(labels[i] == y for i, y in zip(subset["idx"][:].tolist(), subset["labels"][:].tolist(), strict=True))
    assert sorted(y for y in labels.values() if y < 0) == [-1] * 20
    both = _ready(data_files=reviews, text_columns=["review"], label_column="stars", train_size=20, labelled_size=10, seed=3)
    assert len(both.split("train")) == 20 and {i for i, y in zip(both.split("train")["idx"][:].tolist(),
                                                                  both.split("train")["labels"][:].tolist(), strict=True) if y >= 0} == kept


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"labelled_size": 0}, r"labelled_size must be > 0 and below train_size \(None\) or null, got 0"),
    ({"labelled_size": 12, "train_size": 10}, r"labelled_size must be > 0 and below train_size \(10\) or null, got 12"),
])
def test_a_bad_labelled_size_is_named(reviews, kwargs, message):
    with pytest.raises(ValueError, match=message):
        TextClassificationDataModule(data_files=reviews, text_columns=["review"], label_column="stars", **kwargs)


def test_a_labelled_size_over_the_split_says_so(reviews):
    data = _ready(data_files=reviews, text_columns=["review"], label_column="stars", labelled_size=30)
    with pytest.raises(ValueError, match=r"labelled_size=30 leaves no row unlabelled: .* has 30 rows. HINT"):
        data.split("train")


def test_a_transfer_set_is_distilled_and_refused_without_a_teacher(tiny_glue, tmp_path):
    import lightning.pytorch as pl

    from lkd.models import TransformerClassifier
    from lkd.modules import GLUEClassifierModule, GLUEDistillModule
    from lkd.teacher import Teacher
    from tests.glue_fixtures import TINY_BERT

    def net(n):
        return TransformerClassifier(n, MINILM, pretrained=False, config_overrides=TINY_BERT)

    data = GLUEDataModule("sst2", hub_id=str(tiny_glue), batch_size=16, max_length=32, transfer_copies=1)
    trainer = pl.Trainer(fast_dev_run=1, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match=r"rows without labels \(a transfer set.*HINT: use GLUEDistillModule"):
        trainer.fit(GLUEClassifierModule(net), datamodule=data)
    teacher_ckpt = tmp_path / "t.ckpt"
    teacher_module = GLUEClassifierModule(net)
    trainer = pl.Trainer(fast_dev_run=1, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(teacher_module, datamodule=GLUEDataModule("sst2", hub_id=str(tiny_glue), batch_size=16, max_length=32))
    trainer.save_checkpoint(teacher_ckpt)
    module = GLUEDistillModule(net, Teacher(net(2), checkpoint=str(teacher_ckpt)), alpha=0.5)
    data.setup("fit")
    data.connect(MINILM, 32)
    batch = next(iter(data.train_dataloader()))
    assert (batch["labels"] == -1).any() and (batch["labels"] >= 0).any()  # the seeded order mixes both
    trainer = pl.Trainer(fast_dev_run=2, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    m = trainer.callback_metrics
    assert torch.isfinite(m["train/loss"]) and torch.isfinite(m["train/ce"]) and torch.isfinite(m["train/kd"])


def test_length_grouped_batches_pad_less_and_keep_every_example():
    from lkd.data.text_classification import LengthGroupedSampler

    lengths = torch.randint(5, 120, (1000,), generator=torch.Generator().manual_seed(0)).tolist()
    sampler = LengthGroupedSampler(lengths, batch_size=32, seed=3, group_batches=10)
    order = list(sampler)
    assert sorted(order) == list(range(1000))  # a permutation
    batches = [order[i:i + 32] for i in range(0, 1000, 32)]
    padded = sum(32 * max(lengths[i] for i in b) for b in batches[:-1])
    plain = list(torch.randperm(1000, generator=torch.Generator().manual_seed(3)).tolist())
    padded_plain = sum(32 * max(lengths[i] for i in plain[i:i + 32]) for i in range(0, 992, 32))
    assert padded < 0.7 * padded_plain  # the point: much less padding
    assert list(LengthGroupedSampler(lengths, 32, seed=3, group_batches=10)) == order  # seeded
    sampler.set_epoch(1)
    assert list(sampler) != order  # a fresh order every epoch (resumable: it depends on seed + epoch only)


def test_transfer_texts_from_another_data_set_join_without_labels(tiny_glue):
    from lkd.data.transfer import TransferTexts

    source = TransferTexts(dataset=str(tiny_glue), config="mrpc", split="train", column="sentence2")
    data = GLUEDataModule("sst2", hub_id=str(tiny_glue), max_length=32, labelled_size=20, transfer_texts=source)
    data.connect(MINILM, 32)
    data.setup("fit")
    train, own = data.split("train"), 64
    assert len(train) == own + 64  # every mrpc sentence2 after sst2's 64 rows
    labels, ids = train["labels"][:].tolist(), train["idx"][:].tolist()
    assert labels[own:] == [-1] * 64 and sum(y >= 0 for y in labels[:own]) == 20  # labelled_size still labels its 20
    assert ids[own:] == list(range(own, own + 64))  # keys of the teacher cache, after the split's own
    mrpc = GLUEDataModule("mrpc", hub_id=str(tiny_glue)).raw["train"]["sentence2"][:]
    decoded = data.tokenizer.decode(train[own + 3]["input_ids"], skip_special_tokens=True)
    assert decoded == data.tokenizer.decode(data.tokenizer(mrpc[3])["input_ids"], skip_special_tokens=True)
    some = GLUEDataModule("sst2", hub_id=str(tiny_glue), max_length=32, seed=1,
                          transfer_texts=TransferTexts(dataset=str(tiny_glue), config="mrpc", column="sentence1", size=10))
    some.connect(MINILM, 32)
    assert len(some.split("train")) == own + 10


@pytest.mark.parametrize(("source", "message"), [
    ({"config": "mrpc", "column": "text"}, r"transfer_texts: .*mrpc split 'train' column 'text' is not a column; its columns: "
                                           r"\['sentence1', 'sentence2', 'label', 'idx'\]\. HINT"),
    ({"config": "mrpc", "column": "sentence1", "split": "dev"}, r"transfer_texts: .*mrpc has no split 'dev'. HINT: one of "
                                                                 r"\['test', 'train', 'validation'\]"),
    ({"config": "mrpc", "column": "label"}, r"column 'label' holds ClassLabel.*not text. HINT: name a string column"),
])
def test_bad_transfer_texts_are_named(tiny_glue, source, message):
    from lkd.data.transfer import TransferTexts

    data = GLUEDataModule("sst2", hub_id=str(tiny_glue), max_length=32, transfer_texts=TransferTexts(dataset=str(tiny_glue), **source))
    data.connect(MINILM, 32)
    with pytest.raises(ValueError, match=message):
        data.split("train")


def test_transfer_texts_refuse_a_pair_task_and_a_bad_size(tiny_glue):
    from lkd.data.transfer import TransferTexts

    pair = GLUEDataModule("mrpc", hub_id=str(tiny_glue), transfer_texts=TransferTexts(dataset=str(tiny_glue), config="sst2"))
    pair.connect(MINILM, 128)
    with pytest.raises(ValueError, match=r"transfer_texts fills one text column, but mrpc has 2: \['sentence1', 'sentence2'\]"):
        pair.split("train")
    with pytest.raises(ValueError, match=r"transfer_texts.size must be > 0 or null \(every text\), got 0"):
        TransferTexts(dataset="nyu-mll/glue", config="sst2", size=0)


@pytest.mark.parametrize(("split", "message"), [
    ("validation", r"this task's own 'validation' split: its texts would train the student that is scored on them\. HINT"),
    ("train", r"this task's own training split: its rows are in training already\. HINT: labelled_size"),
])
def test_transfer_texts_refuse_the_tasks_own_splits(tiny_glue, split, message):
    from lkd.data.transfer import TransferTexts

    data = GLUEDataModule("sst2", hub_id=str(tiny_glue), max_length=32,
                          transfer_texts=TransferTexts(dataset=str(tiny_glue), config="sst2", split=split))
    data.connect(MINILM, 32)
    with pytest.raises(ValueError, match=message):
        data.split("train")
