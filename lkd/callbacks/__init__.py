"""Small, resumable callbacks for behaviour that changes during training."""

from lkd.callbacks.best_checkpoint import PublishBestCheckpoint, PublishError
from lkd.callbacks.completions import CompletionEvaluation
from lkd.callbacks.continual import ContinualEvaluation
from lkd.callbacks.figures import ConfusionMatrixFigure
from lkd.callbacks.fit_summary import FitSummary
from lkd.callbacks.glue_predictions import GLUEPredictionWriter
from lkd.callbacks.hparams import HParamsConfigCallback
from lkd.callbacks.key_carrying import DiscreteKeyInit, KeyCarrying
from lkd.callbacks.key_phases import EMAKeyUpdate
from lkd.callbacks.lm_report import DistillationReport
from lkd.callbacks.lr_monitor import LearningRateLogger
from lkd.callbacks.on_policy_schedule import OnPolicySchedule
from lkd.callbacks.routing import RouterExpertUsage, RoutingSchedule

__all__ = [
    "CompletionEvaluation", "ConfusionMatrixFigure", "ContinualEvaluation", "DiscreteKeyInit", "DistillationReport", "EMAKeyUpdate", "FitSummary",
    "GLUEPredictionWriter", "HParamsConfigCallback", "KeyCarrying", "LearningRateLogger", "OnPolicySchedule", "PublishBestCheckpoint", "PublishError",
    "RouterExpertUsage", "RoutingSchedule",
]
