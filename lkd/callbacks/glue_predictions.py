"""``lkd predict`` → a GLUE submission file per task."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

# File names the GLUE server expects (gluebenchmark.com, "submission" instructions).
SUBMISSION_FILES = {
    "cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP", "mnli_matched": "MNLI-m",
    "mnli_mismatched": "MNLI-mm", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI", "ax": "AX",
}
# Tasks whose submissions name the label ("entailment") instead of its id.
LABELS_BY_NAME = {"mnli_matched", "mnli_mismatched", "qnli", "rte", "ax"}


class GLUEPredictionWriter(BasePredictionWriter):
    """Writes ``<output_dir>/<TASK>.tsv`` with a header ``index\\tprediction`` and one row per example, in
    index order: the class id, the label name for the NLI tasks, or a score (3 decimals) for regression.
    Under DDP the ranks' predictions are gathered and rank 0 writes the one file.

        lkd predict -c configs/glue/teacher.yaml --ckpt_path checkpoints/glue/sst2/teacher.ckpt
    """

    def __init__(self, output_dir: str = "predictions/glue"):
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir
        self.written: Path | None = None

    @override
    def write_on_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions, batch_indices) -> None:
        data = trainer.datamodule
        idx = torch.cat([p["idx"] for p in predictions]).tolist()
        pred = torch.cat([p["prediction"] for p in predictions]).tolist()
        if trainer.world_size > 1:  # under DDP each rank predicted its own rows: one file, written by rank 0
            shards = [None] * trainer.world_size
            torch.distributed.all_gather_object(shards, (idx, pred))
            idx, pred = [i for shard in shards for i in shard[0]], [v for shard in shards for v in shard[1]]
        if not trainer.is_global_zero:
            return
        task = data.task
        names = data.label_names
        rows = sorted(zip(idx, pred))
        if data.is_regression:
            cells = [f"{v:.3f}" for _, v in rows]
        elif names and (task in LABELS_BY_NAME or task not in SUBMISSION_FILES):  # NLI tasks and your own data: names
            cells = [names[int(v)] for _, v in rows]
        else:
            cells = [str(int(v)) for _, v in rows]
        path = Path(self.output_dir) / f"{SUBMISSION_FILES.get(task, task)}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = ["index\tprediction"] + [f"{i}\t{c}" for (i, _), c in zip(rows, cells)]
        path.write_text("\n".join(lines) + "\n")
        self.written = path
        rank_zero_info(f"GLUE submission for {task}: {len(rows)} predictions written to {path}")
