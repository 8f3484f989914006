"""Sequence-level KD of :class:`lkd.modules.OnPolicyDistillModule` from a teacher cache (``teacher.cache``).

With ``lmbda: 0`` and ``off_policy: teacher`` every training row's completion is the teacher's greedy answer to its
prompt (Kim & Rush 2016, arXiv 1606.07947), which does not change while the student trains. So the teacher answers
once, ``lkd cache-teacher`` (or the first fit) storing per prompt row, keyed by its ``row_index``, the answer's tokens
(at most ``max_new_tokens``) and the teacher's ``top_k`` log-probabilities at temperature T at each answer position
(cache kind ``lm_completions``, :mod:`lkd.cache.store`); training reads both and never runs the teacher. The loss is
the generalized JSD over those k tokens plus a tail bucket (:func:`lkd.losses.on_policy.generalized_jsd_topk`), the
live ``loss: jsd_topk`` on the same completion: ``jsd_topk`` is the default with a cache, and ``jsd`` (the full
vocabulary, which a cache does not hold) and ``sampled`` (on-policy rows only) are refused.

The cache holds the validation split too (the held-out prompts' teacher answers), so a cached fit scores validation
on those instead of the references. The test split, and :class:`lkd.callbacks.CompletionEvaluation`'s teacher columns,
run the teacher (it is still loaded: a cache replaces its targets, not its weights).

Refused when the module is built (:func:`cache_problems`): ``lmbda > 0`` (the teacher must score the student's new
samples), ``off_policy: reference``, a ``router``, a ``teacher_tokenizer``, ``replay_steps > 1``; a cache written for
another teacher, prompts, tokenizer, ``max_new_tokens``, ``top_k`` or T is refused when the fit starts
(:class:`lkd.cache.StaleTeacherCacheError`).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch

from lkd.data.prompts import join_prompt_completion
from lkd.losses.kd import teacher_topk
from lkd.models.sampling import Completions
from lkd.modules.routed_teacher import TeacherPasses
from lkd.teacher import Teacher

CACHE_KIND = "lm_completions"
"""The ``kind`` of a sequence-level KD cache's description (:mod:`lkd.cache.store`)."""
CACHE_LOSS = "jsd_topk"
"""The one loss a cache can serve: the teacher's top-k plus a tail bucket."""


def cache_problems(teacher: Teacher, *, lmbda: float, off_policy: str, loss: str, router, teacher_tokenizer: str | None,
                   replay_steps: int, top_k: int, vocab: int) -> list[str]:
    """Why ``teacher.cache`` cannot serve these settings (empty: it can, or there is no cache)."""
    path = teacher.cache_path
    if path is None:
        return []
    drop = "or remove model.init_args.teacher.cache (the live teacher)"
    problems = []
    if lmbda > 0:
        problems.append(f"teacher.cache is {path!r} and lmbda={lmbda}, but on-policy distillation needs the live teacher: it scores "
                        f"completions sampled during training; a cache serves sequence-level KD only. HINT: set "
                        f"model.init_args.lmbda: 0 and off_policy: teacher, {drop}")
    if off_policy != "teacher":
        problems.append(f"off_policy={off_policy!r} with teacher.cache {path!r}: the cache holds the teacher's greedy completions "
                        f"(sequence-level KD), not its scores of the references. HINT: set model.init_args.off_policy: teacher, {drop}")
    if loss != CACHE_LOSS:
        problems.append(f"loss={loss!r} with teacher.cache {path!r}: the cache keeps the teacher's top_k log-probabilities along its "
                        f"completions, not its full distribution. HINT: set model.init_args.loss: {CACHE_LOSS} (the default with a "
                        f"cache), {drop}")
    if router is not None:
        problems.append(f"teacher.cache {path!r} cannot serve a router (the routing re-runs the teacher's experts every step). "
                        f"HINT: remove model.init_args.router, {drop}")
    if teacher_tokenizer is not None:
        problems.append(f"teacher.cache {path!r} serves one tokenizer, got teacher_tokenizer={teacher_tokenizer!r}. HINT: remove "
                        f"model.init_args.teacher_tokenizer, {drop}")
    if replay_steps > 1:
        problems.append(f"replay_steps={replay_steps} with teacher.cache {path!r}: replay saves sampling, and a cached run samples "
                        "nothing. HINT: set model.init_args.replay_steps: 1")
    if not 1 <= top_k <= vocab:
        problems.append(f"top_k must be in 1..{vocab} (the teacher's vocabulary) with teacher.cache, got {top_k}")
    default_top_k = inspect.signature(Teacher).parameters["cache_top_k"].default
    if teacher.cache_top_k not in (default_top_k, top_k):
        problems.append(f"teacher.cache_top_k={teacher.cache_top_k}, but the on-policy cache keeps the module's top_k={top_k} "
                        f"tokens per position. HINT: set model.init_args.top_k: {teacher.cache_top_k} and drop teacher.cache_top_k")
    return problems


