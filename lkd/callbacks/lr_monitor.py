"""Learning-rate logging that stays out of the way of runs without a logger."""

from __future__ import annotations

from lightning.pytorch.callbacks import LearningRateMonitor
from typing_extensions import override


class LearningRateLogger(LearningRateMonitor):
    """Lightning's ``LearningRateMonitor``, silently off when the trainer has no logger (``logger: false``),
    instead of failing the run; so it can be a default for every ``lkd`` run."""

    @override
    def on_train_start(self, trainer, *args, **kwargs) -> None:
        self._disabled = not trainer.loggers
        if not self._disabled:
            super().on_train_start(trainer, *args, **kwargs)

    @override
    def on_train_batch_start(self, trainer, *args, **kwargs) -> None:
        if not self._disabled:
            super().on_train_batch_start(trainer, *args, **kwargs)

    @override
    def on_train_epoch_start(self, trainer, *args, **kwargs) -> None:
        if not self._disabled:
            super().on_train_epoch_start(trainer, *args, **kwargs)
