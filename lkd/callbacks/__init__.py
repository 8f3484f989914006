"""Small, resumable callbacks for behaviour that changes during training."""

from lkd.callbacks.best_checkpoint import PublishBestCheckpoint

__all__ = ["PublishBestCheckpoint"]
