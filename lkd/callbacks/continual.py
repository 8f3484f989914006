"""Evaluate every class group after each stage of a non-stationary run; log the accuracy matrix."""

from __future__ import annotations

from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lkd.figures import accuracy_heatmap
from lkd.metrics import ContinualAccuracyMatrix, average_accuracy, forgetting


class ContinualEvaluation(Callback):
    """After the last epoch of every stage, measure accuracy on every class group (seen or not).

    Needs a :class:`lkd.data.NonStationaryMNISTDataModule`. Fills ``A[stage, group]`` and logs
    ``continual/avg_acc_seen`` (mean over groups seen so far), ``continual/acc_all`` (mean over all groups)
    and, after the last stage, ``continual/forgetting`` (mean) plus a heatmap of the matrix in TensorBoard.
    The matrix is callback state, so a resumed run keeps the stages already measured.

    Args:
        split: ``"test"`` or ``"val"`` images of each group.
        incremental: ``"class"`` predicts over all classes (one head); ``"task"`` restricts the prediction
            to the evaluated group's classes (the task identity is given at test time).
    """

    def __init__(self, split: Literal["test", "val"] = "test", incremental: Literal["class", "task"] = "class"):
        if split not in ("test", "val"):
            raise ValueError(f"split must be 'test' or 'val', got {split!r}")
        if incremental not in ("class", "task"):
            raise ValueError(f"incremental must be 'class' or 'task', got {incremental!r}")
        self.split, self.incremental = split, incremental
        self.matrix: ContinualAccuracyMatrix | None = None
        self._pending_state: dict | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        data = trainer.datamodule
        if not hasattr(data, "group_tensors"):
            raise TypeError(
                f"ContinualEvaluation needs a NonStationaryMNISTDataModule, got {type(data).__name__}. "
                "HINT: use data.class_path: lkd.data.NonStationaryMNISTDataModule"
            )
        self._ensure_matrix(data.num_stages)

    def _ensure_matrix(self, num_stages: int) -> ContinualAccuracyMatrix:
        if self.matrix is None:
            self.matrix = ContinualAccuracyMatrix(num_stages)
        if self._pending_state is not None:  # restored from a checkpoint
            self.matrix.correct.copy_(self._pending_state["correct"])
            self.matrix.total.copy_(self._pending_state["total"])
            self._pending_state = None
        return self.matrix

    @torch.no_grad()
    def evaluate(self, pl_module: pl.LightningModule, data, stage: int) -> torch.Tensor:
        """Fill row ``stage`` of the matrix; returns that row."""
        was_training = pl_module.training
        pl_module.eval()
        try:
            for group in range(data.num_stages):
                images, labels = data.group_tensors(self.split, group)
                logits = torch.cat([pl_module(chunk.to(pl_module.device)) for chunk in images.split(1000)]).cpu()
                if self.incremental == "task":
                    allowed = data.group_labels(group)
                    masked = torch.full_like(logits, float("-inf"))
                    masked[:, allowed] = logits[:, allowed]
                    logits = masked
                self.matrix.update(stage, group, logits.argmax(-1), labels)
        finally:
            pl_module.train(was_training)
        return self.matrix.as_matrix()[stage]

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        data = trainer.datamodule
        epoch = trainer.current_epoch
        if not data.is_stage_end(epoch) or trainer.sanity_checking:
            return
        stage = data.stage_at_epoch(epoch)
        self._ensure_matrix(data.num_stages)
        row = self.evaluate(pl_module, data, stage)
        matrix = self.matrix.as_matrix()
        metrics = {
            "continual/avg_acc_seen": average_accuracy(matrix)[stage].item(),
            "continual/acc_all": row.mean().item(),
        }
        if stage == data.num_stages - 1:
            metrics["continual/forgetting"] = forgetting(matrix).mean().item() if data.num_stages > 1 else 0.0
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=stage)
            if isinstance(logger, TensorBoardLogger) and stage == data.num_stages - 1:
                import matplotlib.pyplot as plt

                fig = accuracy_heatmap(matrix, data.stages)
                logger.experiment.add_figure("continual/accuracy_matrix", fig, global_step=trainer.global_step)
                plt.close(fig)
        rank_zero_info(f"stage {stage} done: accuracy per group {[round(100 * a, 2) for a in row.tolist()]}, {metrics}")

    @override
    def state_dict(self) -> dict:
        if self.matrix is None:
            return {}
        return {"correct": self.matrix.correct.clone(), "total": self.matrix.total.clone()}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        if "correct" in state_dict:
            self._pending_state = state_dict
