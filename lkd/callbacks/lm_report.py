"""The test report of a distilled language model: retention, compression, speed and memory."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lkd.memory import count_parameters
from lkd.metrics.retention import RetentionMetrics
from lkd.models.causal_lm import state_bytes
from lkd.timing import peak_memory_mb, tokens_per_second


class DistillationReport(Callback):
    """At the end of ``lkd test`` of a :class:`lkd.modules.LMDistillModule`: how much of the teacher the student
    kept, at what size and speed.

    * ``retention`` (:class:`lkd.metrics.RetentionMetrics`, against the teacher's own routing): KL(teacher ‖
      student), top-1 / top-5 agreement, teacher and student perplexity and their ratio;
    * ``compression``: parameters and bytes of both models and their ratio;
    * ``speed``: tokens/s of a no-grad forward of each model on the first test batch (at most
      ``timing_batch_size`` sequences; :func:`lkd.timing.tokens_per_second`, the benchmarks' timer) and the ratio;
    * ``peak_memory_mb`` of the process.

    Every number is logged as ``test/<name>`` and, on rank 0 outside ``fast_dev_run``, written to
    ``retention.json`` and ``retention.md`` in ``report_dir`` (default: the logger's folder, else
    ``runs/lm_report``). The last report is kept as :attr:`report`.

    Args:
        report_dir: where the files go.
        timing_batch_size: sequences of the first test batch used for timing.
        repeats: timed forwards per model (after one burn-in).
    """

    def __init__(self, report_dir: str | None = None, *, timing_batch_size: int = 4, repeats: int = 3):
        if timing_batch_size < 1 or repeats < 1:
            raise ValueError(f"timing_batch_size and repeats must be >= 1, got {timing_batch_size} and {repeats}")
        self.report_dir, self.timing_batch_size, self.repeats = report_dir, timing_batch_size, repeats
        self.report: dict = {}
        self._retention: RetentionMetrics | None = None
        self._timing_batch: torch.Tensor | None = None

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._retention = RetentionMetrics().to(pl_module.device)
        self._timing_batch = None

    @override
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not isinstance(outputs, dict) or "student_logits" not in outputs:
            return
        self._retention.update(outputs["student_logits"], outputs["teacher_logits"], batch["input_ids"])
        if self._timing_batch is None:
            self._timing_batch = batch["input_ids"][: self.timing_batch_size]

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._retention is None or not self._retention.update_called:
            return
        teacher, student = pl_module.teacher.model, pl_module.student
        report = {"retention": self._retention.compute()}
        compression = {"teacher_params": count_parameters(teacher), "student_params": count_parameters(student),
                       "teacher_bytes": state_bytes(teacher), "student_bytes": state_bytes(student)}
        compression["param_ratio"] = compression["teacher_params"] / compression["student_params"]
        report["compression"] = compression
        if self._timing_batch is not None:
            speed = {f"{name}_tokens_per_s": tokens_per_second(model, self._timing_batch, repeats=self.repeats)
                     for name, model in (("teacher", pl_module.teacher), ("student", student))}
            speed["speed_ratio"] = speed["student_tokens_per_s"] / speed["teacher_tokens_per_s"]
            report["speed"] = speed
        report["peak_memory_mb"] = peak_memory_mb(pl_module.device)
        for group in ("retention", "compression", "speed"):
            for key, value in report.get(group, {}).items():
                pl_module.log(f"test/{key}", float(value))
        self.report = report
        if trainer.is_global_zero and not trainer.sanity_checking and not trainer.fast_dev_run:
            self.write(report, self._folder(trainer))

    def _folder(self, trainer: pl.Trainer) -> Path:
        logger_dir = trainer.logger.log_dir if trainer.logger is not None else None
        return Path(self.report_dir or logger_dir or "runs/lm_report")

    @staticmethod
    def write(report: dict, folder: Path) -> Path:
        """``retention.json`` and a Markdown table ``retention.md`` in ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "retention.json").write_text(json.dumps(report, indent=2))
        lines = ["| group | metric | value |", "|---|---|---|"]
        for group, values in report.items():
            if isinstance(values, dict):
                lines += [f"| {group} | {k} | {v:.4g} |" for k, v in values.items()]
            else:
                lines.append(f"| {group} | {group} | {values:.4g} |")
        (folder / "retention.md").write_text("# Distillation report\n\n" + "\n".join(lines) + "\n")
        rank_zero_info(f"retention report written to {folder}/retention.json and retention.md")
        return folder

    @override
    def state_dict(self) -> dict:
        return {"report": self.report}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self.report = state_dict.get("report", {})
