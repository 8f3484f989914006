"""What one step of a track returns (:class:`StepOutput`) and the check on it: a non-finite training loss stops the
run (:class:`NonFiniteLossError`, naming the newest checkpoint). Used by :class:`lkd.modules.LKDModule`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import lightning.pytorch as pl
import torch


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf."""


@dataclass
class StepOutput:
    """What a track's :meth:`LKDModule.step` returns for one batch.

    Attributes:
        loss: 0-d tensor to back-propagate (training).
        batch_size: examples (or tokens) the logged means are weighted by.
        terms: unweighted loss terms and other per-batch values, logged as ``{stage}/{name}``.
        metric_args: positional arguments of the stage's metric collection ``update`` (e.g. ``(preds, labels)``).
        logged_loss: what ``{stage}/loss`` shows, when it is not ``loss`` (e.g. without a router's own objective).
        outputs: what the step returns to callbacks (e.g. ``{"preds", "labels"}`` for the confusion matrix).
    """

    loss: torch.Tensor
    batch_size: int
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    metric_args: tuple = ()
    logged_loss: torch.Tensor | None = None
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)


def newest_checkpoint(module: pl.LightningModule) -> str:
    """The most recently written checkpoint of the module's run, if any."""
    if module._trainer is None:
        return ""
    paths = {
        p
        for cb in module.trainer.checkpoint_callbacks
        for p in (getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", ""))
        if p and os.path.isfile(p)
    }
    return max(paths, key=os.path.getmtime, default="")


def check_finite_loss(module: pl.LightningModule, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
    """Stop training with :class:`NonFiniteLossError` (step, terms, newest checkpoint) on a NaN/inf loss."""
    if torch.isfinite(loss):
        return
    last_good = newest_checkpoint(module)
    parts = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
    raise NonFiniteLossError(
        f"training loss is {loss.item()} at global step {module.global_step} (epoch {module.current_epoch}); "
        f"terms: {parts or 'none'}. Training stopped; the last good checkpoint is "
        f"{last_good or 'not written yet'}. HINT: lower the learning rate, check the inputs, or use "
        "gradient clipping (trainer.gradient_clip_val)."
    )
