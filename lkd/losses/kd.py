"""Response-based distillation losses (pure functions on logits)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_logits(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ: "
            "teacher and student must predict the same classes"
        )


def kd_kl_div(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Temperature-scaled KL divergence, multiplied by T² (Hinton, Vinyals & Dean 2015, "Distilling the
    Knowledge in a Neural Network", arXiv:1503.02531).

        L = T² · mean_b Σ_c p_t(c) · (log p_t(c) − log p_s(c)),   p = softmax(logits / T)

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
    _check_logits(student_logits, teacher_logits)
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(s.flatten(0, -2), t.flatten(0, -2), reduction="batchmean", log_target=True)
    return kl * temperature**2


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
        labels: (B,) class indices in [0, C).
        temperature: T > 0.
        alpha: weight of the soft term in [0, 1].
    Returns:
        total loss (0-d) and its terms ``{"kd": T²·KL, "ce": CE}`` (unweighted, for logging).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    kd = kd_kl_div(student_logits, teacher_logits, temperature)
    ce = F.cross_entropy(student_logits.float(), labels)
    return alpha * kd + (1.0 - alpha) * ce, {"kd": kd, "ce": ce}


def regression_kd_loss(
    student_scores: torch.Tensor, teacher_scores: torch.Tensor, targets: torch.Tensor, *, alpha: float = 0.9
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Distillation for a regression head (e.g. STS-B): ``α · MSE(s, t) + (1 − α) · MSE(s, y)``.

    A single score has no softmax to soften, so the teacher's score is matched directly.

    Args:
        student_scores, teacher_scores: (B,) or (B, 1).
        targets: (B,) float.
    Returns:
        total loss and ``{"kd": MSE(s, t), "mse": MSE(s, y)}``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    _check_logits(student_scores, teacher_scores)
    s = student_scores.float().reshape(-1)
    kd = F.mse_loss(s, teacher_scores.float().reshape(-1))
    mse = F.mse_loss(s, targets.float().reshape(-1))
    return alpha * kd + (1.0 - alpha) * mse, {"kd": kd, "mse": mse}
