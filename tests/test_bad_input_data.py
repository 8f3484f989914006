"""Bad data stops early with an error whose last line names the value and the fix (issue 27): a data copy whose
card states old row counts, ``LKD_DATA_DIR`` naming a file, predict/test files without labels or text columns,
a missing predict split, a ``max_length`` with no room for text, labels of the wrong kind for a GLUE task."""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import datasets
import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn

from lkd.data import GLUEDataModule, TextClassificationDataModule
from lkd.hub import load_hub_dataset
from tests.conftest import write_hub_dataset
from tests.glue_fixtures import MINILM

WORDS = ["superb", "lovely", "awful", "dull", "fine", "great"]


def write_csv(path: Path, columns: dict[str, list]) -> str:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(list(columns))
        writer.writerows(zip(*columns.values()))
    return str(path)


def texts(n: int, offset: int = 0) -> list[str]:
    return [f"the food was {WORDS[i % 6]} and {WORDS[(i + 1) % 6]} {i}" for i in range(offset, offset + n)]


def stars(n: int) -> list[str]:
    return [["pos", "neg"][i % 2] for i in range(n)]


def ready(stage: str = "fit", data=None, **kwargs):
    data = data or TextClassificationDataModule(**{"batch_size": 4, "eval_batch_size": 4, **kwargs})
    data.connect(MINILM, model_max_length=128)
    data.setup(stage)
    return data


def stale_card(root: Path, splits: dict[str, int]) -> Path:
    """A hub-layout copy whose README.md card (``dataset_info``) states ``splits`` row counts."""
    rows = {"text": texts(10), "label": [i % 2 for i in range(10)]}
    write_hub_dataset(root, "default", {"train": datasets.Dataset.from_dict(rows),
                                        "test": datasets.Dataset.from_dict({k: v[:4] for k, v in rows.items()})})
    info = "".join(f"  - name: {name}\n    num_examples: {n}\n" for name, n in splits.items())
    readme = root / "README.md"
    readme.write_text(readme.read_text().replace("---\n", f"---\ndataset_info:\n  config_name: default\n  splits:\n{info}  dataset_size: 999\n", 1))
    return root


# ---- each case: (id, setup(tmp_path, monkeypatch) -> call, regex the error's LAST line must match) ----------
def _stale_sizes(tmp_path, monkeypatch):
    root = stale_card(tmp_path / "toy", {"train": 12, "test": 4})
    return lambda: load_hub_dataset(str(root), "default")


def _stale_splits(tmp_path, monkeypatch):
    root = stale_card(tmp_path / "toy", {"train": 10, "test": 4, "validation": 3})
    return lambda: TextClassificationDataModule(str(root), "default").raw


def _data_dir_is_a_file(tmp_path, monkeypatch):
    (tmp_path / "data.txt").write_text("not a folder")
    monkeypatch.setenv("LKD_DATA_DIR", str(tmp_path / "data.txt"))
    return lambda: load_hub_dataset("ylecun/mnist", "mnist")


def _test_file_without_labels(tmp_path, monkeypatch):
    files = {"train": write_csv(tmp_path / "train.csv", {"review": texts(10), "stars": stars(10)}),
             "test": write_csv(tmp_path / "test.csv", {"review": texts(3, 10)})}
    return lambda: ready("test", data_files=files, label_column="stars", test_split="test")


def _predict_file_without_the_text_column(tmp_path, monkeypatch):
    files = {"train": write_csv(tmp_path / "train.csv", {"review": texts(10), "stars": stars(10)}),
             "test": write_csv(tmp_path / "test.csv", {"body": texts(3, 10), "stars": stars(3)})}
    return lambda: ready("predict", data_files=files, label_column="stars")


def _no_predict_split(tmp_path, monkeypatch):
    files = {"train": write_csv(tmp_path / "train.csv", {"review": texts(10), "stars": stars(10)}),
             "validation": write_csv(tmp_path / "dev.csv", {"review": texts(4, 10), "stars": stars(4)})}
    return lambda: ready(TrainerFn.PREDICTING, data_files=files, label_column="stars")  # as Lightning calls setup


