"""Learning-rate schedules: one home for every track (warm-up, then linear, cosine, one-cycle or constant).

Every schedule is a factor on each parameter group's own learning rate, stepped once per **optimizer
step** (``interval: "step"``), over ``trainer.estimated_stepping_batches`` (so gradient accumulation is
counted right).

* ``linear``: 0 → 1 over the warm-up, then 1 → ``min_lr_ratio`` linearly (BERT's schedule);
* ``cosine``: the same warm-up, then a half cosine down to ``min_lr_ratio``;
* ``onecycle``: ``torch.optim.lr_scheduler.OneCycleLR`` with the group's lr as its maximum (its own
  30 % warm-up; ``warmup`` is ignored);
* ``constant``: no scheduler.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

ScheduleName = Literal["linear", "cosine", "onecycle", "constant"]
SCHEDULES = ("linear", "cosine", "onecycle", "constant")


def schedule_problems(name: str, warmup: float, min_lr_ratio: float) -> list[str]:
    """What is wrong with a schedule's settings (empty: nothing)."""
    problems = []
    if name not in SCHEDULES:
        problems.append(f"lr_schedule must be one of {list(SCHEDULES)}, got {name!r}")
    if warmup < 0:
        problems.append(f"warmup must be >= 0 (a fraction of all steps if < 1, else a step count), got {warmup}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        problems.append(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    return problems


def learning_rate_problem(name: str, value: float | None, hint: str) -> str | None:
    """Why a parameter group's own learning rate (e.g. ``router_lr``) is refused: not a finite number >= 0. None (the
    optimizer's rate) and 0 (the group keeps its initial weights) are fine; a negative rate would climb the loss, and
    torch takes one in a parameter group without a word."""
    if value is None or (math.isfinite(value) and value >= 0):
        return None
    return (f"{name} must be a finite number >= 0 (0 keeps those weights as they are; a negative rate climbs the loss), "
            f"got {value}. HINT: {hint}")


def warmup_steps(warmup: float, total_steps: int) -> int:
    """Warm-up steps: a fraction of ``total_steps`` when ``warmup < 1``, else a step count (at most the total)."""
    return min(int(warmup * total_steps) if warmup < 1 else int(warmup), total_steps)


def lr_factor(step: int, *, warmup: int, total: int, shape: Literal["linear", "cosine"], min_ratio: float = 0.0) -> float:
    """Factor on the learning rate at optimizer step ``step``: linear warm-up over ``warmup`` steps, then
    linear or cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if shape == "cosine" else 1.0 - progress
    return min_ratio + (1.0 - min_ratio) * decay


def build_scheduler(optimizer: torch.optim.Optimizer, name: ScheduleName, total_steps: int, *, warmup: float = 0.0,
                    min_lr_ratio: float = 0.0) -> dict | None:
    """The Lightning ``lr_scheduler`` entry for ``configure_optimizers`` (None for ``constant``)."""
    total = max(int(total_steps), 1)
    if name == "constant":
        return None
    if name == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total)
    else:
        steps = warmup_steps(warmup, total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, warmup=steps, total=total, shape=name, min_ratio=min_lr_ratio))
    return {"scheduler": scheduler, "interval": "step"}
