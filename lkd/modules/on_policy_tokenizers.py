"""On-policy distillation across tokenizers (:class:`lkd.modules.OnPolicyDistillModule` with ``teacher_tokenizer``): the
teacher reads the student's completions as text, in its own tokens, after its own rendering of the prompt (its chat
template: :class:`lkd.data.PromptDataModule` yields ``teacher_prompt_ids``), and the two models are compared on the
completion's aligned chunks with the cross-tokenizer losses of :mod:`lkd.losses.cross_tokenizer`.

Per row, the completion in the student's tokens (its sample, the reference, or the teacher's greedy answer read back
into the student's tokens) is spelled as text and read by the teacher's tokenizer, plus the teacher's EOS where the
student's completion ended with its EOS; :func:`lkd.data.alignment.align_completion` cuts both into chunks in byte
positions. The batch's chunk table (:class:`lkd.losses.chunks.ChunkIndex`, positions in the joined ``[prompt,
completion]`` sequences of each side) starts with chunk 0 = each side's last prompt token, which is never predicted:
it makes chunk 1 (the completion's first) predicted from the prompt on both sides. Every chunk c >= 1 is then written by
both models after the same text (each its own rendering of the prompt, then the same completion text), and no prompt
or template token is ever in a loss:

    alm:        L = Σ_{c>=1} KL( Bern(p_t(c)^{1/T}) ‖ Bern(p_s(c)^{1/T}) ) / #chunks     (ALM, arXiv:2503.20083)
    shared_kl:  T² · KL over the tokens both vocabularies spell alike + a tail, on chunks of one token a side
    uld:        L1 between the sorted next-token distributions at each chunk's start        (ULD, arXiv:2402.12030)

with p(c) = Π p(tokens of c | text before c) on each side (the EOS chunk: each model's probability of ending there).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lkd.data.alignment import align_completion, spell_tokens
from lkd.data.prompts import join_prompt_completion, pad_sequences
from lkd.losses.chunks import ChunkIndex
from lkd.losses.cross_tokenizer import CROSS_LOSS_NAMES, cross_tokenizer_loss_terms
from lkd.losses.kd import teacher_topk
from lkd.losses.lm import token_logprobs
from lkd.models.sampling import Completions, sample_completions
from lkd.tokenizers import same_tokenizer, shared_vocabulary, token_bytes, tokenizer_source

CROSS_LOSSES = CROSS_LOSS_NAMES
"""The ``loss`` choices of :class:`lkd.modules.OnPolicyDistillModule` across tokenizers."""


def distinct_teacher_tokenizer(tokenizer, teacher_tokenizer, *, same_vocab_size: bool):
    """``teacher_tokenizer``, or None where it is the student's own (:func:`lkd.tokenizers.same_tokenizer`: the same
    name, folder or vocabulary): one vocabulary, distilled token by token. A tokenizer object is always another one."""
    if teacher_tokenizer is None or not (isinstance(tokenizer, str) and isinstance(teacher_tokenizer, str)):
        return teacher_tokenizer
    if not same_tokenizer(tokenizer, teacher_tokenizer, load=same_vocab_size):
        return teacher_tokenizer
    rank_zero_info(f"model.init_args.teacher_tokenizer={teacher_tokenizer!r} is the student's tokenizer ({tokenizer!r}): distilling "
                   "over one vocabulary. HINT: drop model.init_args.teacher_tokenizer")
    return None


def tokenizer_problems(loss: str, teacher_tokenizer, *, one_tokenizer_losses: tuple[str, ...], student_vocab: int,
                       teacher_vocab: int, reduction: str, router) -> list[str]:
    """Why ``loss`` and the other options do not fit one tokenizer (``teacher_tokenizer`` None) or two (empty: they do)."""
    ones, twos, name = one_tokenizer_losses, CROSS_LOSSES, tokenizer_source(teacher_tokenizer)
    if teacher_tokenizer is None:
        problems = []
        if student_vocab != teacher_vocab:
            problems.append(f"the student's vocabulary ({student_vocab}) differs from the teacher's ({teacher_vocab}), and "
                            "model.init_args.teacher_tokenizer is not set. HINT: set it to the teacher's tokenizer (e.g. smollm2) "
                            f"to distil across tokenizers (loss: {' / '.join(twos)}), or build both models with one tokenizer")
        if loss in twos:
            problems.append(f"loss={loss!r} compares two tokenizers, but model.init_args.teacher_tokenizer is not set. HINT: set "
                            f"it to the teacher's tokenizer, or use one of {ones} with one tokenizer")
        elif loss not in ones:
            problems.append(f"loss must be one of {ones} (one tokenizer) or {twos} (with teacher_tokenizer), got {loss!r}")
        return problems
    problems = []
    if loss in ones:
        problems.append(f"loss={loss!r} compares the models token by token over one vocabulary, but the teacher reads its own "
                        f"tokenizer ({name!r}). HINT: across tokenizers use loss: alm (chunk likelihoods), "
                        "shared_kl (the tokens both spell alike) or uld (sorted distributions)")
    elif loss not in twos:
        problems.append(f"loss must be one of {twos} across tokenizers (teacher_tokenizer={name!r}), got {loss!r}")
    if reduction != "token":
        problems.append(f"reduction={reduction!r}: across tokenizers the chunk losses average over the batch's chunks. "
                        "HINT: use reduction: token")
    if router is not None:
        problems.append("a router scores the samples position by position in the student's tokens, which a teacher with its own "
                        f"tokenizer ({name!r}) does not share. HINT: drop model.init_args.router or teacher_tokenizer")
    return problems


@dataclass(frozen=True)
class TeacherReading:
    """A batch's completions as the teacher reads them.

    Attributes:
        input_ids: (B, T) ``[pads, teacher prompt, teacher completion (+ EOS), pads]``.
        attention_mask: (B, T) 1 on prompt and completion tokens.
        completion_mask: (B, T) 1 on the teacher's completion tokens.
        index: the chunks (B, C) in positions of the student's joined sequences (B, S) and of ``input_ids``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    index: ChunkIndex

    @property
    def position_ids(self) -> torch.Tensor:
        """(B, T) positions counted from each row's first real token (prompts are left-padded)."""
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)


