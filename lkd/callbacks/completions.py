"""Scores a language-model student by what it writes: at the end of validation and test, greedy completions of held-out
prompts compared with the data's reference completions and with the teacher's, and the teacher's judgement of the
student's own samples (the evaluation of on-policy distillation, GKD arXiv 2306.13649, Sec. 4).

Logged per stage (``val/…``, ``test/…``):

- ``exact_match``: the share of greedy completions a checker accepts against the reference (with ``checker``);
- ``rougeL_reference`` / ``rougeL_teacher``: ROUGE-L F1 (Lin 2004, the ``rouge_score`` package) of the greedy
  completion against the reference and against the teacher's greedy completion;
- ``teacher_nll``: the teacher's mean per-token NLL of completions the student samples (lower: text the teacher
  finds likely);

and a TensorBoard text table of the first ``show`` prompts with the reference, the student's and the teacher's
completions.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import lightning.pytorch as pl
import torch
from typing_extensions import override

CHECKERS = {"exact_match": "lkd.data.arithmetic.exact_match"}


def load_checker(name: str) -> Callable[[str, str], bool]:
    """A checker ``(prediction, reference) -> bool`` by short name (``exact_match``) or dotted path."""
    path = CHECKERS.get(name, name)
    module, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"checker {name!r} is neither one of {sorted(CHECKERS)} nor an importable function "
                         "('package.module.function'). HINT: checker: exact_match") from None


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of two texts (``rouge_score``, no stemming)."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(reference, prediction)["rougeL"].fmeasure


class CompletionEvaluation(pl.Callback):
    """Greedy and sampled completions of held-out prompts, scored (see the module docstring). For
    :class:`lkd.modules.OnPolicyDistillModule` and :class:`lkd.modules.CompletionSFTModule` (no teacher: no teacher
    columns) on prompt data (:class:`lkd.data.PromptDataModule`). The teacher columns come from the module's
    ``teacher_greedy`` and ``teacher_nll``, which know the teacher's tokens (its own, across tokenizers).

    Args:
        max_batches: held-out batches scored per stage (None: all).
        checker: ``exact_match`` or ``package.module.function`` returning whether a completion is right; None: no
            exact match.
        compare_teacher: also decode the teacher's greedy completions (ROUGE-L against them, shown in the table).
        teacher_nll: also sample the student and score the samples by the teacher (``teacher_nll``).
        show: prompts shown in the TensorBoard text table.
    """

    def __init__(self, max_batches: int | None = 4, checker: str | None = None, compare_teacher: bool = True, teacher_nll: bool = True,
                 show: int = 4):
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches must be >= 1 or None (all), got {max_batches}")
        self.max_batches, self.checker_name, self.compare_teacher, self.show = max_batches, checker, compare_teacher, show
        self.teacher_nll = teacher_nll
        self.checker = load_checker(checker) if checker is not None else None
        self._batches: list[dict] = []

    @override
    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._batches = []

    @override
    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._batches = []

    def _keep(self, batch, batch_idx: int, dataloader_idx: int) -> None:
        if dataloader_idx == 0 and (self.max_batches is None or batch_idx < self.max_batches):
            self._batches.append(batch)

    @override
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._keep(batch, batch_idx, dataloader_idx)

    @override
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._keep(batch, batch_idx, dataloader_idx)

    @override
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.evaluate(trainer, pl_module, "val")

    @override
    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self.evaluate(trainer, pl_module, "test")

    @torch.no_grad()
    def scores(self, pl_module, batches: list[dict]) -> tuple[dict[str, float], list[tuple[str, ...]]]:
        """``({metric: value}, [(prompt, reference, student, teacher), ...])`` over ``batches``."""
        from lkd.tokenizers import as_tokenizer

        tokenizer = as_tokenizer(pl_module.tokenizer)
        decode = lambda ids, mask: tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=True)  # noqa: E731
        sums = {"exact_match": 0.0, "rougeL_reference": 0.0, "rougeL_teacher": 0.0}
        counts = dict.fromkeys(sums, 0)
        nll, nll_tokens, rows = 0.0, 0, []
        model, teacher_model = pl_module.trained_model, getattr(pl_module, "teacher", None)
        for batch in batches:
            ids, mask = batch["prompt_ids"], batch["prompt_mask"]
            student = pl_module.sample(model, ids, mask, temperature=0.0)
            # the teacher's greedy answers and its NLL of the student's own samples, through the module (it knows the
            # teacher's tokens: across tokenizers its own prompts, and the completions read as text)
            teacher = pl_module.teacher_greedy(batch) if self.compare_teacher and teacher_model is not None else None
            if teacher_model is not None and self.teacher_nll:
                sampled = pl_module.sample(model, ids, mask, temperature=getattr(pl_module, "sample_temperature", 1.0))
                total, counted = pl_module.teacher_nll(batch, sampled)
                nll, nll_tokens = nll + total, nll_tokens + counted
            for r in range(len(ids)):
                text = decode(student.tokens[r], student.mask[r])
                ref = batch["completion_text"][r] if "completion_text" in batch else None
                has_ref = ref is not None and bool(batch["completion_mask"][r].any())
                if has_ref:
                    sums["rougeL_reference"] += rouge_l(text, ref)
                    counts["rougeL_reference"] += 1
                    if self.checker is not None:
                        sums["exact_match"] += float(self.checker(text, ref))
                        counts["exact_match"] += 1
                teacher_text = decode(teacher.tokens[r], teacher.mask[r]) if teacher is not None else ""
                if teacher is not None:
                    sums["rougeL_teacher"] += rouge_l(text, teacher_text)
                    counts["rougeL_teacher"] += 1
                rows.append((batch["prompt_text"][r], ref if has_ref else "", text, teacher_text))
        values = {k: sums[k] / counts[k] for k in sums if counts[k]}
        if nll_tokens:
            values["teacher_nll"] = nll / nll_tokens
        return values, rows

    def evaluate(self, trainer, pl_module, stage: str) -> None:
        if not self._batches:
            return
        values, rows = self.scores(pl_module, self._batches)
        self._batches = []
        for name, value in values.items():
            pl_module.log(f"{stage}/{name}", value, sync_dist=True)
        experiment = getattr(trainer.logger, "experiment", None)
        if self.show and hasattr(experiment, "add_text") and trainer.is_global_zero:
            cell = lambda s: s.replace("|", "\\|").replace("\n", " ")  # noqa: E731
            lines = ["| prompt | reference | student | teacher |", "|---|---|---|---|"]
            lines += [f"| {' | '.join(cell(c) for c in row)} |" for row in rows[:self.show]]
            experiment.add_text(f"{stage}/completions", "\n".join(lines), global_step=trainer.global_step)
