"""Distillation losses between a teacher and a student with **different tokenizers** (pure functions).

Both models read the same text, tokenised differently; :mod:`lkd.data.alignment` cuts it into *chunks*
whose boundaries are token boundaries on both sides, read as tensors through :class:`lkd.losses.chunks.ChunkIndex`.
Chunk ``c >= 1`` is predicted by both models from the same text prefix; chunk 0 has no prefix in the block and is
skipped. A step enters this file once per teacher pass, through :func:`cross_tokenizer_loss_terms`.

Losses (names as in ``loss_weights``):

* ``alm`` :func:`alm_loss`: the chunks' likelihoods matched (ALM, Minixhofer et al. 2025, arXiv:2503.20083);
* ``uld`` :func:`uld_loss`: L1 between sorted next-token distributions (ULD, Boizard et al. 2024, arXiv:2402.12030);
* ``shared_kl`` :func:`shared_vocab_kl`: KL over the tokens both vocabularies spell the same way, plus a
  tail bucket, on single-token chunks;
* ``feature``, ``layer``, ``contrastive``: the hidden-state losses of :mod:`lkd.losses.hidden` on the states at
  each chunk's last token on both sides (both have read the same text there), through the student → teacher
  projections.

Every function computes in fp32 and is zero when the student's numbers equal the teacher's.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from lkd.losses.chunks import ChunkIndex, chunk_sums, gather_positions, select_positions
from lkd.losses.hidden import contrastive_loss, feature_loss, layerwise_loss, mean_pool

CROSS_LOSS_NAMES = ("alm", "uld", "shared_kl")
"""Losses that compare two tokenizers' predictions through the chunk alignment."""


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − eˣ) for x ≤ 0, stable near 0 and near −∞ (Mächler 2012)."""
    x = x.clamp_max(-1e-7)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def binary_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(Bernoulli(p) ‖ Bernoulli(q)) elementwise from log-probabilities:
    p (log p − log q) + (1 − p)(log(1 − p) − log(1 − q))."""
    p = log_p.exp()
    return p * (log_p - log_q) + (1 - p) * (log1mexp(log_p) - log1mexp(log_q))


def alm_loss(student_chunk_logprobs: torch.Tensor, teacher_chunk_logprobs: torch.Tensor, mask: torch.Tensor,
             temperature: float = 1.0) -> torch.Tensor:
    """Approximate likelihood matching (ALM; Minixhofer, Vulić & Ponti 2025, "Universal Cross-Tokenizer
    Distillation via Approximate Likelihood Matching", arXiv:2503.20083).

    For each aligned chunk c the teacher's and the student's likelihood of its text, ``p_t(c) = Π p_t(tokens
    of c)`` and the same for the student, both conditioned on the same text before c, are compared as two
    Bernoulli events ("the model writes this chunk next"), tempered by τ:

        L = Σ_c mask_c · KL( Bern(p_t(c)^{1/τ}) ‖ Bern(p_s(c)^{1/τ}) ) / Σ_c mask_c

    The paper's "binary cross-entropy" distance, minus the teacher's own binary entropy (same gradient, and
    0 when p_s = p_t). No vocabulary is shared: only the likelihoods of the same strings are compared.

    Args:
        student_chunk_logprobs, teacher_chunk_logprobs: (B, C) log p of each chunk (sums over its tokens).
        mask: (B, C) bool, the chunks to compare (predicted chunks).
        temperature: τ > 0 (τ > 1 softens: small likelihoods matter more).
    """
    if temperature <= 0:
        raise ValueError(f"alm temperature must be > 0, got {temperature}")
    log_p = (teacher_chunk_logprobs.float() / temperature).clamp_max(0)
    log_q = (student_chunk_logprobs.float() / temperature).clamp_max(0)
    kl = binary_kl(log_p, log_q)  # (B, C)
    m = mask.float()
    return (kl * m).sum() / m.sum().clamp_min(1)


