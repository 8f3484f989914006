"""Off-policy first, on-policy after: the λ (and β) of an :class:`lkd.modules.OnPolicyDistillModule` over training."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lkd.losses.on_policy import on_policy_problems


class OnPolicySchedule(Callback):
    """Warm-starts on-policy distillation with off-policy steps: the student learns from the module's off-policy
    completions (``off_policy: reference`` or ``teacher``, i.e. supervised or sequence-level KD) for the first
    ``off_policy_steps`` optimizer steps, then samples its own completions.

    GKD (Agarwal et al., ICLR 2024, arXiv 2306.13649, Sec. 4) distils students that were first fine-tuned on the task;
    a student that starts far from its teacher samples near-noise, and the teacher's scores of noise teach little.
    This callback is that recipe inside one run, with one optimizer and one learning-rate schedule. At optimizer
    step ``s`` (``trainer.global_step``, right under gradient accumulation)

        λ(s) = 0                                              for s < off_policy_steps
        λ(s) = lmbda · min(1, (s − off_policy_steps + 1) / ramp_steps)   after (``ramp_steps`` 0: at once)

    and β is ``off_policy_beta`` during the off-policy steps (0 = forward KL, the usual sequence-level KD) and the
    module's own β after. The values are set before every training batch, so a run resumed with ``ckpt_path=`` is in
    the same phase (nothing to save: they are a function of the step). Logged as ``on_policy/lmbda`` and
    ``on_policy/beta``. Validation scores the divergence at the β in force: with ``off_policy_beta`` unlike the
    module's β, ``val/divergence`` changes meaning at the switch (compare within a phase, or the completion metrics).

    Args:
        off_policy_steps: optimizer steps with λ = 0 (> 0).
        lmbda: λ after them, in (0, 1] (default 1: every row sampled).
        off_policy_beta: β during the off-policy steps, in [0, 1]; None = the module's β throughout.
        ramp_steps: steps over which λ rises linearly to ``lmbda`` after the off-policy steps (0 = a step change).
    """

    def __init__(self, off_policy_steps: int, lmbda: float = 1.0, off_policy_beta: float | None = 0.0, ramp_steps: int = 0):
        problems = on_policy_problems(lmbda=lmbda, beta=off_policy_beta)
        if off_policy_steps < 1:
            problems.append(f"off_policy_steps must be >= 1 (the optimizer steps before the student samples), got {off_policy_steps}")
        if lmbda == 0:
            problems.append("lmbda must be > 0 after the off-policy steps (0 would never sample: set the module's lmbda: 0 instead)")
        if ramp_steps < 0:
            problems.append(f"ramp_steps must be >= 0 (0 = switch at once), got {ramp_steps}")
        if problems:
            raise ValueError("OnPolicySchedule: " + "; ".join(problems))
        self.off_policy_steps, self.lmbda, self.off_policy_beta, self.ramp_steps = off_policy_steps, lmbda, off_policy_beta, ramp_steps
        self.beta: float | None = None  # the module's own β, read at the first setup

    def values(self, step: int) -> tuple[float, float]:
        """``(λ, β)`` at optimizer step ``step``."""
        if step < self.off_policy_steps:
            return 0.0, self.beta if self.off_policy_beta is None else self.off_policy_beta
        ramp = 1.0 if self.ramp_steps == 0 else min(1.0, (step - self.off_policy_steps + 1) / self.ramp_steps)
        return self.lmbda * ramp, self.beta

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from lkd.modules import OnPolicyDistillModule

        if not isinstance(pl_module, OnPolicyDistillModule):
            raise ValueError(f"OnPolicySchedule drives an OnPolicyDistillModule's lmbda and beta, got {type(pl_module).__name__}: "
                             "remove the callback or use model: lkd.modules.OnPolicyDistillModule")
        if pl_module.teacher.cache_path is not None:
            raise ValueError("OnPolicySchedule: the teacher is a cache, which cannot score the student's samples after "
                             f"{self.off_policy_steps} steps; give the live teacher (model.init_args.teacher.init_args.cache: null)")
        if self.beta is None:  # the module's own β, before this callback first set it (a second fit must not read ours)
            self.beta = pl_module.beta

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        pl_module.lmbda, pl_module.beta = self.values(trainer.global_step)
        pl_module.log_dict({"on_policy/lmbda": float(pl_module.lmbda), "on_policy/beta": float(pl_module.beta)},
                           on_step=True, on_epoch=False, batch_size=len(batch["prompt_ids"]))
