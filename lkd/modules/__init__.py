"""LightningModules, one per training mode."""

from lkd.modules.base import ClassificationModuleBase, NonFiniteLossError
from lkd.modules.classifier import ClassifierModule
from lkd.modules.distill import DistillModule

__all__ = ["ClassificationModuleBase", "ClassifierModule", "DistillModule", "NonFiniteLossError"]