def uld_loss(student_logits: torch.Tensor, teacher_sorted_probs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Universal Logit Distillation (ULD; Boizard et al. 2024, "Towards Cross-Tokenizer Distillation: the
    Universal Logit Distillation Loss for LLMs", arXiv:2402.12030): the L1 distance between the two
    next-token distributions sorted in decreasing order (a closed form of the Wasserstein-1 distance when
    tokens are not matched), zero-padded to the larger vocabulary.

        L = mean_n Σ_i | sort(p_t)_i − sort(p_s)_i |

    The teacher may be given by its top-k only (a cache): its unknown rest (mass r_t = 1 − Σ_{i<k} p_t,i)
    is compared to the student's rest as one bucket, ``|r_t − r_s|``, which is exact when k covers the
    vocabulary.

    Args:
        student_logits: (N, V_s) at aligned positions.
        teacher_sorted_probs: (N, k) the teacher's k largest probabilities at temperature T, descending.
        temperature: T of the student's softmax (the teacher's must match).
    """
    k = teacher_sorted_probs.shape[-1]
    q = F.softmax(student_logits.float() / temperature, dim=-1)  # (N, V_s)
    q_top = q.topk(min(k, q.shape[-1]), dim=-1).values  # (N, k')
    p = teacher_sorted_probs.float()
    if q_top.shape[-1] < k:
        q_top = F.pad(q_top, (0, k - q_top.shape[-1]))
    head = (p - q_top).abs().sum(-1)  # (N,)
    tail = ((1 - p.sum(-1)) - (1 - q_top.sum(-1))).abs()
    return (head + tail).mean() if len(p) else student_logits.sum() * 0


def shared_vocab_kl(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, teacher_ids: torch.Tensor,
                    teacher_to_student: torch.Tensor, temperature: float = 1.0,
                    mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """KL over the vocabulary both tokenizers share, with a tail bucket (the exact-match mapping of cross-
    tokenizer methods such as DSKD's and GOLD's, restricted to tokens spelled identically).

    The teacher's top-k tokens that the student's vocabulary also has (:func:`lkd.tokenizers.shared_vocabulary`)
    keep their probabilities; all its other mass goes into one tail outcome. The student is bucketed the same
    way (its probability of those same strings, and the rest):

        L = T² · mean_n [ Σ_{i ∈ M} p_t(i)(log p_t(i) − log p_s(π(i))) + p_t(rest)(log p_t(rest) − log p_s(rest)) ]

    Used on single-token chunks, where both next tokens are the same string. When the pair shares little
    (the shared mass is small), the loss says little: that mass is returned so it can be logged.

    Args:
        student_logits: (N, V_s).
        teacher_logprobs: (N, k) the teacher's top-k log-probabilities at temperature T.
        teacher_ids: (N, k) their teacher token ids.
        teacher_to_student: (V_t,) student id per teacher id, −1 where none.
        mask: (N,) bool, the rows to average over (None: all).
    Returns:
        (0-d loss, (N,) teacher mass on shared tokens).
    """
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (N, V_s)
    mapped = teacher_to_student[teacher_ids.long()]  # (N, k)
    shared = mapped >= 0
    p = teacher_logprobs.float().exp() * shared  # (N, k) teacher mass on shared tokens
    s_top = s.gather(-1, mapped.clamp_min(0))  # (N, k)
    head = torch.where(shared, p * (teacher_logprobs.float() - s_top), torch.zeros_like(p)).sum(-1)
    # two teacher tokens can map to one student token (same bytes, e.g. an added duplicate): its mass counts once
    order = mapped.sort(-1)
    first = F.pad(order.values[:, 1:] != order.values[:, :-1], (1, 0), value=True) & (order.values >= 0)  # (N, k)
    q_shared = (s_top.gather(-1, order.indices).exp() * first).sum(-1)  # (N,)
    p_tail = (1 - p.sum(-1)).clamp_min(1e-12)
    q_tail = (1 - q_shared).clamp_min(1e-12)
    kl = head + p_tail * (p_tail.log() - q_tail.log())  # (N,)
    m = torch.ones_like(kl) if mask is None else mask.float()
    loss = (kl * m).sum() / m.sum().clamp_min(1) * temperature**2
    return loss, p.sum(-1)


def cross_tokenizer_loss_terms(student: Mapping[str, object], teacher: Mapping[str, object], index: ChunkIndex,
                               weights: Mapping[str, float], *, teacher_to_student: torch.Tensor | None = None,
                               temperature: float = 1.0, alm_temperature: float = 1.0,
                               contrastive_temperature: float = 0.1) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The cross-tokenizer loss table: each loss with a non-zero weight, unweighted, plus values to log.

    ``student``: ``logits`` (B, S, V_s), ``token_logprobs`` (B, S), and for hidden-state losses ``feature``
    (B, S, D_t) / ``layer`` (list of (B, S, D_t)) already projected. ``teacher``: ``token_logprobs`` (B, T)
    (:func:`lkd.losses.lm.token_logprobs` of its own tokens), ``topk`` = (log-probabilities (B, T, k) at T, ids (B, T, k)),
    and ``feature`` / ``layer`` (B, T, D_t) for the hidden-state losses (live teacher only).

    Returns:
        (``{name: loss}``, ``{"chunks_per_block", "tokens_per_chunk_student", "tokens_per_chunk_teacher",
        "teacher_mass_shared", "single_token_chunks"}`` to log).
    """
    w, terms = weights, {}
    pred = index.predicted
    n_pred = pred.sum().clamp_min(1)
    logs = {
        "chunks_per_block": index.valid.sum(-1).float().mean(),
        "tokens_per_chunk_student": ((index.s_end - index.s_start) * pred).sum() / n_pred,
        "tokens_per_chunk_teacher": ((index.t_end - index.t_start) * pred).sum() / n_pred,
    }
    if w.get("alm", 0) > 0:
        s_lp = chunk_sums(student["token_logprobs"], index.s_start, index.s_end)  # (B, C)
        t_lp = chunk_sums(teacher["token_logprobs"], index.t_start, index.t_end)
        terms["alm"] = alm_loss(s_lp, t_lp, pred, alm_temperature)
    needs_next = w.get("uld", 0) > 0 or w.get("shared_kl", 0) > 0
    if needs_next:  # the next-token distributions at chunk starts, each row copied once
        t_lp_k, t_ids_k = teacher["topk"]
        s_next = select_positions(student["logits"], index.s_prev, pred)  # (N, V_s)
        t_next = select_positions(t_lp_k, index.t_prev, pred)  # (N, k)
    if w.get("uld", 0) > 0:
        terms["uld"] = uld_loss(s_next, t_next.float().exp(), temperature)
    if w.get("shared_kl", 0) > 0:
        if teacher_to_student is None:
            raise ValueError("shared_kl needs the teacher → student token map (lkd.tokenizers.shared_vocabulary)")
        single = index.single[pred]  # (N,) of the predicted chunks, those of one token a side (masked, not copied)
        t_next_ids = select_positions(t_ids_k, index.t_prev, pred)
        terms["shared_kl"], mass = shared_vocab_kl(s_next, t_next, t_next_ids, teacher_to_student, temperature, mask=single)
        logs["teacher_mass_shared"] = (mass * single).sum() / single.sum().clamp_min(1)
        logs["single_token_chunks"] = single.sum() / n_pred
    valid = index.valid
    if w.get("feature", 0) > 0 or w.get("contrastive", 0) > 0:
        s_h = gather_positions(student["feature"], index.s_last)  # (B, C, D_t)
        t_h = gather_positions(teacher["feature"], index.t_last)
        if w.get("feature", 0) > 0:
            terms["feature"] = feature_loss(s_h, t_h, valid)
        if w.get("contrastive", 0) > 0:
            terms["contrastive"] = contrastive_loss(mean_pool(s_h, valid), mean_pool(t_h, valid), contrastive_temperature)
    if w.get("layer", 0) > 0:
        s_layers = [gather_positions(h, index.s_last) for h in student["layer"]]
        t_layers = [gather_positions(h, index.t_last) for h in teacher["layer"]]
        terms["layer"] = layerwise_loss(s_layers, t_layers, valid)
    return terms, logs


__all__ = ["CROSS_LOSS_NAMES", "alm_loss", "binary_kl", "cross_tokenizer_loss_terms", "log1mexp", "shared_vocab_kl", "uld_loss"]
