"""The routing callbacks of LM distillation: :class:`RoutingSchedule` (the student-aware router's top-k and
temperature over training) and :class:`RouterExpertUsage` (which of the teacher's experts a routing picks)."""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lkd.callbacks.figures import tensorboard_loggers


class RoutingSchedule(Callback):
    """Drives the top-k and temperature of an :class:`lkd.modules.LMDistillModule`'s student-aware routing, through
    :meth:`lkd.modules.routed_teacher.RoutedTeacher.set_schedule` (its ``routed_teacher``).

    Over ``total_steps`` optimizer steps (``trainer.global_step``, right under gradient accumulation;
    default ``trainer.estimated_stepping_batches``) the progress ``p = step / total`` follows ``mode``
    (``linear``: p, ``cosine``: (1 − cos πp)/2) and gives

        top_k(p) = min(end_top_k, start_top_k + ⌊p · (end_top_k − start_top_k + 1)⌋)   (each k an equal share)
        τ(p)     = start_temperature + p · (end_temperature − start_temperature)

    The values are set before every training batch and logged as ``router/top_k`` and
    ``router/temperature``. With a TensorBoard logger the whole planned schedule is also drawn as a
    ``router/schedule`` figure (top-k and τ against the step, a line at the current step) at the start of
    training, every ``figure_every_n_steps`` steps and at the end. The total step count is saved in ``state_dict``, so a resumed run follows the
    same schedule. A schedule whose ``end_top_k`` exceeds the teacher's experts per MoE layer, or a module
    without a router, is an error at setup.

    Args:
        start_top_k, end_top_k: experts per token at the start and the end (1 → 4 by default); ``end_top_k:
            null`` = all of the teacher's experts per MoE layer (read from the teacher at setup).
        start_temperature, end_temperature: router softmax temperature at the start and the end (> 0).
        mode: ``"linear"`` or ``"cosine"`` progress.
        total_steps: steps over which to anneal; None = all training steps.
        figure_every_n_steps: optimizer steps between ``router/schedule`` figures (None: start and end only).
    """

    def __init__(
        self,
        start_top_k: int = 1,
        end_top_k: int | None = 4,
        start_temperature: float = 2.0,
        end_temperature: float = 0.5,
        mode: Literal["linear", "cosine"] = "linear",
        total_steps: int | None = None,
        figure_every_n_steps: int | None = 200,
    ):
        problems = []
        if start_top_k < 1 or (end_top_k is not None and end_top_k < 1):
            problems.append(f"top-k values must be >= 1, got start_top_k={start_top_k}, end_top_k={end_top_k}")
        if start_temperature <= 0 or end_temperature <= 0:
            problems.append(f"temperatures must be > 0, got {start_temperature} and {end_temperature}")
        if mode not in ("linear", "cosine"):
            problems.append(f"mode must be 'linear' or 'cosine', got {mode!r}")
        if total_steps is not None and total_steps < 1:
            problems.append(f"total_steps must be >= 1 or None, got {total_steps}")
        if figure_every_n_steps is not None and figure_every_n_steps < 1:
            problems.append(f"figure_every_n_steps must be >= 1 or None, got {figure_every_n_steps}")
        if problems:
            raise ValueError("RoutingSchedule: " + "; ".join(problems))
        self.start_top_k, self.end_top_k = start_top_k, end_top_k
        self.start_temperature, self.end_temperature = start_temperature, end_temperature
        self.mode, self.total_steps = mode, total_steps
        self.figure_every_n_steps = figure_every_n_steps
        self.last_step = -1

    # ---- policy -------------------------------------------------------------------------------------
    def progress(self, step: int) -> float:
        p = min(1.0, max(0.0, step / max(1, self.total_steps or 1)))
        return p if self.mode == "linear" else 0.5 * (1 - math.cos(math.pi * p))

    def values(self, step: int) -> tuple[int, float]:
        """(top_k, temperature) at optimizer step ``step``."""
        p = self.progress(step)
        span = self.end_top_k - self.start_top_k
        k = self.start_top_k + math.floor(p * (abs(span) + 1)) * (1 if span >= 0 else -1)
        k = min(max(k, min(self.start_top_k, self.end_top_k)), max(self.start_top_k, self.end_top_k))
        return k, self.start_temperature + p * (self.end_temperature - self.start_temperature)

    # ---- hooks --------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        routed = getattr(pl_module, "routed_teacher", None)
        if routed is None:
            raise ValueError(
                f"RoutingSchedule needs a module with a router, {type(pl_module).__name__} has none. HINT: give "
                "model.init_args.router (StudentAwareRouter) or drop the callback for plain distillation"
            )
        mode = routed.router.mode
        if mode != "student_aware":
            raise ValueError(
                f"RoutingSchedule drives the top-k and temperature of the student_aware router, but the router's mode is "
                f"{mode!r}, which has neither. HINT: drop the callback, or use lkd.models.StudentAwareRouter"
            )
        experts = routed.num_experts
        if self.end_top_k is None:
            self.end_top_k = experts
        if experts is not None and max(self.start_top_k, self.end_top_k) > experts:
            raise ValueError(
                f"RoutingSchedule top-k goes up to {max(self.start_top_k, self.end_top_k)} but the teacher has "
                f"{experts} experts per MoE layer. HINT: set end_top_k <= {experts}"
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.total_steps is None:
            self.total_steps = max(1, int(trainer.estimated_stepping_batches))
        self.log_figure(trainer, trainer.global_step)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        k, tau = self.values(trainer.global_step)
        pl_module.routed_teacher.set_schedule(k, tau)
        if trainer.global_step != self.last_step:
            self.last_step = trainer.global_step
            pl_module.log_dict({"router/top_k": float(k), "router/temperature": tau}, on_step=True, on_epoch=False)
            every = self.figure_every_n_steps
            if every is not None and trainer.global_step > 0 and trainer.global_step % every == 0:
                self.log_figure(trainer, trainer.global_step)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.log_figure(trainer, trainer.global_step)

    def log_figure(self, trainer: pl.Trainer, step: int) -> None:
        """Draw the planned schedule with a line at ``step`` into every TensorBoard logger (rank 0)."""
        loggers = tensorboard_loggers(trainer) if trainer.is_global_zero else []
        if not loggers:
            return
        import matplotlib.pyplot as plt

        from lkd.figures import routing_schedule_figure

        steps = sorted(set(range(0, self.total_steps + 1, max(1, self.total_steps // 200))) | {self.total_steps})
        values = [self.values(s) for s in steps]
        fig = routing_schedule_figure(steps, [k for k, _ in values], [t for _, t in values], current_step=step)
        for logger in loggers:
            logger.experiment.add_figure("router/schedule", fig, global_step=step)
        plt.close(fig)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"total_steps": self.total_steps, "last_step": self.last_step}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.total_steps = state_dict.get("total_steps", self.total_steps)
        self.last_step = state_dict.get("last_step", -1)


class RouterExpertUsage(Callback):
    """Counts which teacher experts the routing picks (every MoE layer, every token) and logs,
    every ``log_every_n_steps`` optimizer steps, ``router/experts_used`` (perplexity of the selection shares:
    E = all equally, 1 = one expert) and a ``router/expert_usage`` figure with one row per interval so far
    (usage over training). Needs a LightningModule with a ``router`` (any :class:`lkd.models.routing.Routing`).
    The history is kept in the checkpoint."""

    def __init__(self, log_every_n_steps: int = 50):
        if log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps must be >= 1, got {log_every_n_steps}")
        self.log_every_n_steps = log_every_n_steps
        self.history: list[list[float]] = []
        self.steps: list[int] = []
        self._counts: torch.Tensor | None = None
        self._hook = None

    @override
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and getattr(pl_module, "router", None) is None:
            raise ValueError(f"RouterExpertUsage needs a module with a router; {type(pl_module).__name__} has none. "
                             "HINT: configure model.init_args.router or drop this callback")

    @override
    def on_train_start(self, trainer, pl_module) -> None:
        self._hook = pl_module.router.register_forward_hook(self._count)

    def _count(self, module, args, output) -> None:
        if module.training:
            indices = output[1].detach().flatten()  # (N·k,)
            counts = torch.bincount(indices, minlength=module.num_experts).float().cpu()
            self._counts = counts if self._counts is None else self._counts + counts

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.log_every_n_steps or self._counts is None or (self.steps and self.steps[-1] == step):
            return
        share = self._counts / self._counts.sum().clamp_min(1)
        self._counts = None
        self.history.append(share.tolist())
        self.steps.append(step)
        used = torch.exp(-(share * share.clamp_min(1e-12).log()).sum())
        for logger in trainer.loggers:  # directly: self.log would wait for trainer.log_every_n_steps
            logger.log_metrics({"router/experts_used": float(used)}, step=step)
        import matplotlib.pyplot as plt

        from lkd.figures import expert_usage_figure

        for logger in tensorboard_loggers(trainer):
            fig = expert_usage_figure(torch.tensor(self.history), self.steps)
            logger.experiment.add_figure("router/expert_usage", fig, global_step=step)
            plt.close(fig)

    @override
    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    @override
    def state_dict(self) -> dict:
        return {"history": self.history, "steps": self.steps}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self.history, self.steps = state_dict.get("history", []), state_dict.get("steps", [])
