"""The MNIST track: a classifier trained with cross-entropy (a teacher, or a student alone) and response
knowledge distillation of a student from a frozen teacher (Hinton et al. 2015)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lkd.losses import hinton_kd_loss, labelled_rows, present_class_cross_entropy
from lkd.losses.kd import kd_problems
from lkd.modules.base import LKDModule, StepOutput
from lkd.schedules import ScheduleName
from lkd.teacher import Teacher

ModelFactory = Callable[[int], nn.Module]
"""Builds a network given its number of classes: in YAML a ``class_path`` whose first argument is
``num_classes`` (linked from the data module), e.g. ``lkd.models.MLP``."""


class MNISTModule(LKDModule):
    """What the MNIST modules share: ``(images, labels, sample_ids)`` batches and ``{stage}/acc``.

    Training rows labelled :data:`lkd.losses.UNLABELLED` (a transfer set: ``MNISTDataModule(labelled_size=...)``)
    are accepted by modules with ``accepts_unlabelled`` (distillation: the teacher labels them) and left out of
    ``train/acc``; validation and test rows must all carry labels (:meth:`lkd.modules.LKDModule.check_labels`).

    Args:
        num_classes: number of classes (linked from ``data.num_classes`` by the CLI).
        optimizer, lr_schedule: see :class:`lkd.modules.base.LKDModule` (default: Adam, one-cycle).
    """

    transfer_set_option = "data.init_args.labelled_size with unlabelled: transfer"
    unlabelled_hint = "set data.init_args.unlabelled: drop to train on the labelled rows alone, or distil with DistillModule"

    def __init__(self, num_classes: int = 10, optimizer: OptimizerCallable = torch.optim.Adam,
                 lr_schedule: ScheduleName = "onecycle"):
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        super().__init__(optimizer, lr_schedule)

    @override
    def make_metrics(self) -> MetricCollection:
        return MetricCollection({"acc": MulticlassAccuracy(self.num_classes, average="micro")})

    @override
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes)."""
        return self.trained_model(images)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of the network being trained."""
        return self.trained_model(images)

    def loss(self, batch, logits: torch.Tensor, stage: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, terms) of a batch given the network's logits."""
        raise NotImplementedError

    @override
    def step(self, batch, stage: str) -> StepOutput:
        images, labels = batch[0], batch[1]  # (B, 1, 28, 28) float, (B,)
        self.check_labels(labels, stage)
        logits = self.trained_model(images)  # (B, C)
        loss, terms = self.loss(batch, logits, stage)
        scored, scored_labels = logits.detach(), labels
        if stage == "train" and not (keep := labelled_rows(labels)).all():  # transfer-set rows: no label to score
            scored, scored_labels = scored[keep], labels[keep]
        preds = scored.argmax(dim=-1)
        metric_args = (scored, scored_labels) if len(scored_labels) else ()  # a batch of transfer rows only: nothing to score
        return StepOutput(loss, len(labels), terms, metric_args=metric_args, outputs={"preds": preds, "labels": scored_labels})

    @override
    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.classify(images).argmax(dim=-1)


class ClassifierModule(MNISTModule):
    """Cross-entropy training of ``model(num_classes)``.

    Args:
        model: network factory (YAML ``class_path`` + ``init_args``; ``num_classes`` comes from the data).
        num_classes, optimizer, lr_schedule: see :class:`MNISTModule`.
        label_smoothing: cross-entropy label smoothing in [0, 1).
        loss_classes: which classes the training softmax spans: ``all`` (the ordinary cross-entropy) or ``batch``,
            the classes present in the batch (:func:`lkd.losses.present_class_cross_entropy`, the "labels trick"
            for class-incremental streams: a new stage does not push down the logits of earlier classes).
            Validation and test always score over all classes.
    """

    def __init__(self, model: ModelFactory, num_classes: int = 10, optimizer: OptimizerCallable = torch.optim.Adam,
                 lr_schedule: ScheduleName = "onecycle", label_smoothing: float = 0.0,
                 loss_classes: Literal["all", "batch"] = "all"):
        super().__init__(num_classes, optimizer, lr_schedule)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if loss_classes not in ("all", "batch"):
            raise ValueError(f"loss_classes must be 'all' or 'batch' (the classes present in the batch), got {loss_classes!r}")
        self.save_hyperparameters(ignore=["model", "optimizer"])
        self.model = model(num_classes)
        self.label_smoothing = label_smoothing
        self.loss_classes = loss_classes

    @property
    @override
    def trained_model(self) -> nn.Module:
        return self.model

    @override
    def loss(self, batch, logits, stage):
        if stage != "train":
            return F.cross_entropy(logits.float(), batch[1]), {}
        if self.loss_classes == "batch":
            return present_class_cross_entropy(logits, batch[1], label_smoothing=self.label_smoothing), {}
        return F.cross_entropy(logits.float(), batch[1], label_smoothing=self.label_smoothing), {}


class DistillModule(MNISTModule):
    """Trains ``student`` on ``alpha · T² · KL(teacher ‖ student) + (1 − alpha) · CE``.

    Training rows labelled :data:`lkd.losses.UNLABELLED` (a transfer set) get the KL term only; the CE is the
    mean over the batch's labelled rows (:func:`lkd.losses.hinton_kd_loss`).

    The teacher (:class:`lkd.teacher.Teacher`: architecture, checkpoint, dtype, offload, cache) is loaded in
    ``setup`` and frozen for the whole run. Validation and test report the student; ``val/teacher_acc`` is
    logged once per epoch for reference. With ``teacher.cache`` the teacher's logits for training and
    validation batches are read by sample id instead of computed (unaugmented training data: ``max_shift: 0``).

    Args:
        student: student network factory.
        teacher: the frozen teacher (its ``model`` gets ``num_classes`` from the data through the CLI).
        num_classes: linked from the data module.
        temperature: softmax temperature T > 0.
        alpha: weight of the soft (KL) term in [0, 1]; 1 − alpha weights the cross-entropy.
        optimizer, lr_schedule: see :class:`MNISTModule`.
    """

    accepts_unlabelled = True

    def __init__(self, student: ModelFactory, teacher: Teacher, num_classes: int = 10, temperature: float = 4.0,
                 alpha: float = 0.9, optimizer: OptimizerCallable = torch.optim.Adam, lr_schedule: ScheduleName = "onecycle"):
        super().__init__(num_classes, optimizer, lr_schedule)
        if problems := kd_problems(temperature=temperature, alpha=alpha):
            raise ValueError("DistillModule: " + "; ".join(problems))
        self.save_hyperparameters(ignore=["student", "teacher", "optimizer"])
        self.temperature, self.alpha = temperature, alpha
        self.student = student(num_classes)
        teacher.check_classes(num_classes)
        self.teacher = teacher
        self.teacher_val_acc = MulticlassAccuracy(num_classes, average="micro")

    @property
    @override
    def trained_model(self) -> nn.Module:
        return self.student

    @override
    def cache_targets(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(sample_ids (B,), {"logits": (B, C) fp32})``."""
        return self.sample_ids(batch), {"logits": self.teacher(batch[0])}

    @override
    def loss(self, batch, logits, stage):
        teacher_logits = self.teacher_targets(batch, stage)["logits"]  # (B, C)
        labels = batch[1]
        loss, terms = hinton_kd_loss(logits, teacher_logits, labels, temperature=self.temperature, alpha=self.alpha)
        if stage == "val":
            self.teacher_val_acc(teacher_logits, labels)
            self.log("val/teacher_acc", self.teacher_val_acc, on_step=False, on_epoch=True)
        return loss, terms
