"""Distillation losses for causal language models (pure functions on tensors).

The KL term is :func:`lkd.losses.kd.kd_kl_div` (the one KL of lkd) and the hidden-state terms are
:mod:`lkd.losses.hidden`; this file adds next-token likelihoods, attention transfer, the loss table of one
tokenizer and the weighted combination. Every function computes in fp32 (safe under 16-bit autocast) and is zero
when the student equals the teacher (InfoNCE: see its docstring).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from einops import reduce, repeat

from lkd.losses.hidden import contrastive_loss, feature_loss, layerwise_loss, mean_pool
from lkd.losses.kd import kd_kl_div, topk_kd_kl_div

LOSS_NAMES = ("kl", "ce", "feature", "attention", "layer", "contrastive")
"""Losses between a teacher and a student that share one tokenizer (:func:`lm_loss_terms`)."""
ALL_LOSS_NAMES = (*LOSS_NAMES, "alm", "uld", "shared_kl")
"""Every name ``loss_weights`` accepts: with two tokenizers the KL is replaced by the cross-tokenizer losses
of :mod:`lkd.losses.cross_tokenizer` (``alm``, ``uld``, ``shared_kl``)."""
DEFAULT_LOSS_WEIGHTS = {"kl": 0.7, "feature": 0.1, "attention": 0.1, "layer": 0.05, "contrastive": 0.05}
"""The original project's weights (KL 0.7, feature 0.1, attention 0.1, layer-wise 0.05, contrastive 0.05)."""

__all__ = [
    "ALL_LOSS_NAMES", "DEFAULT_LOSS_WEIGHTS", "LOSS_NAMES", "attention_transfer_loss", "combine_losses", "lm_cross_entropy",
    "lm_loss_terms", "mean_tables", "next_token_nll", "predicted_mask", "token_logprobs", "validate_loss_weights",
]


def lm_cross_entropy(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: position t predicts token t+1.

        L = −mean_{b, t<T} log p(x_{b,t+1} | x_{b,≤t})

    Args:
        logits: (B, T, V).
        input_ids: (B, T).
    Returns:
        0-d mean over the B·(T−1) predicted tokens; ``exp`` of it is the perplexity.
    """
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), input_ids[:, 1:].flatten())


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Log-probability of each token given the ones before it.

    Args:
        logits: (B, L, V); input_ids: (B, L).
    Returns:
        (B, L) fp32: ``log p(x_i | x_<i)`` at ``i >= 1``; 0 at ``i = 0`` (no prediction).
    """
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, L-1)
    return F.pad(logp, (1, 0))


def predicted_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) float mask of right-padded sequences' positions 1..length−1: the tokens with a prediction.

    Args:
        lengths: (B,) real tokens per sequence.
    """
    positions = repeat(torch.arange(width, device=lengths.device), "l -> b l", b=lengths.shape[0])
    return ((positions >= 1) & (positions < lengths[:, None])).float()


def next_token_nll(model: Mapping[str, torch.Tensor], input_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """A model's mean next-token NLL from its features: :func:`lm_cross_entropy` of its ``logits`` over full blocks
    (``mask`` None), or over right-padded blocks −Σ ``token_logprobs`` · mask / Σ mask (mask: :func:`predicted_mask`).

    Args:
        model: ``{"logits": (B, L, V)}`` or ``{"token_logprobs": (B, L)}`` (:func:`token_logprobs`).
        input_ids: (B, L).
        mask: (B, L) the positions with a prediction, or None.
    """
    if mask is None:
        return lm_cross_entropy(model["logits"], input_ids)
    return -(model["token_logprobs"] * mask).sum() / mask.sum().clamp_min(1)


def attention_transfer_loss(student_attentions: Sequence[torch.Tensor], teacher_attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """KL between head-averaged attention distributions of mapped layers (attention transfer as in TinyBERT,
    Jiao et al. 2020, arXiv:1909.10351, and MiniLM, Wang et al. 2020, arXiv:2002.10957).

        Ā = mean_heads A (each row a distribution over keys);   L = mean_pairs mean_{b,q} KL(Ā_t[b,q] ‖ Ā_s[b,q])

    Averaging over heads lets a student with another head count learn from the teacher.

    Args:
        student_attentions: per mapped pair (B, H_s, T, T), rows sum to 1 (eager attention).
        teacher_attentions: per mapped pair (B, H_t, T, T).
    """
    if len(student_attentions) != len(teacher_attentions) or not student_attentions:
        raise ValueError(f"attention_transfer_loss needs the same number (>= 1) of student and teacher maps, got {len(student_attentions)} and {len(teacher_attentions)}")
    terms = []
    for s, t in zip(student_attentions, teacher_attentions):
        if s.dim() != 4 or t.dim() != 4 or s.shape[0] != t.shape[0] or s.shape[-2:] != t.shape[-2:]:
            raise ValueError(f"attention maps must be (B, H, T, T) with equal B and T, got {tuple(s.shape)} and {tuple(t.shape)}")
        s_mean = reduce(s.float(), "b h q k -> b q k", "mean")
        t_mean = reduce(t.float(), "b h q k -> b q k", "mean")
        # (B, T, T); 0 where t = 0 (causal mask). Clamped logs, not xlogy: d/dt xlogy(t, t) is -inf at t = 0, and the
        # routed teacher's attentions carry gradient to the router.
        kl = t_mean * (t_mean.clamp_min(1e-12).log() - s_mean.clamp_min(1e-12).log())
        terms.append(reduce(kl, "b q k -> b q", "sum").mean())
    return torch.stack(terms).mean()


def validate_loss_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Check loss weights from a config: known names, none negative, not all zero. Returns a plain dict."""
    problems = []
    unknown = sorted(set(weights) - set(ALL_LOSS_NAMES))
    if unknown:
        problems.append(f"unknown loss names {unknown} (available: {list(ALL_LOSS_NAMES)})")
    negative = {k: v for k, v in weights.items() if v < 0}
    if negative:
        problems.append(f"negative weights {negative}")
    if not weights or all(v == 0 for v in weights.values()):
        problems.append(f"all loss weights are zero or none is given ({dict(weights)}): nothing would be trained")
    if problems:
        raise ValueError("loss_weights: " + "; ".join(problems) + ". HINT: e.g. {kl: 0.7, feature: 0.1, attention: 0.1, layer: 0.05, contrastive: 0.05}")
    return {k: float(v) for k, v in weights.items()}


