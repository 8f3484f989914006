"""GLUE's metrics per task, from torchmetrics (Wang et al. 2019, Table 1)."""

from __future__ import annotations

import warnings

from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryF1Score, MulticlassAccuracy, MulticlassMatthewsCorrCoef
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

# The tasks whose official metric is not plain accuracy. Any other classification task gets accuracy;
# any task with a float label gets Pearson + Spearman.
_EXTRA = {"mrpc": ("acc", "f1"), "qqp": ("acc", "f1"), "cola": ("mcc",)}


def glue_metric_names(task: str, num_classes: int) -> tuple[str, ...]:
    """Names of the metrics of ``task``: ("pearson", "spearman") when ``num_classes == 1`` (regression)."""
    if num_classes == 1:
        return ("pearson", "spearman")
    names = _EXTRA.get(task, ("acc",))
    if "f1" in names and num_classes != 2:
        raise ValueError(f"task {task!r} reports binary F1 but has {num_classes} classes")
    return names


def _spearman() -> SpearmanCorrCoef:
    """Spearman's rank correlation keeps every (prediction, label) pair of an epoch to rank them: a GLUE dev set
    (STS-B: 1,500 pairs) is a few kilobytes, so torchmetrics' warning about large buffers is not for this use."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Metric `SpearmanCorrcoef` will save all targets")
        return SpearmanCorrCoef()


def glue_metrics(task: str, num_classes: int) -> MetricCollection:
    """The task's metrics, fed ``(predictions, labels)``: logits-argmax class ids, or (B,) scores for regression.

    ``score`` of a task (:func:`glue_score`) is the mean of its metrics, as the GLUE leaderboard averages
    e.g. MRPC's accuracy and F1.
    """
    factories = {
        "acc": lambda: MulticlassAccuracy(num_classes, average="micro"),
        "f1": BinaryF1Score,
        "mcc": lambda: MulticlassMatthewsCorrCoef(num_classes),
        "pearson": PearsonCorrCoef,
        "spearman": _spearman,
    }
    return MetricCollection({name: factories[name]() for name in glue_metric_names(task, num_classes)})


def glue_score(values: dict) -> float:
    """The task score: mean of its metric values (``{name: value}``), as on the GLUE leaderboard."""
    return sum(float(v) for v in values.values()) / len(values)
