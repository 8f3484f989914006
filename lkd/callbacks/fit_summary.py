"""What a finished fit says on the console: its best monitored value and epoch, where the best checkpoint went, and
the commands that come next."""

from __future__ import annotations

import shlex
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lkd.callbacks.best_checkpoint import PublishBestCheckpoint


def _best_epoch(path: str) -> tuple[int | None, int | None]:
    """``(epoch, global_step)`` recorded in a Lightning checkpoint (read lazily, tensors not loaded)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return ckpt.get("epoch"), ckpt.get("global_step")
    except Exception:  # noqa: BLE001 - the summary never fails a finished run
        return None, None


class FitSummary(Callback):
    """At the end of ``fit`` (rank 0), one block on the console::

        Fit done: best val/acc 0.9912 at epoch 3 (step 1720), runs/mnist_teacher/version_0/checkpoints/ep3-acc0.9912.ckpt
        Published to checkpoints/mnist/teacher.ckpt
        Next:
          lkd test -c configs/mnist/teacher.yaml --ckpt_path checkpoints/mnist/teacher.ckpt
          lkd export -c configs/mnist/teacher.yaml --ckpt_path checkpoints/mnist/teacher.ckpt --to exported/teacher
          tensorboard --logdir runs

    Args:
        command: the options of the fit (``-c FILE`` and overrides, without the subcommand), repeated in the next
            commands so they read the same data and model; set by the ``lkd`` command.
    """

    def __init__(self, command: list[str] | None = None):
        self.command = list(command or [])

    def lines(self, trainer: pl.Trainer) -> list[str]:
        ckpt = trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
        publisher = next((cb for cb in trainer.callbacks if isinstance(cb, PublishBestCheckpoint)), None)
        if publisher is not None:
            publisher.publish(trainer)
        if not best:
            return ["Fit done: no checkpoint was written (no validation ran, or checkpointing is off); nothing was published."]
        score, monitor = getattr(ckpt, "best_model_score", None), getattr(ckpt, "monitor", None)
        epoch, step = _best_epoch(best)
        where = f" at epoch {epoch} (step {step})" if epoch is not None else ""
        value = f"best {monitor} {float(score):.4f}{where}" if score is not None and monitor else "last checkpoint"
        lines = [f"Fit done: {value}, {best}"]
        target = best
        if publisher is not None and publisher.path is not None and publisher.published:
            target = str(publisher.path)
            lines.append(f"Published to {target}")
        options = [a for a in self.command if not a.startswith("--ckpt_path")]
        options = shlex.join(options) if options else "-c CONFIG"
        name = Path(target).stem
        lines += ["Next:", f"  lkd test {options} --ckpt_path {target}",
                  f"  lkd export {options} --ckpt_path {target} --to exported/{name}"]
        log_dir = getattr(trainer.logger, "save_dir", None) if trainer.logger is not None else None
        if log_dir:
            lines.append(f"  tensorboard --logdir {log_dir}")
        return lines

    @override
    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and not trainer.fast_dev_run and not trainer.sanity_checking:
            rank_zero_info("\n".join(self.lines(trainer)))
