"""A user's first hour (issue 27): your own CSV through fit, test and predict with one command line; a published
best checkpoint never replaces a file it should not; `--ckpt_path` aliases and defaults; the end-of-fit summary."""

from __future__ import annotations

import json
import logging
import re
import warnings
from pathlib import Path

import pytest
import torch

from lkd.callbacks.best_checkpoint import PublishError
from lkd.cli import LKDCLI, ResumeMismatchError
from lkd.cli_ckpt import CheckpointChoiceError
from tests.conftest import CONFIGS
from tests.glue_fixtures import tiny_model_args
from tests.mnist_fixtures import mnist_tiny_args
from tests.test_text_classification_data import _rows, write_csv

GLUE_ALONE = CONFIGS / "glue" / "student_alone.yaml"
QUICK = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
         "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false"]


def own_csv_args(folder: Path) -> list[str]:
    """The own-CSV overrides of docs/text_classification.md (files relative to the working folder, as a user types them)."""
    write_csv(folder / "reviews.csv", _rows(30))
    write_csv(folder / "dev.csv", _rows(9, offset=30))
    unlabelled = [{k: v for k, v in row.items() if k != "stars"} for row in _rows(6, offset=40)]
    write_csv(folder / "new.csv", unlabelled)  # what predict is for: rows without labels
    return ["--data.init_args.data_files={train: reviews.csv, validation: dev.csv, test: new.csv}",
            "--data.init_args.text_columns=[review]", "--data.init_args.label_column=stars", "--data.init_args.task=reviews",
            "--data.init_args.batch_size=8", "--data.init_args.eval_batch_size=8"]


def test_your_own_csv_through_fit_test_and_predict_with_one_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    same = ["-c", str(GLUE_ALONE), *tiny_model_args(GLUE_ALONE), *own_csv_args(tmp_path)]
    sst2_student = tmp_path / "checkpoints" / "glue" / "sst2" / "student_alone.ckpt"
    sst2_student.parent.mkdir(parents=True)
    sst2_student.write_bytes(b"the SST-2 student of the same config")
    fit = LKDCLI(args=["fit", *same, *QUICK, "--trainer.limit_train_batches=4"])
    published = tmp_path / "checkpoints" / "glue" / "reviews" / "student_alone.ckpt"  # {task} in the config's path
    assert published.is_file() and sst2_student.read_bytes() == b"the SST-2 student of the same config"
    assert fit.model.task == "reviews" and fit.model.num_classes == 3

    test = LKDCLI(args=["test", *same, "--data.init_args.test_split=validation"])  # no --ckpt_path: the published one
    assert test.trainer.callback_metrics["test/acc"] >= 0 and test.model.task == "reviews"
    LKDCLI(args=["test", *same, "--data.init_args.test_split=validation", f"--ckpt_path={published}"])  # the same, named

    LKDCLI(args=["predict", *same])  # the unlabelled test file; a submission file without any callback configured
    submission = tmp_path / "predictions" / "glue" / "reviews.tsv"
    lines = submission.read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 7
    assert {line.split("\t")[1] for line in lines[1:]} <= {"meh", "neg", "pos"}  # class names, not ids


def test_test_on_other_data_than_the_checkpoint_was_trained_on_is_refused(tmp_path, monkeypatch, tiny_glue):
    from tests.glue_fixtures import tiny_data_args

    monkeypatch.chdir(tmp_path)
    same = ["-c", str(GLUE_ALONE), *tiny_model_args(GLUE_ALONE), *own_csv_args(tmp_path)]
    LKDCLI(args=["fit", *same, *QUICK])
    ckpt = tmp_path / "checkpoints" / "glue" / "reviews" / "student_alone.ckpt"
    with pytest.raises(ResumeMismatchError) as info:
        LKDCLI(args=["test", "-c", str(GLUE_ALONE), *tiny_model_args(GLUE_ALONE), *tiny_data_args(tiny_glue), f"--ckpt_path={ckpt}"])
    message = str(info.value)
    assert "task: the checkpoint was trained with 'reviews', this command's data gives 'sst2'" in message
    assert message.splitlines()[-1].startswith("HINT: pass the same --data options")


@pytest.fixture()
def mnist_run(tmp_path, monkeypatch, tiny_mnist):
    """Run MNIST configs in tmp_path on the tiny data; returns a function (config, *overrides) -> LKDCLI."""
    monkeypatch.chdir(tmp_path)

    def run(config: str, *overrides: str, subcommand: str = "fit"):
        return LKDCLI(args=[subcommand, "-c", str(CONFIGS / "mnist" / config), *mnist_tiny_args(tiny_mnist), *QUICK, *overrides])

    return run


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file() and "runs" not in p.parts}


PUBLISH_CASES = [  # (what is at the path before, the second run's config and overrides, the last line's regex)
    ("the teacher the student loads", "student_kd.yaml", ["--best_checkpoint.path=checkpoints/mnist/teacher.ckpt"],
     r"is the file this run reads as model\.init_args\.teacher\.checkpoint: publishing would replace it\. HINT"),
    ("another config's checkpoint", "student_scratch.yaml", ["--best_checkpoint.path=checkpoints/mnist/teacher.ckpt"],
     r"HINT: give this run its own --best_checkpoint\.path .* or pass --best_checkpoint\.overwrite=true"),
    ("a folder", "teacher.yaml", ["--best_checkpoint.path=checkpoints/mnist"],
     r"best_checkpoint\.path=checkpoints/mnist is a folder .*HINT: --best_checkpoint\.path=checkpoints/mnist/best\.ckpt$"),
    ("a file as a parent", "teacher.yaml", ["--best_checkpoint.path=checkpoints/mnist/teacher.ckpt/best.ckpt"],
     r"checkpoints/mnist/teacher\.ckpt is a file, so no folder can be made .*HINT"),
    ("fewer steps than the first validation", "student_scratch.yaml", ["--trainer.max_steps=1", "--trainer.limit_train_batches=5"],
     r"--trainer\.max_steps=1 ends the run before it validates once .*HINT: --trainer\.max_steps=5 or more"),
]


