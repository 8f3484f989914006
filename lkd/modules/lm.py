"""The language-model track: training any transformers causal LM (dense or MoE), and distilling a (Mixture-of-
Experts) teacher into a small dense student over one tokenizer or two, optionally through a routing of the teacher's
experts. Composed of :class:`lkd.models.projections.FeatureProjections` (what the losses compare, the student →
teacher projections), :class:`lkd.modules.tokenizer_pairs.OneTokenizer` / ``TwoTokenizers`` (what one tokenizer or
two change: checks, tables, the loss table, the report) and :class:`lkd.modules.routed_teacher.RoutedTeacher` (the
routed teacher's passes and objective)."""

from __future__ import annotations

import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MetricCollection
from typing_extensions import override

from lkd.losses.cross_tokenizer import CROSS_LOSS_NAMES
from lkd.losses.kd import kd_problems, teacher_topk
from lkd.losses.lm import (
    DEFAULT_LOSS_WEIGHTS,
    combine_losses,
    lm_cross_entropy,
    mean_tables,
    next_token_nll,
    token_logprobs,
    validate_loss_weights,
)
from lkd.memory import enable_activation_checkpointing
from lkd.metrics.retention import BitsPerByte, Perplexity
from lkd.models import causal_lm
from lkd.models.projections import FeatureProjections
from lkd.models.routing import Routing
from lkd.modules.base import LKDModule, StepOutput
from lkd.modules.routed_teacher import RoutedTeacher, TeacherPasses, routing_problems
from lkd.modules.tokenizer_pairs import BatchTokens, OneTokenizer, TwoTokenizers
from lkd.schedules import ScheduleName, learning_rate_problem
from lkd.teacher import Teacher
from lkd.tokenizers import same_tokenizer, token_byte_lengths


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
        self.token_bytes: torch.Tensor | None = None  # (V,) UTF-8 bytes per token id, from the data's tokenizer (bind_tokenizers)

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
            datamodule.connect(self.tokenizer, context_length=self.context_length, vocab_size=self.vocab_size, **self.data_links())
        self.bind_tokenizers(datamodule)

    def data_links(self) -> dict:
        """What else the data module's ``connect`` is given (a distillation module's teacher tokenizer); default none."""
        return {}

    def bind_tokenizers(self, datamodule) -> None:
        """Tables from the data's tokenizer: bytes per token id (bits per byte)."""
        tokenizer = getattr(datamodule, "tokenizer", None)
        self.token_bytes = None if tokenizer is None else token_byte_lengths(tokenizer).to(self.device)

    def predicted_bytes(self, input_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor | None:
        """UTF-8 bytes of the predicted tokens ``input_ids[:, 1:]`` (where ``mask[:, 1:]``), or None without a table."""
        if self.token_bytes is None:
            return None
        counted = self.token_bytes.to(input_ids.device)[input_ids[:, 1:]]  # (B, T-1)
        return (counted if mask is None else counted * mask[:, 1:]).sum()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) of the model being trained."""
        return self.trained_model(input_ids=input_ids).logits


class PromptLMModule(LMModule):
    """What the modules trained on prompt data (:class:`lkd.data.PromptDataModule`) share: ``row_index`` as the sample
    id, and the end-of-sequence and pad ids their sampling needs, read from the data when it is connected."""

    eos_token_id: int | None = None
    pad_token_id: int | None = None

    @override
    def sample_ids(self, batch) -> torch.Tensor | None:
        return batch.get("row_index") if isinstance(batch, dict) else None

    @override
    def connect_data(self, datamodule) -> None:
        if hasattr(datamodule, "connect"):
            datamodule.connect(self.tokenizer, context_length=self.context_length, **self.data_links())
        self.bind_tokenizers(datamodule)
        self.eos_token_id = getattr(getattr(datamodule, "tokenizer", None), "eos_token_id", None)
        pad = getattr(datamodule, "pad_id", None)
        self.pad_token_id = self.eos_token_id if pad is None else pad


class CausalLMModule(LMModule):
    """Trains one causal LM on next-token prediction (``lkd fit -c configs/lm/teacher_moe_tiny.yaml``).

    Logs ``{stage}/loss`` (cross-entropy, plus the MoE load-balancing loss in training), ``{stage}/nll``
    and ``{stage}/ppl`` = exp(mean token NLL over the epoch). An MoE model (``output_router_logits``)
    adds ``train/aux_loss`` weighted by its config's ``router_aux_loss_coef``.

    Args:
        model: a transformers causal LM (YAML ``class_path``, e.g. :class:`lkd.models.TinyMoELM`).
        tokenizer, optimizer, warmup_steps, min_lr_ratio, lr_schedule: see :class:`LMModule`.
    """

    def __init__(self, model: nn.Module, tokenizer: str = "smollm2", optimizer: OptimizerCallable = torch.optim.AdamW,
                 warmup_steps: float = 0.05, min_lr_ratio: float = 0.1, lr_schedule: ScheduleName = "cosine"):
        super().__init__(tokenizer, optimizer, warmup_steps, min_lr_ratio, lr_schedule)
        self.model = model
        self.is_moe = hasattr(causal_lm.lm_config(model), "router_aux_loss_coef")
        self.save_hyperparameters(ignore=["model", "optimizer"])

    @property
    @override
    def trained_model(self) -> nn.Module:
        return self.model

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
    """Teacher → student distillation of causal LMs with weighted losses, over one tokenizer or two, optionally through
    a routing of a Mixture-of-Experts teacher's experts (:class:`RoutedTeacher`; ``k`` and τ from
    :class:`lkd.callbacks.RoutingSchedule`):

        L = Σ w_i L_i(student, sg[teacher])          (trains the student; lkd.losses.lm / lkd.losses.cross_tokenizer)
          + L_router(sg[student], routed teacher)    (trains a trainable routing; lkd.losses.routing.router_objective)

    one backward, one optimizer with parameter groups ``student``, ``projections`` (student → teacher width,
    :class:`FeatureProjections`) and ``router``. The teacher's features come from its cache (``teacher.cache``, ``lkd
    cache-teacher``: train and validation, top-k targets only), its live forward or the routed teacher. Losses
    (:data:`lkd.losses.lm.ALL_LOSS_NAMES`): ``kl``, ``ce``, ``feature``, ``attention`` (eager attention), ``layer``,
    ``contrastive``; with **two tokenizers** (``teacher_tokenizer``; the data yields
    :class:`lkd.data.text.AlignedTokenBlocks`) ``alm``, ``uld`` and ``shared_kl`` replace ``kl`` and the hidden-state
    losses read chunk ends. Every stage logs ``{stage}/bpb`` beside ``{stage}/ppl``; the test report is
    :class:`lkd.callbacks.DistillationReport`.

    Args:
        student: the model to train (YAML ``class_path``, e.g. :class:`lkd.models.TinyLlamaLM`).
        teacher: the frozen teacher (:class:`lkd.teacher.Teacher`).
        tokenizer: the student's tokenizer (and the teacher's without ``teacher_tokenizer``); a folder path with
            ``data.init_args.train_tokenizer`` trains a byte-level BPE there first.
        router: how the teacher's experts are mixed while it teaches (:mod:`lkd.models.routing`, or
            :class:`lkd.models.router.StudentAwareRouter`); None = the teacher's own gating (plain distillation).
        loss_weights: ``{name: weight}``; missing names weigh 0.
        temperature, contrastive_temperature, alm_temperature: T of the KL and top-k targets, τ of InfoNCE, τ of ALM.
        layer_map: teacher layer (0-based) for each student layer; default evenly spread.
        router_top_k, router_temperature, router_lm_weight, router_balance_weight, router_every_n_steps: the routing's k
            and τ until a RoutingSchedule drives them (default the teacher's top-k, τ = 1), λ of the routed teacher's LM
            loss and β of the load balance in its objective, learning every n-th optimizer step (:class:`RoutedTeacher`;
            under DDP with n > 1 use ``strategy: ddp_find_unused_parameters_true``).
        router_lr, projection_lr: learning rates of those groups (``projection_lr`` None: the optimizer's); 0 freezes.
        teacher_tokenizer: the teacher's tokenizer when it differs from the student's; None = one tokenizer for both.
        activation_checkpointing: recompute the student's decoder layers in the backward.
    """

    def __init__(
        self, student: nn.Module, teacher: Teacher, tokenizer: str = "smollm2", router: Routing | None = None,
        loss_weights: dict[str, float] | None = None, temperature: float = 4.0, layer_map: list[int] | None = None,
        contrastive_temperature: float = 0.1, router_lm_weight: float = 1.0, router_top_k: int | None = None,
        router_temperature: float = 1.0, router_lr: float = 1e-4, projection_lr: float | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW, warmup_steps: float = 0.05, min_lr_ratio: float = 0.1,
        activation_checkpointing: bool = False, teacher_tokenizer: str | None = None, alm_temperature: float = 1.0,
        router_balance_weight: float = 0.0, router_every_n_steps: int = 1,
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
        self.loss_weights = w = validate_loss_weights(DEFAULT_LOSS_WEIGHTS if loss_weights is None else loss_weights)
        temperatures = {"temperature": temperature, "contrastive_temperature": contrastive_temperature, "alm_temperature": alm_temperature}
        self.pairing = (TwoTokenizers(w, teacher_tokenizer=self.teacher_tokenizer, **temperatures) if self.cross_tokenizer
                        else OneTokenizer(w, **temperatures))  # one tokenizer or two, picked once: checks, tables, the loss table
        self.pairing.check(sv, tv, (tokenizer, self.teacher_tokenizer))
        problems = kd_problems(temperature=temperature)
        for name, value in (("alm_temperature", alm_temperature), ("contrastive_temperature", contrastive_temperature)):
            if value <= 0:
                problems.append(f"{name} must be > 0, got {value}")
        problems += routing_problems(temperature=router_temperature, lm_weight=router_lm_weight,
                                     balance_weight=router_balance_weight, every_n_steps=router_every_n_steps)
        if teacher.cache_path is not None:
            problems += self._cache_problems(router, w, teacher.cache_top_k, tv)
        for name, value, hint in (("router_lr", router_lr, "model.init_args.router_lr=1.0e-4 (the default)"),
                                  ("projection_lr", projection_lr, "drop model.init_args.projection_lr (the optimizer's rate)")):
            if problem := learning_rate_problem(name, value, hint):
                problems.append(problem)
        if problems:
            raise ValueError("LMDistillModule: " + "; ".join(problems))
        self.temperature, self.contrastive_temperature, self.alm_temperature = temperature, contrastive_temperature, alm_temperature
        self.router_lr, self.projection_lr = router_lr, projection_lr
        self.projections = FeatureProjections(
            student, t_model, layer_map, feature=w.get("feature", 0) > 0 or w.get("contrastive", 0) > 0, layer=w.get("layer", 0) > 0,
            attention=w.get("attention", 0) > 0, token_level=self.cross_tokenizer, top_k=teacher.cache_top_k, temperature=temperature)
        self.layer_map = self.projections.layer_map
        self.router = router  # registered here: its parameters are the checkpoint's router.* and the "router" group
        self.routed_teacher = None if router is None else RoutedTeacher(
            teacher, router, causal_lm.hidden_size(student), top_k=router_top_k, temperature=router_temperature,
            lm_weight=router_lm_weight, balance_weight=router_balance_weight, every_n_steps=router_every_n_steps)
        routed = self.routed_teacher  # the models return hidden states for the hidden-state losses or a routing reading the student
        self.needs_hidden = self.projections.needs_hidden or (routed is not None and routed.active and routed.reads_student)
        if activation_checkpointing:
            enable_activation_checkpointing(self.student)
        self.save_hyperparameters(ignore=["student", "teacher", "router", "optimizer"])

    @staticmethod
    def _cache_problems(router, weights: dict[str, float], top_k: int, vocab: int) -> list[str]:
        """Why a top-k logit cache cannot serve this configuration (empty: it can)."""
        problems = []
        if router is not None and router.mode != "teacher":
            problems.append("teacher.cache cannot serve routed distillation (the router re-runs the teacher's experts "
                            "every step); drop model.init_args.router or the cache")
        if needs_teacher := {k: v for k, v in weights.items() if k not in ("kl", "ce", *CROSS_LOSS_NAMES) and v > 0}:
            problems.append(f"teacher.cache holds top-k log-probabilities only, but loss_weights {needs_teacher} need the "
                            "teacher's hidden states or attentions; set them to 0 (kl and ce only) or drop the cache")
        if top_k > vocab:
            problems.append(f"teacher.cache_top_k must be in 1..{vocab} (the vocabulary), got {top_k}")
        return problems

    # ---- set-up: data, tokenizers, the cache contract, parameter groups ---------------------------------
    @property
    @override
    def trained_model(self) -> nn.Module:
        return self.student

    @property
    def context_length(self) -> int:
        return min(causal_lm.context_length(self.student), causal_lm.context_length(self.teacher.model))

    @override
    def data_links(self) -> dict:
        return self.pairing.data_links(self.teacher.model)

    @override
    def bind_tokenizers(self, datamodule) -> None:
        """Bytes per token of both sides and, with two tokenizers, the teacher → student map of shared tokens."""
        super().bind_tokenizers(datamodule)
        self.pairing.bind(datamodule, self.token_bytes, self.device)

    @override
    def teacher_expectations(self) -> dict:
        """A teacher checkpoint (a CausalLMModule's) records the tokenizer it was trained with."""
        return {"tokenizer": self.teacher_tokenizer if self.cross_tokenizer else self.tokenizer}

    @override
    def cache_description(self) -> dict:
        return {"kind": self.pairing.cache_kind, "k": int(self.teacher.cache_top_k), "temperature": float(self.temperature),
                "vocab": int(causal_lm.vocab_size(self.teacher.model))}

    @override
    def cache_targets(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(block ids (B,), {"topk_logprobs": (B, T, k), "topk_indices": (B, T, k)})`` of a batch; with two
        tokenizers also ``"token_logprobs"`` (B, T) (the teacher's log-probability of each of its own tokens)."""
        ids = self.teacher_ids(batch)  # (B, T)
        logits = self.teacher(input_ids=ids).logits  # (B, T, V)
        logprobs, indices = teacher_topk(logits, self.teacher.cache_top_k, self.temperature)
        targets = {"topk_logprobs": logprobs, "topk_indices": indices}
        return self.sample_ids(batch), ({"token_logprobs": token_logprobs(logits, ids)} | targets if self.cross_tokenizer else targets)

    @override
    def live_targets(self, batch: dict, stage: str) -> dict:
        """The live teacher's features the loss table reads (:meth:`FeatureProjections.teacher_features`: ``logits``, with
        two tokenizers ``token_logprobs`` and ``topk``, the hidden states and attention maps the losses compare)."""
        ids = self.teacher_ids(batch)  # (B, T)
        out = self.teacher(input_ids=ids, output_hidden_states=self.needs_hidden, output_attentions=self.projections.attention)
        return self.projections.teacher_features(out, ids)

    def teacher_ids(self, batch: dict) -> torch.Tensor:
        """The teacher's tokens (B, T) of a batch: the student's, or with two tokenizers its own."""
        return batch["teacher_input_ids" if self.cross_tokenizer else "input_ids"]

    @override
    def parameter_groups(self) -> list[dict]:
        groups = [{"params": [p for p in self.student.parameters() if p.requires_grad], "name": "student"}]
        if projections := list(self.projections.parameters()):
            groups.append({"params": projections, "name": "projections"} | ({} if self.projection_lr is None else {"lr": self.projection_lr}))
        if self.router is not None:
            groups.append({"params": list(self.router.parameters()), "name": "router", "lr": self.router_lr})
        return groups

    # ---- the step ---------------------------------------------------------------------------------------
    @override
    def step(self, batch, stage: str) -> StepOutput:
        """One batch: the student's forward, the teacher's features from one call (:meth:`teacher_passes`: cache, live
        or routed), the loss table picked at construction once per teacher pass, and the routing's objective when it
        learns this step. A learning routing's teacher features carry gradient, so the one table trains the student
        through its features and the routing through the teacher's (the objective's sg[student] part);
        :meth:`RoutedTeacher.objective` adds the rest."""
        tokens = self.pairing.tokens(batch)  # the student's and the teacher's tokens, the chunks, the masks
        s_ids, t_ids = tokens.student_ids, tokens.teacher_ids  # (B, S), (B, T)
        s_out = self.student(input_ids=s_ids, output_hidden_states=self.needs_hidden, output_attentions=self.projections.attention)
        student = self.projections.student_features(s_out, s_ids)
        teacher = self.teacher_passes(batch, stage, tokens, s_out, student)
        terms, logs = mean_tables([self.pairing.loss_table(student, t, tokens) for t in teacher.features])
        nll = next_token_nll(student, s_ids, tokens.student_mask)
        if self.loss_weights.get("ce", 0) > 0:
            terms["ce"] = nll
        student_loss, terms = combine_losses(terms, self.loss_weights)
        total = student_loss
        if teacher.records:  # routed: its drift and, when it learns, its objective
            router_loss, router_logs = self.routed_teacher.objective(stage, teacher, terms, self.loss_weights, t_ids, tokens.teacher_mask)
            total, logs = (total if router_loss is None else total + router_loss), logs | router_logs
        s_bytes = self.predicted_bytes(s_ids, tokens.student_mask)
        outputs = self.pairing.report(s_out, nll, s_bytes, teacher.own, tokens) if stage == "test" else {}
        return StepOutput(total, tokens.count, terms | logs | {"nll": nll.detach()}, metric_args=(nll.detach(), tokens.count, s_bytes),
                          logged_loss=student_loss, outputs=outputs)

    def teacher_passes(self, batch, stage: str, tokens: BatchTokens, s_out, student: dict) -> TeacherPasses:
        """The teacher's features for a batch: its targets (:meth:`teacher_targets`: the cache, or a live forward without
        gradient) or, through an active routing, the routed teacher's passes (:meth:`RoutedTeacher.run`, given the
        teacher's own targets when it needs them)."""
        routed = self.routed_teacher
        if routed is None or not routed.active:
            feats = self.teacher_targets(batch, stage)  # cached {"topk": ((B, T, k), (B, T, k))} (+ "token_logprobs" (B, T)), or live
            return TeacherPasses([feats], own=feats)
        own = self.teacher_targets(batch, stage) if routed.needs_own(stage) else None
        t_ids = tokens.teacher_ids
        s_bytes = None if tokens.index is None or self.token_bytes is None else self.token_bytes.to(t_ids.device)[tokens.student_ids]
        return routed.run(t_ids, stage, self.global_step, self.projections, s_out, student, own=own, index=tokens.index,
                          student_bytes=s_bytes)

    @override
    def on_after_backward(self) -> None:
        self.teacher.placement.release()  # routed: off the device once the backward through it is done


RoutedDistillModule = LMDistillModule
"""Alias: the module is routed when it is given a router."""
