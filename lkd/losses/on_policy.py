"""Losses of on-policy distillation of causal language models (pure functions on tensors).

On-policy distillation trains the student on completions it sampled itself, scored token by token by the teacher,
so the student learns from its own mistakes rather than only from teacher or data sequences (Agarwal et al. 2024,
"On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes", ICLR 2024, arXiv:2306.13649,
"GKD"; Thinking Machines, "On-Policy Distillation", 2025; Qwen3 Technical Report, 2025, arXiv:2505.09388).
This file holds the per-token divergences (full vocabulary, teacher top-k, or one sampled token), the reduction
over completion tokens and the settings check. Everything is computed in fp32 (safe under 16-bit autocast).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lkd.losses.kd import kd_problems, kl_from_logprobs, topk_buckets

REDUCTIONS = ("token", "sequence")
"""How :func:`reduce_tokens` averages per-token losses: over all completion tokens, or per sequence first."""

__all__ = ["REDUCTIONS", "generalized_jsd", "generalized_jsd_topk", "on_policy_problems", "reduce_tokens",
           "sampled_token_reverse_kl"]


def on_policy_problems(*, beta: float | None = None, lmbda: float | None = None, temperature: float | None = None,
                       reduction: str | None = None) -> list[str]:
    """What is wrong with on-policy distillation settings (empty: nothing); ``None`` skips a setting.

    Rules: ``beta`` in [0, 1] (the generalized JSD's interpolation), ``lmbda`` in [0, 1] (GKD's λ, the fraction of
    batches whose completions the student samples), temperature > 0, ``reduction`` in :data:`REDUCTIONS`.
    """
    problems = []
    if beta is not None and not 0.0 <= beta <= 1.0:
        problems.append(f"beta must be in [0, 1] (0 = forward KL, 1 = reverse KL), got {beta}")
    if lmbda is not None and not 0.0 <= lmbda <= 1.0:
        problems.append(f"lmbda must be in [0, 1] (the fraction of batches the student samples), got {lmbda}")
    problems += kd_problems(temperature=temperature)
    if reduction is not None and reduction not in REDUCTIONS:
        problems.append(f"reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")
    return problems


def _check(problems: list[str]) -> None:
    if problems:
        raise ValueError("; ".join(problems))


def _jsd_from_logprobs(student: torch.Tensor, teacher: torch.Tensor, beta: float) -> torch.Tensor:
    """(..., C) log-probabilities → (...,) generalized JSD (see :func:`generalized_jsd`)."""
    if beta == 0:
        return kl_from_logprobs(teacher, student)  # forward KL(p_t ‖ p_s)
    if beta == 1:
        return kl_from_logprobs(student, teacher)  # reverse KL(p_s ‖ p_t)
    log_m = torch.logaddexp(teacher + math.log(beta), student + math.log1p(-beta))  # (..., C) log(β·p_t + (1−β)·p_s)
    return beta * kl_from_logprobs(teacher, log_m) + (1 - beta) * kl_from_logprobs(student, log_m)


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, beta: float,
                    temperature: float = 1.0) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence between teacher and student at every position (GKD, Agarwal et al.
    2024, arXiv:2306.13649, Eq. 1), in TRL's convention (``GKDTrainer.generalized_jsd_loss``):

        p = softmax(logits / T),   m = β·p_t + (1 − β)·p_s        (TRL's mixture: β weighs the teacher)
        JSD_β = β·KL(p_t ‖ m) + (1 − β)·KL(p_s ‖ m)                 for 0 < β < 1
        β = 0: KL(p_t ‖ p_s) (forward, mode-covering);   β = 1: KL(p_s ‖ p_t) (reverse, mode-seeking)

    The endpoints are special cases, as in TRL, not limits: JSD_β ≈ β·KL(p_t ‖ p_s) as β → 0 and
    ≈ (1 − β)·KL(p_s ‖ p_t) as β → 1, so the value jumps there (the direction of the gradient does not). β = 0.5 is
    the symmetric JSD (≤ ln 2). The mixture is taken in log space (logaddexp), so no probability is logged. No T²
    factor (TRL has none); multiply by T² yourself for Hinton's gradient scale.

    Args:
        student_logits: (..., V).
        teacher_logits: (..., V).
        beta: in [0, 1].
        temperature: T > 0.
    Returns:
        (...,) fp32, nats, one divergence per leading position (reduce with :func:`reduce_tokens`).
    """
    _check(on_policy_problems(beta=beta, temperature=temperature))
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
                         "differ: teacher and student must share the vocabulary")
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (..., V)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (..., V)
    return _jsd_from_logprobs(s, t, beta)


