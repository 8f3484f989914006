"""Every YAML under configs/ (every track) is parsed by the CLI as written, and run with fast_dev_run on tiny
data with tiny models.

One smoke test is parametrised over all of ``configs/**.yaml``; each track has its tiny overrides
(:data:`TINY_ARGS`): MNIST points the data at a tiny hub-layout MNIST; GLUE at a tiny GLUE and every
TransformerClassifier (the teacher's is ``teacher.model``) becomes a tiny random BERT with MiniLM's tokenizer;
language models get tiny random Qwen3-MoE / Llama models, the byte tokenizer and a tiny WikiText (configs that
load SmolLM2 or hub weights run with the builder swapped for a tiny one: same module, losses, router,
callbacks, trainer settings). A config that reads a teacher checkpoint (``model.init_args.teacher.checkpoint``)
gets it from the track's teacher config of the same name, trained for two steps with the same overrides and
published where that config publishes it.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from lkd.cli import LKDCLI
from lkd.teacher import Teacher
from tests.conftest import CONFIGS
from tests.glue_fixtures import tiny_data_args as glue_data_args
from tests.glue_fixtures import tiny_model_args as glue_model_args
from tests.lm_fixtures import tiny_overrides
from tests.mnist_fixtures import mnist_tiny_args

ALL_CONFIGS = sorted(CONFIGS.rglob("*.yaml"))
TINY_ARGS = {
    "mnist": lambda config, root: mnist_tiny_args(root),
    "glue": lambda config, root: [*glue_model_args(config), *glue_data_args(root)],
    "lm": lambda config, root: tiny_overrides(config, root),
}
"""Per track: ``(config, tiny data root) -> CLI overrides`` that shrink the config's data and models."""
TEACHER_RUN = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
               "--trainer.val_check_interval=1.0", "--trainer.num_sanity_val_steps=0"]


def config_id(config: Path) -> str:
    return config.relative_to(CONFIGS).as_posix()


def track(config: Path) -> str:
    return config.relative_to(CONFIGS).parts[0]


def tiny_args(config: Path, roots: dict[str, Path]) -> list[str]:
    return TINY_ARGS[track(config)](config, roots[track(config)])


def teacher_settings(config: Path) -> dict:
    """The config's ``model.init_args.teacher`` block ({} for a module without a teacher)."""
    return yaml.safe_load(config.read_text())["model"]["init_args"].get("teacher") or {}


def teacher_config_for(config: Path, checkpoint: str) -> Path:
    """The config that trains the teacher a student config reads (same track, by checkpoint file name)."""
    return config.parent / f"{Path(checkpoint).stem}.yaml"


@pytest.fixture()
def data_roots(tiny_mnist, tiny_glue, tiny_wikitext) -> dict[str, Path]:
    return {"mnist": tiny_mnist, "glue": tiny_glue, "lm": tiny_wikitext}


@pytest.fixture(scope="module")
def built_teachers(tmp_path_factory):
    """``build(teacher_config, checkpoint, roots) -> Path``: each teacher config trained once per module (two
    steps, tiny overrides) in its own folder; the path is where the config itself published its best checkpoint."""
    built: dict[Path, Path] = {}

    def build(teacher_config: Path, checkpoint: str, roots: dict[str, Path]) -> Path:
        if teacher_config not in built:
            workdir = tmp_path_factory.mktemp(f"teacher_{track(teacher_config)}_{teacher_config.stem}")
            cwd = os.getcwd()
            os.chdir(workdir)  # runs/ and checkpoints/ land there
            try:
                LKDCLI(args=["fit", "-c", str(teacher_config), *tiny_args(teacher_config, roots), *TEACHER_RUN])
            finally:
                os.chdir(cwd)
            published = workdir / checkpoint.replace("{task}", "sst2")  # GLUE paths name the data's task (tiny: sst2)
            assert published.is_file(), f"{config_id(teacher_config)} did not publish {checkpoint}"
            built[teacher_config] = published
        return built[teacher_config]

    return build


# ---- what is there -------------------------------------------------------------------------------------
def test_there_are_configs():
    names = {config_id(p) for p in ALL_CONFIGS}
    assert {"mnist/teacher.yaml", "mnist/student_scratch.yaml", "mnist/student_kd.yaml"} <= names
    assert {f"glue/{n}.yaml" for n in ("teacher", "student_alone", "student_kd", "student_dkvb_kd", "student_dkvb_keyinit",
                                        "student_dkvb_carry", "teacher_dkvb")} <= names
    assert {f"lm/{n}.yaml" for n in ("teacher_moe_tiny", "student_scratch", "student_kd", "student_multiloss",
                                      "student_routed", "student_sar", "smollm2_finetune", "hub_huihui_moe_smollm", "hub_huihui_moe_routed",
                                      "cross_tokenizer_smollm2", "student_pruned_depth")} <= names


