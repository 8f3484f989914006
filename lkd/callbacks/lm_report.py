"""The test report of a distilled language model: retention, compression, speed and memory."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lkd.evaluation import peak_memory_mb, tokens_per_second
from lkd.memory import count_parameters
from lkd.metrics.retention import RetentionMetrics
from lkd.models.causal_lm import state_bytes


_SUMS = ("student_nll_sum", "student_tokens", "student_bytes", "teacher_nll_sum", "teacher_tokens", "teacher_bytes")


class DistillationReport(Callback):
    """At the end of ``lkd test`` of a :class:`lkd.modules.LMDistillModule`: how much of the teacher the student
    kept, at what size and speed.

    * ``retention`` (:class:`lkd.metrics.RetentionMetrics`, against the teacher's own routing): KL(teacher ‖
      student), top-1 / top-5 agreement, teacher and student perplexity and their ratio;
    * ``compression``: parameters and bytes of both models and their ratio;
    * ``speed``: tokens/s of a no-grad forward of each model on the first test batch (at most
      ``timing_batch_size`` sequences; :func:`lkd.evaluation.tokens_per_second`, the benchmarks' timer) and the ratio;
    * ``peak_memory_mb`` of the process.

    With two tokenizers (a cross-tokenizer module) the vocabularies differ, so ``retention`` holds what does
    compare: both models' **bits per byte** on the same text and their ratio, and each model's perplexity per
    own token; ``speed`` times each model on its own tokens of the same blocks (blocks/s ratio). With one
    tokenizer ``retention`` also has both models' bits per byte.

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
        self._teacher_timing_batch: torch.Tensor | None = None
        self._sums = dict.fromkeys(_SUMS, 0.0)

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._retention = RetentionMetrics().to(pl_module.device)
        self._timing_batch = None
        self._teacher_timing_batch = None
        self._sums = dict.fromkeys(_SUMS, 0.0)

    @override
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not isinstance(outputs, dict):
            return
        if "teacher_nll_sum" in outputs:  # two tokenizers: sums over each model's own tokens of the same text
            for key in _SUMS:
                value = outputs.get(key)
                self._sums[key] += float(value) if value is not None else float("nan")
            if self._timing_batch is None:
                self._timing_batch = batch["input_ids"][: self.timing_batch_size]
                self._teacher_timing_batch = batch["teacher_input_ids"][: self.timing_batch_size]
            return
        if "student_logits" not in outputs:
            return
        self._retention.update(outputs["student_logits"], outputs["teacher_logits"], batch["input_ids"])
        table = getattr(pl_module, "token_bytes", None)
        if table is not None:
            self._sums["student_bytes"] += float(table.to(batch["input_ids"].device)[batch["input_ids"][:, 1:]].sum())
        if self._timing_batch is None:
            self._timing_batch = batch["input_ids"][: self.timing_batch_size]

    def _cross_retention(self) -> dict[str, float]:
        s, ln2 = self._sums, math.log(2)
        out = {"teacher_bpb": s["teacher_nll_sum"] / (ln2 * max(s["teacher_bytes"], 1)),
               "student_bpb": s["student_nll_sum"] / (ln2 * max(s["student_bytes"], 1)),
               "teacher_ppl": math.exp(s["teacher_nll_sum"] / max(s["teacher_tokens"], 1)),
               "student_ppl": math.exp(s["student_nll_sum"] / max(s["student_tokens"], 1))}
        out["bpb_ratio"] = out["student_bpb"] / out["teacher_bpb"]
        return out

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        cross = self._sums["student_tokens"] > 0
        if self._retention is None or not (cross or self._retention.update_called):
            return
        teacher, student = pl_module.teacher.model, pl_module.trained_model
        if cross:
            report = {"retention": self._cross_retention()}
        else:
            report = {"retention": self._retention.compute()}
            if self._sums["student_bytes"] > 0:  # one tokenizer: both models predict the same tokens, same bytes
                nbytes = math.log(2) * self._sums["student_bytes"]
                report["retention"] |= {"teacher_bpb": float(self._retention.teacher_nll) / nbytes,
                                        "student_bpb": float(self._retention.student_nll) / nbytes}
        compression = {"teacher_params": count_parameters(teacher), "student_params": count_parameters(student),
                       "teacher_bytes": state_bytes(teacher), "student_bytes": state_bytes(student)}
        compression["param_ratio"] = compression["teacher_params"] / compression["student_params"]
        report["compression"] = compression
        if self._timing_batch is not None and cross:  # each on its own tokens of the same text: blocks per second
            speed = {"teacher_tokens_per_s": tokens_per_second(pl_module.teacher, self._teacher_timing_batch, repeats=self.repeats),
                     "student_tokens_per_s": tokens_per_second(student, self._timing_batch, repeats=self.repeats)}
            speed["speed_ratio"] = ((speed["student_tokens_per_s"] / self._timing_batch.numel())
                                    / (speed["teacher_tokens_per_s"] / self._teacher_timing_batch.numel()))
            report["speed"] = speed
        elif self._timing_batch is not None:
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