def _max_length(value: int, pair: bool = False):
    def setup(tmp_path, monkeypatch):
        columns = {"review": texts(10), "stars": stars(10)} | ({"venue": texts(10, 3)} if pair else {})
        return lambda: ready(data_files=write_csv(tmp_path / "train.csv", columns), label_column="stars", max_length=value)
    return setup


def _glue_task_labels(task: str, labels: list):
    def setup(tmp_path, monkeypatch):
        n = len(labels)
        columns = {"sentence1": texts(n), "sentence2": texts(n, 1)} if task == "stsb" else {"sentence": texts(n)}
        files = {"train": write_csv(tmp_path / "train.csv", columns | {"label": labels})}
        return lambda: ready(data=GLUEDataModule(task, data_files=files, validation_size=2, batch_size=4))
    return setup


def _stsb_on_class_names_from_a_mirror(tmp_path, monkeypatch):
    from tests.glue_fixtures import write_tiny_glue

    root = write_tiny_glue(tmp_path / "glue", n_train=8, n_val=4, n_test=4)
    return lambda: ready(dataset=str(root), config="mrpc", task="stsb")


def _problem_type_against_the_task(tmp_path, monkeypatch):
    return lambda: GLUEDataModule("stsb", data_files=str(tmp_path / "train.csv"), problem_type="classification")

def _data_files_unquoted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "dev.csv", {"review": texts(4), "stars": stars(4)})
    return lambda: ready(data_files="validation:dev.csv", label_column="stars")  # `{train:a.csv,validation:dev.csv}` in bash


BAD_DATA = [
    ("card states old row counts", _stale_sizes,
     r"the card .*toy/README\.md .*split 'train': 12 rows stated, 10 found\. HINT: remove the `dataset_info:` block .* from "
     r".*toy/README\.md, or set each split's num_examples there to the rows found"),
    ("card states a split the files lack", _stale_splits,
     r"the card .*toy/README\.md .*states split\(s\) \{'validation'\} that the data files do not have\. HINT: remove the `dataset_info:`"),
    ("LKD_DATA_DIR names a file", _data_dir_is_a_file,
     r"^LKD_DATA_DIR=.*data\.txt names a file, not a folder.* HINT: set LKD_DATA_DIR to the folder that holds the mirrors \(e\.g\. /"),
    ("lkd test on a file without labels", _test_file_without_labels,
     r"split 'test' \(.*test\.csv\) has no label column 'stars' \(its columns: \['review'\]\), so it cannot be scored\. HINT: score a "
     r"labelled split \(data\.init_args\.test_split=validation\), or write predictions for it with `lkd predict`"),
    ("predict file without the text column", _predict_file_without_the_text_column,
     r"split 'test' \(.*test\.csv\) lacks the text column\(s\) \['review'\] that 'train' has .*its columns: \['body', 'stars'\]\. HINT: name"),
    ("predict split the files lack", _no_predict_split,
     r"data\.init_args\.predict_split='test': .* has no split 'test'; its splits: train, validation\. HINT: set "
     r"data\.init_args\.predict_split to one of them, add a file for it .*data\.init_args\.test_size"),
    ("max_length 1", _max_length(1),
     r"data\.init_args\.max_length=1 leaves no room for text: the tokenizer .* adds 2 special tokens .* HINT: set data\.init_args\.max_length >= 3"),
    ("max_length 2", _max_length(2), r"data\.init_args\.max_length=2 leaves no room for text: .*HINT: set data\.init_args\.max_length >= 3"),
    ("max_length 4, a pair", _max_length(4, pair=True),
     r"max_length=4 leaves no room for text: .* adds 3 special tokens to a pair of texts .*HINT: set data\.init_args\.max_length >= 5"),
    ("sst2 with fractional labels", _glue_task_labels("sst2", [0.25, 0.75] * 4),
     r"task 'sst2' \(a GLUE classification task\) needs class labels, but label column 'label' holds fractional numbers \(float64, "
     r"e\.g\. 0\.25, 0\.75\)\. HINT: cast the labels to integer class ids"),
    ("stsb with class names", _glue_task_labels("stsb", ["low", "high"] * 4),
     r"task 'stsb' \(a GLUE regression task\) needs numeric scores, but label column 'label' holds class names \((large_)?string, e\.g\. "
     r"'high', 'low'\)\. HINT: give numeric scores \(cast the labels to float\) in 'label', or if this is not GLUE's stsb, name your task \(data\.init_args\.task=<your name>\) to train a classification"),
    ("stsb on a ClassLabel", _stsb_on_class_names_from_a_mirror,
     r"task 'stsb' \(a GLUE regression task\) needs numeric scores, but label column 'label' holds class names \(ClassLabel"),
    ("data_files splits unquoted on a bash command line", _data_files_unquoted,
     r"data_files='validation:dev\.csv' was read as one file name, not as splits.*HINT: quote it, with spaces: "
     r"--data\.init_args\.data_files='\{train: reviews\.csv, validation: dev\.csv\}'$"),
    ("problem_type against a GLUE task", _problem_type_against_the_task,
     r"problem_type='classification' contradicts task 'stsb', a GLUE regression task\. HINT: leave data\.init_args\.problem_type out"),
]


