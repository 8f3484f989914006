"""One tokenizer or two: what LM distillation does differently when the teacher reads the student's tokens
(:class:`OneTokenizer`) or its own tokens of the same text (:class:`TwoTokenizers`, cross-tokenizer distillation).

:class:`lkd.modules.LMDistillModule` picks one at construction and asks it: which losses fit (:meth:`~OneTokenizer.check`),
what the data module is told and what is bound from its tokenizers (:meth:`~OneTokenizer.data_links`,
:meth:`~OneTokenizer.bind`), how a batch's tokens line up (:meth:`~OneTokenizer.tokens`), which loss table compares the
models (:meth:`~OneTokenizer.loss_table`: :func:`lkd.losses.lm.lm_loss_terms` or
:func:`lkd.losses.cross_tokenizer.cross_tokenizer_loss_terms`, one call per teacher pass) and what a test batch gives
:class:`lkd.callbacks.DistillationReport` (:meth:`~OneTokenizer.report`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lkd.losses.chunks import ChunkIndex
from lkd.losses.cross_tokenizer import CROSS_LOSS_NAMES, cross_tokenizer_loss_terms
from lkd.losses.lm import lm_loss_terms, predicted_mask
from lkd.models import causal_lm
from lkd.tokenizers import shared_vocabulary, token_byte_lengths


class VocabularyMismatchError(ValueError):
    """Teacher and student predict over different vocabularies."""


@dataclass(frozen=True)
class BatchTokens:
    """One batch's tokens as the losses read them.

    Attributes:
        student_ids: (B, S).
        teacher_ids: (B, T), the teacher's own tokens of the same text (one tokenizer: the student's).
        index: the aligned chunks (:class:`lkd.losses.chunks.ChunkIndex`; one tokenizer: None).
        student_mask, teacher_mask: (B, S), (B, T) the positions with a prediction in right-padded blocks (one
            tokenizer: None, every position after the first).
    """

    student_ids: torch.Tensor
    teacher_ids: torch.Tensor
    index: ChunkIndex | None = None
    student_mask: torch.Tensor | None = None
    teacher_mask: torch.Tensor | None = None

    @property
    def count(self) -> int:
        """The student's predicted tokens."""
        return self.student_ids[:, 1:].numel() if self.student_mask is None else int(self.student_mask.sum())


class OneTokenizer:
    """Teacher and student share one tokenizer: the KL over one vocabulary, every position compared.

    Args:
        weights: the module's checked ``loss_weights``.
        temperature, contrastive_temperature, alm_temperature: T of the KL and top-k targets, τ of InfoNCE, τ of ALM.
    """

    cross = False
    cache_kind = "lm_topk"

    def __init__(self, weights: dict[str, float], *, temperature: float, contrastive_temperature: float, alm_temperature: float = 1.0):
        self.weights, self.temperature = weights, temperature
        self.contrastive_temperature, self.alm_temperature = contrastive_temperature, alm_temperature
        self.teacher_token_bytes: torch.Tensor | None = None  # (V_t,) UTF-8 bytes per teacher token id (bind)

    def check(self, student_vocab: int, teacher_vocab: int, names: tuple[str, str | None]) -> None:
        """Raise naming the losses and the fix when the losses asked for do not fit one vocabulary."""
        if student_vocab != teacher_vocab:
            raise VocabularyMismatchError(
                f"teacher vocabulary has {teacher_vocab} tokens, student vocabulary has {student_vocab}: the KL needs one "
                "vocabulary. HINT: for a teacher with its own tokenizer set model.init_args.teacher_tokenizer to it and use "
                "the cross-tokenizer losses (loss_weights: {alm: 1.0}, or uld / shared_kl); else build both with the same "
                "tokenizer (vocab_size)"
            )
        if cross := sorted(k for k in CROSS_LOSS_NAMES if self.weights.get(k, 0) > 0):
            raise ValueError(f"loss_weights {cross} compare two tokenizers, but model.init_args.teacher_tokenizer is not set. "
                             "HINT: set it to the teacher's tokenizer, or use kl with one tokenizer")

    def data_links(self, teacher_model) -> dict:
        """What the data module's ``connect`` is told besides the student's tokenizer."""
        return {}

    def bind(self, datamodule, token_bytes: torch.Tensor | None, device: torch.device) -> None:
        """Tables from the data's tokenizers; one tokenizer: the teacher's bytes per token are the student's."""
        self.teacher_token_bytes = token_bytes

    def tokens(self, batch: dict) -> BatchTokens:
        return BatchTokens(batch["input_ids"], batch["input_ids"])

    def loss_table(self, student: dict, teacher: dict, tokens: BatchTokens) -> tuple[dict, dict]:
        """The losses comparing student and teacher for one teacher pass, unweighted, and values to log (none here);
        ``ce``, the student's own, is left to the module."""
        weights = {k: v for k, v in self.weights.items() if k != "ce"}
        return lm_loss_terms(student, teacher, tokens.student_ids, weights, temperature=self.temperature,
                             contrastive_temperature=self.contrastive_temperature), {}

    def report(self, student_out, nll: torch.Tensor, student_bytes, own: dict, tokens: BatchTokens) -> dict:
        """What :class:`lkd.callbacks.DistillationReport` reads from a test batch: both models' logits."""
        return {"student_logits": student_out.logits.detach(), "teacher_logits": own["logits"]}


