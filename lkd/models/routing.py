"""How a Mixture-of-Experts teacher's tokens reach its experts while it teaches: the routing modes and the
one mechanism they share (after Wang et al. 2025, "Every Expert Matters", arXiv:2502.12947, code gmkim-ai/MoEKD).

A distillation module holds one :class:`Routing` (YAML ``model.init_args.router``); :func:`route_teacher`
patches every MoE gate of the teacher for one forward so that its experts are mixed the routing's way:

| mode            | class                                          | experts per token                | trained             |
|-----------------|------------------------------------------------|----------------------------------|---------------------|
| ``teacher``     | :class:`TeacherRouting`                        | the teacher's own top-k          | no (plain KD)       |
| ``all``         | :class:`AllExperts`                            | all E                            | no                  |
| ``ka``          | :class:`KnowledgeAugmentation`                 | E − 1 (some tokens: sampled)     | no; passes averaged |
| ``sar``         | :class:`StudentAwareGate`                      | all E, gate weights retrained    | the gate copy W_l   |
| ``student_aware`` | :class:`lkd.models.router.StudentAwareRouter` | k (RoutingSchedule: 1 → 4)      | U, V, a, b          |

**Mixing weights.** Every mode picks a set S of experts per token and a distribution p over all E
(:attr:`Route.probs`; the teacher's own ``softmax(W h)`` unless the mode learns another), then shares the
gate mass the teacher itself gives the token, ``m`` (:func:`teacher_gate_mass`: the sum of its top-k
probabilities, or 1 with ``norm_topk_prob``), among S in proportion to p:

    w_e = m · p_e / Σ_{j∈S} p_j   for e ∈ S,   0 otherwise

so the scale of each MoE output stays the one the teacher was trained with, whatever the number of experts
(the paper's LLaMA-MoE renormalises over S, which is the same rule for a gate that renormalises).

**Drift.** The patch records, per MoE layer, the teacher's own gate distribution and the routing's
(:class:`RoutingRecord`): ``gate_kl`` = KL(p_routed ‖ p_teacher) per layer is zero for the modes that keep
the teacher's gate (teacher, all, ka) and measures how far a trained gate moved.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


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
            "distillation from a dense teacher, or use an MoE teacher such as lkd.models.TinyMoELM."
        )
    return gates


@dataclass
class RoutingContext:
    """Per-token inputs of a routing that looks at the student (:attr:`Routing.needs_student`).

    Attributes:
        student_hidden: (N, D_s) the student's hidden state per teacher token, N = B·T, detached (None for
            routings that do not read it).
        gap: (N, 3) per-token knowledge-gap features, detached.
        top_k: experts per token (student_aware), 1 <= k <= E.
        temperature: τ > 0 of the softmax over expert scores (student_aware).
    """

    student_hidden: torch.Tensor | None = None
    gap: torch.Tensor | None = None
    top_k: int = 2
    temperature: float = 1.0


class Route(NamedTuple):
    """What a routing decides for the N tokens of one MoE layer.

    Attributes:
        weights: (N, k) mixing weights of the chosen experts.
        indices: (N, k) the chosen experts.
        probs: (N, E) the distribution they were chosen from (fp32).
    """

    weights: torch.Tensor
    indices: torch.Tensor
    probs: torch.Tensor


@dataclass
class RoutingRecord:
    """Per MoE layer, what one routed forward saw: ``teacher_probs[l]`` (N, E) the teacher's own gate
    distribution and ``routed_probs[l]`` (N, E) the routing's (with gradient for trained gates)."""

    teacher_probs: list[torch.Tensor] = field(default_factory=list)
    routed_probs: list[torch.Tensor] = field(default_factory=list)

    def gate_kl(self) -> list[torch.Tensor]:
        """Per layer, mean over tokens of KL(p_routed ‖ p_teacher) (0 when the routing keeps the teacher's gate)."""
        return [(q * (q.clamp_min(1e-12).log() - p.clamp_min(1e-12).log())).sum(-1).mean()
                for p, q in zip(self.teacher_probs, self.routed_probs)]


