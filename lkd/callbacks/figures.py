"""Callbacks that put figures into TensorBoard."""

from __future__ import annotations

from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torchmetrics.classification import MulticlassConfusionMatrix
from typing_extensions import override

from lkd.figures import confusion_matrix_figure


def tensorboard_loggers(trainer: pl.Trainer) -> list[TensorBoardLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


class ConfusionMatrixFigure(Callback):
    """Logs ``{stage}/confusion_matrix`` (a figure: true × predicted, row-normalised colours, counts) at the end
    of every validation (or test) epoch. Reads the ``preds``/``labels`` that lkd's classification modules
    return from ``validation_step``/``test_step`` (MNIST, GLUE); class names from ``datamodule.label_names``
    when it has them. Skipped in the sanity check and for regression (``num_classes == 1``).

    Args:
        stage: ``"val"`` or ``"test"``.
    """

    def __init__(self, stage: Literal["val", "test"] = "val"):
        if stage not in ("val", "test"):
            raise ValueError(f"stage must be 'val' or 'test', got {stage!r}")
        self.stage = stage
        self.matrix: MulticlassConfusionMatrix | None = None
        self.last_counts: torch.Tensor | None = None

    def _active(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        return not trainer.sanity_checking and getattr(pl_module, "num_classes", 1) > 1

    def _start(self, trainer, pl_module) -> None:
        if self._active(trainer, pl_module):
            self.matrix = MulticlassConfusionMatrix(pl_module.num_classes).to(pl_module.device)

    def _update(self, outputs) -> None:
        if self.matrix is not None and isinstance(outputs, dict) and "preds" in outputs:
            self.matrix.update(outputs["preds"], outputs["labels"])

    def _log(self, trainer, pl_module) -> None:
        if self.matrix is None:
            return
        import matplotlib.pyplot as plt

        self.last_counts = self.matrix.compute().cpu()
        self.matrix = None
        names = getattr(trainer.datamodule, "label_names", None) if trainer.datamodule is not None else None
        for logger in tensorboard_loggers(trainer):
            fig = confusion_matrix_figure(self.last_counts, names, title=f"{self.stage} confusion matrix, epoch {trainer.current_epoch}")
            logger.experiment.add_figure(f"{self.stage}/confusion_matrix", fig, global_step=trainer.global_step)
            plt.close(fig)

    @override
    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self.stage == "val":
            self._start(trainer, pl_module)

    @override
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.stage == "val":
            self._update(outputs)

    @override
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self.stage == "val":
            self._log(trainer, pl_module)

    @override
    def on_test_epoch_start(self, trainer, pl_module) -> None:
        if self.stage == "test":
            self._start(trainer, pl_module)

    @override
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.stage == "test":
            self._update(outputs)

    @override
    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if self.stage == "test":
            self._log(trainer, pl_module)


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
