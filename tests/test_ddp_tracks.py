"""Every track on two CPU processes (gloo, Lightning's DDP strategy) through the real `lkd` command, from
YAML plus command-line overrides only: equal parameters on both ranks, globally reduced metrics, data split
between ranks, checkpoints written once, the router and its schedule identical on every rank."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lkd.cli import LKDCLI
from lkd.devices import DistributedSetupError
from tests.conftest import CONFIGS, REPO_ROOT
from tests.glue_fixtures import tiny_data_args as glue_data_args
from tests.glue_fixtures import tiny_model_args as glue_model_args


def lkd_two_processes(tmp_path: Path, config: Path, *overrides: str, strategy: str = "ddp") -> list[dict]:
    """``lkd fit -c config`` on 2 CPU processes in ``tmp_path/run``; returns what each rank's SaveRankState wrote."""
    out, run = tmp_path / "ranks", tmp_path / "run"
    run.mkdir()
    probe = json.dumps({"class_path": "tests.ddp_probe.SaveRankState", "init_args": {"out_dir": str(out)}})
    args = [sys.executable, "-m", "lkd", "fit", "-c", str(config), "--trainer.accelerator=cpu", "--trainer.devices=2",
            f"--trainer.strategy={strategy}", "--trainer.enable_progress_bar=false", f"--trainer.callbacks+={probe}",
            *overrides]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=run, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    return ranks


def assert_same_state(rank0: dict, rank1: dict, prefix: str = "") -> None:
    keys = [k for k in rank0["state"] if k.startswith(prefix)]
    assert keys and keys == [k for k in rank1["state"] if k.startswith(prefix)]
    for k in keys:
        torch.testing.assert_close(rank0["state"][k], rank1["state"][k], rtol=0, atol=1e-6, msg=k)


def assert_rows_split(rank0: dict, rank1: dict, rows: int, epochs: int) -> None:
    """Each epoch the two ranks draw disjoint halves of the training set, and a new order every epoch."""
    for epoch in range(epochs):
        a, b = rank0["epoch_rows"][epoch], rank1["epoch_rows"][epoch]
        assert len(a) == len(b) == rows // 2 and not set(a) & set(b) and sorted(a + b) == list(range(rows))
    if epochs > 1:  # set_epoch reaches lkd's seeded sampler through Lightning's wrapper
        assert rank0["epoch_rows"][0] != rank0["epoch_rows"][1]


def run_files(tmp_path: Path) -> set[str]:
    return {str(p.relative_to(tmp_path / "run")) for p in (tmp_path / "run").rglob("*") if p.is_file()}


def assert_global_val_loss(rank0: dict, rank1: dict) -> None:
    """The logged val/loss is the mean over both ranks' rows, and the same number on both ranks."""
    global_mean = (rank0["val_sum"] + rank1["val_sum"]) / (rank0["val_rows"] + rank1["val_rows"])
    local = [r["val_sum"] / r["val_rows"] for r in (rank0, rank1)]
    assert abs(local[0] - local[1]) > 1e-6  # the ranks saw different rows, so an unreduced log would differ
    for r in (rank0, rank1):
        assert r["metrics"]["val/loss"] == pytest.approx(global_mean, rel=1e-5)


