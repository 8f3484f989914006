"""What trains a routing over a Mixture-of-Experts teacher's experts (pure functions): the router objective and
the load-balance loss (the routings themselves are :mod:`lkd.models.routing` and :mod:`lkd.models.router`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def router_objective(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float], routed_teacher_ce: torch.Tensor, *,
                     lm_weight: float, balance: torch.Tensor | None = None, balance_weight: float = 0.0) -> torch.Tensor:
    """What trains a routing over the teacher's experts, the student held fixed (one shape for one tokenizer or two):

        L_router = Σ_{i ≠ ce} w_i L_i(sg[student], routed teacher) + λ · CE(routed teacher, x_{t+1}) + β · L_bal

    The first part moves the routing toward targets the student can follow; the second keeps the routed teacher a
    good language model, so the router cannot simply bend the teacher toward the student; the third keeps the experts
    in use (:func:`load_balance_loss`; SAR's 0.01 in Wang et al. 2025, arXiv:2502.12947). ``ce``, the student's own
    next-token loss, says nothing about the routing and is left out.

    Args:
        terms: the distillation loss table L_i between the student and the routed teacher, unweighted
            (:func:`lkd.losses.lm.lm_loss_terms` or :func:`lkd.losses.cross_tokenizer.cross_tokenizer_loss_terms` of
            sg[student]; detached where the same table's gradient already reaches the routing).
        weights: ``{name: w >= 0}``; every name but ``ce`` with a non-zero weight must be in ``terms``.
        routed_teacher_ce: 0-d, the routed teacher's own next-token loss CE.
        lm_weight: λ >= 0.
        balance: 0-d L_bal, or None (no balance term).
        balance_weight: β >= 0.
    Returns:
        0-d L_router.
    """
    active = {k: w for k, w in weights.items() if k != "ce" and w > 0}
    missing = sorted(set(active) - set(terms))
    if missing:
        raise KeyError(f"router objective: loss terms {missing} have a weight but were not computed (computed: {sorted(terms)})")
    loss = sum(w * terms[k] for k, w in active.items()) + lm_weight * routed_teacher_ce  # 0 + CE when only ce is weighted
    return loss if balance is None else loss + balance_weight * balance


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
