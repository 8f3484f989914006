"""On-policy distillation (lkd.modules.OnPolicyDistillModule) on a tiny arithmetic task with tiny Llamas."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from lkd.data.arithmetic import write_arithmetic_task
from lkd.models import TinyLlamaLM
from lkd.modules.on_policy import OnPolicyDistillModule
from lkd.teacher import Teacher
from tests.lm_fixtures import arithmetic_prompts

LLAMA = {"vocab_size": 257, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 48,
         "max_position_embeddings": 64}


def module(**kw) -> OnPolicyDistillModule:
    teacher = Teacher(model=TinyLlamaLM(**LLAMA, seed=0))
    return OnPolicyDistillModule(TinyLlamaLM(**LLAMA, seed=1), teacher, tokenizer="bytes", **{"max_new_tokens": 4, **kw})


def fit(model, dm, steps: int = 2) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    return trainer


@pytest.mark.parametrize("options", [
    {"loss": "jsd", "beta": 0.5, "lmbda": 1.0},
    {"loss": "jsd_topk", "beta": 1.0, "lmbda": 0.5, "top_k": 8},
    {"loss": "sampled", "lmbda": 1.0},
    {"loss": "jsd", "beta": 0.0, "lmbda": 0.0, "off_policy": "teacher"},
    {"loss": "jsd", "beta": 0.0, "lmbda": 0.0, "off_policy": "reference", "ce_weight": 1.0},
])
def test_every_mode_trains_the_student_and_leaves_the_teacher(arithmetic_task, options):
    model = module(**options)
    before = [p.detach().clone() for p in model.student.parameters()]
    teacher_before = [p.detach().clone() for p in model.teacher.parameters()]
    trainer = fit(model, arithmetic_prompts(arithmetic_task))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.student.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, model.teacher.parameters(), strict=True))
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/divergence"]) and torch.isfinite(metrics["val/loss"])
    assert float(metrics["train/on_policy_rows"]) == pytest.approx(options["lmbda"], abs=0.5)


def test_prompt_tokens_never_enter_the_loss(arithmetic_task):
    """The divergence over a batch is unchanged when the teacher's logits at prompt positions are garbage."""
    model = module(lmbda=0.0, beta=0.5)
    dm = arithmetic_prompts(arithmetic_task)
    model.connect_data(dm)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    honest = model.step(batch, "train").terms["divergence"]
    prompt_width = batch["prompt_ids"].shape[1]
    original = model.teacher.model.forward

    def garbage_at_prompt(*args, **kwargs):
        out = original(*args, **kwargs)
        out.logits[:, :prompt_width - 1] = torch.randn_like(out.logits[:, :prompt_width - 1]) * 50
        return out

    model.teacher.model.forward = garbage_at_prompt
    assert torch.equal(model.step(batch, "train").terms["divergence"], honest)


def test_per_row_choice_is_seeded_and_independent_of_the_batch():
    model = module(lmbda=0.5, seed=3)
    rows = torch.arange(64)
    first = model.on_policy_rows(rows)
    assert torch.equal(first[10:20], model.on_policy_rows(rows[10:20]))  # a row's draw does not depend on its batch
    assert 16 < int(first.sum()) < 48
    assert not torch.equal(first, module(lmbda=0.5, seed=4).on_policy_rows(rows))


@pytest.mark.parametrize(("options", "message"), [
    ({"beta": 1.5}, r"beta must be in \[0, 1\]"),
    ({"lmbda": -0.1}, r"lmbda must be in \[0, 1\]"),
    ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
    ({"loss": "kl"}, "loss must be one of"),
    ({"off_policy": "cache"}, "off_policy must be one of"),
])
def test_bad_settings_are_refused_naming_the_value(options, message):
    with pytest.raises(ValueError, match=message):
        module(**options)


def test_a_teacher_cache_is_refused(tmp_path):
    teacher = Teacher(model=TinyLlamaLM(**LLAMA, seed=0), cache=str(tmp_path / "t.cache"))
    with pytest.raises(ValueError, match="on-policy distillation needs the live teacher"):
        OnPolicyDistillModule(TinyLlamaLM(**LLAMA, seed=1), teacher, tokenizer="bytes")