def cache_description(*, top_k: int, temperature: float, vocab: int, max_new_tokens: int) -> dict:
    """What a sequence-level KD cache holds (checked against the file when a fit attaches it)."""
    return {"kind": CACHE_KIND, "k": int(top_k), "temperature": float(temperature), "vocab": int(vocab),
            "max_new_tokens": int(max_new_tokens)}


def completion_targets(teacher: torch.nn.Module, batch: dict, taught: Completions, *, max_new_tokens: int, pad_token_id: int,
                       top_k: int, temperature: float) -> dict[str, torch.Tensor]:
    """What a cache stores for a batch of prompts (the module's ``cache_targets``, run without gradient): the teacher's
    greedy completions ``taught`` (B, C) widened to ``max_new_tokens`` M, and its top-k at each completion position,
    from one forward of the joined prompt + completion.

    Returns:
        ``completion_ids`` (B, M) int64 (``pad_token_id`` after a row's end), ``completion_length`` (B,) int64,
        ``topk_logprobs`` (B, M, k) fp32 (log softmax(z / T), 0 past a row's end) and ``topk_indices`` (B, M, k) int64:
        position m is the distribution that predicts completion token m.
    """
    prompt_ids, prompt_mask = batch["prompt_ids"], batch["prompt_mask"]
    (B, P), C = prompt_ids.shape, taught.tokens.shape[1]
    input_ids, attention_mask, _ = join_prompt_completion(prompt_ids, prompt_mask, taught.tokens, taught.mask.long())  # (B, P + C)
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = teacher(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits  # (B, P + C, V)
    logprobs, indices = teacher_topk(logits[:, P - 1:P - 1 + C], top_k, temperature)  # (B, C, k): position P-1+m predicts token m
    logprobs, indices = logprobs * taught.mask[..., None], indices * taught.mask[..., None]  # nothing past a row's end
    tokens = prompt_ids.new_full((B, max_new_tokens), pad_token_id)  # (B, M)
    tokens[:, :C] = taught.tokens
    top_lp, top_ids = logprobs.new_zeros((B, max_new_tokens, top_k)), indices.new_zeros((B, max_new_tokens, top_k))  # (B, M, k)
    top_lp[:, :C], top_ids[:, :C] = logprobs, indices
    return {"completion_ids": tokens, "completion_length": taught.lengths.long(), "topk_logprobs": top_lp, "topk_indices": top_ids}


@dataclass
class CachedCompletions:
    """A batch's rows read from a sequence-level KD cache.

    Attributes:
        tokens: (B, C) the teacher's greedy completions, C = the batch's longest, ``pad`` after a row's end.
        mask: (B, C) 1 on completion tokens (the end-of-sequence token included).
        topk_logprobs: (B, C, k) fp32 the teacher's top-k log-probabilities at T predicting each completion token.
        topk_indices: (B, C, k) int64 their token ids.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    topk_logprobs: torch.Tensor
    topk_indices: torch.Tensor

    @classmethod
    def read(cls, teacher: Teacher, stage: str, row_index: torch.Tensor) -> CachedCompletions | None:
        """The rows ``row_index`` (B,) of the attached cache's ``stage``, or None when no cache serves it (then the teacher
        runs live)."""
        targets = teacher.cached(stage, row_index)
        if targets is None:
            return None
        lengths = targets["completion_length"]  # (B,)
        width = max(int(lengths.max()), 1)
        logprobs, indices = targets["topk"]  # (B, M, k) each
        mask = (torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]).long()  # (B, C)
        return cls(targets["completion_ids"][:, :width], mask, logprobs[:, :width], indices[:, :width])

    def passes(self, prompt_width: int, sequence_width: int) -> TeacherPasses:
        """The teacher's one pass for the joined (B, T) sequences (``T = sequence_width``, prompts of ``prompt_width``):
        ``{"topk": ((B, T-1, k) log-probabilities, (B, T-1, k) ids)}`` aligned with the student's ``logits[:, :-1]``
        (position n predicts token n + 1). Positions outside the completions hold a uniform top-k (finite, and never in
        the loss: the loss mask is 0 there)."""
        B, C, k = self.topk_logprobs.shape
        logprobs = self.topk_logprobs.new_full((B, sequence_width - 1, k), -math.log(k))  # (B, T-1, k)
        indices = torch.arange(k, device=self.topk_indices.device).expand(B, sequence_width - 1, k).clone()  # (B, T-1, k)
        inside = self.mask.bool()[..., None]  # (B, C, 1)
        span = slice(prompt_width - 1, prompt_width - 1 + C)  # position P-1+m predicts completion token m
        logprobs[:, span] = torch.where(inside, self.topk_logprobs, logprobs[:, span])
        indices[:, span] = torch.where(inside, self.topk_indices, indices[:, span])
        return TeacherPasses([{"topk": (logprobs, indices)}])
