"""Distilling a (Mixture-of-Experts) teacher LM into a small dense student, optionally with student-aware
routing of the teacher's experts (:mod:`lkd.models.router`)."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import torch
from einops import rearrange, reduce
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from typing_extensions import override

from lkd.checkpoint import load_network_weights
from lkd.cache import TeacherCache, TeacherCacheError, attach_teacher_cache
from lkd.losses.kd import kd_kl_div, teacher_topk, topk_kd_kl_div
from lkd.losses.lm import (
    DEFAULT_LOSS_WEIGHTS,
    attention_transfer_loss,
    combine_losses,
    contrastive_loss,
    feature_loss,
    layerwise_loss,
    lm_cross_entropy,
    validate_loss_weights,
)
from lkd.memory import TeacherPlacement, enable_activation_checkpointing
from lkd.metrics.retention import RetentionMetrics
from lkd.models import causal_lm
from lkd.models.router import RoutingContext, StudentAwareRouter, gap_features, require_moe_gates, route_teacher, validate_top_k
from lkd.modules.base import check_finite_loss
from lkd.modules.frozen_teacher import TEACHER_DTYPES, FrozenTeacherHooks, hold_teacher_in
from lkd.modules.lm import LMModuleBase


class VocabularyMismatchError(ValueError):
    """Teacher and student predict over different vocabularies."""


class LayerMapError(ValueError):
    """A student → teacher layer map names a layer that does not exist."""


def default_layer_map(student_layers: int, teacher_layers: int) -> dict[int, int]:
    """Student layer i (1..L_s) → teacher layer round(i · L_t / L_s): evenly spread, last onto last."""
    return {i: round(i * teacher_layers / student_layers) for i in range(1, student_layers + 1)}


class LMDistillModule(FrozenTeacherHooks, LMModuleBase):
    """Teacher → student distillation of causal LMs with up to five weighted losses and an optional router.

    Per batch (``input_ids`` (B, T)): the student runs with hidden states / attentions as the active losses
    need; the frozen teacher runs without gradient. Without a router those teacher outputs are the targets.
    With a router (:class:`lkd.models.router.StudentAwareRouter`), the teacher runs a second time inside
    :func:`lkd.models.router.route_teacher`: its MoE layers mix ``k`` experts with the router's per-token
    weights (``k`` and τ from :class:`lkd.callbacks.routing_schedule.RoutingSchedule`), and that routed
    forward gives the targets. The loss is

        L = Σ w_i L_i(student, sg[routed teacher])                                    (trains the student)
          + Σ w_i L_i(sg[student], routed teacher) + λ · CE(routed teacher, x_{t+1})   (trains the router)

    (sg = stop-gradient), one backward, one optimizer with parameter groups: ``student`` (the optimizer's
    lr, default 5e-5 in the configs), ``router`` (``router_lr``, 1e-4) and ``projections`` (student → teacher
    width; ``projection_lr``). Accumulation, precision and clipping come from the trainer config.

    Losses (``loss_weights``, names from :data:`lkd.losses.lm.LOSS_NAMES`): ``kl`` (T²·KL on the logits,
    :func:`lkd.losses.kd.kd_kl_div`), ``ce`` (the student's own next-token loss), ``feature`` (last hidden
    state, projected), ``attention`` (head-averaged maps of the mapped layers; needs eager attention),
    ``layer`` (cosine on the mapped layers, projected), ``contrastive`` (InfoNCE of mean-pooled sequences).

    The test stage logs and writes (``report_dir``: JSON + Markdown) teacher / student perplexity, retention
    (KL(teacher ‖ student), top-1 / top-5 agreement; against the teacher's own top-k routing),
    compression (parameters, bytes), tokens/s of both models and the speed ratio, and peak memory.

    Args:
        student: the model to train (YAML ``class_path``, e.g. :func:`lkd.models.causal_lm.tiny_llama_lm`).
        teacher: the teacher's architecture; weights from ``teacher_ckpt``.
        teacher_ckpt: a :class:`lkd.modules.lm.CausalLMModule` checkpoint (or None: keep the built weights,
            e.g. pretrained ones).
        tokenizer: tokenizer name shared by both models and the data module.
        router: student-aware router, or None for plain distillation.
        loss_weights: ``{name: weight}``; missing names weigh 0.
        temperature: T of the KL term.
        layer_map: ``{student layer: teacher layer}``, layers numbered 1..L (outputs of decoder layers);
            default :func:`default_layer_map`.
        contrastive_temperature: τ of InfoNCE.
        router_lm_weight: λ of the routed teacher's own LM loss in the router's objective.
        router_top_k, router_temperature: routing used when no RoutingSchedule drives them (default: the
            teacher's own top-k, τ = 1).
        router_lr, projection_lr: learning rates of those parameter groups (None: the optimizer's).
        report_dir: where ``lkd test`` writes ``retention.json`` / ``retention.md`` (default: the logger's
            folder, else ``runs/lm_report``).
        teacher_dtype: dtype the frozen teacher is held and run in (``"bfloat16"`` halves its memory; its outputs
            are cast to fp32 for the losses). Cast once in ``setup``, after loading ``teacher_ckpt``.
        teacher_offload: keep the teacher in CPU memory and move it to the accelerator only for its forwards
            (:class:`lkd.memory.TeacherPlacement`; with a router it stays until the backward through it is done;
            a no-op on a CPU). Before fitting, teacher and student are checked against the device's free memory.
        activation_checkpointing: recompute the student's decoder layers in the backward instead of storing
            their activations (transformers gradient checkpointing): less memory, about one more forward of time.
        teacher_cache: a top-k teacher cache (``lkd cache-teacher``, :mod:`lkd.cache`; written at the first fit
            if missing, refused if stale) to read the train and validation targets from instead of running the
            teacher: the KL then uses :func:`lkd.losses.kd.topk_kd_kl_div` (top-k + tail bucket). Only the ``kl``
            and ``ce`` losses can be served from logits, and routing needs the live teacher. Test runs it live.
        teacher_cache_top_k: tokens per position the cache keeps (k · 4 bytes per token up to 65,536 tokens).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        teacher_ckpt: str | None = None,
        tokenizer: str = "smollm2",
        router: StudentAwareRouter | None = None,
        loss_weights: dict[str, float] | None = None,
        temperature: float = 4.0,
        layer_map: dict[int, int] | None = None,
        contrastive_temperature: float = 0.1,
        router_lm_weight: float = 1.0,
        router_top_k: int | None = None,
        router_temperature: float = 1.0,
        router_lr: float = 1e-4,
        projection_lr: float | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        warmup_steps: float = 0.05,
        min_lr_ratio: float = 0.1,
        report_dir: str | None = None,
        teacher_dtype: str = "float32",
        teacher_offload: bool = False,
        activation_checkpointing: bool = False,
        teacher_cache: str | None = None,
        teacher_cache_top_k: int = 32,
    ):
        super().__init__(tokenizer, optimizer, warmup_steps, min_lr_ratio)
        self.student, self.teacher = student, teacher
        self.teacher_ckpt, self.report_dir = teacher_ckpt, report_dir
        problems = []
        sv, tv = causal_lm.vocab_size(student), causal_lm.vocab_size(teacher)
        if sv != tv:
            raise VocabularyMismatchError(
                f"teacher vocabulary has {tv} tokens, student vocabulary has {sv}: the KL needs one vocabulary. "
                "HINT: build both with the same tokenizer (vocab_size) or pick a student of the teacher's family"
            )
        self.loss_weights = validate_loss_weights(DEFAULT_LOSS_WEIGHTS if loss_weights is None else loss_weights)
        if temperature <= 0:
            problems.append(f"temperature must be > 0, got {temperature}")
        if contrastive_temperature <= 0:
            problems.append(f"contrastive_temperature must be > 0, got {contrastive_temperature}")
        if router_lm_weight < 0:
            problems.append(f"router_lm_weight must be >= 0, got {router_lm_weight}")
        if router_temperature <= 0:
            problems.append(f"router_temperature must be > 0, got {router_temperature}")
        if teacher_dtype not in TEACHER_DTYPES:
            problems.append(f"teacher_dtype must be one of {list(TEACHER_DTYPES)}, got {teacher_dtype!r}")
        if teacher_cache is not None:
            problems += self._cache_problems(router, loss_weights, teacher_cache_top_k, tv)
        if problems:
            raise ValueError("LMDistillModule: " + "; ".join(problems))
        self.temperature, self.contrastive_temperature = temperature, contrastive_temperature
        self.router_lm_weight, self.router_lr, self.projection_lr = router_lm_weight, router_lr, projection_lr

        w = self.loss_weights
        ls, lt = causal_lm.num_layers(student), causal_lm.num_layers(teacher)
        self.layer_map = self._check_layer_map(default_layer_map(ls, lt) if layer_map is None else layer_map, ls, lt)
        if w.get("attention", 0) > 0:
            for name, model in (("student", student), ("teacher", teacher)):
                impl = getattr(causal_lm.lm_config(model), "_attn_implementation", None)
                if impl not in ("eager", None):
                    raise ValueError(
                        f"the attention loss needs attention maps, but the {name} uses attn_implementation={impl!r} "
                        "(returns none). HINT: build it with attn_implementation='eager' or set loss_weights.attention: 0"
                    )
        ds, dt = causal_lm.hidden_size(student), causal_lm.hidden_size(teacher)
        self.projections = nn.ModuleDict()
        if w.get("feature", 0) > 0 or w.get("contrastive", 0) > 0:
            self.projections["feature"] = nn.Linear(ds, dt, bias=False)
        if w.get("layer", 0) > 0:
            self.projections["layer"] = nn.ModuleList(nn.Linear(ds, dt, bias=False) for _ in self.layer_map)

        self.router = router
        self.teacher_num_experts: int | None = None
        if router is not None:
            gates = require_moe_gates(teacher)
            self.teacher_num_experts = int(gates[0].num_experts)
            router.bind(ds, self.teacher_num_experts, len(gates))
            self.router_top_k = int(router_top_k if router_top_k is not None else gates[0].top_k)
            validate_top_k(self.router_top_k, self.teacher_num_experts)
        else:
            self.router_top_k = router_top_k
        self.router_temperature = float(router_temperature)
        self.teacher.eval().requires_grad_(False)
        self.teacher_dtype = teacher_dtype
        self.teacher_cache, self.teacher_cache_top_k = teacher_cache, teacher_cache_top_k
        self._cache: TeacherCache | None = None  # attached in setup("fit")
        self.teacher_placement = TeacherPlacement(self.teacher, offload=teacher_offload)
        if teacher_dtype != "float32":  # a bf16/fp16 teacher's outputs meet fp32 losses
            self.teacher.register_forward_hook(_outputs_in_float32)
        if activation_checkpointing:
            enable_activation_checkpointing(self.student)
        self.test_retention = RetentionMetrics()
        self.save_hyperparameters(ignore=["student", "teacher", "router", "optimizer"])

    @staticmethod
    def _check_layer_map(layer_map: dict[int, int], ls: int, lt: int) -> dict[int, int]:
        layer_map = {int(k): int(v) for k, v in layer_map.items()}
        bad = [f"{s}→{t}" for s, t in layer_map.items() if not (1 <= s <= ls and 1 <= t <= lt)]
        if bad or not layer_map:
            raise LayerMapError(
                f"layer_map {bad or layer_map} is out of range: student layers are 1..{ls}, teacher layers 1..{lt} "
                f"(layer i = output of decoder layer i). HINT: e.g. {default_layer_map(ls, lt)}"
            )
        return layer_map

    # ---- set-up ---------------------------------------------------------------------------------------
    @property
    def trained_model(self) -> nn.Module:
        return self.student

    @property
    def context_length(self) -> int:
        return min(causal_lm.context_length(self.student), causal_lm.context_length(self.teacher))

    @staticmethod
    def _cache_problems(router, loss_weights, top_k: int, vocab: int) -> list[str]:
        """Why a logit cache cannot serve this configuration (empty: it can)."""
        problems = []
        if router is not None:
            problems.append("teacher_cache cannot serve routed distillation (the router re-runs the teacher's experts "
                            "every step); drop model.init_args.router or the cache")
        weights = DEFAULT_LOSS_WEIGHTS if loss_weights is None else loss_weights
        needs_teacher = {k: v for k, v in weights.items() if k not in ("kl", "ce") and v > 0}
        if needs_teacher:
            problems.append(f"teacher_cache holds top-k log-probabilities only, but loss_weights {needs_teacher} need the "
                            "teacher's hidden states or attentions; set them to 0 (kl and ce only) or drop the cache")
        if not 1 <= top_k <= vocab:
            problems.append(f"teacher_cache_top_k must be in 1..{vocab} (the vocabulary), got {top_k}")
        return problems

    @override
    def setup(self, stage: str) -> None:
        self.load_teacher()
        if stage == "fit":
            self.check_teacher_fits()
        self._cache = None
        if self.teacher_cache is not None and stage == "fit":
            self._cache = attach_teacher_cache(self, self.teacher_cache)

    def load_teacher(self) -> None:
        """Load ``teacher_ckpt`` into the frozen teacher (once), then hold it in ``teacher_dtype``."""
        if self.teacher_ckpt is not None and not getattr(self, "_teacher_loaded", False):
            load_network_weights(self.teacher, self.teacher_ckpt, prefixes=("model.", "teacher."), what="teacher")
            self._teacher_loaded = True
            rank_zero_info(f"teacher weights from {self.teacher_ckpt}")
        self.teacher.eval().requires_grad_(False)
        hold_teacher_in(self.teacher, self.teacher_dtype)

    def teacher_cache_targets(self) -> dict:
        """What a cache for this module holds (checked against the file)."""
        return {"kind": "lm_topk", "k": int(self.teacher_cache_top_k), "temperature": float(self.temperature),
                "vocab": int(causal_lm.vocab_size(self.teacher))}

    def teacher_batch_targets(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(block ids (B,), {"topk_logprobs": (B, T, k), "topk_indices": (B, T, k)})`` of a batch (cache building)."""
        logits = self.teacher(input_ids=batch["input_ids"]).logits  # (B, T, V)
        logprobs, indices = teacher_topk(logits, self.teacher_cache_top_k, self.temperature)
        return batch["sample_id"], {"topk_logprobs": logprobs, "topk_indices": indices}

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

    # ---- losses ---------------------------------------------------------------------------------------
    def _needs(self) -> tuple[bool, bool]:
        w = self.loss_weights
        hidden = any(w.get(k, 0) > 0 for k in ("feature", "layer", "contrastive")) or self.router is not None
        return hidden, w.get("attention", 0) > 0

    def student_features(self, out) -> dict[str, object]:
        """The student's outputs as the losses take them (projected to the teacher's width)."""
        w, feats = self.loss_weights, {"logits": out.logits}
        if "feature" in self.projections:
            feats["feature"] = self.projections["feature"](out.hidden_states[-1])  # (B, T, D_t)
        if w.get("layer", 0) > 0:
            feats["layer"] = [proj(out.hidden_states[s]) for proj, s in zip(self.projections["layer"], self.layer_map)]
        if w.get("attention", 0) > 0:
            feats["attention"] = [out.attentions[s - 1] for s in self.layer_map]  # (B, H_s, T, T) each
        return feats

    def teacher_features(self, out) -> dict[str, object]:
        w, feats = self.loss_weights, {"logits": out.logits}
        if "feature" in self.projections:
            feats["feature"] = out.hidden_states[-1]
        if w.get("layer", 0) > 0:
            feats["layer"] = [out.hidden_states[t] for t in self.layer_map.values()]
        if w.get("attention", 0) > 0:
            feats["attention"] = [out.attentions[t - 1] for t in self.layer_map.values()]
        return feats

    def loss_terms(self, s: dict, t: dict, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every loss with a non-zero weight, unweighted."""
        w, terms = self.loss_weights, {}
        if w.get("kl", 0) > 0 and "topk" in t:  # from a teacher cache
            terms["kl"] = topk_kd_kl_div(s["logits"], *t["topk"], temperature=self.temperature)
        elif w.get("kl", 0) > 0:
            terms["kl"] = kd_kl_div(s["logits"], t["logits"], self.temperature)
        if w.get("ce", 0) > 0:
            terms["ce"] = lm_cross_entropy(s["logits"], input_ids)
        if w.get("feature", 0) > 0:
            terms["feature"] = feature_loss(s["feature"], t["feature"])
        if w.get("layer", 0) > 0:
            terms["layer"] = layerwise_loss(s["layer"], t["layer"])
        if w.get("attention", 0) > 0:
            terms["attention"] = attention_transfer_loss(s["attention"], t["attention"])
        if w.get("contrastive", 0) > 0:
            pool = lambda h: reduce(h, "b t d -> b d", "mean")  # noqa: E731
            terms["contrastive"] = contrastive_loss(pool(s["feature"]), pool(t["feature"]), self.contrastive_temperature)
        return terms

    def routing_context(self, student_out, teacher_logits: torch.Tensor) -> RoutingContext:
        return RoutingContext(
            student_hidden=rearrange(student_out.hidden_states[-1].detach(), "b t d -> (b t) d"),  # (N, D_s)
            gap=gap_features(teacher_logits, student_out.logits),  # (N, 3)
            top_k=int(self.router_top_k),
            temperature=float(self.router_temperature),
        )

    def routed_teacher_forward(self, input_ids: torch.Tensor, ctx: RoutingContext, *, hidden: bool, attentions: bool):
        """The teacher's forward with its MoE gates replaced by the router (differentiable in the router)."""
        with route_teacher(self.teacher, self.router, ctx):
            return self.teacher(input_ids=input_ids, output_hidden_states=hidden, output_attentions=attentions)

    # ---- steps ----------------------------------------------------------------------------------------
    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        input_ids = batch["input_ids"]  # (B, T)
        hidden, attn = self._needs()
        s_out = self.student(input_ids=input_ids, output_hidden_states=hidden, output_attentions=attn)
        routed = self.router is not None
        self.teacher_placement.hold = routed and stage == "train"  # the backward runs through the routed teacher
        s_feats = self.student_features(s_out)
        logs: dict[str, torch.Tensor] = {}
        if self._cache is not None and stage in self._cache.stages:  # targets from the cache: no teacher forward
            if "sample_id" not in batch:
                raise TeacherCacheError("a teacher cache is attached but the batch has no sample_id. HINT: use TextDataModule")
            t_feats = {"topk": self._cache.topk(stage, batch["sample_id"])}  # (B, T, k) log-probs and token ids
        else:
            with torch.no_grad():
                t_native = self.teacher(input_ids=input_ids, output_hidden_states=hidden and not routed,
                                        output_attentions=attn and not routed)
            if routed:
                ctx = self.routing_context(s_out, t_native.logits)
                with torch.set_grad_enabled(stage == "train"):
                    t_out = self.routed_teacher_forward(input_ids, ctx, hidden=hidden, attentions=attn)
                t_feats = self.teacher_features(t_out)
            else:
                t_feats = self.teacher_features(t_native)
        total, terms = combine_losses(self.loss_terms(s_feats, _detach(t_feats), input_ids), self.loss_weights)
        student_loss = total
        if routed:
            router_distill, _ = combine_losses(self.loss_terms(_detach(s_feats), t_feats, input_ids), self.loss_weights)
            teacher_ce_routed = lm_cross_entropy(t_out.logits, input_ids)
            teacher_ce_native = lm_cross_entropy(t_native.logits, input_ids)
            router_loss = router_distill + self.router_lm_weight * teacher_ce_routed
            total = total + router_loss if stage == "train" else total
            logs |= {"router_loss": router_loss.detach(), "teacher_ce_routed": teacher_ce_routed.detach(),
                     "teacher_lm_degradation": (teacher_ce_routed - teacher_ce_native).detach()}
        nll = lm_cross_entropy(s_out.logits, input_ids).detach()
        tokens = input_ids[:, 1:].numel()
        if stage == "train":
            check_finite_loss(self, total, terms)
        self.log(f"{stage}/loss", student_loss, prog_bar=True, on_step=stage == "train", on_epoch=True, batch_size=tokens)
        for name, value in (terms | logs).items():
            self.log(f"{stage}/{name}", value, on_step=stage == "train", on_epoch=True, batch_size=tokens)
        self._log_nll(stage, nll, tokens)
        if stage == "test":
            self.test_retention.update(s_out.logits.detach(), t_native.logits, input_ids)
        return total

    @override
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    @override
    def on_after_backward(self) -> None:
        self.teacher_placement.hold = False
        self.teacher_placement.park()  # routed: off the device once the backward through it is done

    @override
    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val")

    @override
    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        if batch_idx == 0:
            self._timing_batch = batch["input_ids"][: min(4, len(batch["input_ids"]))]
        return self._shared_step(batch, "test")

    # ---- evaluation report ----------------------------------------------------------------------------
    @override
    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        report = {"retention": self.test_retention.compute()}
        self.test_retention.reset()
        report["compression"] = {
            "teacher_params": causal_lm.count_parameters(self.teacher),
            "student_params": causal_lm.count_parameters(self.student),
            "teacher_bytes": causal_lm.state_bytes(self.teacher),
            "student_bytes": causal_lm.state_bytes(self.student),
        }
        report["compression"]["param_ratio"] = report["compression"]["teacher_params"] / report["compression"]["student_params"]
        if (batch := getattr(self, "_timing_batch", None)) is not None:
            report["speed"] = self.measure_speed(batch)
        report["peak_memory_mb"] = peak_memory_mb(self.device)
        for group in ("retention", "compression", "speed"):
            for k, v in report.get(group, {}).items():
                self.log(f"test/{k}", float(v))
        self.report = report
        if self.trainer.is_global_zero and not self.trainer.sanity_checking and not getattr(self.trainer, "fast_dev_run", False):
            self.write_report(report)

    @torch.no_grad()
    def measure_speed(self, input_ids: torch.Tensor, repeats: int = 3) -> dict[str, float]:
        """Tokens/s of a no-grad forward of each model on the same batch (one burn-in, then ``repeats``)."""
        out = {}
        for name, model in (("teacher", self.teacher), ("student", self.student)):
            model(input_ids=input_ids)  # burn-in
            start = time.perf_counter()
            for _ in range(repeats):
                model(input_ids=input_ids)
            if input_ids.is_cuda:
                torch.cuda.synchronize()
            out[f"{name}_tokens_per_s"] = repeats * input_ids.numel() / (time.perf_counter() - start)
        out["speed_ratio"] = out["student_tokens_per_s"] / out["teacher_tokens_per_s"]
        return out

    def write_report(self, report: dict) -> Path:
        folder = Path(self.report_dir or (self.logger.log_dir if self.logger is not None and self.logger.log_dir else "runs/lm_report"))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "retention.json").write_text(json.dumps(report, indent=2))
        lines = ["| group | metric | value |", "|---|---|---|"]
        for group, values in report.items():
            if isinstance(values, dict):
                lines += [f"| {group} | {k} | {v:.4g} |" for k, v in values.items()]
            else:
                lines.append(f"| {group} | {group} | {values:.4g} |")
        (folder / "retention.md").write_text("# Distillation report\n\n" + "\n".join(lines) + "\n")
        rank_zero_info(f"retention report written to {folder}/retention.json and retention.md")
        return folder


def _outputs_in_float32(module: nn.Module, args, output):
    """Forward hook: a teacher held in bf16/fp16 hands fp32 logits, hidden states and attentions to the losses."""
    for key, value in output.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float32:
            output[key] = value.float()
        elif isinstance(value, tuple) and value and all(isinstance(v, torch.Tensor) and v.is_floating_point() for v in value):
            output[key] = tuple(v.float() for v in value)
    return output


def _detach(feats: dict) -> dict:
    return {k: [x.detach() for x in v] if isinstance(v, (list, tuple)) else v.detach() for k, v in feats.items()}


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on a GPU, else the resident-set peak (Linux: KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


RoutedDistillModule = LMDistillModule
"""Alias: the module is routed when it is given a router."""