def teacher_gate_mass(gate_logits: torch.Tensor, top_k: int, normalized: bool) -> torch.Tensor:
    """(N,) the gate mass the teacher's own routing gives each token: the sum of its top-k probabilities, or 1
    when the gate renormalises them (``norm_topk_prob``)."""
    if normalized:
        return gate_logits.new_ones(gate_logits.shape[0], dtype=torch.float32)
    probs = F.softmax(gate_logits.float(), dim=-1)
    return probs.topk(top_k, dim=-1).values.sum(-1)


def share_mass(probs: torch.Tensor, indices: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """w = m · p_S / Σ p_S: the mass (N,) shared among the experts ``indices`` (N, k) in proportion to ``probs`` (N, E).
    The normaliser is held constant in the backward (stop-gradient), so a trained ``probs`` gets gradient even at k = 1."""
    chosen = probs.gather(-1, indices)  # (N, k)
    return chosen * (mass[:, None] / chosen.sum(-1, keepdim=True).detach().clamp_min(1e-12))


def validate_top_k(top_k: int, num_experts: int | None) -> None:
    if top_k < 1 or (num_experts is not None and top_k > num_experts):
        raise ValueError(
            f"router top-k must be in [1, {num_experts}] (the teacher's experts per MoE layer), got {top_k}. "
            "HINT: lower the RoutingSchedule's end_top_k."
        )


class Routing(nn.Module):
    """A way of mixing the teacher's experts during distillation (base class; see the module docstring).

    Subclasses implement :meth:`forward` for one MoE layer. Class attributes say what the distillation
    module must provide: ``needs_student`` (a :class:`RoutingContext` with the student's hidden states and
    the gap features: one extra teacher forward with its own routing first), ``repeats`` (teacher passes per
    training batch, whose losses are averaged). A routing with parameters that require grad is trained by
    the module's router objective (:func:`lkd.losses.routing.router_objective`).
    """

    mode: ClassVar[str] = ""
    needs_student: ClassVar[bool] = False
    repeats: int = 1

    def bind_teacher(self, gates: list[nn.Module], student_dim: int) -> Routing:
        """Fill in sizes from the teacher's gates (E, layers, widths) and the student's width; returns self."""
        self.num_experts, self.num_layers = int(gates[0].num_experts), len(gates)
        return self

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def forward(self, layer: int, gate: nn.Module, hidden: torch.Tensor, logits: torch.Tensor, ctx: RoutingContext) -> Route:
        """Route the N tokens of MoE layer ``layer``.

        Args:
            gate: the teacher's gate module there (``top_k``, ``norm_topk_prob``, ``weight`` (E, D_t)).
            hidden: (N, D_t) the tokens' hidden states entering the layer.
            logits: (N, E) the teacher gate's own logits for them.
        """
        raise NotImplementedError

    @staticmethod
    def teacher_mass(gate: nn.Module, logits: torch.Tensor) -> torch.Tensor:
        return teacher_gate_mass(logits, int(gate.top_k), bool(getattr(gate, "norm_topk_prob", False))).detach()


class TeacherRouting(Routing):
    """``teacher``: the teacher's own top-k gating (plain distillation; reproduces the unpatched forward)."""

    mode = "teacher"

    def forward(self, layer, gate, hidden, logits, ctx) -> Route:
        probs = F.softmax(logits.float(), dim=-1)
        indices = probs.topk(int(gate.top_k), dim=-1).indices
        return Route(share_mass(probs, indices, self.teacher_mass(gate, logits)), indices, probs)


class AllExperts(Routing):
    """``all``: every expert of every MoE layer contributes, weighted by the teacher's own gate probabilities
    (sharing the teacher's gate mass). The paper's Figure 2: more active experts help plain KD, all of them not
    always."""

    mode = "all"

    def forward(self, layer, gate, hidden, logits, ctx) -> Route:
        probs = F.softmax(logits.float(), dim=-1)
        indices = torch.arange(probs.shape[-1], device=probs.device).expand(probs.shape[0], -1)  # (N, E)
        return Route(share_mass(probs, indices, self.teacher_mass(gate, logits)), indices, probs)


class KnowledgeAugmentation(Routing):
    """``ka``: Knowledge Augmentation (Wang et al. 2025, §3.2; their ``--num-selects E−1 --num-repeats 2
    --sampling-prob 0.05``). Each token uses its ``active_experts`` best experts by the teacher's gate, or, with
    probability ``sampling_prob``, as many experts sampled without replacement from the gate's
    distribution; the teacher runs ``repeats`` times per training batch (new samples each time) and the
    student's loss is averaged over the runs. Evaluation uses one run.

    Args:
        active_experts: experts per token (None: E − 1, at least the teacher's top-k).
        sampling_prob: per-token probability of a sampled set instead of the best ones, in [0, 1].
        repeats: teacher passes per training batch, >= 1.
    """

    mode = "ka"

    def __init__(self, active_experts: int | None = None, sampling_prob: float = 0.05, repeats: int = 2):
        super().__init__()
        problems = []
        if active_experts is not None and active_experts < 1:
            problems.append(f"active_experts must be >= 1 or None, got {active_experts}")
        if not 0.0 <= sampling_prob <= 1.0:
            problems.append(f"sampling_prob must be in [0, 1], got {sampling_prob}")
        if repeats < 1:
            problems.append(f"repeats must be >= 1, got {repeats}")
        if problems:
            raise ValueError("KnowledgeAugmentation: " + "; ".join(problems))
        self.selects, self.sampling_prob, self.repeats = active_experts, sampling_prob, repeats

    def bind_teacher(self, gates, student_dim) -> Routing:
        super().bind_teacher(gates, student_dim)
        if self.selects is None:
            self.selects = max(int(gates[0].top_k), self.num_experts - 1)
        if not 1 <= self.selects <= self.num_experts:
            raise ValueError(f"KnowledgeAugmentation active_experts must be in [1, {self.num_experts}] (the teacher's experts "
                             f"per MoE layer), got {self.selects}. HINT: leave it out for E - 1 = {self.num_experts - 1}")
        return self

    def forward(self, layer, gate, hidden, logits, ctx) -> Route:
        probs = F.softmax(logits.float(), dim=-1)
        n = int(self.selects if self.selects is not None else max(int(gate.top_k), probs.shape[-1] - 1))
        indices = probs.topk(n, dim=-1).indices  # (N, n)
        if self.sampling_prob > 0:
            sampled = torch.multinomial(probs.detach(), n, replacement=False)  # (N, n)
            pick = torch.rand(probs.shape[0], 1, device=probs.device) < self.sampling_prob
            indices = torch.where(pick, sampled, indices)
        return Route(share_mass(probs, indices, self.teacher_mass(gate, logits)), indices, probs)


class StudentAwareGate(Routing):
    """``sar``: the paper's Student-Aware Router. A trainable copy ``W_l`` of each MoE gate's weights (experts
    frozen) mixes **all** experts, ``p = softmax(W_l h)``; it is trained on the router objective (KL(teacher ‖
    student) with the student held fixed; ``router_lm_weight`` and ``router_balance_weight`` (0.01 in the
    paper) in the module) with its own small learning rate (``router_lr``).

    lkd runs the paper's two stages in one backward: the gate's update from batch t shapes the targets from
    batch t + 1 on (the paper re-runs the teacher after the gate step on the same batch; at the paper's tiny
    gate learning rate the two differ by one step, and this saves a teacher forward per step).
    """

    mode = "sar"

    def bind_teacher(self, gates, student_dim) -> Routing:
        super().bind_teacher(gates, student_dim)
        if not hasattr(self, "weight"):
            self.weight = nn.Parameter(torch.stack([g.weight.detach().float().clone() for g in gates]))  # (L, E, D_t)
        elif tuple(self.weight.shape[:2]) != (self.num_layers, self.num_experts):
            raise ValueError(f"StudentAwareGate holds {tuple(self.weight.shape[:2])} (layers, experts), the teacher has "
                             f"{(self.num_layers, self.num_experts)}")
        return self

    def forward(self, layer, gate, hidden, logits, ctx) -> Route:
        probs = F.softmax(F.linear(hidden.float(), self.weight[layer]), dim=-1)  # (N, E)
        indices = torch.arange(probs.shape[-1], device=probs.device).expand(probs.shape[0], -1)
        return Route(share_mass(probs, indices, self.teacher_mass(gate, logits)), indices, probs)


class RankedExperts(Routing):
    """For measurement, not training: each token uses the experts its teacher gate ranks ``first_rank`` to
    ``first_rank + k − 1`` (0-based, k = the teacher's top-k) instead of the best k, sharing the same mass.
    ``first_rank = k`` forces "the next-best experts": how much the LM loss rises then says how much the experts
    specialise (:func:`lkd.evaluation.expert_specialisation`)."""

    mode = "ranked"

    def __init__(self, first_rank: int = 2):
        super().__init__()
        if first_rank < 0:
            raise ValueError(f"first_rank must be >= 0, got {first_rank}")
        self.first_rank = first_rank

    def forward(self, layer, gate, hidden, logits, ctx) -> Route:
        probs = F.softmax(logits.float(), dim=-1)
        k = int(gate.top_k)
        if self.first_rank + k > probs.shape[-1]:
            raise ValueError(f"first_rank {self.first_rank} + top-k {k} exceeds the {probs.shape[-1]} experts")
        indices = probs.argsort(-1, descending=True)[:, self.first_rank:self.first_rank + k]  # (N, k)
        return Route(share_mass(probs, indices, self.teacher_mass(gate, logits)), indices, probs)


class RandomExperts(Routing):
    """For measurement, not training: each token uses k experts drawn uniformly (k = the teacher's top-k),
    sharing the teacher's gate mass in its gate's proportions (:func:`lkd.evaluation.expert_specialisation`)."""

    mode = "random"

    def forward(self, layer, gate, hidden, logits, ctx) -> Route:
        probs = F.softmax(logits.float(), dim=-1)
        indices = torch.rand_like(probs).argsort(-1)[:, : int(gate.top_k)]  # (N, k)
        return Route(share_mass(probs, indices, self.teacher_mass(gate, logits)), indices, probs)


@contextmanager
def route_teacher(teacher: nn.Module, routing: Routing, ctx: RoutingContext | None = None) -> Iterator[RoutingRecord]:
    """Inside this block every MoE gate of ``teacher`` mixes its experts the ``routing``'s way; yields the
    :class:`RoutingRecord` of the forward run inside.

    Each gate's forward is replaced on the instance (restored on exit) by one that computes the teacher's own
    gate logits as before (so ``output_router_logits`` still reports them) and returns the routing's weights
    and indices instead of the teacher's top-k. Gradients flow from the teacher's outputs through the expert
    mixture into the routing's parameters; the teacher's own parameters may stay frozen.
    """
    gates = require_moe_gates(teacher)
    ctx = ctx if ctx is not None else RoutingContext()
    if getattr(routing, "num_layers", None) not in (None, len(gates)):
        raise ValueError(f"router has {routing.num_layers} layers, the teacher has {len(gates)} MoE layers")
    record = RoutingRecord()

    def make_forward(layer: int, gate: nn.Module):
        def forward(self, hidden_states: torch.Tensor):
            hidden_states = hidden_states.reshape(-1, self.weight.shape[-1])  # (N, D_t)
            logits = F.linear(hidden_states, self.weight)  # (N, E)
            if ctx.student_hidden is not None and ctx.student_hidden.shape[0] != logits.shape[0]:
                raise ValueError(
                    f"router context has {ctx.student_hidden.shape[0]} tokens, the teacher's MoE layer {layer} "
                    f"sees {logits.shape[0]}: the student features must be given per teacher token"
                )
            route = routing(layer, self, hidden_states, logits, ctx)  # fp32 routing, any teacher dtype
            record.teacher_probs.append(F.softmax(logits.detach().float(), dim=-1))
            record.routed_probs.append(route.probs)
            return logits, route.weights.to(hidden_states.dtype), route.indices

        return types.MethodType(forward, gate)

    patched = []
    try:
        for layer, gate in enumerate(gates):
            gate.forward = make_forward(layer, gate)
            patched.append(gate)
        yield record
    finally:
        for gate in patched:
            del gate.forward  # back to the class's forward
