"""Hidden-state alignment losses."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def hidden_cosine_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """DistilBERT's cosine embedding loss L_cos (Sanh et al. 2019, arXiv:1910.01108, Sec. 3): align the
    directions of the student's and the teacher's hidden states, token by token.

        L = mean over unmasked tokens of (1 − cos(h_s, h_t))

    Args:
        student: (B, T, H) student hidden states (already mapped to the teacher's width if they differ).
        teacher: (B, T, H) teacher hidden states of the mapped layer (no gradient needed).
        mask: (B, T) 1 for real tokens, 0 for padding; None = all tokens.
    Returns:
        0-d tensor in [0, 2]; 0 when the states point the same way. Computed in fp32.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"student hidden states {tuple(student.shape)} and teacher's {tuple(teacher.shape)} differ; "
            "project the student to the teacher's width first"
        )
    cos = F.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=1e-6)  # (B, T)
    if mask is None:
        return (1.0 - cos).mean()
    mask = mask.to(cos.dtype)
    return ((1.0 - cos) * mask).sum() / mask.sum().clamp_min(1.0)


def layerwise_loss(student_layers: Sequence[torch.Tensor], teacher_layers: Sequence[torch.Tensor],
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`hidden_cosine_loss` averaged over mapped layer pairs (DistilBERT's L_cos on several layers).

        L = mean_pairs L_cos(W_i h_s^{(i)}, h_t^{(m(i))})

    Args:
        student_layers: per mapped pair (B, T, D_t), projected to the teacher's width.
        teacher_layers: per mapped pair (B, T, D_t), the teacher layer ``m(i)``.
        mask: (B, T) 1 for real tokens; None = all.
    """
    if len(student_layers) != len(teacher_layers) or not student_layers:
        raise ValueError(f"layerwise_loss needs the same number (>= 1) of student and teacher layers, got "
                         f"{len(student_layers)} and {len(teacher_layers)}")
    return torch.stack([hidden_cosine_loss(s, t, mask) for s, t in zip(student_layers, teacher_layers)]).mean()