@pytest.mark.parametrize("case, config, overrides, last_line", PUBLISH_CASES, ids=[c[0] for c in PUBLISH_CASES])
def test_a_published_checkpoint_never_replaces_a_file_it_should_not(mnist_run, tmp_path, case, config, overrides, last_line):
    mnist_run("teacher.yaml")  # publishes checkpoints/mnist/teacher.ckpt
    before = _snapshot(tmp_path)
    with pytest.raises(PublishError) as info:
        mnist_run(config, *overrides)
    assert re.search(last_line, str(info.value).splitlines()[-1]), str(info.value)
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing lost or changed
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("*.lock"))


def test_the_same_config_again_replaces_its_own_checkpoint_and_says_so(mnist_run, tmp_path, caplog):
    mnist_run("teacher.yaml")
    published = tmp_path / "checkpoints" / "mnist" / "teacher.ckpt"
    first = published.read_bytes()
    with caplog.at_level(logging.INFO):
        cli = mnist_run("teacher.yaml", "--seed_everything=1")
    assert published.read_bytes() != first and "replacing checkpoints/mnist/teacher.ckpt (an earlier run" in caplog.text
    lines = cli.trainer.callbacks[[type(c).__name__ for c in cli.trainer.callbacks].index("FitSummary")].lines(cli.trainer)
    assert lines[0].startswith("Fit done: best val/acc") and "at epoch 0" in lines[0]
    assert lines[1] == "Published to checkpoints/mnist/teacher.ckpt"
    assert lines[3].startswith("  lkd test -c ") and lines[3].endswith("--ckpt_path checkpoints/mnist/teacher.ckpt")
    # another module's file is replaced only when asked
    cli = mnist_run("student_scratch.yaml", "--best_checkpoint.path=checkpoints/mnist/teacher.ckpt", "--best_checkpoint.overwrite=true")
    assert torch.load(published, weights_only=True)["hyper_parameters"]["_class_path"] == "lkd.modules.ClassifierModule"


def test_a_run_publishing_to_the_same_path_right_now_is_refused(mnist_run, tmp_path):
    import os
    import subprocess
    import sys

    lock = tmp_path / "checkpoints" / "mnist" / "teacher.ckpt.lock"
    lock.parent.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        lock.write_text(json.dumps({"pid": other.pid, "host": socket.gethostname(), "run": "runs/other/version_0"}))
        with pytest.raises(PublishError, match=rf"another run is publishing to it right now \(process {other.pid}"):
            mnist_run("teacher.yaml")
    finally:
        other.kill()
        other.wait()
    mnist_run("teacher.yaml")  # that run is gone: its stale lock is taken over
    assert (tmp_path / "checkpoints" / "mnist" / "teacher.ckpt").is_file() and not lock.exists()
    assert os.getpid()


CKPT_CASES = [  # (subcommand, overrides, error, regex on the last line)
    ("test", [], CheckpointChoiceError, r"lkd test without --ckpt_path: best_checkpoint\.path checkpoints/mnist/teacher\.ckpt does "
     r"not exist, .*HINT: train it first .* or --ckpt_path init"),
    ("fit", ["--ckpt_path=last"], CheckpointChoiceError, r"--ckpt_path last: no latest\.ckpt under runs/mnist_teacher/version_\*/checkpoints"),
    ("test", ["--ckpt_path=best"], CheckpointChoiceError, r"--ckpt_path best: best_checkpoint\.path .* does not exist"),
]


@pytest.mark.parametrize("subcommand, overrides, error, last_line", CKPT_CASES, ids=[" ".join([c[0], *c[1]]) for c in CKPT_CASES])
def test_ckpt_path_aliases_and_defaults_are_refused_when_nothing_is_behind_them(mnist_run, subcommand, overrides, error, last_line):
    with pytest.raises(error) as info:
        mnist_run("teacher.yaml", *overrides, subcommand=subcommand)
    assert re.search(last_line, str(info.value).splitlines()[-1]), str(info.value)


def test_ckpt_path_last_resumes_the_newest_latest_checkpoint_and_test_defaults_to_the_published_one(mnist_run, tmp_path):
    first = mnist_run("teacher.yaml")
    assert first.trainer.current_epoch == 1
    resumed = mnist_run("teacher.yaml", "--ckpt_path=last")  # the finished run's latest state: nothing left to train
    assert resumed.trainer.current_epoch == 1 and resumed.trainer.global_step == 2  # restored, not trained from scratch
    tested = mnist_run("teacher.yaml", subcommand="test")  # the published best checkpoint
    assert "test/acc" in tested.trainer.callback_metrics
    built = mnist_run("teacher.yaml", "--ckpt_path=init", subcommand="test")  # the model as built, asked for
    assert "test/acc" in built.trainer.callback_metrics


def test_the_frozen_teacher_does_not_trigger_lightnings_eval_mode_warning(mnist_run, caplog):
    mnist_run("teacher.yaml")
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        mnist_run("student_kd.yaml", "--best_checkpoint.path=checkpoints/mnist/student_kd.ckpt")
    assert not [w for w in caught if "in eval mode at the start of training" in str(w.message)]
    assert "teacher: " in caplog.text and "modules stay in eval mode for the whole run (frozen" in caplog.text

