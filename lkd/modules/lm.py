"""The language-model track: training any transformers causal LM (dense or MoE), and distilling a (Mixture-of-
Experts) teacher into a small dense student, optionally through student-aware routing of the teacher's experts
(:mod:`lkd.models.router`)."""

from __future__ import annotations

import math

import torch
from einops import rearrange
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MetricCollection
from typing_extensions import override

from lkd.losses.chunks import ChunkIndex
from lkd.losses.cross_tokenizer import CROSS_LOSS_NAMES, cross_tokenizer_loss_terms
from lkd.losses.kd import kd_problems, teacher_topk
from lkd.losses.lm import (
    DEFAULT_LOSS_WEIGHTS,
    combine_losses,
    lm_cross_entropy,
    lm_loss_terms,
    predicted_mask,
    token_logprobs,
    validate_loss_weights,
)
from lkd.losses.routing import load_balance_loss, router_objective
from lkd.memory import enable_activation_checkpointing
from lkd.metrics.retention import BitsPerByte, Perplexity
from lkd.models import causal_lm
from lkd.models.router import chunk_gap_features, gap_features
from lkd.models.routing import Routing, RoutingContext, RoutingRecord, require_moe_gates, route_teacher, validate_top_k
from lkd.models.transfer import check_layer_map, default_layer_map
from lkd.modules.base import LKDModule, StepOutput
from lkd.schedules import ScheduleName
from lkd.teacher import Teacher
from lkd.tokenizers import same_tokenizer, shared_vocabulary, token_byte_lengths


class VocabularyMismatchError(ValueError):
    """Teacher and student predict over different vocabularies."""


def learning_rate_problem(name: str, value: float | None, hint: str) -> str | None:
    """Why a parameter group's learning rate (``router_lr``) is refused: not a finite number >= 0. None (the
    optimizer's rate) and 0 (the group keeps its initial weights) are fine; a negative rate would climb the loss, and
    torch takes one in a parameter group without a word."""
    if value is None or (math.isfinite(value) and value >= 0):
        return None
    return (f"{name} must be a finite number >= 0 (0 keeps those weights as they are; a negative rate climbs the loss), "
            f"got {value}. HINT: {hint}")


