"""Copy the best checkpoint of a run to a stable path, so later configs can name it."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override


class PublishBestCheckpoint(Callback):
    """Keeps ``path`` a copy of ``trainer.checkpoint_callback.best_model_path``.

    The copy is refreshed at every epoch start, at the end of fit and when fit fails, so a crashed run
    still leaves its best checkpoint at the stable path. The copy is written to a temporary file first and
    renamed, so a reader never sees half a file. ``path=None`` disables it.

    Args:
        path: stable destination, e.g. ``checkpoints/mnist/teacher.ckpt``.
    """

    def __init__(self, path: str | None = None):
        self.path = Path(path) if path else None
        self._published: str = ""

    @property
    def state_key(self) -> str:
        return self._generate_state_key(path=str(self.path))

    def publish(self, trainer: pl.Trainer) -> None:
        ckpt = trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
        if self.path is None or not best or best == self._published or not trainer.is_global_zero:
            return
        if not Path(best).is_file():  # a run resumed from another folder: its best file is not where it was recorded
            rank_zero_warn(f"best checkpoint {best} (recorded in the resumed checkpoint) is not there from {Path.cwd()}; "
                           f"{self.path} is left as it is until a new best is written")
            self._published = best
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        shutil.copyfile(best, tmp)
        tmp.replace(self.path)
        self._published = best
        rank_zero_info(f"Best checkpoint {best} published to {self.path}")

    @override
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.publish(trainer)

    @override
    def on_fit_end(self, trainer, pl_module) -> None:
        self.publish(trainer)

    @override
    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.publish(trainer)

    @override
    def state_dict(self) -> dict:
        return {"published": self._published}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self._published = state_dict.get("published", "")
