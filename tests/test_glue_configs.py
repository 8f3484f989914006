"""Every configs/glue YAML runs with fast_dev_run on tiny data and tiny random BERTs (MiniLM's tokenizer)."""

from pathlib import Path

import pytest
import yaml

from lkd.cli import LKDCLI
from tests.conftest import CONFIGS
from tests.glue_fixtures import tiny_data_args, tiny_model_args

GLUE_CONFIGS = sorted((CONFIGS / "glue").glob("*.yaml"))


def _run(*args: str) -> LKDCLI:
    return LKDCLI(args=list(args))


def _teacher_config(teacher_ckpt: str) -> Path:
    """The config that trains the teacher a student config reads (by checkpoint file name)."""
    return CONFIGS / "glue" / f"{Path(teacher_ckpt).stem}.yaml"


def test_glue_configs_exist():
    names = {p.name for p in GLUE_CONFIGS}
    assert {"teacher.yaml", "student_alone.yaml", "student_kd.yaml", "student_dkvb_kd.yaml",
            "student_dkvb_keyinit.yaml", "student_dkvb_carry.yaml", "teacher_dkvb.yaml"} <= names


@pytest.mark.parametrize("config", GLUE_CONFIGS, ids=lambda p: p.name)
def test_glue_config_fast_dev_run(config, tmp_path, monkeypatch, tiny_glue):
    monkeypatch.chdir(tmp_path)
    data = tiny_data_args(tiny_glue)
    init = yaml.safe_load(config.read_text())["model"]["init_args"]
    if teacher_ckpt := init.get("teacher_ckpt"):
        teacher_config = _teacher_config(teacher_ckpt)
        _run("fit", "-c", str(teacher_config), *tiny_model_args(teacher_config), *data, "--trainer.max_epochs=1",
             "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.val_check_interval=1.0",
             f"--best_checkpoint.path={teacher_ckpt}")
        assert Path(teacher_ckpt).is_file()
    cli = _run("fit", "-c", str(config), *tiny_model_args(config), *data, "--trainer.fast_dev_run=true")
    assert cli.trainer.state.finished
    assert cli.model.num_classes == cli.datamodule.num_classes == 2 and cli.model.task == "sst2"  # linked
    metrics = cli.trainer.callback_metrics
    assert metrics["train/loss_step"].isfinite() and 0.0 <= metrics["val/acc"] <= 1.0
    if "teacher" in init:
        assert {"train/kd_step", "train/ce_step"} <= set(metrics)
        assert ("train/cos_step" in metrics) == (init.get("cos_weight", 0) > 0)


def test_predict_writes_a_glue_submission(tmp_path, monkeypatch, tiny_glue):
    monkeypatch.chdir(tmp_path)
    config = CONFIGS / "glue" / "teacher.yaml"
    cli = _run("predict", "-c", str(config), *tiny_model_args(config), *tiny_data_args(tiny_glue),
               "--trainer.callbacks+=lkd.callbacks.GLUEPredictionWriter",
               f"--trainer.callbacks.output_dir={tmp_path / 'sub'}")
    lines = (tmp_path / "sub" / "SST-2.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction"
    rows = [line.split("\t") for line in lines[1:]]
    assert [int(i) for i, _ in rows] == list(range(12))  # every test example, in index order
    assert {p for _, p in rows} <= {"0", "1"}
    assert cli.trainer.state.finished


def test_stsb_like_float_labels_train_as_regression(tmp_path, monkeypatch, tiny_glue):
    monkeypatch.chdir(tmp_path)
    config = CONFIGS / "glue" / "student_alone.yaml"
    cli = _run("fit", "-c", str(config), *tiny_model_args(config), *tiny_data_args(tiny_glue),
               "--data.init_args.task=stsb", "--trainer.fast_dev_run=true")
    assert cli.model.num_classes == 1 and cli.model.is_regression
    assert {"val/pearson", "val/spearman", "val/score"} <= set(cli.trainer.callback_metrics)


def test_test_split_without_labels_is_refused(tmp_path, monkeypatch, tiny_glue):
    monkeypatch.chdir(tmp_path)
    config = CONFIGS / "glue" / "teacher.yaml"
    with pytest.raises(ValueError, match="split 'test' has no labels.*lkd predict"):
        _run("test", "-c", str(config), *tiny_model_args(config), *tiny_data_args(tiny_glue), "--data.init_args.test_split=test")