@pytest.fixture()
def mnist_teacher(tmp_path, tiny_data_args, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "teacher.ckpt"
    LKDCLI(args=["fit", "-c", str(CONFIGS / "mnist" / "teacher.yaml"), *tiny_data_args, "--trainer.max_epochs=1",
                 "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.logger=false",
                 f"--best_checkpoint.path={path}"])
    return path


MNIST_RUN = ["--trainer.max_epochs=2", "--trainer.limit_val_batches=1", "--trainer.logger=false"]


@pytest.mark.slow  # two processes through the `lkd` command: 16-25 s each
def test_response_kd_on_two_processes(tmp_path, tiny_data_args, mnist_teacher):
    ranks = lkd_two_processes(tmp_path, CONFIGS / "mnist" / "student_kd.yaml", *tiny_data_args, *MNIST_RUN,
                              f"--model.init_args.teacher.checkpoint={mnist_teacher}", "--best_checkpoint.path=best.ckpt")
    rank0, rank1 = ranks
    assert_same_state(rank0, rank1, "student.")  # gradients all-reduced: one model
    assert_same_state(rank0, rank1, "teacher.model.")  # the frozen teacher is the same on both and was not trained
    trained = torch.load(mnist_teacher, weights_only=True)["state_dict"]
    loaded = [key for key in trained if key.startswith("model.")]
    assert loaded
    for key in loaded:  # loaded from the teacher's checkpoint on both ranks (the network is `teacher.model`)
        for rank in (rank0, rank1):
            torch.testing.assert_close(rank["state"]["teacher." + key], trained[key])
    # 500 training rows in batches of 50: 10 batches on one process, 5 per rank on two, different rows
    assert rank0["train_batches"] == rank1["train_batches"] == 5
    assert rank0["first_batch"] != rank1["first_batch"]
    assert_rows_split(rank0, rank1, rows=500, epochs=2)
    assert_global_val_loss(rank0, rank1)
    assert rank0["metrics"]["val/acc"] == rank1["metrics"]["val/acc"]  # torchmetrics: synced
    # checkpoints: written by rank 0 only (2 epochs x best + latest), the best one published once
    assert rank0["saves"] >= 2 and rank1["saves"] == 0
    files = run_files(tmp_path)
    best = [f for f in files if f.startswith("runs/checkpoints/ep")]  # top-1 by val/acc: one file
    assert len(best) == 1 and files - set(best) == {"best.ckpt", "runs/config.yaml", "runs/checkpoints/latest.ckpt"}


@pytest.mark.slow  # two processes through the `lkd` command: 16-25 s each
def test_dkvb_student_on_two_processes(tmp_path, tiny_data_args, mnist_teacher):
    rank0, rank1 = lkd_two_processes(tmp_path, CONFIGS / "mnist" / "student_dkvb_kd.yaml", *tiny_data_args, *MNIST_RUN,
                                     f"--model.init_args.teacher.checkpoint={mnist_teacher}")
    assert_same_state(rank0, rank1, "student.")  # values (all-reduced gradients) and keys (synced EMA)
    assert any("keys" in k or "embed" in k for k in rank0["state"] if k.startswith("student."))
    assert rank0["callbacks"]["EMAKeyUpdate"] == rank1["callbacks"]["EMAKeyUpdate"]
    assert_global_val_loss(rank0, rank1)


@pytest.mark.slow  # two processes through the `lkd` command: 16-25 s each
def test_glue_distillation_on_two_processes(tmp_path, tiny_glue):
    config = CONFIGS / "glue" / "student_kd.yaml"
    rank0, rank1 = lkd_two_processes(tmp_path, config, *glue_model_args(config), *glue_data_args(tiny_glue),
                                     "--model.init_args.teacher.checkpoint=null", "--trainer.max_steps=3",
                                     "--trainer.limit_val_batches=1", "--trainer.logger=false")
    assert_same_state(rank0, rank1, "student.")
    assert rank0["metrics"]["val/score"] == rank1["metrics"]["val/score"]


@pytest.mark.slow  # two processes through the `lkd` command: 16-25 s each
def test_glue_dkvb_student_codebooks_synced_on_two_processes(tmp_path, tiny_glue):
    """A GLUE student with a DKVB whose keys move by EMA (EMAKeyUpdate): the codebook's EMA statistics are
    all-reduced, so both ranks, which draw different rows, end with the same keys, and the keys did move.
    The run ends on a training step (3 steps, validation after step 2 only): torch DDP broadcasts rank 0's
    buffers at the start of a forward, so a trailing validation would copy rank 0's keys over rank 1's and
    hide unsynced codebooks."""
    import yaml

    settings = yaml.safe_load((CONFIGS / "glue" / "student_dkvb_kd.yaml").read_text())
    ema = next(cb for cb in settings["trainer"]["callbacks"] if cb["class_path"] == "lkd.callbacks.EMAKeyUpdate")
    ema["init_args"]["init_steps"] = 2  # of the 3 steps: 2 of key initialisation, then EMA with learning values
    config = tmp_path / "student_dkvb_kd.yaml"
    config.write_text(yaml.safe_dump(settings))
    rank0, rank1 = lkd_two_processes(tmp_path, config, *glue_model_args(config), *glue_data_args(tiny_glue),
                                     "--model.init_args.teacher.checkpoint=null", "--trainer.max_steps=3",
                                     "--trainer.limit_val_batches=1", "--trainer.logger=false")
    assert rank0["global_step"] == 3 and rank0["val_at_steps"] == [2]  # the last forward was a training one
    assert rank0["first_batch"] != rank1["first_batch"]  # the sampler gives each rank its own rows
    a, b = rank0["epoch_rows"][0], rank1["epoch_rows"][0]
    assert len(a) == len(b) == 32 and not set(a) & set(b)
    codebook = [k for k in rank0["state"] if k.startswith("student.dkvb.") and "._codebook." in k]
    names = {k.rsplit(".", 1)[1] for k in codebook}
    assert {"embed", "embed_avg", "cluster_size"} <= names, names
    differ = {}
    for k in (k for k in codebook if k.rsplit(".", 1)[1] in ("embed", "embed_avg", "cluster_size")):
        start, end0, end1 = rank0["codebooks_at_start"][k], rank0["state"][k], rank1["state"][k]
        assert torch.equal(start, rank1["codebooks_at_start"][k]), k  # one seeded model on both ranks
        assert not torch.equal(end0, start) and not torch.equal(end1, start), f"{k}: the EMA never moved the codebook"
        if not torch.allclose(end0, end1, rtol=0, atol=1e-6):
            differ[k] = f"max |rank0 - rank1| = {float((end0 - end1).abs().max()):.3g}"
    assert not differ, f"DKVB codebooks differ between the ranks (EMA statistics not synced): {differ}"
    assert_same_state(rank0, rank1, "student.")  # values and encoder (all-reduced gradients) and keys
    assert rank0["callbacks"]["EMAKeyUpdate"] == rank1["callbacks"]["EMAKeyUpdate"]


@pytest.mark.slow  # two processes through the `lkd` command: 16-25 s each
def test_glue_predictions_on_two_processes_are_one_file(tmp_path, tiny_glue, monkeypatch):
    """``lkd predict`` under DDP: each rank predicts its own rows, rank 0 writes all of them once."""
    config = CONFIGS / "glue" / "teacher.yaml"
    args = [*glue_model_args(config), *glue_data_args(tiny_glue), "--trainer.callbacks+=lkd.callbacks.GLUEPredictionWriter",
            "--ckpt_path=init"]  # the same seeded model as built, on both sides
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "lkd", "predict", "-c", str(config), *args, "--trainer.accelerator=cpu",
                           "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.logger=false",
                           f"--trainer.callbacks.output_dir={tmp_path / 'ddp'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    monkeypatch.chdir(tmp_path)  # the same seeded random model on one process
    LKDCLI(args=["predict", "-c", str(config), *args, "--trainer.logger=false", f"--trainer.callbacks.output_dir={tmp_path / 'one'}"])
    ddp, one = ((tmp_path / run / "SST-2.tsv").read_text().splitlines() for run in ("ddp", "one"))
    assert [int(line.split("\t")[0]) for line in ddp[1:]] == list(range(12))  # both ranks' rows, in order, once
    assert ddp == one


@pytest.mark.slow  # two processes through the `lkd` command: 16-25 s each
def test_routed_lm_distillation_on_two_processes(tmp_path, tiny_wikitext):
    from tests.lm_fixtures import tiny_overrides

    config = CONFIGS / "lm" / "student_routed.yaml"
    rank0, rank1 = lkd_two_processes(tmp_path, config, *tiny_overrides(config, tiny_wikitext),
                                     "--model.init_args.teacher.checkpoint=null", "--trainer.max_steps=4",
                                     "--trainer.limit_val_batches=1", "--trainer.logger=false",
                                     "--best_checkpoint.path=null")  # 4 steps never validate: nothing to publish
    for part in ("student.", "router.", "projections."):
        assert_same_state(rank0, rank1, part)
    schedules = [r["callbacks"]["RoutingSchedule"] for r in (rank0, rank1)]
    assert schedules[0] == schedules[1] and schedules[0]["last_step"] == 3
    assert rank0["metrics"]["train/loss_step"] == rank1["metrics"]["train/loss_step"]  # reduced, so one number
    assert rank0["first_batch"] != rank1["first_batch"]


def test_ddp_with_a_single_process_is_refused(tmp_path, monkeypatch, tiny_data_args):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DistributedSetupError, match=r"trainer.devices=1 .*HINT: set trainer.devices to 2 or more"):
        LKDCLI(args=["fit", "-c", str(CONFIGS / "mnist" / "student_scratch.yaml"), *tiny_data_args,
                     "--trainer.strategy=ddp", "--trainer.devices=1"])


