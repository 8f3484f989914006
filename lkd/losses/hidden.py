"""Hidden-state losses: the hint (MSE) loss, the cosine loss per layer and InfoNCE of pooled states (pure functions).

One home for each, used by both the one-tokenizer table (:func:`lkd.losses.lm.lm_loss_terms`, every position) and
the cross-tokenizer one (:func:`lkd.losses.cross_tokenizer.cross_tokenizer_loss_terms`, chunk ends with a mask), and
by the GLUE track. Every function computes in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def feature_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Hint loss on hidden states (FitNets, Romero et al. 2015, arXiv:1412.6550).

        L = mean over (unmasked) positions p of mean_d (W h_s[p] − h_t[p])²

    Args:
        student_hidden: (B, T, D_t), the student's hidden states already projected to the teacher's width
            (``W`` is a trainable projection held by the distillation module).
        teacher_hidden: (B, T, D_t).
        mask: (B, T) 1 / True for the positions to compare; None = every position (then ``F.mse_loss``).
    """
    _same_shape("feature", student_hidden, teacher_hidden)
    if mask is None:
        return F.mse_loss(student_hidden.float(), teacher_hidden.float())
    m = mask.float()
    return (((student_hidden.float() - teacher_hidden.float()) ** 2).mean(-1) * m).sum() / m.sum().clamp_min(1)


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


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """A sequence's representation for :func:`contrastive_loss`: the mean of its (unmasked) states.

    Args:
        hidden: (B, T, D).
        mask: (B, T) 1 / True for the positions to average; None = all.
    Returns:
        (B, D) (fp32 with a mask).
    """
    if mask is None:
        return hidden.mean(1)
    m = mask.float()[..., None]  # (B, T, 1)
    return (hidden.float() * m).sum(1) / m.sum(1).clamp_min(1)


def contrastive_loss(student_repr: torch.Tensor, teacher_repr: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """InfoNCE between student and teacher sequence representations (van den Oord et al. 2018,
    arXiv:1807.03748; as a distillation loss: CRD, Tian et al. 2020, arXiv:1910.10699).

        ŝ_i = s_i/‖s_i‖, t̂_j = t_j/‖t_j‖;   L = −mean_i log( exp(ŝ_i·t̂_i/τ) / Σ_j exp(ŝ_i·t̂_j/τ) )

    Each student sequence must pick out its own teacher sequence among the batch. With B = 1 the loss is 0;
    when the student equals the teacher it is at its minimum for those teacher representations (≈ 0 when
    they are far apart relative to τ), not exactly 0.

    Args:
        student_repr: (B, D) e.g. :func:`mean_pool` of projected student hidden states.
        teacher_repr: (B, D).
        temperature: τ > 0.
    """
    if temperature <= 0:
        raise ValueError(f"contrastive temperature must be > 0, got {temperature}")
    _same_shape("contrastive", student_repr, teacher_repr)
    s = F.normalize(student_repr.float(), dim=-1)
    t = F.normalize(teacher_repr.float(), dim=-1)
    logits = s @ t.T / temperature  # (B, B)
    return F.cross_entropy(logits, torch.arange(len(s), device=s.device))


def _same_shape(what: str, s: torch.Tensor, t: torch.Tensor) -> None:
    if s.shape != t.shape:
        raise ValueError(f"{what} loss: student {tuple(s.shape)} vs teacher {tuple(t.shape)}. HINT: the student's states "
                         "must be projected to the teacher's width (a learned projection) first")


__all__ = ["contrastive_loss", "feature_loss", "hidden_cosine_loss", "layerwise_loss", "mean_pool"]
