"""Response-based distillation losses (pure functions on logits)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_problems(*, temperature: float | None = None, alpha: float | None = None) -> list[str]:
    """What is wrong with response-KD settings (empty: nothing): T > 0, alpha in [0, 1]. Written once, used by
    every distillation module's argument check."""
    problems = []
    if temperature is not None and not temperature > 0:
        problems.append(f"temperature must be > 0, got {temperature}")
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        problems.append(f"alpha must be in [0, 1], got {alpha}")
    return problems


def _check_logits(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ: "
            "teacher and student must predict the same classes"
        )


def token_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p_t ‖ p_s) at every position: the one token-level KL of lkd (the KD loss, the retention metric and
    the router's knowledge-gap input all use it).

        KL_n = Σ_c p_t(n, c) · (log p_t(n, c) − log p_s(n, c)),   p = softmax(logits / T)

    Args:
        student_logits: (..., C).
        teacher_logits: (..., C).
        temperature: T > 0.
    Returns:
        (...,) fp32, one KL per leading position (nats).
    """
    _check_logits(student_logits, teacher_logits)
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return kl_from_logprobs(t, s)


def kl_from_logprobs(p_logprobs: torch.Tensor, q_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) = Σ_c p(c) · (log p(c) − log q(c)) over the last dim, from log-probabilities (the one KL
    formula of lkd: :func:`token_kl`, :func:`topk_kd_kl_div` and :mod:`lkd.losses.on_policy` use it).

    Args:
        p_logprobs, q_logprobs: (..., C) log-probabilities (finite), fp32.
    Returns:
        (...,) nats.
    """
    return (p_logprobs.exp() * (p_logprobs - q_logprobs)).sum(-1)


def kd_kl_div(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Temperature-scaled KL divergence, multiplied by T² (Hinton, Vinyals & Dean 2015, "Distilling the
    Knowledge in a Neural Network", arXiv:1503.02531).

        L = T² · mean_n KL_n,   KL_n = :func:`token_kl` at temperature T

    The T² keeps the gradient scale of the soft term independent of T. Computed in fp32 under autocast.

    Args:
        student_logits: (..., C).
        teacher_logits: (..., C), no gradient needed.
        temperature: T > 0.
    Returns:
        0-d tensor: the loss averaged over all leading positions (batch, tokens).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return token_kl(student_logits, teacher_logits, temperature).mean() * temperature**2


def teacher_topk(teacher_logits: torch.Tensor, k: int, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` most likely classes of ``softmax(teacher_logits / T)`` and their log-probabilities: what a
    top-k teacher cache stores for :func:`topk_kd_kl_div`.

    Args:
        teacher_logits: (..., V).
    Returns:
        (log-probabilities (..., k) fp32, in descending order; indices (..., k) int64).
    """
    if not 1 <= k <= teacher_logits.shape[-1]:
        raise ValueError(f"k must be in 1..{teacher_logits.shape[-1]} (the vocabulary), got {k}")
    logprobs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return logprobs.topk(k, dim=-1)


def topk_kd_kl_div(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, teacher_indices: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """:func:`kd_kl_div` against a teacher known only by its top-k classes, with a **tail bucket**.

    The teacher's distribution at temperature T is kept as k + 1 outcomes: its k most likely tokens, with
    their stored log-probabilities, and "any other token", with the remaining mass 1 − Σ p_t. The student's
    distribution is bucketed the same way (its own probability of those k tokens, and the log-sum-exp of all
    the others), and the KL between the two (k + 1)-outcome distributions is taken, times T²:

        L = T² · mean_tokens [ Σ_{i ∈ top-k} p_t(i) (log p_t(i) − log p_s(i)) + p_tail (log p_tail − log q_tail) ]

    Unlike renormalising over the top-k, this keeps the teacher's absolute probabilities (a student that puts
    too much mass outside the top-k is penalised) and it is exactly :func:`kd_kl_div` when k is the whole
    vocabulary (the tail is then empty and dropped). The stored log-probabilities must be those of
    ``softmax(z / T)`` with the same T (:func:`teacher_topk`): top-k log-probabilities taken at T = 1 do not
    give the tail mass at another T (it depends on the logits outside the top-k), so a cache is written at the
    distillation temperature and keyed by it.

    Args:
        student_logits: (..., V).
        teacher_logprobs: (..., k) log-probabilities of the teacher's top-k tokens at temperature T.
        teacher_indices: (..., k) their token ids.
        temperature: T > 0.
    Returns:
        0-d tensor, averaged over all leading positions.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s_buckets, t_buckets = topk_buckets(student_logits, teacher_logprobs, teacher_indices, temperature)
    return kl_from_logprobs(t_buckets, s_buckets).mean() * temperature**2


def topk_buckets(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, teacher_indices: torch.Tensor,
                 temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's and the teacher's distributions over the teacher's top-k tokens plus one **tail bucket**
    ("any other token"): the k + 1 outcomes of :func:`topk_kd_kl_div` (and of the top-k on-policy divergences).

        teacher: (log p_t(i) for i in top-k,  log max(1 − Σ_i p_t(i), 1e-12))
        student: (log p_s(i) for i in top-k,  log Σ_{j ∉ top-k} p_s(j))   (a log-sum-exp, no 1 − Σ cancellation)

    When k is the whole vocabulary the tail is empty and dropped (k outcomes).

    Args:
        student_logits: (..., V).
        teacher_logprobs: (..., k) log-probabilities of the teacher's top-k tokens at temperature T.
        teacher_indices: (..., k) their token ids.
        temperature: T > 0 (the student's logits are divided by it).
    Returns:
        (student log-probabilities, teacher log-probabilities), each (..., k + 1) fp32, or (..., k) when k = V.
    """
    if teacher_logprobs.shape != teacher_indices.shape or teacher_logprobs.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(
            f"top-k targets {tuple(teacher_logprobs.shape)} / indices {tuple(teacher_indices.shape)} do not match "
            f"student logits {tuple(student_logits.shape)} (expected (..., k) with the same leading shape)"
        )
    vocab, k = student_logits.shape[-1], teacher_logprobs.shape[-1]
    s = student_logits.float() / temperature
    log_z = torch.logsumexp(s, dim=-1, keepdim=True)  # (..., 1)
    indices = teacher_indices.long()
    s_top = s.gather(-1, indices) - log_z  # (..., k) student log-probabilities of the teacher's top-k
    t_top = teacher_logprobs.float()
    if k >= vocab:  # no tail: the top-k is the whole vocabulary
        return s_top, t_top
    t_tail = (1 - t_top.exp().sum(-1, keepdim=True)).clamp_min(1e-12)  # (..., 1) teacher mass outside its top-k
    s_tail = torch.logsumexp(s.scatter(-1, indices, float("-inf")), dim=-1, keepdim=True) - log_z  # (..., 1)
    return torch.cat([s_top, s_tail], dim=-1), torch.cat([t_top, t_tail.log()], dim=-1)  # (..., k + 1)


UNLABELLED = -1  # class label of a row without one (a transfer-set row the teacher labels); regression: NaN


def labelled_rows(labels: torch.Tensor) -> torch.Tensor:
    """(B,) bool: rows that carry a label (class id >= 0, or a finite regression target)."""
    return labels.isfinite() if labels.is_floating_point() else labels >= 0


def hard_label_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (class ids) or MSE (float targets) over the labelled rows only (0 when there are none).

    Args:
        student_logits: (B, C) logits, or (B,) / (B, 1) scores for a float target.
        labels: (B,) class ids with :data:`UNLABELLED` for rows without a label, or float targets with NaN.
    """
    keep = labelled_rows(labels)
    if labels.is_floating_point():
        scores = student_logits.float().reshape(-1)
        return F.mse_loss(scores[keep], labels[keep].float()) if keep.any() else scores.sum() * 0.0
    if keep.all():
        return F.cross_entropy(student_logits.float(), labels)
    return F.cross_entropy(student_logits.float()[keep], labels[keep]) if keep.any() else student_logits.sum() * 0.0


def hinton_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The classic distillation objective: ``α · T² · KL(p_t^T ‖ p_s^T) + (1 − α) · CE(s, y)``.

    Args:
        student_logits: (B, C).
        teacher_logits: (B, C).
        labels: (B,) class indices in [0, C); :data:`UNLABELLED` rows (a transfer set) get the soft term only.
        temperature: T > 0.
        alpha: weight of the soft term in [0, 1].
    Returns:
        total loss (0-d) and its terms ``{"kd": T²·KL, "ce": CE}`` (unweighted, for logging; CE over labelled rows).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    kd = kd_kl_div(student_logits, teacher_logits, temperature)
    ce = hard_label_loss(student_logits, labels)
    return alpha * kd + (1.0 - alpha) * ce, {"kd": kd, "ce": ce}


def regression_kd_loss(
    student_scores: torch.Tensor, teacher_scores: torch.Tensor, targets: torch.Tensor, *, alpha: float = 0.9
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Distillation for a regression head (e.g. STS-B): ``α · MSE(s, t) + (1 − α) · MSE(s, y)``.

    A single score has no softmax to soften, so the teacher's score is matched directly.

    Args:
        student_scores, teacher_scores: (B,) or (B, 1).
        targets: (B,) float; NaN rows (a transfer set) get the teacher term only.
    Returns:
        total loss and ``{"kd": MSE(s, t), "mse": MSE(s, y)}``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    _check_logits(student_scores, teacher_scores)
    s = student_scores.float().reshape(-1)
    kd = F.mse_loss(s, teacher_scores.float().reshape(-1))
    mse = hard_label_loss(s, targets.float().reshape(-1))
    return alpha * kd + (1.0 - alpha) * mse, {"kd": kd, "mse": mse}
