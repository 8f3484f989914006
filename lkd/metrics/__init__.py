"""torchmetrics-style metrics."""

from lkd.metrics.continual import ContinualAccuracyMatrix, average_accuracy, forgetting

__all__ = ["ContinualAccuracyMatrix", "average_accuracy", "forgetting"]
