"""Every configs/lm/*.yaml is parsed by the CLI and run with fast_dev_run, with tiny random models (Qwen3-MoE
teacher, Llama student), the byte tokenizer and a tiny WikiText-shaped corpus. Configs that load SmolLM2 or
hub weights are smoke-run with the model builder swapped for a tiny one (same module, losses, router,
callbacks, trainer settings)."""

from pathlib import Path

import pytest
import torch
import yaml

from lkd.cli import LKDCLI
from tests.conftest import CONFIGS
from tests.lm_fixtures import TINY_STUDENT, TINY_TEACHER, as_class_arg, tiny_wikitext, _one_torch_thread  # noqa: F401

LM_CONFIGS = sorted((CONFIGS / "lm").glob("*.yaml"))
MOE_BUILDERS = ("lkd.models.causal_lm.TinyMoELM", "lkd.models.causal_lm.PretrainedLM")
TEACHER_CONFIG = CONFIGS / "lm" / "teacher_moe_tiny.yaml"


def tiny_overrides(config: Path, data_root: Path) -> list[str]:
    """CLI arguments that shrink a config's models and data; everything else stays as written."""
    init = yaml.safe_load(config.read_text())["model"]["init_args"]
    args = ["--model.init_args.tokenizer=bytes"]
    for key in ("model", "teacher", "student"):
        if key in init:
            moe = key == "teacher" or (key == "model" and init[key]["class_path"] in MOE_BUILDERS)
            builder, size = ("TinyMoELM", TINY_TEACHER) if moe else ("TinyLlamaLM", TINY_STUDENT)
            args.append(f"--model.init_args.{key}={as_class_arg('lkd.models.causal_lm.' + builder, size)}")
    args += [f"--data.init_args.hub_id={data_root}", "--data.init_args.config=wikitext-2-raw-v1",
             "--data.init_args.train_split=validation[:90%]", "--data.init_args.val_split=validation[90%:]",
             "--data.init_args.test_split=test", "--data.init_args.block_size=16", "--data.init_args.batch_size=2"]
    trainer = yaml.safe_load(config.read_text()).get("trainer", {})
    if trainer.get("precision") == "16-mixed" and not torch.cuda.is_available():
        args.append("--trainer.precision=bf16-mixed")  # fp16 autocast needs a GPU
    if trainer.get("accelerator") == "gpu" and not torch.cuda.is_available():
        # a multi-GPU (FSDP) config: its strategy is checked in tests/test_ddp_tracks.py; here the rest of it runs
        args += ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.precision=32-true"]
    return args


@pytest.fixture(scope="module")
def tiny_teacher_ckpt(tiny_wikitext, tmp_path_factory) -> Path:
    """The teacher config trained for 2 steps; its best checkpoint is what the distillation configs read."""
    out = tmp_path_factory.mktemp("lm_teacher")
    path = out / "teacher.ckpt"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: runs before the autouse one-thread fixture
    LKDCLI(args=["fit", "-c", str(TEACHER_CONFIG), *tiny_overrides(TEACHER_CONFIG, tiny_wikitext),
                 "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
                 "--trainer.num_sanity_val_steps=0",
                 f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}",
                 f"--best_checkpoint.path={path}"])
    torch.set_num_threads(threads)
    assert path.is_file()
    return path


def test_there_are_lm_configs():
    names = {p.name for p in LM_CONFIGS}
    assert {"teacher_moe_tiny.yaml", "student_scratch.yaml", "student_kd.yaml", "student_multiloss.yaml",
            "student_routed.yaml", "smollm2_finetune.yaml", "hub_huihui_moe_routed.yaml"} <= names


@pytest.mark.parametrize("config", LM_CONFIGS, ids=lambda p: p.name)
def test_lm_config_fast_dev_run(config, tmp_path, monkeypatch, tiny_wikitext, tiny_teacher_ckpt):
    monkeypatch.chdir(tmp_path)  # runs/ and checkpoints/ land in tmp
    text = config.read_text()
    assert "checkpoint: {monitor: val/loss, mode: min" in text
    if "validation[:90%]" in text:  # offline configs say that they train on a validation slice
        assert "OFFLINE DATA" in text and "no train split" in text
    args = ["fit", "-c", str(config), *tiny_overrides(config, tiny_wikitext), "--trainer.fast_dev_run=true"]
    if "teacher_ckpt" in yaml.safe_load(text)["model"]["init_args"]:
        args.append(f"--model.init_args.teacher_ckpt={tiny_teacher_ckpt}")
    cli = LKDCLI(args=args)
    assert cli.trainer.state.finished
    metrics = cli.trainer.callback_metrics
    assert metrics["train/loss_step"].isfinite()
    assert metrics["val/ppl"].isfinite()
    if getattr(cli.model, "router", None) is not None:
        assert metrics["train/router_loss_step"].isfinite()
        assert "router/top_k" in metrics  # the RoutingSchedule drove it
    if "teacher_ckpt" in text:  # the teacher's weights came from the checkpoint
        state = torch.load(tiny_teacher_ckpt, map_location="cpu", weights_only=True)["state_dict"]
        torch.testing.assert_close(cli.model.teacher.model.lm_head.weight, state["model.model.lm_head.weight"])
