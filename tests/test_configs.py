"""Every YAML under configs/ is parsed by the CLI and run with fast_dev_run on tiny data.

MNIST configs run here; each other track runs its own folder in ``tests/test_<track>_configs.py``
(tiny random models and tiny data). ``test_every_config_folder_has_a_smoke_test`` keeps that true."""

from pathlib import Path

import pytest
import yaml

from lkd.cli import LKDCLI
from tests.conftest import CONFIGS

ALL_CONFIGS = sorted(CONFIGS.rglob("*.yaml"))
MNIST_CONFIGS = sorted((CONFIGS / "mnist").glob("*.yaml"))
SMOKE_TESTS = {"mnist": "tests/test_configs.py", "glue": "tests/test_glue_configs.py", "lm": "tests/test_lm_configs.py"}


def run_cli(*args: str) -> LKDCLI:
    return LKDCLI(args=list(args))


def needs_teacher(config: Path) -> str | None:
    """The teacher checkpoint a config reads, if any."""
    init = yaml.safe_load(config.read_text())["model"]["init_args"]
    return init.get("teacher_ckpt")


def test_there_are_configs():
    names = {p.relative_to(CONFIGS).as_posix() for p in ALL_CONFIGS}
    assert {"mnist/teacher.yaml", "mnist/student_scratch.yaml", "mnist/student_kd.yaml"} <= names


def test_every_config_folder_has_a_smoke_test():
    from tests.conftest import REPO_ROOT

    folders = {p.parent.relative_to(CONFIGS).as_posix() for p in ALL_CONFIGS}
    assert folders <= set(SMOKE_TESTS), f"config folders without a fast_dev_run test: {folders - set(SMOKE_TESTS)}"
    for folder in folders:
        assert (REPO_ROOT / SMOKE_TESTS[folder]).is_file(), f"configs/{folder} needs {SMOKE_TESTS[folder]}"


@pytest.mark.parametrize("config", MNIST_CONFIGS, ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_config_fast_dev_run(config, tmp_path, monkeypatch, tiny_data_args):
    monkeypatch.chdir(tmp_path)  # runs/ and checkpoints/ land in tmp
    if teacher_path := needs_teacher(config):
        teacher_config = CONFIGS / "mnist" / "teacher.yaml"
        run_cli("fit", "-c", str(teacher_config), *tiny_data_args, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                "--trainer.limit_val_batches=1", f"--best_checkpoint.path={teacher_path}")
        assert Path(teacher_path).is_file()
    cli = run_cli("fit", "-c", str(config), *tiny_data_args, "--trainer.fast_dev_run=true")
    assert cli.trainer.state.finished
    assert cli.model.num_classes == cli.datamodule.num_classes  # linked, not repeated
    assert cli.trainer.callback_metrics["train/loss_step"].isfinite()


def test_print_config_shows_linked_model(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", "-c", str(CONFIGS / "mnist" / "student_scratch.yaml"), "--print_config")
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "lkd.modules.ClassifierModule"
    assert printed["checkpoint"]["monitor"] == "val/acc"


def test_unknown_config_key_is_rejected(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", "-c", str(CONFIGS / "mnist" / "student_kd.yaml"), "--model.init_args.temprature=2")
    assert exit_info.value.code != 0
    assert "temprature" in capsys.readouterr().err


def test_missing_teacher_checkpoint_fails_before_training(tmp_path, monkeypatch, tiny_data_args):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: checkpoints/mnist/teacher\.ckpt"):
        run_cli("fit", "-c", str(CONFIGS / "mnist" / "student_kd.yaml"), *tiny_data_args, "--trainer.fast_dev_run=true")


def test_checkpointing_and_progress_bar_can_be_switched_off(tmp_path, monkeypatch, tiny_data_args):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LKD_RICH", "1")  # the Rich bar is a default here, as on a terminal
    cli = run_cli("fit", "-c", str(CONFIGS / "mnist" / "student_scratch.yaml"), *tiny_data_args,
                  "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
                  "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false")
    assert cli.trainer.state.finished and cli.trainer.checkpoint_callbacks == []
    assert not list(tmp_path.rglob("*.ckpt"))