def test_every_config_folder_is_a_track_with_tiny_overrides():
    folders = {track(p) for p in ALL_CONFIGS}
    assert folders <= set(TINY_ARGS), f"config folders without tiny overrides for the smoke run: {folders - set(TINY_ARGS)}"
    assert folders == set(TINY_ARGS), f"tracks without configs: {set(TINY_ARGS) - folders}"


def test_every_teacher_checkpoint_a_config_reads_is_published_by_a_teacher_config():
    for config in ALL_CONFIGS:
        if checkpoint := teacher_settings(config).get("checkpoint"):
            teacher_config = teacher_config_for(config, checkpoint)
            assert teacher_config.is_file(), f"{config_id(config)} reads {checkpoint}; no {config_id(teacher_config)}"
            published = yaml.safe_load(teacher_config.read_text())["best_checkpoint"]["path"]
            assert published == checkpoint, (f"{config_id(teacher_config)} publishes {published}, "
                                             f"{config_id(config)} reads {checkpoint}")


# ---- every config, as written: parsed ---------------------------------------------------------------------
@pytest.mark.parametrize("config", ALL_CONFIGS, ids=config_id)
def test_config_parses_as_written(config, capsys):
    """The YAML as it stands (real hub ids, GPUs, FSDP) parses; the smoke run below replaces models and data."""
    with pytest.raises(SystemExit) as exit_info:
        LKDCLI(args=["fit", "-c", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    written = yaml.safe_load(config.read_text())
    assert printed["model"]["class_path"] == written["model"]["class_path"]
    assert printed["data"]["class_path"] == written["data"]["class_path"]
    if teacher := written["model"]["init_args"].get("teacher"):  # the nested Teacher block, no class_path of its own
        parsed = printed["model"]["init_args"]["teacher"]
        assert parsed["model"]["class_path"] == teacher["model"]["class_path"]
        for key in ("checkpoint", "dtype", "offload", "cache", "cache_top_k"):
            if key in teacher:
                assert parsed[key] == teacher[key], key


# ---- every config: run with fast_dev_run ------------------------------------------------------------------
def check_mnist(cli, settings: dict, text: str) -> None:
    assert cli.model.num_classes == cli.datamodule.num_classes  # linked, not repeated


def check_glue(cli, settings: dict, text: str) -> None:
    init, metrics = settings["model"]["init_args"], cli.trainer.callback_metrics
    assert cli.model.num_classes == cli.datamodule.num_classes == 2 and cli.model.task == "sst2"  # linked
    assert 0.0 <= metrics["val/acc"] <= 1.0
    if "teacher" in init:
        assert {"train/kd_step", "train/ce_step"} <= set(metrics)
        assert ("train/cos_step" in metrics) == (init.get("cos_weight", 0) > 0)


def check_lm(cli, settings: dict, text: str) -> None:
    monitor = re.search(r"checkpoint: \{monitor: val/(loss|bpb|teacher_nll), mode: min", text)
    assert monitor
    if "validation[:90%]" in text:  # offline configs say that they train on a validation slice
        assert "OFFLINE DATA" in text and "no train split" in text
    metrics = cli.trainer.callback_metrics
    if monitor.group(1) == "teacher_nll":  # prompts without references: the teacher judges the student's samples
        assert metrics["val/teacher_nll"].isfinite() and metrics["val/rougeL_teacher"] >= 0
    else:
        assert metrics["val/ppl"].isfinite() and metrics["val/bpb"].isfinite()  # bits per byte beside perplexity
    student = settings["model"]["init_args"].get("student", {})
    if student.get("class_path") == "lkd.models.PrunedLM":  # pruned from the tiny teacher, not replaced
        config = cli.model.student.config
        assert type(cli.model.student).__name__ == "PrunedLM"
        assert config.num_hidden_layers == (2 if "keep_layers" in student["init_args"] else 4)
        assert config.intermediate_size == (16 if "intermediate_size" in student["init_args"] else 48)
    if student.get("class_path") == "lkd.models.RetokenizedLM":  # the tiny teacher's body moved to the tiny BPE
        assert type(cli.model.student).__name__ == "RetokenizedLM" and cli.model.student.config.vocab_size == len(cli.datamodule.tokenizer)
    if getattr(cli.model, "cross_tokenizer", False):  # two tokenizers: the chunk alignment ran and fed the losses
        assert metrics["train/chunks_per_block_step"] >= 2
        weights = getattr(cli.model, "loss_weights", None) or {"divergence": 1.0}  # on-policy: one chunk loss, logged as divergence
        assert {f"train/{k}_step" for k, w in weights.items() if w > 0} <= set(metrics)
    if getattr(cli.model, "router", None) is not None:
        assert metrics["train/teacher_ce_routed_step"].isfinite() and metrics["train/gate_kl_step"].isfinite()  # drift logged
        if cli.model.router.trainable:
            assert metrics["train/router_loss_step"].isfinite()
        if cli.model.router.mode == "student_aware":
            assert "router/top_k" in metrics  # the RoutingSchedule drove it


TRACK_CHECKS = {"mnist": check_mnist, "glue": check_glue, "lm": check_lm}
SLOW_RUNS = {"mnist/continual_dkvb_paper.yaml"}  # the paper's 256 x 4,096 keys EMA-initialised on every image: 40 s


@pytest.mark.parametrize("config", [pytest.param(c, marks=pytest.mark.slow) if config_id(c) in SLOW_RUNS else c
                                    for c in ALL_CONFIGS], ids=config_id)
def test_config_fast_dev_run(config, tmp_path, monkeypatch, data_roots, built_teachers):
    monkeypatch.chdir(tmp_path)  # runs/ and checkpoints/ land in tmp
    text = config.read_text()
    settings = yaml.safe_load(text)
    teacher = teacher_settings(config)
    if checkpoint := teacher.get("checkpoint"):  # at the path the config reads, as `lkd fit` of its teacher leaves it
        built = built_teachers(teacher_config_for(config, checkpoint), checkpoint, data_roots)
        checkpoint = checkpoint.replace("{task}", "sst2")  # GLUE paths name the data's task (tiny: sst2)
        Path(checkpoint).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(built, checkpoint)
    # a DKVB on a trained encoder: the smoke run builds the encoder at random (TrainedEncoder loading: tests/test_encoders.py)
    student = settings["model"]["init_args"].get("student", {}).get("init_args", {})
    encoder = student.get("encoder", {}).get("init_args", {}) if isinstance(student.get("encoder"), dict) else {}
    extra = ["--model.init_args.student.init_args.encoder.init_args.checkpoint=null"] if encoder.get("checkpoint") else []
    cli = LKDCLI(args=["fit", "-c", str(config), *tiny_args(config, data_roots), "--trainer.fast_dev_run=true", *extra])
    assert cli.trainer.state.finished
    assert cli.trainer.callback_metrics["train/loss_step"].isfinite()
    if teacher:
        frozen = cli.model.teacher
        assert isinstance(frozen, Teacher)
        assert not any(m.training for m in frozen.modules()) and not any(p.requires_grad for p in frozen.parameters())
    if checkpoint:  # the teacher's weights came from the checkpoint (a classifier's `model.` weights), untouched
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
        own = cli.model.teacher.model.state_dict()
        assert own and {f"model.{k}" for k in own} <= set(state)
        for k, v in own.items():
            assert torch.equal(v.cpu(), state[f"model.{k}"].to(v.dtype)), f"teacher tensor {k} differs from {checkpoint}"
    if cache := teacher.get("cache"):  # the first fit wrote the cache, and the run read from it
        assert Path(cache.replace("{task}", "sst2")).is_file() and cli.model.teacher.store is not None
    TRACK_CHECKS[track(config)](cli, settings, text)


# ---- CLI behaviour ---------------------------------------------------------------------------------------
def test_print_config_shows_linked_model(capsys):
    with pytest.raises(SystemExit) as exit_info:
        LKDCLI(args=["fit", "-c", str(CONFIGS / "mnist" / "student_scratch.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "lkd.modules.ClassifierModule"
    assert printed["checkpoint"]["monitor"] == "val/acc"


def test_unknown_config_key_is_rejected(capsys):
    with pytest.raises(SystemExit) as exit_info:
        LKDCLI(args=["fit", "-c", str(CONFIGS / "mnist" / "student_kd.yaml"), "--model.init_args.temprature=2"])
    assert exit_info.value.code != 0
    assert "temprature" in capsys.readouterr().err


def test_old_flat_teacher_keys_are_rejected(capsys):
    with pytest.raises(SystemExit) as exit_info:
        LKDCLI(args=["fit", "-c", str(CONFIGS / "mnist" / "student_kd.yaml"), "--model.init_args.teacher_ckpt=x.ckpt"])
    assert exit_info.value.code != 0
    assert "teacher_ckpt" in capsys.readouterr().err


@pytest.mark.parametrize("config", [CONFIGS / t / "student_kd.yaml" for t in ("mnist", "glue", "lm")], ids=config_id)
def test_missing_teacher_checkpoint_fails_before_training(config, tmp_path, monkeypatch, data_roots):
    monkeypatch.chdir(tmp_path)
    checkpoint = teacher_settings(config)["checkpoint"].replace("{task}", "sst2")  # GLUE paths name the data's task
    with pytest.raises(FileNotFoundError, match=rf"checkpoint not found: {re.escape(checkpoint)}\..*HINT"):
        LKDCLI(args=["fit", "-c", str(config), *tiny_args(config, data_roots), "--trainer.fast_dev_run=true"])


def test_checkpointing_and_progress_bar_can_be_switched_off(tmp_path, monkeypatch, tiny_data_args):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LKD_RICH", "1")  # the Rich bar is a default here, as on a terminal
    cli = LKDCLI(args=["fit", "-c", str(CONFIGS / "mnist" / "student_scratch.yaml"), *tiny_data_args,
                       "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
                       "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false"])
    assert cli.trainer.state.finished and cli.trainer.checkpoint_callbacks == []
    assert not list(tmp_path.rglob("*.ckpt"))


# ---- GLUE through the CLI: predictions, regression, unlabelled test splits --------------------------------
def test_predict_writes_a_glue_submission(tmp_path, monkeypatch, tiny_glue):
    monkeypatch.chdir(tmp_path)
    config = CONFIGS / "glue" / "teacher.yaml"
    cli = LKDCLI(args=["predict", "-c", str(config), *glue_model_args(config), *glue_data_args(tiny_glue),
                       "--trainer.callbacks+=lkd.callbacks.GLUEPredictionWriter",
                       f"--trainer.callbacks.output_dir={tmp_path / 'sub'}", "--ckpt_path=init"])  # the model as built
    lines = (tmp_path / "sub" / "SST-2.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction"
    rows = [line.split("\t") for line in lines[1:]]
    assert [int(i) for i, _ in rows] == list(range(12))  # every test example, in index order
    assert {p for _, p in rows} <= {"0", "1"}
    assert cli.trainer.state.finished


def test_stsb_like_float_labels_train_as_regression(tmp_path, monkeypatch, tiny_glue):
    monkeypatch.chdir(tmp_path)
    config = CONFIGS / "glue" / "student_alone.yaml"
    cli = LKDCLI(args=["fit", "-c", str(config), *glue_model_args(config), *glue_data_args(tiny_glue),
                       "--data.init_args.task=stsb", "--trainer.fast_dev_run=true"])
    assert cli.model.num_classes == 1 and cli.model.is_regression
    assert {"val/pearson", "val/spearman", "val/score"} <= set(cli.trainer.callback_metrics)


def test_test_split_without_labels_is_refused(tmp_path, monkeypatch, tiny_glue):
    monkeypatch.chdir(tmp_path)
    config = CONFIGS / "glue" / "teacher.yaml"
    with pytest.raises(ValueError, match="split 'test' has no labels.*lkd predict"):
        LKDCLI(args=["test", "-c", str(config), *glue_model_args(config), *glue_data_args(tiny_glue),
                     "--data.init_args.test_split=test", "--ckpt_path=init"])


def test_a_teacher_trained_for_another_task_is_refused(tmp_path, monkeypatch, data_roots, built_teachers):
    """configs/glue/student_kd.yaml on MRPC with the SST-2 teacher (both 2 classes): refused, both tasks named."""
    from lkd.checkpoint import TeacherMismatchError

    monkeypatch.chdir(tmp_path)
    config = CONFIGS / "glue" / "student_kd.yaml"
    checkpoint = teacher_settings(config)["checkpoint"]
    built = built_teachers(teacher_config_for(config, checkpoint), checkpoint, data_roots)
    # the SST-2 teacher named for an MRPC run ({task} in the config's path would look under checkpoints/glue/mrpc/)
    args = ["fit", "-c", str(config), *tiny_args(config, data_roots), "--trainer.fast_dev_run=true",
            f"--model.init_args.teacher.checkpoint={built}"]
    with pytest.raises(TeacherMismatchError, match=r"task: the teacher was trained with 'sst2', this run has 'mrpc'.*\nHINT"):
        LKDCLI(args=[*args, "--data.init_args.task=mrpc"])
    cli = LKDCLI(args=[*args, "--data.init_args.task=mrpc", "--model.init_args.teacher.allow_mismatch=true"])  # said so
    assert cli.trainer.state.finished