class TwoTokenizers(OneTokenizer):
    """The teacher reads its own tokens of the same text (aligned blocks, :class:`lkd.data.text.AlignedTokenBlocks`): the
    losses compare the models on the aligned chunks (:mod:`lkd.losses.cross_tokenizer`), each model's NLL is counted
    over its own tokens, and the shared-vocabulary KL reads the teacher → student map of tokens spelled the same way.

    Args:
        weights, temperature, contrastive_temperature, alm_temperature: see :class:`OneTokenizer`.
        teacher_tokenizer: the teacher's tokenizer name (data module, error messages).
    """

    cross = True
    cache_kind = "lm_aligned"

    def __init__(self, weights: dict[str, float], *, teacher_tokenizer: str, temperature: float, contrastive_temperature: float,
                 alm_temperature: float = 1.0):
        super().__init__(weights, temperature=temperature, contrastive_temperature=contrastive_temperature,
                         alm_temperature=alm_temperature)
        self.teacher_tokenizer = teacher_tokenizer
        self.teacher_to_student: torch.Tensor | None = None  # (V_t,) student id per teacher id, -1 where none (bind)

    def check(self, student_vocab: int, teacher_vocab: int, names: tuple[str, str | None]) -> None:
        """Raise naming the losses that need one vocabulary or shared positions, and the fix."""
        w, (student_name, teacher_name) = self.weights, names
        problems = []
        if w.get("kl", 0) > 0:
            problems.append(f"loss_weights.kl={w['kl']} needs one vocabulary, but teacher ({teacher_name}, {teacher_vocab} "
                            f"tokens) and student ({student_name}, {student_vocab} tokens) tokenise differently. HINT: use the "
                            "cross-tokenizer losses alm, uld or shared_kl instead (e.g. loss_weights: {alm: 1.0, ce: 0.5})")
        if w.get("attention", 0) > 0:
            problems.append("loss_weights.attention compares attention maps position by position, which two tokenizers do not "
                            "share. HINT: set it to 0 (feature, layer and contrastive work across tokenizers, at chunk ends)")
        if problems:
            raise VocabularyMismatchError("LMDistillModule (two tokenizers): " + "; ".join(problems))

    def data_links(self, teacher_model) -> dict:
        return {"teacher_tokenizer": self.teacher_tokenizer, "teacher_context_length": causal_lm.context_length(teacher_model)}

    def bind(self, datamodule, token_bytes: torch.Tensor | None, device: torch.device) -> None:
        """The teacher's bytes per token and the teacher → student map of shared tokens, from the data's tokenizers."""
        if not getattr(datamodule, "aligned", False):
            raise ValueError(f"cross-tokenizer distillation needs aligned two-tokenizer blocks, but {type(datamodule).__name__} "
                             "does not provide them. HINT: use lkd.data.TextDataModule")
        teacher_tok, student_tok = datamodule.teacher_tokenizer, datamodule.tokenizer
        self.teacher_token_bytes = token_byte_lengths(teacher_tok).to(device)
        self.teacher_to_student = shared_vocabulary(teacher_tok, student_tok).to(device)
        if self.weights.get("shared_kl", 0) > 0 and int((self.teacher_to_student >= 0).sum()) == 0:
            raise ValueError("loss_weights.shared_kl: the teacher's and the student's vocabularies share no token spelled the "
                             "same way. HINT: use alm or uld")

    def tokens(self, batch: dict) -> BatchTokens:
        s_ids, t_ids = batch["input_ids"], batch["teacher_input_ids"]  # (B, S), (B, T)
        return BatchTokens(s_ids, t_ids, ChunkIndex.from_table(batch["chunks"], batch["num_chunks"]),
                           predicted_mask(batch["length"], s_ids.shape[1]), predicted_mask(batch["teacher_length"], t_ids.shape[1]))

    def loss_table(self, student: dict, teacher: dict, tokens: BatchTokens) -> tuple[dict, dict]:
        """Every aligned term in one call (:func:`lkd.losses.cross_tokenizer.cross_tokenizer_loss_terms`), with its logs."""
        weights = {k: v for k, v in self.weights.items() if k != "ce"}
        return cross_tokenizer_loss_terms(student, teacher, tokens.index, weights, teacher_to_student=self.teacher_to_student,
                                          temperature=self.temperature, alm_temperature=self.alm_temperature,
                                          contrastive_temperature=self.contrastive_temperature)

    def report(self, student_out, nll: torch.Tensor, student_bytes, own: dict, tokens: BatchTokens) -> dict:
        """Each model's NLL sum, tokens and bytes over its own tokens of the same text."""
        count, t_mask, t_table = tokens.student_mask.sum(), tokens.teacher_mask, self.teacher_token_bytes
        return {"student_nll_sum": nll.detach() * count, "student_tokens": count, "student_bytes": student_bytes,
                "teacher_nll_sum": -(own["token_logprobs"].detach() * t_mask).sum(), "teacher_tokens": t_mask.sum(),
                "teacher_bytes": None if t_table is None else (t_table.to(tokens.teacher_ids.device)[tokens.teacher_ids] * t_mask).sum()}