def test_fsdp_config_shards_decoder_layers_and_needs_gpus(tmp_path, monkeypatch):
    """FSDP runs on CUDA devices only (Lightning's rule); the config's strategy is checked here on any machine."""
    import yaml
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import FSDPStrategy, Strategy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeDecoderLayer

    config = CONFIGS / "lm" / "student_kd_fsdp.yaml"
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=Strategy)
    strategy = parser.instantiate(parser.parse_object({"strategy": yaml.safe_load(config.read_text())["trainer"]["strategy"]})).strategy
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {LlamaDecoderLayer, Qwen3MoeDecoderLayer}
    assert strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {LlamaDecoderLayer}
    if not torch.cuda.is_available():
        monkeypatch.chdir(tmp_path)
        with pytest.raises(DistributedSetupError, match=r"trainer.strategy=fsdp runs on CUDA GPUs only.*'cpu'.*"
                           r"HINT: .*on CPUs use trainer.strategy: ddp with trainer.devices: 2"):
            LKDCLI(args=["-c", str(config), "--trainer.accelerator=cpu", "--trainer.devices=2"], run=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for more GPUs than a CPU machine has")
def test_more_gpus_than_the_machine_has_is_refused(tmp_path, monkeypatch, tiny_data_args):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DistributedSetupError, match=r"trainer.accelerator='gpu' asks for CUDA GPUs, but torch sees none here "
                                                    r".*HINT: trainer.accelerator: cpu"):
        LKDCLI(args=["fit", "-c", str(CONFIGS / "mnist" / "student_scratch.yaml"), *tiny_data_args,
                     "--trainer.accelerator=gpu", "--trainer.devices=2", "--trainer.strategy=ddp"])


@pytest.mark.slow  # two processes through the `lkd` command: 16-25 s each
def test_on_policy_distillation_on_two_processes(tmp_path, tiny_wikitext):
    """On-policy distillation under DDP: each rank samples completions of its own prompts (its own rows, its own
    sampler seed), the gradients are all-reduced, so both ranks end with one student."""
    from tests.lm_fixtures import tiny_overrides

    config = CONFIGS / "lm" / "onpolicy_arithmetic.yaml"
    rank0, rank1 = lkd_two_processes(tmp_path, config, *tiny_overrides(config, tiny_wikitext),
                                     "--model.init_args.teacher.checkpoint=null", "--trainer.max_steps=3",
                                     "--trainer.limit_val_batches=0", "--trainer.logger=false", "--best_checkpoint.path=null")
    assert_same_state(rank0, rank1, "student.")
    assert_same_state(rank0, rank1, "teacher.model.")
    assert rank0["first_batch"] != rank1["first_batch"]  # different prompts on each rank
    a, b = rank0["epoch_rows"][0], rank1["epoch_rows"][0]
    assert a and b and not set(a) & set(b)
    assert rank0["metrics"]["train/loss_step"] == rank1["metrics"]["train/loss_step"]  # reduced, so one number
