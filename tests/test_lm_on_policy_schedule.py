"""OnPolicySchedule: off-policy steps first, then the student samples (GKD's fine-tune-then-distil in one run)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from lkd.callbacks import OnPolicySchedule
from lkd.models import TinyLlamaLM
from lkd.modules import LMDistillModule
from lkd.modules.on_policy import OnPolicyDistillModule
from lkd.teacher import Teacher
from tests.lm_fixtures import arithmetic_prompts

LLAMA = {"vocab_size": 257, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 48,
         "max_position_embeddings": 64}


def module(**kw) -> OnPolicyDistillModule:
    return OnPolicyDistillModule(TinyLlamaLM(**LLAMA, seed=1), Teacher(model=TinyLlamaLM(**LLAMA, seed=0)), tokenizer="bytes",
                                 **{"max_new_tokens": 4, "beta": 0.5, "lmbda": 0.0, **kw})


class Record(pl.Callback):
    """(step, λ, β, fraction of the batch's rows sampled) of every training batch, after the schedule has set them."""

    def __init__(self):
        self.seen = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        rows = float(pl_module.on_policy_rows(batch["row_index"]).float().mean())
        self.seen.append((trainer.global_step - 1, pl_module.lmbda, pl_module.beta, rows))


def fit(model, dm, callbacks, steps: int, **kw) -> pl.Trainer:
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, callbacks=callbacks, **{"enable_checkpointing": False, **kw})
    trainer.fit(model, datamodule=dm)
    return trainer


def test_the_student_samples_only_after_the_off_policy_steps_with_the_modules_beta(arithmetic_task):
    record = Record()
    model = module()
    calls = []
    original = model.sample
    model.sample = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)
    fit(model, arithmetic_prompts(arithmetic_task), [OnPolicySchedule(off_policy_steps=3, lmbda=1.0, off_policy_beta=0.0), record], steps=5)
    assert [(s, lam, b) for s, lam, b, _ in record.seen] == [(0, 0.0, 0.0), (1, 0.0, 0.0), (2, 0.0, 0.0), (3, 1.0, 0.5), (4, 1.0, 0.5)]
    assert [rows for *_, rows in record.seen] == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert len(calls) == 2  # the student generated at steps 3 and 4 only


def test_the_ramp_reaches_lmbda_linearly():
    schedule = OnPolicySchedule(off_policy_steps=2, lmbda=0.8, off_policy_beta=None, ramp_steps=4)
    schedule.beta = 0.5
    assert [schedule.values(s) for s in (0, 1, 2, 3, 5, 9)] == [
        (0.0, 0.5), (0.0, 0.5), (pytest.approx(0.2), 0.5), (pytest.approx(0.4), 0.5), (pytest.approx(0.8), 0.5), (pytest.approx(0.8), 0.5)]


def test_a_resumed_run_is_in_the_same_phase(arithmetic_task, tmp_path):
    straight = Record()
    torch.manual_seed(0)
    fit(module(), arithmetic_prompts(arithmetic_task), [OnPolicySchedule(off_policy_steps=2), straight], steps=4)
    first = module()
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    fit(first, arithmetic_prompts(arithmetic_task), [OnPolicySchedule(off_policy_steps=2), checkpoint],
        steps=2, enable_checkpointing=True)
    resumed = Record()
    trainer = pl.Trainer(max_steps=4, logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, callbacks=[OnPolicySchedule(off_policy_steps=2), resumed], enable_checkpointing=False)
    trainer.fit(module(), datamodule=arithmetic_prompts(arithmetic_task), ckpt_path=tmp_path / "last.ckpt")
    assert [(s, lam) for s, lam, *_ in resumed.seen] == [(s, lam) for s, lam, *_ in straight.seen[2:]] == [(2, 1.0), (3, 1.0)]


@pytest.mark.parametrize(("options", "message"), [
    ({"off_policy_steps": 0}, "off_policy_steps must be >= 1"),
    ({"off_policy_steps": 2, "lmbda": 1.5}, "lmbda must be in \\[0, 1\\]"),
    ({"off_policy_steps": 2, "lmbda": 0.0}, "lmbda must be > 0"),
    ({"off_policy_steps": 2, "off_policy_beta": -0.1}, "beta must be in \\[0, 1\\]"),
    ({"off_policy_steps": 2, "ramp_steps": -1}, "ramp_steps must be >= 0"),
])
def test_bad_schedules_are_refused_naming_the_value(options, message):
    with pytest.raises(ValueError, match=message):
        OnPolicySchedule(**options)


def test_a_module_that_does_not_sample_is_refused_at_setup():
    trainer = pl.Trainer(max_steps=1, logger=False, enable_progress_bar=False, callbacks=[OnPolicySchedule(off_policy_steps=1)])
    model = LMDistillModule(TinyLlamaLM(**LLAMA, seed=1), Teacher(model=TinyLlamaLM(**LLAMA, seed=0)), tokenizer="bytes")
    with pytest.raises(ValueError, match="drives an OnPolicyDistillModule"):
        OnPolicySchedule(off_policy_steps=1).setup(trainer, model, "fit")


def test_a_second_fit_keeps_the_modules_own_beta(arithmetic_task):
    schedule, record = OnPolicySchedule(off_policy_steps=2, off_policy_beta=0.0), Record()
    model = module(beta=0.5)
    fit(model, arithmetic_prompts(arithmetic_task), [schedule], steps=1)  # ends in the off-policy phase: the module's beta is 0 now
    fit(model, arithmetic_prompts(arithmetic_task), [schedule, record], steps=3)
    assert [(s, b) for s, _, b, _ in record.seen] == [(0, 0.0), (1, 0.0), (2, 0.5)]