class TeacherTokenizer:
    """The teacher's own tokenizer in on-policy distillation: what the data is told, the tables bound from it, the
    teacher's reading of a batch's completions, the loss on the aligned chunks, and the teacher's greedy answers in the
    student's tokens (``off_policy: teacher``).

    Args:
        name: the teacher's tokenizer (:func:`lkd.tokenizers.load_tokenizer`'s names, or a tokenizer object).
        loss: one of :data:`CROSS_LOSSES`.
        temperature: T of ``uld`` / ``shared_kl`` (both distributions) and τ of ``alm``.
        top_k: the teacher tokens per chunk start that ``uld`` and ``shared_kl`` read.
        teacher_context: the teacher's context: a prompt plus its reading of a completion is cut to it (whole chunks).
    """

    def __init__(self, name, loss: str, *, temperature: float, top_k: int, teacher_context: int | None = None):
        if loss not in CROSS_LOSSES:
            raise ValueError(f"loss must be one of {CROSS_LOSSES} across tokenizers, got {loss!r}")
        self.name, self.loss, self.temperature, self.top_k = name, loss, temperature, top_k  # name: a name or a tokenizer object
        self.teacher = self.student = None  # tokenizer objects, from the data (bind)
        self.student_pieces: list[bytes | None] = []  # bytes per student token id
        self.teacher_pieces: list[bytes | None] = []
        self.teacher_to_student: torch.Tensor | None = None  # (V_t,) for shared_kl
        self.student_eos = self.student_pad = self.teacher_eos = self.teacher_pad = None
        self.teacher_context = teacher_context

    def data_links(self) -> dict:
        """What :meth:`lkd.data.PromptDataModule.connect` is told: the teacher's tokenizer and context."""
        return {"teacher_tokenizer": self.name, "teacher_context_length": self.teacher_context}

    def bind(self, datamodule, device: torch.device) -> None:
        """Both tokenizers, their bytes per token, EOS and pad ids from the data; the shared-token map for ``shared_kl``."""
        teacher, name = getattr(datamodule, "teacher_tokenizer", None), tokenizer_source(self.name)
        if teacher is None:
            raise ValueError(f"model.init_args.teacher_tokenizer={name!r}, but {type(datamodule).__name__} gives no teacher tokens "
                             "of the prompts. HINT: use lkd.data.PromptDataModule (connect() with teacher_tokenizer)")
        self.teacher, self.student = teacher, datamodule.tokenizer
        self.student_pieces, self.teacher_pieces = token_bytes(self.student), token_bytes(teacher)
        self.student_eos, self.student_pad = self.student.eos_token_id, datamodule.pad_id
        self.teacher_eos, self.teacher_pad = teacher.eos_token_id, datamodule.teacher_pad_id
        if self.loss == "shared_kl":
            self.teacher_to_student = shared_vocabulary(teacher, self.student).to(device)
            if int((self.teacher_to_student >= 0).sum()) == 0:
                raise ValueError(f"loss='shared_kl': the teacher's tokenizer ({name!r}) and the student's share no token spelled "
                                 "the same way. HINT: use loss: alm (or uld)")

    def read(self, teacher_prompt_ids: torch.Tensor, teacher_prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
             completion_mask: torch.Tensor, *, student_prompt_width: int) -> TeacherReading:
        """The teacher's reading of completions in the student's tokens.

        Args:
            teacher_prompt_ids, teacher_prompt_mask: (B, P_t) the teacher's left-padded prompts.
            completion_ids, completion_mask: (B, C) the student's right-padded completions (EOS included where one ended).
            student_prompt_width: P, the width of the student's left-padded prompts: its completion token j is at P + j.
        """
        B, P_t = teacher_prompt_ids.shape
        device = teacher_prompt_ids.device
        rooms = (self.teacher_context - teacher_prompt_mask.sum(-1)).tolist() if self.teacher_context is not None else [None] * B
        rows = [align_completion(ids[m.bool()].tolist(), self.student_pieces, self.teacher, student_eos=self.student_eos,
                                 teacher_eos=self.teacher_eos, teacher_room=room)
                for ids, m, room in zip(completion_ids, completion_mask, rooms)]
        t_ids, t_mask = pad_sequences([r.teacher_ids for r in rows], self.teacher_pad, side="right", min_length=1)  # (B, C_t)
        input_ids, attention_mask, t_completion = join_prompt_completion(teacher_prompt_ids, teacher_prompt_mask, t_ids.to(device),
                                                                         t_mask.to(device))  # (B, P_t + C_t) each
        P = student_prompt_width
        table = torch.zeros(B, 1 + max(len(r.chunks) for r in rows), 4, dtype=torch.long)  # (B, C, 4) [s0, s1, t0, t1]
        table[:, 0] = torch.tensor([P - 1, P, P_t - 1, P_t])  # chunk 0: the last prompt token of each side, never predicted
        for b, r in enumerate(rows):
            if r.chunks:  # completion token j of each side sits after its prompt
                table[b, 1:1 + len(r.chunks)] = torch.tensor(r.chunks, dtype=torch.long) + torch.tensor([P, P, P_t, P_t])
        num_chunks = torch.tensor([1 + len(r.chunks) for r in rows], dtype=torch.long)  # (B,)
        return TeacherReading(input_ids, attention_mask, t_completion, ChunkIndex.from_table(table.to(device), num_chunks.to(device)))

    def divergence(self, student_logits: torch.Tensor, student_token_logprobs: torch.Tensor, teacher_logits: torch.Tensor,
                   reading: TeacherReading) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The chosen chunk loss and what to log (chunks per row with the prompt's chunk 0, tokens per chunk, the shared mass).

        Args:
            student_logits: (B, S, V_s) over the student's joined sequences.
            student_token_logprobs: (B, S) log p_s of each of their tokens (:func:`lkd.losses.lm.token_logprobs`), 0
                outside the completions: the chunk sums are differences of prefix sums, which then hold completion tokens
                only (a prompt's log-probabilities cannot even round into them).
            teacher_logits: (B, T, V_t) over ``reading.input_ids``.
        """
        student = {"logits": student_logits, "token_logprobs": student_token_logprobs}
        teacher = {"token_logprobs": token_logprobs(teacher_logits, reading.input_ids) * reading.completion_mask}  # (B, T)
        if self.loss != "alm":
            teacher["topk"] = teacher_topk(teacher_logits, min(self.top_k, teacher_logits.shape[-1]), self.temperature)
        shared = None if self.teacher_to_student is None else self.teacher_to_student.to(teacher_logits.device)
        terms, logs = cross_tokenizer_loss_terms(student, teacher, reading.index, {self.loss: 1.0},
                                                 teacher_to_student=shared, temperature=self.temperature,
                                                 alm_temperature=self.temperature)
        return terms[self.loss], logs

    @torch.no_grad()
    def greedy(self, teacher: nn.Module, teacher_prompt_ids: torch.Tensor, teacher_prompt_mask: torch.Tensor, *,
               max_new_tokens: int) -> Completions:
        """The teacher's greedy completions of its own prompts (B, P_t), read back into the student's tokens (with the
        student's EOS where the teacher's ended), cut to ``max_new_tokens`` of them."""
        out = sample_completions(teacher, teacher_prompt_ids, teacher_prompt_mask, max_new_tokens=max_new_tokens,
                                 eos_token_id=self.teacher_eos, pad_token_id=self.teacher_pad, temperature=0.0)
        rows = []
        for tokens, m, ended in zip(out.tokens, out.mask, out.finished.tolist()):
            written = tokens[m.bool()].tolist()[:-1 if ended else None]
            text = spell_tokens([self.teacher_pieces[i] for i in written]).text
            ids = list(self.student(text, add_special_tokens=False)["input_ids"]) if text else []
            rows.append((ids + [self.student_eos] * ended)[:max_new_tokens])
        ids, mask = pad_sequences(rows, self.student_pad, side="right", min_length=1)  # (B, N)
        device = teacher_prompt_ids.device
        finished = torch.tensor([bool(r) and r[-1] == self.student_eos for r in rows], device=device)
        return Completions(tokens=ids.to(device), mask=mask.bool().to(device), lengths=mask.sum(-1).to(device), finished=finished,
                           row_steps=out.row_steps)


__all__ = ["CROSS_LOSSES", "TeacherReading", "TeacherTokenizer", "distinct_teacher_tokenizer", "tokenizer_problems"]
