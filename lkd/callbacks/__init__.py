"""Small, resumable callbacks for behaviour that changes during training."""

from lkd.callbacks.best_checkpoint import PublishBestCheckpoint
from lkd.callbacks.continual import ContinualEvaluation
from lkd.callbacks.key_phases import EMAKeyUpdate
from lkd.callbacks.lr_monitor import LearningRateLogger

__all__ = ["ContinualEvaluation", "EMAKeyUpdate", "LearningRateLogger", "PublishBestCheckpoint"]