def generalized_jsd_topk(student_logits: torch.Tensor, teacher_topk_logprobs: torch.Tensor,
                         teacher_topk_ids: torch.Tensor, *, beta: float, temperature: float = 1.0) -> torch.Tensor:
    """:func:`generalized_jsd` against a teacher known only by its top-k tokens (a teacher cache, or to save
    memory), over k + 1 outcomes: the k tokens and one **tail bucket** with the remaining mass
    (:func:`lkd.losses.kd.topk_buckets`, the construction of :func:`lkd.losses.kd.topk_kd_kl_div`):

        p_t = (p_t(i) for i in top-k,  max(1 − Σ_i p_t(i), 1e-12)),   p_s = (p_s(i) for i in top-k,  1 − Σ_i p_s(i))
        JSD_β(p_s, p_t) as in :func:`generalized_jsd`, over these k + 1 outcomes

    It is exactly :func:`generalized_jsd` when k is the vocabulary, and ``mean · T²`` of its β = 0 case is
    :func:`lkd.losses.kd.topk_kd_kl_div`. The teacher log-probabilities must be those of ``softmax(z / T)`` at
    this T (:func:`lkd.losses.kd.teacher_topk`).

    Args:
        student_logits: (..., V).
        teacher_topk_logprobs: (..., k) the teacher's top-k log-probabilities at temperature T.
        teacher_topk_ids: (..., k) their token ids.
        beta: in [0, 1] (0 = forward KL, 1 = reverse KL).
        temperature: T > 0.
    Returns:
        (...,) fp32, nats.
    """
    _check(on_policy_problems(beta=beta, temperature=temperature))
    s, t = topk_buckets(student_logits, teacher_topk_logprobs, teacher_topk_ids, temperature)  # (..., k + 1) each
    return _jsd_from_logprobs(s, t, beta)


def sampled_token_reverse_kl(student_token_logprobs: torch.Tensor, teacher_token_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token reverse KL on the student's own samples, as a policy-gradient surrogate (Thinking Machines,
    "On-Policy Distillation", 2025, Tinker cookbook; Qwen3, arXiv:2505.09388): each sampled token x gets the
    advantage A = −(log p_s(x) − log p_t(x)), held constant, and the REINFORCE loss

        L(x) = −A · log p_s(x),   A = −stop_grad(log p_s(x) − log p_t(x))

    For x ~ p_s, E_x[∇L(x)] = Σ_x p_s(x) (log p_s(x) − log p_t(x)) ∇log p_s(x) = ∇KL(p_s ‖ p_t) (the
    Σ_x ∇p_s(x) = 0 term drops out), so it needs only the log-probabilities of the sampled tokens, not the
    vocabulary. Each token is its own reward (no discount over later tokens). The *value* is not the KL: to log
    the KL, average −A over the sampled tokens (an unbiased estimate of KL(p_s ‖ p_t)).

    Args:
        student_token_logprobs: (...,) log p_s of the sampled tokens under the current student (with gradient).
        teacher_token_logprobs: (...,) log p_t of the same tokens (no gradient flows to it).
    Returns:
        (...,) fp32 per-token surrogate loss (reduce with :func:`reduce_tokens`).
    """
    if student_token_logprobs.shape != teacher_token_logprobs.shape:
        raise ValueError(f"student token log-probs {tuple(student_token_logprobs.shape)} and teacher token log-probs "
                         f"{tuple(teacher_token_logprobs.shape)} differ: both must score the same sampled tokens")
    s = student_token_logprobs.float()
    advantage = -(s - teacher_token_logprobs.float()).detach()  # (...,) no gradient through the reward
    return -advantage * s


def reduce_tokens(per_token: torch.Tensor, mask: torch.Tensor, *, reduction: str = "token") -> torch.Tensor:
    """Average per-token losses over the completion tokens that enter the loss.

        "token":    L = Σ_{b,t} m_bt · ℓ_bt / Σ_{b,t} m_bt                      (every completion token weighs the same)
        "sequence": L = mean_{b: n_b > 0} Σ_t m_bt · ℓ_bt / n_b,  n_b = Σ_t m_bt   (every sequence weighs the same)

    Masked-out positions are replaced by 0 before summing, so padding may hold anything (inf, NaN). An all-zero
    mask gives 0.0 that still carries a (zero) gradient, not NaN.

    Args:
        per_token: (B, T) losses.
        mask: (B, T) bool or 0/1: 1 = a completion token that enters the loss.
        reduction: one of :data:`REDUCTIONS`.
    Returns:
        0-d fp32.
    """
    _check(on_policy_problems(reduction=reduction))
    if per_token.dim() != 2 or per_token.shape != mask.shape:
        raise ValueError(f"per-token losses {tuple(per_token.shape)} and mask {tuple(mask.shape)} must both be (B, T)")
    keep = mask.bool()
    values = torch.where(keep, per_token.float(), 0.0)  # (B, T)
    if reduction == "token":
        return values.sum() / keep.sum().clamp_min(1)
    counts = keep.sum(-1)  # (B,)
    rows = values.sum(-1) / counts.clamp_min(1)  # (B,) 0 for a row without tokens
    return rows.sum() / (counts > 0).sum().clamp_min(1)
