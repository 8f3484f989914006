"""Train any classifier (a teacher, or a student alone) with cross-entropy."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from typing_extensions import override

from lkd.modules.base import ClassificationModuleBase, ModelFactory


class ClassifierModule(ClassificationModuleBase):
    """Cross-entropy training of ``model(num_classes)``.

    Args:
        model: network factory (YAML ``class_path`` + ``init_args``; ``num_classes`` comes from the data).
        num_classes: linked from the data module.
        optimizer: optimiser factory.
        lr_schedule: see :class:`ClassificationModuleBase`.
        label_smoothing: cross-entropy label smoothing in [0, 1).
    """

    def __init__(
        self,
        model: ModelFactory,
        num_classes: int = 10,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_schedule: Literal["onecycle", "cosine", "constant"] = "onecycle",
        label_smoothing: float = 0.0,
    ):
        super().__init__(num_classes, optimizer, lr_schedule)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.save_hyperparameters(ignore=["model", "optimizer"])
        self.model = model(num_classes)
        self.label_smoothing = label_smoothing

    @override
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    @override
    def classify(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    @override
    def compute_loss(self, images, labels, stage):
        logits = self.model(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing if stage == "train" else 0.0)
        return logits, loss, {}

    @override
    def trainable_parameters(self):
        return self.model.parameters()
