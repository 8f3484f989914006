"""Shared machinery of the classification LightningModules: metrics per stage, optimiser, checks."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lkd.distributed import SyncedLogging
from lkd.models.dkvb import DiscreteKeyValueBottleneck

ModelFactory = Callable[[int], nn.Module]
"""Builds a network given its number of classes: in YAML a ``class_path`` whose first argument is
``num_classes`` (linked from the data module), e.g. ``lkd.models.MLP``."""

STAGES = ("train", "val", "test")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf."""


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


class ClassificationModuleBase(SyncedLogging):
    """Everything the classifier and the distillation module share.

    Subclasses implement ``compute_loss(images, labels, stage) -> (logits, loss, terms)`` and
    ``trainable_parameters()``; this class logs ``{stage}/loss``, ``{stage}/acc`` and every term as
    ``{stage}/{term}``, stops on a non-finite loss and owns the optimiser and learning-rate schedule.

    Args:
        num_classes: number of classes (linked from ``data.num_classes`` by the CLI).
        optimizer: optimiser factory (YAML ``class_path``), given the trainable parameters.
        lr_schedule: ``"onecycle"`` (warm-up then anneal, max lr = the optimiser's lr), ``"cosine"`` or
            ``"constant"``; stepped every optimiser step over ``trainer.estimated_stepping_batches``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_schedule: Literal["onecycle", "cosine", "constant"] = "onecycle",
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if lr_schedule not in ("onecycle", "cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'onecycle', 'cosine' or 'constant', got {lr_schedule!r}")
        self.num_classes = num_classes
        self.optimizer_factory = optimizer
        self.lr_schedule = lr_schedule
        # one metric object per stage (attribute names: `train` would clash with nn.Module.train)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    @override
    def setup(self, stage: str) -> None:
        if self._trainer is not None and self.trainer.world_size > 1:
            for name, module in self.named_modules():
                if isinstance(module, DiscreteKeyValueBottleneck) and module.sync_codebook_across_processes():
                    rank_zero_info(f"{name}: DKVB codebook EMA synced across {self.trainer.world_size} processes")

    # ---- to implement -------------------------------------------------------------------------------
    def compute_loss(
        self, images: torch.Tensor, labels: torch.Tensor, stage: str
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def trainable_parameters(self):
        raise NotImplementedError

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of the model being trained."""
        raise NotImplementedError

    # ---- steps --------------------------------------------------------------------------------------
    def _shared_step(self, batch, batch_idx: int, stage: str) -> dict[str, torch.Tensor]:
        """Loss, logs and metrics of one batch; returns ``{"loss", "preds", "labels"}`` (for figure callbacks)."""
        images, labels = batch
        if batch_idx == 0:
            self._check_labels(labels, stage)
        logits, loss, terms = self.compute_loss(images, labels, stage)
        if stage == "train":
            self._check_finite(loss, terms)
        metric = getattr(self, f"{stage}_acc")
        metric(logits.detach(), labels)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=on_step, on_epoch=True, batch_size=len(labels))
        self.log(f"{stage}/acc", metric, prog_bar=stage != "train", on_step=False, on_epoch=True)
        for name, value in terms.items():
            self.log(f"{stage}/{name}", value, on_step=on_step, on_epoch=True, batch_size=len(labels))
        return {"loss": loss, "preds": logits.detach().argmax(dim=-1), "labels": labels}

    @override
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, batch_idx, "train")["loss"]

    @override
    def validation_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._shared_step(batch, batch_idx, "val")

    @override
    def test_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._shared_step(batch, batch_idx, "test")

    @override
    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.classify(images).argmax(dim=-1)

    def _check_labels(self, labels: torch.Tensor, stage: str) -> None:
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            bad = labels[(labels < 0) | (labels >= self.num_classes)].unique().tolist()
            raise ValueError(
                f"{stage} labels {bad[:10]} are out of range for num_classes={self.num_classes} (expected 0.."
                f"{self.num_classes - 1}). HINT: the data module's classes and the model's num_classes must agree."
            )

    def _check_finite(self, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        check_finite_loss(self, loss, terms)

    # ---- optimisation -------------------------------------------------------------------------------
    @override
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.trainable_parameters())
        if self.lr_schedule == "constant":
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        if self.lr_schedule == "onecycle":
            max_lrs = [g["lr"] for g in optimizer.param_groups]
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lrs, total_steps=max(total, 1))
        else:
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total, 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
