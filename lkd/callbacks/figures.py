"""Callbacks that put figures into TensorBoard (the routing figures: :mod:`lkd.callbacks.routing`)."""

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
        return not trainer.sanity_checking and (getattr(pl_module, "num_classes", None) or 1) > 1

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