def test_completion_evaluation_scores_what_the_student_writes_and_shows_it_in_tensorboard(arithmetic_task, tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lkd.callbacks import CompletionEvaluation

    model = module(lmbda=1.0)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=2, num_sanity_val_steps=0, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, logger=TensorBoardLogger(str(tmp_path), name="run"),
                         callbacks=[CompletionEvaluation(checker="exact_match", show=2)])
    trainer.fit(model, datamodule=arithmetic_prompts(arithmetic_task))
    metrics = trainer.callback_metrics
    assert 0 <= float(metrics["val/exact_match"]) <= 1 and 0 <= float(metrics["val/rougeL_reference"]) <= 1
    assert 0 <= float(metrics["val/rougeL_teacher"]) <= 1 and float(metrics["val/teacher_nll"]) > 0
    events = EventAccumulator(str(next((tmp_path / "run").rglob("events.out.tfevents*")).parent), size_guidance={"tensors": 0})
    events.Reload()
    assert "val/completions/text_summary" in events.Tags()["tensors"]


def test_an_unknown_checker_is_refused_with_the_choices():
    from lkd.callbacks import CompletionEvaluation

    with pytest.raises(ValueError, match="checker 'exact' is neither one of"):
        CompletionEvaluation(checker="exact")


def test_completion_sft_trains_on_completion_tokens_only_and_is_scored_without_a_teacher(arithmetic_task):
    from lkd.callbacks import CompletionEvaluation
    from lkd.modules import CompletionSFTModule

    model = CompletionSFTModule(TinyLlamaLM(**LLAMA, seed=1), tokenizer="bytes", max_new_tokens=4)
    dm = arithmetic_prompts(arithmetic_task)
    model.connect_data(dm)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    loss = model.step(batch, "train").loss
    prompts_changed = dict(batch, prompt_ids=batch["prompt_ids"].clone())
    prompts_changed["prompt_ids"][batch["prompt_mask"].bool()] = 7  # other prompts change the loss, not which tokens count
    assert model.step(prompts_changed, "train").loss != loss
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[CompletionEvaluation(checker="exact_match")])
    trainer.fit(model, datamodule=dm)
    assert "val/exact_match" in trainer.callback_metrics and "val/teacher_nll" not in trainer.callback_metrics


def test_arithmetic_answers_can_be_written_least_significant_digit_first(tmp_path):
    import json

    files = write_arithmetic_task(tmp_path, n_train=50, n_test=0, digits=(2, 3), ops=("+", "-"), reversed_answer=True)
    for row in map(json.loads, files["train"].read_text().splitlines()):
        a, op, b = row["prompt"].rstrip("=").replace("-", " - ").replace("+", " + ").split()
        value = int(a) + int(b) if op == "+" else int(a) - int(b)
        assert row["completion"] == ("-" if value < 0 else "") + str(abs(value))[::-1]


def test_replay_reuses_a_rollout_for_the_next_steps(arithmetic_task):
    model = module(lmbda=1.0, replay_steps=2)
    calls = []
    original = model.sample
    model.sample = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)
    fit(model, arithmetic_prompts(arithmetic_task), steps=4)
    assert len(calls) == 2  # steps 0 and 2 roll out; 1 and 3 train on the stored rollout (validation samples nothing)
    with pytest.raises(ValueError, match="replay_steps must be >= 1"):
        module(replay_steps=0)


@pytest.mark.slow
def test_the_on_policy_recipe_fits_its_teacher_then_the_student_and_exports_it(tmp_path, monkeypatch):
    """configs/lm/onpolicy_arithmetic_teacher.yaml then onpolicy_arithmetic.yaml on tiny stand-ins, then `lkd export`: the
    folder runs in a transformers pipeline."""
    from pathlib import Path

    from transformers import pipeline

    from lkd.cli import LKDCLI
    from tests.lm_fixtures import tiny_overrides

    monkeypatch.chdir(tmp_path)
    configs = Path(__file__).parents[1] / "configs" / "lm"
    teacher, student = configs / "onpolicy_arithmetic_teacher.yaml", configs / "onpolicy_arithmetic.yaml"
    LKDCLI(args=["fit", "-c", str(teacher), *tiny_overrides(teacher, tmp_path), "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                 "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0"])
    tiny = tiny_overrides(student, tmp_path)
    LKDCLI(args=["fit", "-c", str(student), *tiny, "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
                 "--trainer.num_sanity_val_steps=0"])
    LKDCLI(args=["export", "-c", str(student), *tiny, "--ckpt_path=checkpoints/lm/onpolicy_arithmetic.ckpt", "--to=out"])
    out = pipeline("text-generation", model="out")("12+34=", max_new_tokens=3, do_sample=False)
    assert out[0]["generated_text"].startswith("12+34=")