def combine_losses(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the loss terms with a non-zero weight.

        L = Σ_name w_name · L_name

    Args:
        terms: ``{name: 0-d tensor}``; every name with a non-zero weight must be present.
        weights: ``{name: w >= 0}`` (checked with :func:`validate_loss_weights`).
    Returns:
        the total and the unweighted terms that entered it (for logging).
    """
    weights = validate_loss_weights(weights)
    active = {k: w for k, w in weights.items() if w > 0}
    missing = sorted(set(active) - set(terms))
    if missing:
        raise KeyError(f"loss terms {missing} have a weight but were not computed (computed: {sorted(terms)})")
    used = {k: terms[k] for k in active}
    total = sum(w * used[k] for k, w in active.items())
    return total, used


def lm_loss_terms(student: Mapping[str, object], teacher: Mapping[str, object], input_ids: torch.Tensor,
                  weights: Mapping[str, float], *, temperature: float, contrastive_temperature: float = 0.1) -> dict[str, torch.Tensor]:
    """The loss table: every loss of :data:`LOSS_NAMES` with a non-zero weight, unweighted.

    ``student`` and ``teacher`` hold the features the losses compare, by name: ``logits`` (B, T, V);
    ``feature`` (B, T, D_t) the last hidden state (the student's projected to the teacher's width); ``layer``
    a list of (B, T, D_t) per mapped layer pair; ``attention`` a list of (B, H, T, T) per pair. A teacher read
    from a top-k cache gives ``topk`` = (log-probabilities (B, T, k), token ids (B, T, k)) instead of ``logits``.

    ``kl``: T²·KL (:func:`lkd.losses.kd.kd_kl_div`, or :func:`lkd.losses.kd.topk_kd_kl_div` from a cache);
    ``ce``: the student's next-token loss; ``feature``: :func:`lkd.losses.hidden.feature_loss`; ``layer``:
    :func:`lkd.losses.hidden.layerwise_loss`; ``attention``: :func:`attention_transfer_loss`; ``contrastive``:
    :func:`lkd.losses.hidden.contrastive_loss` of the :func:`lkd.losses.hidden.mean_pool` of the ``feature`` states.
    """
    w, terms = weights, {}
    if w.get("kl", 0) > 0:
        terms["kl"] = (topk_kd_kl_div(student["logits"], *teacher["topk"], temperature=temperature) if "topk" in teacher
                       else kd_kl_div(student["logits"], teacher["logits"], temperature))
    if w.get("ce", 0) > 0:
        terms["ce"] = lm_cross_entropy(student["logits"], input_ids)
    if w.get("feature", 0) > 0:
        terms["feature"] = feature_loss(student["feature"], teacher["feature"])
    if w.get("layer", 0) > 0:
        terms["layer"] = layerwise_loss(student["layer"], teacher["layer"])
    if w.get("attention", 0) > 0:
        terms["attention"] = attention_transfer_loss(student["attention"], teacher["attention"])
    if w.get("contrastive", 0) > 0:
        terms["contrastive"] = contrastive_loss(mean_pool(student["feature"]), mean_pool(teacher["feature"]), contrastive_temperature)
    return terms


def mean_tables(tables: Sequence[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]) -> tuple[dict, dict]:
    """Loss tables ``(terms, logs)`` averaged name by name over teacher passes (Knowledge Augmentation's repeats)."""
    if len(tables) == 1:
        return tables[0]
    mean = lambda dicts: {k: torch.stack([d[k] for d in dicts]).mean() for k in dicts[0]}  # noqa: E731
    return mean([t for t, _ in tables]), mean([lg for _, lg in tables])
