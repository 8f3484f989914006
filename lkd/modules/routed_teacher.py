"""The teacher as the LM distillation module hears it: what it gives one batch (:class:`TeacherPasses`, whatever the
source), and the teacher run through a routing of its experts (:class:`RoutedTeacher`, after Wang et al. 2025, "Every
Expert Matters", arXiv:2502.12947).

:class:`RoutedTeacher` holds the routing's schedule (top-k and τ, set by :class:`lkd.callbacks.RoutingSchedule`
through :meth:`RoutedTeacher.set_schedule`), runs the teacher's passes under the routing
(:func:`lkd.models.routing.route_teacher`), says how far the routing moved the teacher and builds the routing's
objective (:func:`lkd.losses.routing.router_objective`). It is a plain object composed into
:class:`lkd.modules.LMDistillModule`, no Lightning: the module keeps the routing's parameters as its ``router``
(checkpoint keys ``router.*``, the ``router`` parameter group) and the teacher as its ``teacher``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import nn

from lkd.losses.chunks import ChunkIndex
from lkd.losses.lm import next_token_nll
from lkd.losses.routing import load_balance_loss, router_objective
from lkd.models.projections import FeatureProjections
from lkd.models.router import chunk_gap_features, gap_features
from lkd.models.routing import Routing, RoutingContext, RoutingRecord, require_moe_gates, route_teacher, validate_top_k


@dataclass
class TeacherPasses:
    """What the teacher gives one batch, from the cache, the live teacher or the routed teacher.

    Attributes:
        features: per teacher pass (one; Knowledge Augmentation: ``router.repeats`` in training) the features the
            loss table reads (``logits`` or ``topk``, hidden states, with two tokenizers ``token_logprobs``); with
            gradient to the routing when :attr:`learns`.
        own: the teacher's own (unrouted) targets: ``logits`` (one tokenizer) or ``token_logprobs`` (two); None when
            the routed teacher did not run its own forward (training a routing that does not read the student).
        records: per routed pass, the gate distributions it saw (empty: not routed).
        learns: the routing trains on these passes this step.
    """

    features: list[dict]
    own: dict | None = None
    records: list[RoutingRecord] = field(default_factory=list)
    learns: bool = False


def routing_problems(*, temperature: float, lm_weight: float, balance_weight: float, every_n_steps: int) -> list[str]:
    """Why routing settings are refused (empty: they are fine); checked with or without a router."""
    problems = []
    if temperature <= 0:
        problems.append(f"router_temperature must be > 0, got {temperature}")
    for name, value in (("router_lm_weight", lm_weight), ("router_balance_weight", balance_weight)):
        if value < 0:
            problems.append(f"{name} must be >= 0, got {value}")
    if every_n_steps < 1:
        problems.append(f"router_every_n_steps must be >= 1, got {every_n_steps}")
    return problems


class RoutedTeacher:
    """A frozen Mixture-of-Experts teacher whose experts are mixed by ``router`` while it teaches.

    Args:
        teacher: the frozen teacher (:class:`lkd.teacher.Teacher`); its MoE gates are required.
        router: the routing (:mod:`lkd.models.routing`, :class:`lkd.models.router.StudentAwareRouter`); its sizes are
            bound to the teacher's gates and the student's width here.
        student_dim: D_s, the student's hidden size.
        top_k, temperature: the routing's k (None: the teacher's own top-k) and τ until :meth:`set_schedule`.
        lm_weight: λ of the routed teacher's own LM loss in the routing's objective.
        balance_weight: β of the load-balance loss (:func:`lkd.losses.routing.load_balance_loss`) in a trained
            routing's objective.
        every_n_steps: a trained routing learns on every n-th optimizer step only.
    """

    def __init__(self, teacher: nn.Module, router: Routing, student_dim: int, *, top_k: int | None = None,
                 temperature: float = 1.0, lm_weight: float = 1.0, balance_weight: float = 0.0, every_n_steps: int = 1):
        gates = require_moe_gates(teacher.model)
        self.teacher, self.router = teacher, router
        self.num_experts, self.teacher_top_k = int(gates[0].num_experts), int(gates[0].top_k)
        router.bind_teacher(gates, student_dim)
        self.top_k, self.temperature = int(top_k if top_k is not None else self.teacher_top_k), float(temperature)
        validate_top_k(self.top_k, self.num_experts)
        self.lm_weight, self.balance_weight, self.every_n_steps = lm_weight, balance_weight, every_n_steps

    @property
    def active(self) -> bool:
        """A routing other than the teacher's own shapes the targets (``teacher`` mode is plain distillation)."""
        return self.router.mode != "teacher"

    @property
    def reads_student(self) -> bool:
        """The routing reads the student's hidden states and the gap features (:attr:`Routing.needs_student`)."""
        return self.router.needs_student

    def set_schedule(self, top_k: int, temperature: float) -> None:
        """The routing's k and τ from now on (:class:`lkd.callbacks.RoutingSchedule`, before each training batch)."""
        validate_top_k(top_k, self.num_experts)
        if temperature <= 0:
            raise ValueError(f"router temperature must be > 0, got {temperature}")
        self.top_k, self.temperature = int(top_k), float(temperature)

    def learns(self, stage: str, global_step: int) -> bool:
        """A trainable routing learns in training, on every ``every_n_steps``-th optimizer step."""
        return stage == "train" and self.router.trainable and global_step % self.every_n_steps == 0

    # ---- the teacher's forwards ------------------------------------------------------------------------
    def needs_own(self, stage: str) -> bool:
        """Whether :meth:`run` needs the teacher's own (unrouted) targets: for a routing that reads the student (the gap
        features) and outside training (drift and the test report compare with them)."""
        return self.reads_student or stage != "train"

    def run(self, teacher_ids: torch.Tensor, stage: str, global_step: int, features: FeatureProjections, student_out,
            student: dict, *, own: dict | None = None, index: ChunkIndex | None = None,
            student_bytes: torch.Tensor | None = None) -> TeacherPasses:
        """The routed teacher's features for one batch (``teacher_ids`` (B, T)): the routing's inputs (:meth:`context`),
        the routed passes (:meth:`passes`), each read by ``features`` (the module's
        :class:`lkd.models.projections.FeatureProjections`). ``own``: the teacher's own targets (its ``logits``; the
        module's :meth:`lkd.modules.LKDModule.teacher_targets`) when :meth:`needs_own`, else None."""
        own = None if own is None else features.own_targets(own["logits"], teacher_ids)
        ctx = self.context(student_out, own, student_logprobs=student.get("token_logprobs"), index=index, student_bytes=student_bytes)
        learns = self.learns(stage, global_step)
        outs, records = self.passes(teacher_ids, ctx, stage, learns=learns, hidden=features.needs_hidden or self.reads_student,
                                    attentions=features.attention)
        return TeacherPasses([features.teacher_features(out, teacher_ids) for out in outs], own, records, learns)

    def context(self, student_out=None, own: dict | None = None, *, student_logprobs: torch.Tensor | None = None,
                index: ChunkIndex | None = None, student_bytes: torch.Tensor | None = None) -> RoutingContext:
        """The routing's inputs for one batch: k and τ and, for a routing that reads the student, per teacher token its
        last hidden state and the gap features, detached. One tokenizer (``index`` None): every position
        (:func:`lkd.models.router.gap_features` of ``own["logits"]`` and the student's logits); two: the previous
        aligned chunk's (:func:`lkd.models.router.chunk_gap_features` of the token log-probabilities, per byte of
        ``student_bytes`` (B, S))."""
        if not self.reads_student:
            return RoutingContext(top_k=self.top_k, temperature=self.temperature)
        hidden = student_out.hidden_states[-1].detach()  # (B, S, D_s)
        if index is None:
            hidden, gap = rearrange(hidden, "b t d -> (b t) d"), gap_features(own["logits"], student_out.logits)  # (N, D_s), (N, 3)
        else:
            hidden, gap = chunk_gap_features(hidden, student_logprobs.detach(), own["token_logprobs"], index, student_bytes)
        return RoutingContext(student_hidden=hidden, gap=gap, top_k=self.top_k, temperature=self.temperature)

    def passes(self, teacher_ids: torch.Tensor, ctx: RoutingContext, stage: str, *, learns: bool, hidden: bool,
               attentions: bool, model_inputs: dict | None = None) -> tuple[list, list[RoutingRecord]]:
        """The teacher's forwards under the routing, with their :class:`RoutingRecord` s: ``router.repeats`` in
        training (Knowledge Augmentation), one in evaluation; with gradient into the routing when it ``learns``
        (the teacher then stays on the device until :meth:`release`). ``model_inputs``: more arguments of the
        teacher's forward (padded rows: ``attention_mask`` and ``position_ids``, (B, T) each)."""
        self.teacher.placement.hold = learns  # the backward runs through the routed teacher
        outs, records = [], []
        for _ in range(self.router.repeats if stage == "train" else 1):
            with torch.set_grad_enabled(learns), route_teacher(self.teacher.model, self.router, ctx) as record:
                outs.append(self.teacher(input_ids=teacher_ids, output_hidden_states=hidden, output_attentions=attentions,
                                         **(model_inputs or {})))
            records.append(record)
        return outs, records

    def release(self) -> None:
        """After the backward: the teacher may leave the device again."""
        self.teacher.placement.release()

    # ---- what it logs and what trains it ----------------------------------------------------------------
    def objective(self, stage: str, passes: TeacherPasses, terms: dict[str, torch.Tensor], weights: dict[str, float],
                  teacher_ids: torch.Tensor, teacher_mask: torch.Tensor | None = None) -> tuple[torch.Tensor | None, dict]:
        """The routing's objective (:func:`lkd.losses.routing.router_objective`; None when it does not learn this step)
        and what to log: how far the routing moved the teacher (its LM loss under routing, and minus its own routing's;
        the KL between the routed and the teacher's gate distributions, mean over layers, per layer outside training).

        ``terms`` is the step's one loss table between the student and the routed teacher: its gradient already
        reaches the routing through the teacher's features, which is the objective's distillation part with the
        student held fixed, so the terms enter here as numbers and only λ·CE(routed teacher) and β·L_bal add gradient.
        """
        teacher_ce = torch.stack([next_token_nll(f, teacher_ids, teacher_mask) for f in passes.features]).mean()
        per_layer = torch.stack([torch.stack(r.gate_kl()) for r in passes.records]).mean(0).detach()  # (L,)
        logs = {"teacher_ce_routed": teacher_ce.detach(), "gate_kl": per_layer.mean()}
        if stage != "train":
            logs |= {f"gate_kl/layer{layer}": value for layer, value in enumerate(per_layer)}
        if passes.own is not None:
            logs["teacher_lm_degradation"] = teacher_ce.detach() - next_token_nll(passes.own, teacher_ids, teacher_mask).detach()
        if not passes.learns:
            return None, logs
        balance = None
        if self.balance_weight > 0:
            balance = torch.stack([load_balance_loss(r.routed_probs, self.teacher_top_k) for r in passes.records]).mean()
            logs["router_balance"] = balance.detach()
        loss = router_objective({k: v.detach() for k, v in terms.items()}, weights, teacher_ce, lm_weight=self.lm_weight,
                                balance=balance, balance_weight=self.balance_weight)
        return loss, logs | {"router_loss": loss}