@pytest.mark.parametrize("setup, last_line", [row[1:] for row in BAD_DATA], ids=[row[0] for row in BAD_DATA])
def test_bad_data_is_refused_with_the_value_and_the_fix_last(tmp_path, monkeypatch, setup, last_line):
    call = setup(tmp_path, monkeypatch)
    with pytest.raises((ValueError, OSError)) as info:
        call()
    message = str(info.value).strip()
    assert re.search(last_line, message.splitlines()[-1]), message
    assert "Traceback" not in message and "HINT" in message.splitlines()[-1]


# ---- what works -------------------------------------------------------------------------------------------
def test_a_card_fixed_by_removing_its_dataset_info_loads(tmp_path):
    root = stale_card(tmp_path / "toy", {"train": 12, "test": 4})
    readme = root / "README.md"
    readme.write_text(re.sub(r"dataset_info:\n(  .*\n)+", "", readme.read_text()))
    assert load_hub_dataset(str(root), "default")["train"].num_rows == 10


@pytest.mark.parametrize("labels", [["pos", "neg"], [1, 0]], ids=["names", "ids"])
def test_predict_on_a_file_without_labels(tmp_path, labels):
    """Predicting unlabelled rows is what `lkd predict` is for: the labels are left out, not required."""
    import lightning.pytorch as pl

    from lkd.callbacks import GLUEPredictionWriter
    from lkd.models import TransformerClassifier
    from lkd.modules import GLUEClassifierModule
    from tests.glue_fixtures import TINY_BERT

    files = {"train": write_csv(tmp_path / "train.csv", {"review": texts(10), "stars": labels * 5}),
             "test": write_csv(tmp_path / "test.csv", {"review": texts(3, 10)})}
    data = ready("predict", data_files=files, label_column="stars")
    test = data.split("test")
    assert len(test) == 3 and "labels" not in test.column_names and data.test_split == "validation"  # `lkd test` scores validation
    assert "labels" not in next(iter(data.predict_dataloader()))
    writer = GLUEPredictionWriter(output_dir=str(tmp_path / "predictions"))
    module = GLUEClassifierModule(lambda n: TransformerClassifier(n, MINILM, pretrained=False, config_overrides=TINY_BERT),
                                  num_classes=data.num_classes, task=data.task)
    pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[writer],
               default_root_dir=tmp_path).predict(module, datamodule=data)
    lines = writer.written.read_text().splitlines()
    assert lines[0] == "index\tprediction" and [line.split("\t")[0] for line in lines[1:]] == ["0", "1", "2"]


