"""Student-aware routing of a Mixture-of-Experts teacher (after "Every Expert Matters", Wang et al. 2025,
arXiv:2502.12947: knowledge sits in experts that top-2 routing leaves out).

**What it outputs.** For every token and every MoE layer of the teacher, :class:`StudentAwareRouter`
returns sparse expert weights ``w ∈ R^E`` with exactly ``k`` non-zero entries (``k`` = the current top-k,
1 → 4 under :class:`lkd.callbacks.routing_schedule.RoutingSchedule`):

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

**How it enters the losses.** :func:`route_teacher` patches every MoE gate of the teacher for the
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
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from lkd.losses.kd import token_kl

GAP_FEATURES = 3  # KL(p_t ‖ p_s), H(p_t), H(p_s)


class NoMoELayersError(ValueError):
    """Routing was asked of a teacher without (supported) Mixture-of-Experts gates."""


def moe_gates(model: nn.Module) -> list[nn.Module]:
    """The top-k gates of a transformers MoE model, in layer order.

    Supported: gates in the Qwen-MoE / Mixtral / OLMoE style of transformers 5 (``*TopKRouter`` modules with a
    ``weight`` of shape (E, D), ``top_k`` and ``num_experts``, returning ``(logits, weights, indices)``).
    """
    return [
        m for m in model.modules()
        if type(m).__name__.endswith("TopKRouter") and isinstance(getattr(m, "weight", None), torch.Tensor)
        and hasattr(m, "top_k") and hasattr(m, "num_experts")
    ]


def require_moe_gates(model: nn.Module, what: str = "teacher") -> list[nn.Module]:
    gates = moe_gates(model)
    if not gates:
        raise NoMoELayersError(
            f"routing needs a Mixture-of-Experts {what}, but {type(model).__name__} has no MoE gates (no "
            "*TopKRouter modules). HINT: drop the router (and the RoutingSchedule callback) for plain "
            "distillation from a dense teacher, or use an MoE teacher such as lkd.models.causal_lm.tiny_moe_lm."
        )
    return gates


@dataclass
class RoutingContext:
    """Per-token inputs of the router for one distillation forward.

    Attributes:
        student_hidden: (N, D_s) the student's last hidden state per token, N = B·T, detached.
        gap: (N, 3) per-token knowledge-gap features, detached (see :func:`gap_features`).
        top_k: experts per token, 1 <= k <= E.
        temperature: τ > 0 of the softmax over expert scores.
    """

    student_hidden: torch.Tensor
    gap: torch.Tensor
    top_k: int
    temperature: float


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


class StudentAwareRouter(nn.Module):
    """Per-token expert weights for every MoE layer of the teacher (formula in the module docstring).

    The sizes can be left out and filled in by the distillation module with :meth:`bind` (the student's
    hidden size, the teacher's expert count and number of MoE layers), so a YAML names only the router.

    Args:
        student_dim: D_s, the student's hidden size.
        num_experts: E, experts per MoE layer of the teacher.
        num_layers: L, MoE layers of the teacher.
    """

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

    def forward(
        self, layer: int, teacher_gate_logits: torch.Tensor, ctx: RoutingContext, *, mass: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k expert weights and indices for the tokens of one MoE layer.

        Args:
            layer: index of the MoE layer (0..L-1).
            teacher_gate_logits: (N, E) the teacher gate's raw logits for these tokens.
            ctx: student features, gap features, k and τ.
            mass: (N,) gate mass to share among the k experts (:func:`teacher_gate_mass`); None gives the
                plain top-k probabilities ``p_S``.
        Returns:
            weights (N, k) and expert indices (N, k).
        """
        validate_top_k(ctx.top_k, self.num_experts)
        if ctx.temperature <= 0:
            raise ValueError(f"router temperature must be > 0, got {ctx.temperature}")
        z = self.scores(layer, teacher_gate_logits, ctx)  # (N, E)
        probs = F.softmax(z / ctx.temperature, dim=-1)
        weights, indices = torch.topk(probs, ctx.top_k, dim=-1)  # (N, k)
        if mass is not None:
            weights = weights * (mass[:, None] / weights.sum(dim=-1, keepdim=True).detach())
        return weights, indices

    def dense_weights(self, layer: int, teacher_gate_logits: torch.Tensor, ctx: RoutingContext, *, mass: torch.Tensor | None = None) -> torch.Tensor:
        """The same weights scattered into (N, E), zero outside the top-k (for tests and inspection)."""
        weights, indices = self(layer, teacher_gate_logits, ctx, mass=mass)
        return torch.zeros(weights.shape[0], self.num_experts, dtype=weights.dtype, device=weights.device).scatter(-1, indices, weights)


def teacher_gate_mass(gate_logits: torch.Tensor, top_k: int, normalized: bool) -> torch.Tensor:
    """(N,) the gate mass the teacher's own routing gives each token: the sum of its top-k probabilities, or 1
    when the gate renormalises them (``norm_topk_prob``)."""
    if normalized:
        return gate_logits.new_ones(gate_logits.shape[0], dtype=torch.float32)
    probs = F.softmax(gate_logits.float(), dim=-1)
    return probs.topk(top_k, dim=-1).values.sum(-1)


def validate_top_k(top_k: int, num_experts: int | None) -> None:
    if top_k < 1 or (num_experts is not None and top_k > num_experts):
        raise ValueError(
            f"router top-k must be in [1, {num_experts}] (the teacher's experts per MoE layer), got {top_k}. "
            "HINT: lower the RoutingSchedule's end_top_k."
        )


@contextmanager
def route_teacher(teacher: nn.Module, router: StudentAwareRouter, ctx: RoutingContext) -> Iterator[None]:
    """Inside this block every MoE gate of ``teacher`` mixes its experts with ``router``'s weights.

    Each gate's forward is replaced (on the instance, restored on exit) by one that computes the teacher's
    gate logits as before (so ``output_router_logits`` still reports them) and returns the router's k
    weights (sharing the teacher's own gate mass, :func:`teacher_gate_mass`) and indices instead of the
    teacher's top-k. Gradients flow from the teacher's outputs through
    the expert mixture into the router; the teacher's own parameters may stay frozen.
    """
    gates = require_moe_gates(teacher)
    if router.num_layers != len(gates):
        raise ValueError(f"router has {router.num_layers} layers, the teacher has {len(gates)} MoE layers")

    def make_forward(layer: int, gate: nn.Module):
        def forward(self, hidden_states: torch.Tensor):
            hidden_states = hidden_states.reshape(-1, self.weight.shape[-1])  # (N, D_t)
            logits = F.linear(hidden_states, self.weight)  # (N, E)
            if ctx.student_hidden.shape[0] != logits.shape[0]:
                raise ValueError(
                    f"router context has {ctx.student_hidden.shape[0]} tokens, the teacher's MoE layer {layer} "
                    f"sees {logits.shape[0]}: student and teacher must read the same input_ids"
                )
            mass = teacher_gate_mass(logits, int(self.top_k), bool(getattr(self, "norm_topk_prob", False))).detach()  # (N,)
            weights, indices = router(layer, logits.float(), ctx, mass=mass.float())  # fp32 router, any teacher dtype
            return logits, weights.to(hidden_states.dtype), indices

        return types.MethodType(forward, gate)

    patched = []
    try:
        for layer, gate in enumerate(gates):
            gate.forward = make_forward(layer, gate)
            patched.append(gate)
        yield
    finally:
        for gate in patched:
            del gate.forward  # back to the class's forward
