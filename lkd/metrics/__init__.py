"""torchmetrics-style metrics."""

from lkd.metrics.continual import ContinualAccuracyMatrix, average_accuracy, forgetting
from lkd.metrics.glue import glue_metric_names, glue_metrics, glue_score
from lkd.metrics.retention import BitsPerByte, Perplexity, RetentionMetrics

__all__ = ["BitsPerByte", "ContinualAccuracyMatrix", "Perplexity", "RetentionMetrics", "average_accuracy", "forgetting", "glue_metric_names",
           "glue_metrics", "glue_score"]
