"""Student-aware routing of a Mixture-of-Experts teacher (after "Every Expert Matters", Wang et al. 2025,
arXiv:2502.12947: knowledge sits in experts that top-2 routing leaves out).

**What it outputs.** For every token and every MoE layer of the teacher, :class:`StudentAwareRouter`
returns sparse expert weights ``w ∈ R^E`` with exactly ``k`` non-zero entries (``k`` = the current top-k,
1 → 4 under :class:`lkd.callbacks.RoutingSchedule`):

    z_e = a_l · log p_teacher(e | h_t)                 (c) expert importance: the teacher's own gate
        + U_l · s                                      (a) student capacity: from the student's hidden state s
        + V_l · g                                      (b) knowledge gap: [KL(p_t ‖ p_s), H(p_t), H(p_s)] per token
        + b_l
    p = softmax(z / τ);   S = top-k(p)
    w_e = m · p_e / sg[Σ_{j∈S} p_j]  for e ∈ S,  0 otherwise

where ``m`` is the gate mass the teacher itself gives a token (the sum of its own top-2 probabilities; 1 for
a teacher with ``norm_topk_prob``). So the router decides *which* k experts share the teacher's gate mass and
*how* they share it, and the scale of the MoE output stays what the teacher was trained with whatever k and
τ are. The normaliser is held constant in the backward pass (sg = stop-gradient), so the router receives
gradient through ``p`` even at k = 1. ``U``, ``V`` and ``b`` start at zero and ``a`` at one, so with ``k`` =
the teacher's top-k and ``τ = 1`` the router reproduces the teacher's own gating exactly (tested).

Across two tokenizers (:mod:`lkd.losses.cross_tokenizer`) the teacher's token at position j reads the
student's hidden state at the end of the previous aligned chunk (the most text both have read) and the gap
features of that chunk, from the two models' likelihoods of its text (:func:`chunk_gap_features`).

**How it enters the losses.** :func:`lkd.models.routing.route_teacher` patches every MoE gate of the teacher for the
duration of one forward pass so that the experts are mixed with ``w`` instead of the teacher's top-2
weights. That forward's logits, hidden states and attentions are the distillation *targets*: the student
learns from a teacher in which ``k`` experts chosen by the router contribute to every token.

**What trains it.** The same distillation objective, seen from the other side: the gradient of the
weighted loss (KL, feature, ...) with the *student* detached flows through the routed teacher's outputs
into ``w`` and the router's parameters, plus ``λ · CE(routed teacher, next tokens)``, the teacher's own
language-model loss under the new routing, which keeps the router from degrading the teacher into
whatever the student already predicts. The router has its own learning rate (default 1e-4 vs the
student's 5e-5). The teacher's weights stay frozen.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from lkd.losses.chunks import ChunkIndex, chunk_sums, gather_positions
from lkd.losses.kd import token_kl
from lkd.models.routing import Route, Routing, RoutingContext, share_mass, validate_top_k

GAP_FEATURES = 3  # KL(p_t ‖ p_s), H(p_t), H(p_s)


def gap_features(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Per-token gap between teacher and student predictions, normalised by log V.

    Args:
        teacher_logits, student_logits: (B, T, V).
    Returns:
        (B·T, 3): ``[KL(p_t ‖ p_s), H(p_t), H(p_s)] / log V``, fp32, no gradient.
    """
    with torch.no_grad():
        lt = F.log_softmax(teacher_logits.float(), dim=-1)
        ls = F.log_softmax(student_logits.float(), dim=-1)
        pt, ps = lt.exp(), ls.exp()
        kl = token_kl(student_logits, teacher_logits)  # (B, T)
        feats = torch.stack([kl, -(pt * lt).sum(-1), -(ps * ls).sum(-1)], dim=-1) / math.log(lt.shape[-1])
        return rearrange(feats, "b t f -> (b t) f")