def test_the_predict_split_is_the_test_file_or_carved_from_train_or_chosen(tmp_path):
    train = write_csv(tmp_path / "train.csv", {"review": texts(20), "stars": stars(20)})
    carved = ready("predict", data_files=train, label_column="stars", test_size=4)  # like validation, seeded
    fit = ready("fit", data_files=train, label_column="stars", test_size=4)
    held_out = carved.split("test")["idx"][:].tolist()
    assert len(held_out) == 4 and set(held_out).isdisjoint(fit.split("train")["idx"][:].tolist())  # training leaves them out
    assert fit.test_split == "test"  # and `lkd test` scores them (they have labels)
    glue = ready("predict", data=GLUEDataModule("reviews", data_files=train, text_columns=["review"], label_column="stars",
                                                test_size=4, batch_size=4))
    assert glue.split("test")["idx"][:].tolist() == held_out and glue.test_split == "validation"  # GLUE's preset: the same rows
    chosen = ready("predict", data_files=train, label_column="stars", predict_split="validation")
    assert len(chosen.split("validation")) == 2 and "labels" in chosen.split("validation").column_names


def test_max_length_at_the_minimum_keeps_one_token_per_text_and_truncates(tmp_path):
    single = ready(data_files=write_csv(tmp_path / "a.csv", {"review": texts(10), "stars": stars(10)}), label_column="stars",
                   max_length=3)
    assert single.min_max_length() == 3
    ids = single.split("train")["input_ids"]
    assert all(len(x) == 3 for x in ids)  # truncated to [CLS] t [SEP], not switched off
    tok = single.tokenizer
    assert all(x[0] == tok.cls_token_id and x[2] == tok.sep_token_id and x[1] not in tok.all_special_ids for x in ids)
    pair = ready(data_files=write_csv(tmp_path / "b.csv", {"review": texts(10), "venue": texts(10, 3), "stars": stars(10)}),
                 label_column="stars", text_columns=["review", "venue"], max_length=5)
    assert all((x == tok.sep_token_id).sum() == 2 and len(x) == 5 for x in pair.split("train")["input_ids"])
    with pytest.raises(ValueError, match=r"max_length=1 leaves no token for each of the text columns \['review', 'venue'\]"):
        TextClassificationDataModule(data_files=str(tmp_path / "b.csv"), text_columns=["review", "venue"], max_length=1)


def test_whole_float_labels_of_a_glue_classification_task_become_class_ids(tmp_path, caplog):
    files = {"train": write_csv(tmp_path / "train.csv", {"sentence": texts(8), "label": [0.0, 1.0] * 4})}
    with caplog.at_level(logging.INFO):
        data = ready(data=GLUEDataModule("sst2", data_files=files, validation_size=2, batch_size=4))
    assert not data.is_regression and data.num_classes == 2
    assert data.split("train")["labels"][:].dtype == torch.long
    assert "task 'sst2' (a GLUE classification task) is a classification, so the float64 labels of 'label'" in caplog.text
    assert "classification (2 classes), as task 'sst2' (a GLUE classification task) says" in data.label_decision
    scores = {"train": write_csv(tmp_path / "scores.csv", {"sentence1": texts(8), "sentence2": texts(8, 1), "label": [0, 5] * 4})}
    stsb = ready(data=GLUEDataModule("stsb", data_files=scores, validation_size=2, batch_size=4))
    assert stsb.is_regression and stsb.split("train")["labels"][:].dtype == torch.float32  # integer scores


def test_your_own_task_reads_the_label_type_says_so_and_can_be_overridden(tmp_path):
    path = write_csv(tmp_path / "train.csv", {"review": texts(12), "score": [0.0, 1.0] * 6})
    inferred = ready(data_files=path, label_column="score", validation_size=2)
    assert inferred.is_regression and inferred.num_classes == 1
    assert re.search(r"regression .* read from the label type \(float64 labels: scores\); HINT: "
                     r"data\.init_args\.problem_type=classification overrides it", inferred.label_decision)
    classes = ready(data_files=path, label_column="score", validation_size=2, problem_type="classification")
    assert not classes.is_regression and classes.num_classes == 2
    ids = write_csv(tmp_path / "ids.csv", {"review": texts(12), "score": [1, 2, 3] * 4})
    scores = ready(data_files=ids, label_column="score", validation_size=2, problem_type="regression")
    assert scores.is_regression and scores.split("train")["labels"][:].dtype == torch.float32