class LMModule(LKDModule):
    """What the LM modules share: ``{"input_ids", "sample_id"}`` batches, ``{stage}/nll`` and ``{stage}/ppl``,
    the tokenizer handed to the data module, and a warm-up + cosine schedule.

    Args:
        tokenizer: tokenizer name (:func:`lkd.tokenizers.load_tokenizer`) the data is encoded with.
        optimizer: optimiser factory given parameter groups (each group may carry its own ``lr``).
        warmup_steps: optimizer steps of linear warm-up (an int), or a fraction of all steps if < 1.
        min_lr_ratio: the cosine ends at this fraction of each group's learning rate.
        lr_schedule: see :mod:`lkd.schedules` (default cosine).
    """

    def __init__(self, tokenizer: str = "smollm2", optimizer: OptimizerCallable = torch.optim.AdamW,
                 warmup_steps: float = 0.05, min_lr_ratio: float = 0.1, lr_schedule: ScheduleName = "cosine"):
        super().__init__(optimizer, lr_schedule, warmup=warmup_steps, min_lr_ratio=min_lr_ratio)
        self.tokenizer = tokenizer

    @property
    def trained_model(self) -> nn.Module:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        return causal_lm.vocab_size(self.trained_model)

    @property
    def context_length(self) -> int:
        return causal_lm.context_length(self.trained_model)

    @override
    def make_metrics(self) -> MetricCollection:
        return MetricCollection({"ppl": Perplexity(), "bpb": BitsPerByte()})

    @override
    def connect_data(self, datamodule) -> None:
        if hasattr(datamodule, "connect"):
            datamodule.connect(self.tokenizer, context_length=self.context_length, vocab_size=self.vocab_size)
        self.bind_tokenizers(datamodule)

    def bind_tokenizers(self, datamodule) -> None:
        """Tables from the data's tokenizer: bytes per token id (bits per byte)."""
        tokenizer = getattr(datamodule, "tokenizer", None)
        self.token_bytes = None if tokenizer is None else token_byte_lengths(tokenizer).to(self.device)

    def predicted_bytes(self, input_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor | None:
        """UTF-8 bytes of the predicted tokens ``input_ids[:, 1:]`` (where ``mask[:, 1:]``), or None without a table."""
        table = getattr(self, "token_bytes", None)
        if table is None:
            return None
        counted = table.to(input_ids.device)[input_ids[:, 1:]]  # (B, T-1)
        return (counted if mask is None else counted * mask[:, 1:]).sum()

    @override
    def sample_ids(self, batch) -> torch.Tensor | None:
        return batch.get("sample_id")

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) of the model being trained."""
        return self.trained_model(input_ids=input_ids).logits


class CausalLMModule(LMModule):
    """Trains one causal LM on next-token prediction (``lkd fit -c configs/lm/teacher_moe_tiny.yaml``).

    Logs ``{stage}/loss`` (cross-entropy, plus the MoE load-balancing loss in training), ``{stage}/nll``
    and ``{stage}/ppl`` = exp(mean token NLL over the epoch). An MoE model (``output_router_logits``)
    adds ``train/aux_loss`` weighted by its config's ``router_aux_loss_coef``.

    Args:
        model: a transformers causal LM (YAML ``class_path``, e.g. :func:`lkd.models.causal_lm.tiny_moe_lm`).
        tokenizer, optimizer, warmup_steps, min_lr_ratio, lr_schedule: see :class:`LMModule`.
    """

    def __init__(self, model: nn.Module, tokenizer: str = "smollm2", optimizer: OptimizerCallable = torch.optim.AdamW,
                 warmup_steps: float = 0.05, min_lr_ratio: float = 0.1, lr_schedule: ScheduleName = "cosine"):
        super().__init__(tokenizer, optimizer, warmup_steps, min_lr_ratio, lr_schedule)
        self.model = model
        self.is_moe = hasattr(causal_lm.lm_config(model), "router_aux_loss_coef")
        self.save_hyperparameters(ignore=["model", "optimizer"])

    @property
    def trained_model(self) -> nn.Module:
        return self.model

    @override
    def parameter_groups(self) -> list[dict]:
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "name": "model"}]

    @override
    def step(self, batch, stage: str) -> StepOutput:
        input_ids = batch["input_ids"]  # (B, T)
        want_aux = self.is_moe and stage == "train"
        out = self.model(input_ids=input_ids, output_router_logits=True) if want_aux else self.model(input_ids=input_ids)
        nll = lm_cross_entropy(out.logits, input_ids)
        loss, terms = nll, {"nll": nll}
        if want_aux and getattr(out, "aux_loss", None) is not None:
            terms["aux_loss"] = out.aux_loss
            loss = nll + float(causal_lm.lm_config(self.model).router_aux_loss_coef) * out.aux_loss
        tokens = input_ids[:, 1:].numel()
        return StepOutput(loss, tokens, terms, metric_args=(nll, tokens, self.predicted_bytes(input_ids)))


class LMDistillModule(LMModule):
    """Teacher → student distillation of causal LMs with up to five weighted losses and an optional router.

    Per batch (``input_ids`` (B, T)): the student runs with hidden states / attentions as the active losses
    need; the frozen teacher runs without gradient. Without a router those teacher outputs are the targets.
    With a router (:class:`lkd.models.router.StudentAwareRouter`), the teacher runs a second time inside
    :func:`lkd.models.router.route_teacher`: its MoE layers mix ``k`` experts with the router's per-token
    weights (``k`` and τ from :class:`lkd.callbacks.routing_schedule.RoutingSchedule`), and that routed
    forward gives the targets. The loss is

        L = Σ w_i L_i(student, sg[routed teacher])            (trains the student; lkd.losses.lm.lm_loss_terms)
          + L_router                                          (trains the router; lkd.losses.lm.router_objective)

    (sg = stop-gradient), one backward, one optimizer with parameter groups: ``student`` (the optimizer's
    lr), ``router`` (``router_lr``) and ``projections`` (student → teacher width; ``projection_lr``).

    Losses (``loss_weights``, names from :data:`lkd.losses.lm.LOSS_NAMES`): ``kl``, ``ce``, ``feature``,
    ``attention`` (needs eager attention), ``layer``, ``contrastive``. With ``teacher.cache`` (a top-k cache,
    ``lkd cache-teacher``) the train and validation targets are read from it: only ``kl`` and ``ce`` can be
    served, and routing needs the live teacher. The test report is :class:`lkd.callbacks.DistillationReport`.

    **Two tokenizers** (``teacher_tokenizer`` set, e.g. a Qwen-family teacher and a SmolLM student): the data
    module yields aligned blocks (:class:`lkd.data.text.AlignedTokenBlocks`): the student's tokens, the
    teacher's tokens of the same text and the chunk table. The KL (one vocabulary) is replaced by the
    cross-tokenizer losses of :mod:`lkd.losses.cross_tokenizer`: ``alm`` (chunk likelihoods, ALM), ``uld``
    (sorted distributions, ULD) and ``shared_kl`` (KL over the tokens both spell the same, with the teacher's
    mass on them logged as ``teacher_mass_shared``); ``feature`` / ``layer`` / ``contrastive`` read the hidden
    states at chunk ends. A cache (``teacher.cache``) stores the teacher's token log-probabilities and top-k
    per position, keyed by both tokenizers. Every stage logs ``{stage}/bpb`` (bits per byte, comparable
    across tokenizers) beside ``{stage}/ppl``.

    Args:
        student: the model to train (YAML ``class_path``, e.g. :func:`lkd.models.causal_lm.tiny_llama_lm`).
        teacher: the frozen teacher (:class:`lkd.teacher.Teacher`; a :class:`CausalLMModule` checkpoint, or
            None to keep built / pretrained weights).
        tokenizer: the student's tokenizer name (and the teacher's, without ``teacher_tokenizer``); a folder
            path together with ``data.init_args.train_tokenizer`` trains a byte-level BPE there first.
        teacher_tokenizer: the teacher's tokenizer when it differs from the student's (cross-tokenizer
            distillation); None = one tokenizer for both.
        alm_temperature: τ of the ``alm`` loss.
        router: how the teacher's experts are mixed while it teaches (:mod:`lkd.models.routing`: ``TeacherRouting``,
            ``AllExperts``, ``KnowledgeAugmentation``, ``StudentAwareGate`` or :class:`lkd.models.router.StudentAwareRouter`);
            None = the teacher's own gating (plain distillation).
        loss_weights: ``{name: weight}``; missing names weigh 0.
        temperature: T of the KL term.
        layer_map: teacher layer (0-based) for each student layer (:func:`lkd.models.transfer.check_layer_map`);
            default :func:`lkd.models.transfer.default_layer_map`.
        contrastive_temperature: τ of InfoNCE.
        router_lm_weight: λ of the routed teacher's own LM loss in the router's objective.
        router_top_k, router_temperature: routing used when no RoutingSchedule drives them (default: the
            teacher's own top-k, τ = 1).
        router_lr, projection_lr: learning rates of those parameter groups (``projection_lr`` None: the optimizer's);
            0 keeps the group at its initial weights (frozen; its gradients are still computed), a negative rate is
            refused (it would climb the loss).
        router_balance_weight: weight of the load-balance term (:func:`lkd.losses.lm.load_balance_loss`) in a
            trained routing's objective (0.01 for ``sar`` in the paper).
        router_every_n_steps: a trained routing (``sar``, ``student_aware``) learns on every n-th optimizer step
            only; the steps between use it without the backward through the teacher (cheaper). Under DDP with
            n > 1 use ``strategy: ddp_find_unused_parameters_true`` (the routing's parameters idle on those steps).
        activation_checkpointing: recompute the student's decoder layers in the backward instead of storing
            their activations (transformers gradient checkpointing).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher,
        tokenizer: str = "smollm2",
        router: Routing | None = None,
        loss_weights: dict[str, float] | None = None,
        temperature: float = 4.0,
        layer_map: list[int] | None = None,
        contrastive_temperature: float = 0.1,
        router_lm_weight: float = 1.0,
        router_top_k: int | None = None,
        router_temperature: float = 1.0,
        router_lr: float = 1e-4,
        projection_lr: float | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        warmup_steps: float = 0.05,
        min_lr_ratio: float = 0.1,
        activation_checkpointing: bool = False,
        teacher_tokenizer: str | None = None,
        alm_temperature: float = 1.0,
        router_balance_weight: float = 0.0,
        router_every_n_steps: int = 1,
    ):
        super().__init__(tokenizer, optimizer, warmup_steps, min_lr_ratio)
        self.student, self.teacher = student, teacher
        t_model = teacher.model
        sv, tv = causal_lm.vocab_size(student), causal_lm.vocab_size(t_model)
        # the student's own tokenizer given as the teacher's: one vocabulary (the exact KL), not two (hparams keep the option)
        same = teacher_tokenizer is not None and same_tokenizer(tokenizer, teacher_tokenizer, load=sv == tv)
        if same:
            rank_zero_info(f"model.init_args.teacher_tokenizer={teacher_tokenizer!r} is the student's tokenizer ({tokenizer!r}): "
                           "distilling over one vocabulary. HINT: drop model.init_args.teacher_tokenizer")
        self.teacher_tokenizer = None if same else teacher_tokenizer
        self.cross_tokenizer = self.teacher_tokenizer is not None
        self.loss_weights = validate_loss_weights(DEFAULT_LOSS_WEIGHTS if loss_weights is None else loss_weights)
        self._check_tokenizer_losses(sv, tv, router)
        problems = kd_problems(temperature=temperature)
        if alm_temperature <= 0:
            problems.append(f"alm_temperature must be > 0, got {alm_temperature}")
        for name, value in (("contrastive_temperature", contrastive_temperature), ("router_temperature", router_temperature)):
            if value <= 0:
                problems.append(f"{name} must be > 0, got {value}")
        for name, value in (("router_lm_weight", router_lm_weight), ("router_balance_weight", router_balance_weight)):
            if value < 0:
                problems.append(f"{name} must be >= 0, got {value}")
        if teacher.cache_path is not None:
            problems += self._cache_problems(router, self.loss_weights, teacher.cache_top_k, tv)
        if router_every_n_steps < 1:
            problems.append(f"router_every_n_steps must be >= 1, got {router_every_n_steps}")
        for name, value, hint in (("router_lr", router_lr, "model.init_args.router_lr=1.0e-4 (the default)"),
                                  ("projection_lr", projection_lr, "drop model.init_args.projection_lr (the optimizer's rate)")):
            if problem := learning_rate_problem(name, value, hint):
                problems.append(problem)
        if problems:
            raise ValueError("LMDistillModule: " + "; ".join(problems))
        self.router_every_n_steps = router_every_n_steps
        self.temperature, self.contrastive_temperature, self.alm_temperature = temperature, contrastive_temperature, alm_temperature
        self.router_lm_weight, self.router_lr, self.projection_lr = router_lm_weight, router_lr, projection_lr
        self.router_balance_weight = router_balance_weight

        w = self.loss_weights
        ls, lt = causal_lm.num_layers(student), causal_lm.num_layers(t_model)
        self.layer_map = check_layer_map(default_layer_map(lt, ls) if layer_map is None else layer_map, ls, lt)
        if w.get("attention", 0) > 0:
            for name, model in (("student", student), ("teacher", t_model)):
                impl = getattr(causal_lm.lm_config(model), "_attn_implementation", None)
                if impl not in ("eager", None):
                    raise ValueError(
                        f"the attention loss needs attention maps, but the {name} uses attn_implementation={impl!r} "
                        "(returns none). HINT: build it with attn_implementation='eager' or set loss_weights.attention: 0"
                    )
        ds, dt = causal_lm.hidden_size(student), causal_lm.hidden_size(t_model)
        self.projections = nn.ModuleDict()
        if w.get("feature", 0) > 0 or w.get("contrastive", 0) > 0:
            self.projections["feature"] = nn.Linear(ds, dt, bias=False)
        if w.get("layer", 0) > 0:
            self.projections["layer"] = nn.ModuleList(nn.Linear(ds, dt, bias=False) for _ in self.layer_map)

        self.router = router
        self.teacher_num_experts: int | None = None
        if router is not None:
            gates = require_moe_gates(t_model)
            self.teacher_num_experts = int(gates[0].num_experts)
            self.teacher_top_k = int(gates[0].top_k)
            router.bind_teacher(gates, ds)
            self.router_top_k = int(router_top_k if router_top_k is not None else gates[0].top_k)
            validate_top_k(self.router_top_k, self.teacher_num_experts)
        else:
            self.router_top_k = router_top_k
        self.router_temperature = float(router_temperature)
        if activation_checkpointing:
            enable_activation_checkpointing(self.student)
        self.save_hyperparameters(ignore=["student", "teacher", "router", "optimizer"])

    def _check_tokenizer_losses(self, student_vocab: int, teacher_vocab: int, router) -> None:
        """The losses asked for must fit one tokenizer or two; raise naming the losses and the fix."""
        w = self.loss_weights
        cross = sorted(k for k in CROSS_LOSS_NAMES if w.get(k, 0) > 0)
        if not self.cross_tokenizer:
            if student_vocab != teacher_vocab:
                raise VocabularyMismatchError(
                    f"teacher vocabulary has {teacher_vocab} tokens, student vocabulary has {student_vocab}: the KL needs one "
                    "vocabulary. HINT: for a teacher with its own tokenizer set model.init_args.teacher_tokenizer to it and use "
                    "the cross-tokenizer losses (loss_weights: {alm: 1.0}, or uld / shared_kl); else build both with the same "
                    "tokenizer (vocab_size)"
                )
            if cross:
                raise ValueError(f"loss_weights {cross} compare two tokenizers, but model.init_args.teacher_tokenizer is not set. "
                                 "HINT: set it to the teacher's tokenizer, or use kl with one tokenizer")
            return
        problems = []
        if w.get("kl", 0) > 0:
            problems.append(f"loss_weights.kl={w['kl']} needs one vocabulary, but teacher ({self.teacher_tokenizer}, {teacher_vocab} "
                            f"tokens) and student ({self.tokenizer}, {student_vocab} tokens) tokenise differently. HINT: use the "
                            "cross-tokenizer losses alm, uld or shared_kl instead (e.g. loss_weights: {alm: 1.0, ce: 0.5})")
        if w.get("attention", 0) > 0:
            problems.append("loss_weights.attention compares attention maps position by position, which two tokenizers do not "
                            "share. HINT: set it to 0 (feature, layer and contrastive work across tokenizers, at chunk ends)")
        if problems:
            raise VocabularyMismatchError("LMDistillModule (two tokenizers): " + "; ".join(problems))

    @staticmethod
    def _cache_problems(router, weights: dict[str, float], top_k: int, vocab: int) -> list[str]:
        """Why a top-k logit cache cannot serve this configuration (empty: it can)."""
        problems = []
        if router is not None and router.mode != "teacher":
            problems.append("teacher.cache cannot serve routed distillation (the router re-runs the teacher's experts "
                            "every step); drop model.init_args.router or the cache")
        needs_teacher = {k: v for k, v in weights.items() if k not in ("kl", "ce", *CROSS_LOSS_NAMES) and v > 0}
        if needs_teacher:
            problems.append(f"teacher.cache holds top-k log-probabilities only, but loss_weights {needs_teacher} need the "
                            "teacher's hidden states or attentions; set them to 0 (kl and ce only) or drop the cache")
        if top_k > vocab:
            problems.append(f"teacher.cache_top_k must be in 1..{vocab} (the vocabulary), got {top_k}")
        return problems

    # ---- set-up ---------------------------------------------------------------------------------------
    @property
    def trained_model(self) -> nn.Module:
        return self.student

    @property
    def context_length(self) -> int:
        return min(causal_lm.context_length(self.student), causal_lm.context_length(self.teacher.model))

    @override
    def connect_data(self, datamodule) -> None:
        if hasattr(datamodule, "connect"):
            extra = {}
            if self.cross_tokenizer:
                extra = {"teacher_tokenizer": self.teacher_tokenizer,
                         "teacher_context_length": causal_lm.context_length(self.teacher.model)}
            datamodule.connect(self.tokenizer, context_length=self.context_length, vocab_size=causal_lm.vocab_size(self.student), **extra)
        self.bind_tokenizers(datamodule)

    @override
    def bind_tokenizers(self, datamodule) -> None:
        """Bytes per token of both sides and, with two tokenizers, the teacher → student map of shared tokens."""
        super().bind_tokenizers(datamodule)
        if not self.cross_tokenizer:
            self.teacher_token_bytes = self.token_bytes
            return
        if not getattr(datamodule, "aligned", False):
            raise ValueError(f"cross-tokenizer distillation needs aligned two-tokenizer blocks, but {type(datamodule).__name__} "
                             "does not provide them. HINT: use lkd.data.text.TextDataModule")
        teacher_tok, student_tok = datamodule.teacher_tokenizer, datamodule.tokenizer
        self.teacher_token_bytes = token_byte_lengths(teacher_tok).to(self.device)
        self.teacher_to_student = shared_vocabulary(teacher_tok, student_tok).to(self.device)
        shared = int((self.teacher_to_student >= 0).sum())
        if self.loss_weights.get("shared_kl", 0) > 0 and shared == 0:
            raise ValueError(f"loss_weights.shared_kl: the teacher's and the student's vocabularies share no token spelled the "
                             "same way. HINT: use alm or uld")

    @override
    def teacher_expectations(self) -> dict:
        """A teacher checkpoint (a CausalLMModule's) records the tokenizer it was trained with."""
        return {"tokenizer": self.teacher_tokenizer if self.cross_tokenizer else self.tokenizer}

    @property
    def cache_kind(self) -> str:
        return "lm_aligned" if self.cross_tokenizer else "lm_topk"

    @override
    def cache_description(self) -> dict:
        return {"kind": self.cache_kind, "k": int(self.teacher.cache_top_k), "temperature": float(self.temperature),
                "vocab": int(causal_lm.vocab_size(self.teacher.model))}

    @override
    def cache_targets(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(block ids (B,), {"topk_logprobs": (B, T, k), "topk_indices": (B, T, k)})`` of a batch; with two
        tokenizers also ``"token_logprobs"`` (B, T) (the teacher's log-probability of each of its own tokens)."""
        if self.cross_tokenizer:
            t_ids = batch["teacher_input_ids"]
            return batch["sample_id"], self.aligned_teacher_targets(self.teacher(input_ids=t_ids).logits, t_ids)
        logits = self.teacher(input_ids=batch["input_ids"]).logits  # (B, T, V)
        logprobs, indices = teacher_topk(logits, self.teacher.cache_top_k, self.temperature)
        return batch["sample_id"], {"topk_logprobs": logprobs, "topk_indices": indices}

    def aligned_teacher_targets(self, logits: torch.Tensor, teacher_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the cross-tokenizer losses read from the teacher (live or cached alike): its token
        log-probabilities (B, T) at T = 1 and its top-k (B, T, k) at the distillation temperature."""
        logprobs, indices = teacher_topk(logits, self.teacher.cache_top_k, self.temperature)
        return {"token_logprobs": token_logprobs(logits, teacher_ids), "topk_logprobs": logprobs, "topk_indices": indices}

    @override
    def parameter_groups(self) -> list[dict]:
        groups = [{"params": [p for p in self.student.parameters() if p.requires_grad], "name": "student"}]
        if len(self.projections):
            group = {"params": list(self.projections.parameters()), "name": "projections"}
            if self.projection_lr is not None:
                group["lr"] = self.projection_lr
            groups.append(group)
        if self.router is not None:
            groups.append({"params": list(self.router.parameters()), "name": "router", "lr": self.router_lr})
        return groups

    # ---- features the losses compare --------------------------------------------------------------------
    def _needs(self) -> tuple[bool, bool]:
        w = self.loss_weights
        hidden = any(w.get(k, 0) > 0 for k in ("feature", "layer", "contrastive")) or bool(self.routed and self.router.needs_student)
        return hidden, w.get("attention", 0) > 0

    def student_features(self, out) -> dict[str, object]:
        """The student's outputs as the losses take them (projected to the teacher's width)."""
        w, feats = self.loss_weights, {"logits": out.logits}
        if "feature" in self.projections:
            feats["feature"] = self.projections["feature"](out.hidden_states[-1])  # (B, T, D_t)
        if w.get("layer", 0) > 0:  # hidden_states[0] is the embeddings: layer j's output is hidden_states[j + 1]
            feats["layer"] = [proj(out.hidden_states[j + 1]) for j, proj in enumerate(self.projections["layer"])]
        if w.get("attention", 0) > 0:
            feats["attention"] = list(out.attentions)  # (B, H_s, T, T) per student layer
        return feats

    def teacher_features(self, out) -> dict[str, object]:
        w, feats = self.loss_weights, {"logits": out.logits}
        if "feature" in self.projections:
            feats["feature"] = out.hidden_states[-1]
        if w.get("layer", 0) > 0:
            feats["layer"] = [out.hidden_states[t + 1] for t in self.layer_map]
        if w.get("attention", 0) > 0:
            feats["attention"] = [out.attentions[t] for t in self.layer_map]
        return feats

    # ---- routing ---------------------------------------------------------------------------------------
    @property
    def routed(self) -> bool:
        """A routing other than the teacher's own shapes the targets (``teacher`` mode is plain distillation)."""
        return self.router is not None and self.router.mode != "teacher"

    def routing_context(self, student_out, teacher_logits: torch.Tensor) -> RoutingContext:
        """One tokenizer: the student's last hidden state and the gap features at every position."""
        return RoutingContext(
            student_hidden=rearrange(student_out.hidden_states[-1].detach(), "b t d -> (b t) d"),  # (N, D_s)
            gap=gap_features(teacher_logits, student_out.logits),  # (N, 3)
            top_k=int(self.router_top_k),
            temperature=float(self.router_temperature),
        )

    def aligned_routing_context(self, student_out, s_feats: dict, teacher_logprobs: torch.Tensor, index: ChunkIndex,
                                s_ids: torch.Tensor) -> RoutingContext:
        """Two tokenizers: per teacher token, the student's state and the gap of the previous aligned chunk."""
        table = getattr(self, "token_bytes", None)
        s_bytes = None if table is None else table.to(s_ids.device)[s_ids]  # (B, S)
        hidden, gap = chunk_gap_features(student_out.hidden_states[-1].detach(), s_feats["token_logprobs"].detach(),
                                         teacher_logprobs, index, s_bytes)
        return RoutingContext(student_hidden=hidden, gap=gap, top_k=int(self.router_top_k), temperature=float(self.router_temperature))

    def routed_teacher_passes(self, teacher_ids: torch.Tensor, stage: str, context, *, hidden: bool, attentions: bool):
        """The teacher's forwards under the router: ``(routed outputs, their RoutingRecords, native output or None)``.

        The teacher's own forward (no gradient) runs first when the routing reads the student (``context``
        turns it into a :class:`RoutingContext`) and outside training (drift and the test report compare with
        it). Training runs ``router.repeats`` routed passes (Knowledge Augmentation), with gradient into a
        trainable routing; evaluation one pass.
        """
        train = stage == "train"
        native = None
        if self.router.needs_student or not train:
            with torch.no_grad():
                native = self.teacher(input_ids=teacher_ids)
        ctx = context(native) if self.router.needs_student else RoutingContext(top_k=int(self.router_top_k or 1),
                                                                               temperature=float(self.router_temperature))
        grad = train and self.router.trainable and self.global_step % self.router_every_n_steps == 0
        self.teacher.placement.hold = grad  # the backward runs through the routed teacher
        outs, records = [], []
        for _ in range(self.router.repeats if train else 1):
            with torch.set_grad_enabled(grad), route_teacher(self.teacher.model, self.router, ctx) as record:
                outs.append(self.teacher(input_ids=teacher_ids, output_hidden_states=hidden, output_attentions=attentions))
            records.append(record)
        return outs, records, native

    def routing_logs(self, stage: str, records: list[RoutingRecord], teacher_ce: torch.Tensor, native_ce: torch.Tensor | None) -> dict:
        """How far the routing moved the teacher: its LM loss under routing (and minus its own routing's) and
        the KL between the routed and the teacher's gate distributions (mean over layers; per layer outside training)."""
        per_layer = torch.stack([torch.stack(r.gate_kl()) for r in records]).mean(0).detach()  # (L,)
        logs = {"teacher_ce_routed": teacher_ce.detach(), "gate_kl": per_layer.mean()}
        if stage != "train":
            logs |= {f"gate_kl/layer{layer}": value for layer, value in enumerate(per_layer)}
        if native_ce is not None:
            logs["teacher_lm_degradation"] = teacher_ce.detach() - native_ce
        return logs

    def balance_loss(self, records: list[RoutingRecord]) -> torch.Tensor | None:
        if self.router_balance_weight <= 0 or not self.router.trainable:
            return None
        return torch.stack([load_balance_loss(r.routed_probs, self.teacher_top_k) for r in records]).mean()

    # ---- steps ----------------------------------------------------------------------------------------
    def aligned_step(self, batch, stage: str) -> StepOutput:
        """One batch of two-tokenizer distillation (:mod:`lkd.losses.cross_tokenizer`)."""
        s_ids, t_ids = batch["input_ids"], batch["teacher_input_ids"]  # (B, S), (B, T)
        index = ChunkIndex.from_table(batch["chunks"], batch["num_chunks"])
        hidden, _ = self._needs()
        s_out = self.student(input_ids=s_ids, output_hidden_states=hidden)
        s_feats = self.student_features(s_out)
        s_feats["token_logprobs"] = token_logprobs(s_out.logits, s_ids)  # (B, S)
        t_mask = predicted_mask(batch["teacher_length"], t_ids.shape[1])  # (B, T) teacher tokens with a prediction

        def teacher_feats(out) -> dict:
            feats = self.teacher_features(out)
            targets = self.aligned_teacher_targets(out.logits, t_ids)
            return feats | {"token_logprobs": targets["token_logprobs"], "topk": (targets["topk_logprobs"], targets["topk_indices"])}

        def teacher_ce(feats) -> torch.Tensor:
            return -(feats["token_logprobs"] * t_mask).sum() / t_mask.sum().clamp_min(1)

        loss_kwargs = {"teacher_to_student": getattr(self, "teacher_to_student", None), "temperature": self.temperature,
                       "alm_temperature": self.alm_temperature, "contrastive_temperature": self.contrastive_temperature}
        logs: dict[str, torch.Tensor] = {}
        router_loss = None
        if (cached := self.teacher.cached(stage, batch["sample_id"])) is not None:
            passes, own = [cached], cached  # {"token_logprobs": (B, T), "topk": ((B, T, k), (B, T, k))}
        elif not self.routed:
            with torch.no_grad():
                passes = [teacher_feats(self.teacher(input_ids=t_ids, output_hidden_states=hidden))]
            own = passes[0]
        else:
            own_logprobs = {}  # the teacher's own token log-probabilities, computed once (router context and drift)

            def own_of(native) -> dict:
                if not own_logprobs:
                    own_logprobs["token_logprobs"] = token_logprobs(native.logits, t_ids)
                return own_logprobs

            def context(native):
                return self.aligned_routing_context(s_out, s_feats, own_of(native)["token_logprobs"], index, s_ids)

            outs, records, native = self.routed_teacher_passes(t_ids, stage, context, hidden=hidden, attentions=False)
            passes = [teacher_feats(out) for out in outs]
            own = None if native is None else own_of(native)
            routed_ce = torch.stack([teacher_ce(f) for f in passes]).mean()
            logs = self.routing_logs(stage, records, routed_ce, None if own is None else teacher_ce(own).detach())
            if stage == "train" and self.router.trainable and passes[0]["token_logprobs"].requires_grad:
                sg, weights = _detach(s_feats), {k: v for k, v in self.loss_weights.items() if k != "ce"}  # ce: the student's own
                objective = torch.stack([combine_losses(cross_tokenizer_loss_terms(sg, f, index, weights, **loss_kwargs)[0],
                                                        weights)[0] for f in passes]).mean()
                router_loss = objective + self.router_lm_weight * routed_ce
                if (balance := self.balance_loss(records)) is not None:
                    router_loss = router_loss + self.router_balance_weight * balance
                    logs["router_balance"] = balance.detach()
                logs["router_loss"] = router_loss
        terms, term_logs = _mean_terms([cross_tokenizer_loss_terms(s_feats, _detach(f), index, self.loss_weights, **loss_kwargs)
                                        for f in passes])
        s_mask = predicted_mask(batch["length"], s_ids.shape[1])  # (B, S) tokens with a prediction
        tokens = s_mask.sum()
        nll = -(s_feats["token_logprobs"] * s_mask).sum() / tokens.clamp_min(1)
        if self.loss_weights.get("ce", 0) > 0:
            terms["ce"] = nll
        student_loss, terms = combine_losses(terms, self.loss_weights)
        total = student_loss if router_loss is None else student_loss + router_loss
        s_bytes = self.predicted_bytes(s_ids, s_mask)
        outputs = {}
        if stage == "test":
            t_table = getattr(self, "teacher_token_bytes", None)
            outputs = {"student_nll_sum": nll.detach() * tokens, "student_tokens": tokens, "student_bytes": s_bytes,
                       "teacher_nll_sum": -(own["token_logprobs"].detach() * t_mask).sum(), "teacher_tokens": t_mask.sum(),
                       "teacher_bytes": None if t_table is None else (t_table.to(t_ids.device)[t_ids] * t_mask).sum()}
        return StepOutput(total, int(tokens), terms | term_logs | logs | {"nll": nll.detach()},
                          metric_args=(nll.detach(), int(tokens), s_bytes), logged_loss=student_loss, outputs=outputs)

    @override
    def step(self, batch, stage: str) -> StepOutput:
        if self.cross_tokenizer:
            return self.aligned_step(batch, stage)
        input_ids = batch["input_ids"]  # (B, T)
        hidden, attn = self._needs()
        s_out = self.student(input_ids=input_ids, output_hidden_states=hidden, output_attentions=attn)
        s_feats = self.student_features(s_out)
        kwargs = {"temperature": self.temperature, "contrastive_temperature": self.contrastive_temperature}
        logs: dict[str, torch.Tensor] = {}
        router_loss, t_native = None, None
        if (cached := self.teacher.cached(stage, self.sample_ids(batch))) is not None:  # no teacher forward
            passes = [cached]  # {"topk": ((B, T, k) log-probs, (B, T, k) token ids)}
        elif not self.routed:
            with torch.no_grad():
                t_native = self.teacher(input_ids=input_ids, output_hidden_states=hidden, output_attentions=attn)
            passes = [self.teacher_features(t_native)]
        else:
            outs, records, t_native = self.routed_teacher_passes(
                input_ids, stage, lambda native: self.routing_context(s_out, native.logits), hidden=hidden, attentions=attn)
            passes = [self.teacher_features(out) for out in outs]
            routed_ce = torch.stack([lm_cross_entropy(f["logits"], input_ids) for f in passes]).mean()
            native_ce = None if t_native is None else lm_cross_entropy(t_native.logits, input_ids)
            logs = self.routing_logs(stage, records, routed_ce, native_ce)
            if stage == "train" and self.router.trainable and passes[0]["logits"].requires_grad:
                router_loss = torch.stack([router_objective(_detach(s_feats), f, input_ids, self.loss_weights,
                                                            lm_weight=self.router_lm_weight, **kwargs)[0] for f in passes]).mean()
                if (balance := self.balance_loss(records)) is not None:
                    router_loss = router_loss + self.router_balance_weight * balance
                    logs["router_balance"] = balance.detach()
                logs["router_loss"] = router_loss
        terms, _ = _mean_terms([lm_loss_terms(s_feats, _detach(f), input_ids, self.loss_weights, **kwargs) for f in passes])
        student_loss, terms = combine_losses(terms, self.loss_weights)
        total = student_loss if router_loss is None else student_loss + router_loss
        nll = lm_cross_entropy(s_out.logits, input_ids).detach()
        tokens = input_ids[:, 1:].numel()
        outputs = {"student_logits": s_out.logits.detach(), "teacher_logits": t_native.logits} if stage == "test" else {}
        return StepOutput(total, tokens, terms | logs | {"nll": nll}, metric_args=(nll, tokens, self.predicted_bytes(input_ids)),
                          logged_loss=student_loss, outputs=outputs)

    @override
    def on_after_backward(self) -> None:
        self.teacher.placement.release()  # routed: off the device once the backward through it is done


def _mean_terms(results: list) -> tuple[dict, dict]:
    """Average loss tables over teacher passes (Knowledge Augmentation); a table may come with a dict of logs."""
    pairs = [r if isinstance(r, tuple) else (r, {}) for r in results]
    if len(pairs) == 1:
        return pairs[0]
    mean = lambda dicts: {k: torch.stack([d[k] for d in dicts]).mean() for k in dicts[0]}  # noqa: E731
    return mean([t for t, _ in pairs]), mean([lg for _, lg in pairs])


def _detach(feats: dict) -> dict:
    return {k: tuple(x.detach() for x in v) if isinstance(v, (list, tuple)) else v.detach() for k, v in feats.items()}


RoutedDistillModule = LMDistillModule
"""Alias: the module is routed when it is given a router."""
