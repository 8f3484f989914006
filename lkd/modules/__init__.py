"""LightningModules, one per training mode."""

from lkd.modules.base import ClassificationModuleBase, NonFiniteLossError
from lkd.modules.classifier import ClassifierModule
from lkd.modules.distill import DistillModule
from lkd.modules.glue import GLUEClassifierModule, GLUEDistillModule

__all__ = ["ClassificationModuleBase", "ClassifierModule", "DistillModule", "GLUEClassifierModule", "GLUEDistillModule", "NonFiniteLossError"]
