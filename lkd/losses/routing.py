"""What trains a routing over a Mixture-of-Experts teacher's experts (pure functions): the router objective and
the load-balance loss (the routings themselves are :mod:`lkd.models.routing` and :mod:`lkd.models.router`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from lkd.losses.lm import combine_losses, lm_cross_entropy, lm_loss_terms


def router_objective(student: Mapping[str, object], routed_teacher: Mapping[str, object], input_ids: torch.Tensor,
                     weights: Mapping[str, float], *, lm_weight: float, temperature: float,
                     contrastive_temperature: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """What trains a router over the teacher's experts (the student is held fixed):

        L_router = Σ_i w_i L_i(sg[student], routed teacher) + λ · CE(routed teacher, x_{t+1})

    The first part moves the routing toward targets the student can follow; the second keeps the routed
    teacher a good language model, so the router cannot simply bend the teacher toward the student.

    Args:
        student: the student's features (:func:`lm_loss_terms`); detached here (sg), so no gradient reaches the student.
        routed_teacher: the routed teacher's features, with gradient to the router.
        lm_weight: λ >= 0.
    Returns:
        (L_router, the routed teacher's own next-token loss CE).
    """
    student = {k: [x.detach() for x in v] if isinstance(v, (list, tuple)) else v.detach() for k, v in student.items()}  # sg
    distill, _ = combine_losses(lm_loss_terms(student, routed_teacher, input_ids, weights, temperature=temperature,
                                              contrastive_temperature=contrastive_temperature), weights)
    teacher_ce = lm_cross_entropy(routed_teacher["logits"], input_ids)
    return distill + lm_weight * teacher_ce, teacher_ce


def load_balance_loss(router_probs: Sequence[torch.Tensor], top_k: int) -> torch.Tensor:
    """The Switch Transformer auxiliary loss (Fedus et al. 2022, arXiv:2101.03961; transformers'
    ``load_balancing_loss_func``), averaged over MoE layers:

        L_bal = E · Σ_e f_e · P_e,   f_e = share of tokens with e among their top-k,  P_e = mean_n p_n(e)

    k (uniform routing) at its minimum. The paper's SAR adds 0.01 · L_bal to the gate's objective.

    Args:
        router_probs: per MoE layer, (N, E) routing probabilities (with gradient).
        top_k: experts counted per token for f.
    """
    losses = []
    for probs in router_probs:
        probs = probs.float()
        chosen = probs.topk(top_k, dim=-1).indices  # (N, k)
        f = torch.zeros_like(probs).scatter_(-1, chosen, 1.0).mean(0)  # (E,) no gradient: counts
        losses.append(probs.shape[-1] * (f * probs.mean(0)).sum())
    return torch.stack(losses).mean()


__all__ = ["load_balance_loss", "router_objective"]