def chunk_owner(index: ChunkIndex, teacher_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The aligned chunk each teacher position belongs to: ``(chunk (B, T) int64, inside (B, T) bool)``;
    positions in no chunk (specials, padding) have ``inside`` False."""
    big = torch.iinfo(torch.int64).max
    ends = torch.where(index.valid, index.t_end, big).contiguous()  # (B, C) ascending over valid chunks
    positions = torch.arange(teacher_length, device=ends.device).expand(ends.shape[0], -1).contiguous()  # (B, T)
    chunk = torch.searchsorted(ends, positions, right=True).clamp_max(ends.shape[1] - 1)  # first chunk ending after j
    inside = index.valid.gather(1, chunk) & (index.t_start.gather(1, chunk) <= positions) & (positions < index.t_end.gather(1, chunk))
    return chunk, inside


def chunk_gap_features(student_hidden: torch.Tensor, student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor,
                       index: ChunkIndex, student_token_bytes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The router's inputs when teacher and student tokenise differently (no shared next-token distribution).

    A teacher token in chunk c gets what both models had read before c: the student's hidden state at the
    last token of chunk c − 1, and the gap on that chunk's text from the two likelihoods of it,

        g = [ℓ_t − ℓ_s, −ℓ_t, −ℓ_s] / (bytes · ln 256),   ℓ = log p(chunk c − 1 | text before it)

    (per byte, in units of 8 bits: the cross-tokenizer analogue of [KL, H_t, H_s] / log V). The chunk's own
    text is never used: it is what the teacher's token is about to predict. Tokens of the first two chunks and
    tokens outside every chunk get zeros.

    Args:
        student_hidden: (B, S, D_s) the student's last hidden states.
        student_logprobs, teacher_logprobs: (B, S), (B, T) each token's log-probability
            (:func:`lkd.losses.lm.token_logprobs`).
        index: the batch's :class:`lkd.losses.chunks.ChunkIndex`.
        student_token_bytes: (B, S) UTF-8 bytes of each student token (None: count tokens instead of bytes).
    Returns:
        ``(hidden (B·T, D_s), gap (B·T, 3))`` per teacher token, detached.
    """
    with torch.no_grad():
        B, T = teacher_logprobs.shape
        chunk, inside = chunk_owner(index, T)  # (B, T)
        prev = (chunk - 1).clamp_min(0)
        usable = inside & (chunk >= 2)  # chunk c − 1 >= 1 has a prediction on both sides
        l_t = chunk_sums(teacher_logprobs, index.t_start, index.t_end)  # (B, C)
        l_s = chunk_sums(student_logprobs, index.s_start, index.s_end)
        size = (chunk_sums(student_token_bytes, index.s_start, index.s_end) if student_token_bytes is not None
                else (index.s_end - index.s_start).float()).clamp_min(1) * math.log(256)
        gap = torch.stack([l_t - l_s, -l_t, -l_s], dim=-1) / size[..., None]  # (B, C, 3)
        gap = gather_positions(gap, prev) * usable[..., None]  # (B, T, 3)
        hidden = gather_positions(gather_positions(student_hidden, index.s_last), prev) * usable[..., None]  # (B, T, D_s)
        return rearrange(hidden.float(), "b t d -> (b t) d"), rearrange(gap.float(), "b t f -> (b t) f")


class StudentAwareRouter(Routing):
    """``student_aware``: per-token expert weights for every MoE layer of the teacher (formula in the module
    docstring), a :class:`lkd.models.routing.Routing` that reads the student (``needs_student``).

    The sizes can be left out and filled in by the distillation module with :meth:`bind` (the student's
    hidden size, the teacher's expert count and number of MoE layers), so a YAML names only the router.

    Args:
        student_dim: D_s, the student's hidden size.
        num_experts: E, experts per MoE layer of the teacher.
        num_layers: L, MoE layers of the teacher.
    """

    mode = "student_aware"
    needs_student = True

    def __init__(self, student_dim: int | None = None, num_experts: int | None = None, num_layers: int | None = None):
        super().__init__()
        for name, value in (("student_dim", student_dim), ("num_experts", num_experts), ("num_layers", num_layers)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.student_dim, self.num_experts, self.num_layers = student_dim, num_experts, num_layers
        if None not in (student_dim, num_experts, num_layers):
            self._make_parameters()

    @property
    def is_bound(self) -> bool:
        return hasattr(self, "capacity")

    def bind(self, student_dim: int, num_experts: int, num_layers: int) -> StudentAwareRouter:
        """Fill in the sizes left out at construction (and check the given ones), then create the parameters."""
        given = {"student_dim": student_dim, "num_experts": num_experts, "num_layers": num_layers}
        clashes = [f"{k}={getattr(self, k)} (router) vs {v} (models)" for k, v in given.items() if getattr(self, k) not in (None, v)]
        if clashes:
            raise ValueError("StudentAwareRouter sizes do not fit the teacher and student: " + "; ".join(clashes))
        if not self.is_bound:
            self.student_dim, self.num_experts, self.num_layers = student_dim, num_experts, num_layers
            self._make_parameters()
        return self

    def bind_teacher(self, gates: list[nn.Module], student_dim: int) -> StudentAwareRouter:
        return self.bind(student_dim, int(gates[0].num_experts), len(gates))

    def _make_parameters(self) -> None:
        L, E, D = self.num_layers, self.num_experts, self.student_dim
        self.capacity = nn.Parameter(torch.zeros(L, E, D))  # U_l: student capacity → expert scores
        self.gap = nn.Parameter(torch.zeros(L, E, GAP_FEATURES))  # V_l: knowledge gap → expert scores
        self.importance = nn.Parameter(torch.ones(L))  # a_l: weight of the teacher's own gate
        self.bias = nn.Parameter(torch.zeros(L, E))  # b_l
        self.student_norm = nn.LayerNorm(D, elementwise_affine=False)

    def scores(self, layer: int, teacher_gate_logits: torch.Tensor, ctx: RoutingContext) -> torch.Tensor:
        """Expert scores z (N, E) of MoE layer ``layer`` (before top-k and temperature)."""
        if not self.is_bound:
            raise RuntimeError("StudentAwareRouter has no sizes yet: call bind(student_dim, num_experts, num_layers)")
        importance = F.log_softmax(teacher_gate_logits.float(), dim=-1)  # (N, E)
        s = self.student_norm(ctx.student_hidden.float())  # (N, D_s)
        z = self.importance[layer] * importance
        z = z + torch.einsum("nd,ed->ne", s, self.capacity[layer]) + torch.einsum("nf,ef->ne", ctx.gap.float(), self.gap[layer])
        return z + self.bias[layer]

    def choose(self, layer: int, teacher_gate_logits: torch.Tensor, ctx: RoutingContext, *,
               mass: torch.Tensor | None = None) -> Route:
        """Top-k expert weights and indices for the tokens of one MoE layer.

        Args:
            layer: index of the MoE layer (0..L-1).
            teacher_gate_logits: (N, E) the teacher gate's raw logits for these tokens.
            ctx: student features, gap features, k and τ.
            mass: (N,) gate mass to share among the k experts (:func:`lkd.models.routing.teacher_gate_mass`);
                None gives the plain top-k probabilities ``p_S``.
        Returns:
            :class:`lkd.models.routing.Route`: weights (N, k), expert indices (N, k), p = softmax(z / τ) (N, E).
        """
        validate_top_k(ctx.top_k, self.num_experts)
        if ctx.temperature <= 0:
            raise ValueError(f"router temperature must be > 0, got {ctx.temperature}")
        z = self.scores(layer, teacher_gate_logits, ctx)  # (N, E)
        probs = F.softmax(z / ctx.temperature, dim=-1)
        weights, indices = torch.topk(probs, ctx.top_k, dim=-1)  # (N, k)
        if mass is not None:
            weights = share_mass(probs, indices, mass)
        return Route(weights, indices, probs)

    def forward(self, layer: int, gate: nn.Module, hidden: torch.Tensor, logits: torch.Tensor, ctx: RoutingContext) -> Route:
        """:meth:`choose` with the teacher's own gate mass (the :class:`lkd.models.routing.Routing` interface)."""
        return self.choose(layer, logits.float(), ctx, mass=self.teacher_mass(gate, logits).float())

    def dense_weights(self, layer: int, teacher_gate_logits: torch.Tensor, ctx: RoutingContext, *, mass: torch.Tensor | None = None) -> torch.Tensor:
        """The same weights scattered into (N, E), zero outside the top-k (for tests and inspection)."""
        weights, indices, _ = self.choose(layer, teacher_gate_logits, ctx, mass=mass)
        return torch.zeros(weights.shape[0], self.num_experts, dtype=weights.dtype, device=weights.device).scatter(-1, indices, weights)
