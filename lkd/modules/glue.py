"""GLUE fine-tuning and distillation (BERT-style teacher → smaller student, optionally with a DKVB)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import nn
from typing_extensions import override

from lkd.cache import TeacherCache, attach_teacher_cache
from lkd.checkpoint import load_network_weights
from lkd.distributed import SyncedLogging
from lkd.losses import hidden_cosine_loss, hinton_kd_loss, regression_kd_loss
from lkd.memory import TeacherPlacement, enable_activation_checkpointing
from lkd.metrics.glue import glue_metrics, glue_score
from lkd.models.text_classifier import TextClassifierOutput, TransformerClassifier
from lkd.models.transfer import copy_transformer_weights, evenly_spaced_layers
from lkd.modules.base import check_finite_loss
from lkd.modules.frozen_teacher import TEACHER_DTYPES, FrozenTeacherHooks, hold_teacher_in

TextModelFactory = Callable[[int], TransformerClassifier]
"""Builds a :class:`TransformerClassifier` given its number of outputs (YAML ``class_path``
``lkd.models.TransformerClassifier``; ``num_classes`` is linked from the data module)."""

STAGES = ("train", "val", "test")


def _inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


class GLUEModuleBase(SyncedLogging):
    """Metrics, logging, checks and optimisation shared by GLUE fine-tuning and distillation.

    Logs ``{stage}/loss``, every loss term, every task metric (``{stage}/acc``, ``/f1``, ``/mcc``,
    ``/pearson``, ``/spearman``) and ``{stage}/score`` (their mean, the GLUE leaderboard's task score; the
    default checkpoint monitor of GLUE configs). Subclasses implement ``compute_loss`` and ``network``.

    Args:
        num_classes: outputs (linked from the data module; 1 = regression with an MSE loss).
        task: GLUE task name (linked from the data module); picks the metrics.
        optimizer: optimiser factory (default AdamW), given the trainable parameters.
        lr_schedule: ``"linear"`` (warm-up then linear decay to 0, BERT's schedule), ``"cosine"`` (warm-up
            then cosine) or ``"constant"``; counted in optimizer steps.
        warmup_ratio: fraction of the optimizer steps spent warming up.
    """

    def __init__(
        self,
        num_classes: int = 2,
        task: str = "sst2",
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_schedule: Literal["linear", "cosine", "constant"] = "linear",
        warmup_ratio: float = 0.1,
    ):
        super().__init__()
        if lr_schedule not in ("linear", "cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'linear', 'cosine' or 'constant', got {lr_schedule!r}")
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
        self.num_classes, self.task = num_classes, task
        self.optimizer_factory, self.lr_schedule, self.warmup_ratio = optimizer, lr_schedule, warmup_ratio
        metrics = glue_metrics(task, num_classes)
        # one metric collection per stage; attribute names avoid nn.Module.train
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    # ---- to implement -------------------------------------------------------------------------------
    @property
    def network(self) -> TransformerClassifier:
        """The model being trained and evaluated."""
        raise NotImplementedError

    def compute_loss(self, batch: dict, stage: str) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """-> (logits (B, C), loss, terms)."""
        raise NotImplementedError

    # ---- what the data module reads -----------------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        """The tokenizer the data must be encoded with: the network's encoder."""
        return self.network.encoder_name

    @property
    def max_length(self) -> int:
        return self.network.max_length

    @property
    def is_regression(self) -> bool:
        return self.num_classes == 1

    # ---- steps --------------------------------------------------------------------------------------
    @override
    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        return self.network(input_ids, attention_mask, token_type_ids).logits

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy, or MSE for a regression task."""
        if self.is_regression:
            return F.mse_loss(logits.float().reshape(-1), labels.float())
        return F.cross_entropy(logits.float(), labels)

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """Class ids (B,), or scores (B,) for regression."""
        return logits.reshape(-1).float() if self.is_regression else logits.argmax(dim=-1)

    def _shared_step(self, batch: dict, batch_idx: int, stage: str) -> dict[str, torch.Tensor]:
        """Loss, logs and metrics of one batch; returns ``{"loss", "preds", "labels"}`` (for figure callbacks)."""
        labels = batch["labels"]
        if batch_idx == 0:
            self._check_labels(labels, stage)
        logits, loss, terms = self.compute_loss(batch, stage)
        if stage == "train":
            check_finite_loss(self, loss, terms)
        n = len(labels)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=on_step, on_epoch=True, batch_size=n)
        for name, value in terms.items():
            self.log(f"{stage}/{name}", value, on_step=on_step, on_epoch=True, batch_size=n)
        metrics = getattr(self, f"{stage}_metrics")
        preds = self.predictions(logits.detach())
        metrics.update(preds, labels)
        return {"loss": loss, "preds": preds, "labels": labels}

    def _log_metrics(self, stage: str) -> None:
        metrics = getattr(self, f"{stage}_metrics")
        values = metrics.compute()
        metrics.reset()
        if not values:
            return
        values = {k: v.float() for k, v in values.items()}
        self.log_dict(values, prog_bar=stage == "val")
        self.log(f"{stage}/score", glue_score(values), prog_bar=stage != "train")

    @override
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, batch_idx, "train")["loss"]

    @override
    def validation_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._shared_step(batch, batch_idx, "val")

    @override
    def test_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._shared_step(batch, batch_idx, "test")

    @override
    def on_train_epoch_end(self) -> None:
        self._log_metrics("train")

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    @override
    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    @override
    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        logits = self.network(**_inputs(batch)).logits
        return {"idx": batch["idx"], "prediction": self.predictions(logits)}

    def _check_labels(self, labels: torch.Tensor, stage: str) -> None:
        if self.is_regression or not labels.numel():
            return
        if labels.min() < 0 or labels.max() >= self.num_classes:
            bad = labels[(labels < 0) | (labels >= self.num_classes)].unique().tolist()
            hint = " (-1 marks GLUE's hidden test labels: score 'validation' instead)" if bad == [-1] else ""
            raise ValueError(
                f"{stage} labels {bad[:10]} are out of range for num_classes={self.num_classes} "
                f"(expected 0..{self.num_classes - 1}){hint}"
            )

    # ---- optimisation -------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.network.parameters() if p.requires_grad]

    @override
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.trainable_parameters())
        if self.lr_schedule == "constant":
            return optimizer
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(self.warmup_ratio * total)
        scheduler = linear_or_cosine_with_warmup(optimizer, warmup, total, cosine=self.lr_schedule == "cosine")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def linear_or_cosine_with_warmup(optimizer, warmup_steps: int, total_steps: int, *, cosine: bool = False):
    """LR factor: 0 → 1 linearly over ``warmup_steps``, then 1 → 0 linearly (or by a half cosine) by ``total_steps``."""
    import math

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress)) if cosine else 1.0 - progress

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class GLUEClassifierModule(GLUEModuleBase):
    """Fine-tunes one :class:`TransformerClassifier` (plain, or with a DKVB) on a GLUE task.

    Args:
        model: the network factory; see :class:`GLUEModuleBase` for the rest.
    """

    def __init__(
        self,
        model: TextModelFactory,
        num_classes: int = 2,
        task: str = "sst2",
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_schedule: Literal["linear", "cosine", "constant"] = "linear",
        warmup_ratio: float = 0.1,
    ):
        super().__init__(num_classes, task, optimizer, lr_schedule, warmup_ratio)
        self.save_hyperparameters(ignore=["model", "optimizer"])
        self.model = model(num_classes)

    @property
    def network(self) -> TransformerClassifier:
        return self.model

    @override
    def compute_loss(self, batch, stage):
        logits = self.model(**_inputs(batch)).logits
        loss = self.task_loss(logits, batch["labels"])
        return logits, loss, {}


class GLUEDistillModule(FrozenTeacherHooks, GLUEModuleBase):
    """Distils a fine-tuned teacher into a student on a GLUE task (Sanh et al. 2019, DistilBERT):

        loss = α · T² · KL(p_t^T ‖ p_s^T) + (1 − α) · CE(s, y) + cos_weight · L_cos

    (regression tasks: α · MSE(s, t) + (1 − α) · MSE(s, y)). ``L_cos`` is the cosine loss between each student
    layer's output and its mapped teacher layer's (:func:`lkd.losses.hidden_cosine_loss`), averaged over
    the mapped layers. Every term is logged (``train/kd``, ``train/ce``, ``train/cos``).

    The teacher is built from its factory, loaded from ``teacher_ckpt`` (``weights_only``, shape-checked)
    in ``setup`` and frozen (eval mode for the whole run). Teacher and student must share the tokenizer.

    Args:
        student, teacher: network factories.
        teacher_ckpt: a GLUE checkpoint of the teacher (a GLUEClassifierModule's); None keeps the built
            teacher (tests).
        student_init: ``"model"``: the student as its factory built it (e.g. pretrained layers picked by
            ``keep_layers``); ``"teacher"``: copy the loaded teacher into the student the DistilBERT way
            (embeddings, the layers of ``layer_map``, head, DKVB), shape-checked; needs equal widths.
        layer_map: teacher layer for each student layer (for ``"teacher"`` init and ``L_cos``); default
            evenly spaced (6 → 3: [0, 2, 5]).
        temperature, alpha: the KD loss (T > 0, α in [0, 1]).
        cos_weight: weight of ``L_cos`` (0 = off, no hidden states computed). A student narrower than the
            teacher gets a learned projection to the teacher's width for it.
        teacher_cache: a teacher cache (``lkd cache-teacher``, :mod:`lkd.cache`) to read the teacher's train and
            validation logits from by GLUE ``idx`` instead of running it (written at the first fit if missing;
            refused if written for another teacher, tokenizer, task, subset or data). Needs ``cos_weight: 0``
            (the cache holds logits, not hidden states). Test still runs the teacher.
        teacher_dtype: dtype the frozen teacher is held and run in (``"bfloat16"`` halves its memory; its
            logits and hidden states are cast back to fp32 for the losses). Cast once in ``setup``.
        teacher_offload: keep the teacher in CPU memory and move it to the accelerator only for its forward
            (:class:`lkd.memory.TeacherPlacement`; a no-op on a CPU). Before fitting, the teacher and the
            student's training state are checked against the device's free memory (:func:`lkd.memory.check_teacher_fits`).
        activation_checkpointing: recompute the student encoder's layers in the backward instead of storing
            their activations (transformers gradient checkpointing): less memory, about one more forward of time.
    """

    def __init__(
        self,
        student: TextModelFactory,
        teacher: TextModelFactory,
        teacher_ckpt: str | None = None,
        num_classes: int = 2,
        task: str = "sst2",
        *,
        student_init: Literal["model", "teacher"] = "model",
        layer_map: list[int] | None = None,
        temperature: float = 2.0,
        alpha: float = 0.5,
        cos_weight: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_schedule: Literal["linear", "cosine", "constant"] = "linear",
        warmup_ratio: float = 0.1,
        teacher_cache: str | None = None,
        teacher_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        teacher_offload: bool = False,
        activation_checkpointing: bool = False,
    ):
        super().__init__(num_classes, task, optimizer, lr_schedule, warmup_ratio)
        problems = []
        if teacher_dtype not in TEACHER_DTYPES:
            problems.append(f"teacher_dtype must be one of {list(TEACHER_DTYPES)}, got {teacher_dtype!r}")
        if teacher_cache is not None and cos_weight > 0:
            problems.append(f"teacher_cache holds logits only, so cos_weight must be 0 with it, got {cos_weight}")
        if not temperature > 0:
            problems.append(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            problems.append(f"alpha must be in [0, 1], got {alpha}")
        if cos_weight < 0:
            problems.append(f"cos_weight must be >= 0, got {cos_weight}")
        if student_init not in ("model", "teacher"):
            problems.append(f"student_init must be 'model' or 'teacher', got {student_init!r}")
        if problems:
            raise ValueError("GLUEDistillModule: " + "; ".join(problems))
        self.save_hyperparameters(ignore=["student", "teacher", "optimizer"])
        self.student = student(num_classes)
        self.teacher = teacher(num_classes)
        self.teacher.eval().requires_grad_(False)
        self.teacher_placement = TeacherPlacement(self.teacher, offload=teacher_offload)
        if activation_checkpointing:
            enable_activation_checkpointing(self.student)
        self.teacher_ckpt, self.student_init = teacher_ckpt, student_init
        self.teacher_cache, self.teacher_dtype = teacher_cache, teacher_dtype
        self._cache: TeacherCache | None = None  # attached in setup("fit")
        self.temperature, self.alpha, self.cos_weight = temperature, alpha, cos_weight
        self._check_pair()
        self.layer_map = layer_map if layer_map is not None else evenly_spaced_layers(self.teacher.num_layers, self.student.num_layers)
        self._check_layer_map()
        s_h, t_h = self.student.hidden_size, self.teacher.hidden_size
        self.cos_projection = nn.Linear(s_h, t_h) if cos_weight > 0 and s_h != t_h else None

    def _check_pair(self) -> None:
        s, t = self.student, self.teacher
        s_vocab, t_vocab = s.config.vocab_size, t.config.vocab_size
        if s_vocab != t_vocab:
            raise ValueError(
                f"teacher vocabulary ({t.encoder_name}: {t_vocab}) and student vocabulary ({s.encoder_name}: {s_vocab}) "
                "differ; distillation needs one tokenizer. HINT: build the student from the teacher's tokenizer."
            )
        if s.encoder_name != t.encoder_name:
            from lkd.models.pretrained import load_tokenizer

            if load_tokenizer(s.encoder_name).get_vocab() != load_tokenizer(t.encoder_name).get_vocab():
                raise ValueError(
                    f"teacher tokenizer ({t.encoder_name}) and student tokenizer ({s.encoder_name}) differ; both "
                    "see the same token ids, so they must be the same tokenizer"
                )

    def _check_layer_map(self) -> None:
        n_s, n_t = self.student.num_layers, self.teacher.num_layers
        if len(self.layer_map) != n_s or any(not 0 <= i < n_t for i in self.layer_map):
            raise ValueError(
                f"layer_map {self.layer_map} must give one teacher layer (0..{n_t - 1}) for each of the student's {n_s} layers"
            )

    @property
    def network(self) -> TransformerClassifier:
        return self.student

    @property
    def max_length(self) -> int:
        return min(self.student.max_length, self.teacher.max_length)

    @override
    def setup(self, stage: str) -> None:
        # Before any step, so a missing or mismatched teacher fails before training; a resumed run then
        # restores the student (and the identical teacher) from its own checkpoint.
        self.load_teacher(cast=False)
        if stage == "fit" and self.student_init == "teacher":
            copy_transformer_weights(self.teacher, self.student, self.layer_map)  # from the fp32 weights
        hold_teacher_in(self.teacher, self.teacher_dtype)
        if stage == "fit":
            self.check_teacher_fits()
        self._cache = None
        if self.teacher_cache is not None and stage == "fit":
            self._cache = attach_teacher_cache(self, self.teacher_cache, num_classes=self.num_classes)

    def load_teacher(self, cast: bool = True) -> None:
        """Load ``teacher_ckpt`` into the frozen teacher (shape-checked), then hold it in ``teacher_dtype``."""
        if self.teacher_ckpt is not None:
            load_network_weights(self.teacher, self.teacher_ckpt, prefixes=("model.", "student."), what="teacher",
                                 num_classes=self.num_classes)
        if cast:
            hold_teacher_in(self.teacher, self.teacher_dtype)

    def teacher_batch_targets(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(idx (B,), {"logits": (B, C)})`` of a batch (cache building)."""
        return batch["idx"], {"logits": self.teacher(**_inputs(batch)).logits.float()}

    @override
    def trainable_parameters(self) -> list[nn.Parameter]:
        params = [p for p in self.student.parameters() if p.requires_grad]
        return params + (list(self.cos_projection.parameters()) if self.cos_projection is not None else [])

    @override
    def compute_loss(self, batch, stage):
        inputs, labels = _inputs(batch), batch["labels"]
        hidden = self.cos_weight > 0
        student_out = self.student(**inputs, output_hidden_states=hidden)
        if self._cache is not None and stage in self._cache.stages:
            teacher_out, t = None, self._cache.logits(stage, batch["idx"])  # (B, C) fp32; hidden is False here
        else:
            with torch.no_grad():
                teacher_out = self.teacher(**inputs, output_hidden_states=hidden)
            t = teacher_out.logits.float()  # (B, C); the teacher may be held in bf16/fp16
        s = student_out.logits
        if self.is_regression:
            loss, terms = regression_kd_loss(s, t, labels, alpha=self.alpha)
        else:
            loss, terms = hinton_kd_loss(s, t, labels, temperature=self.temperature, alpha=self.alpha)
        if hidden:
            terms["cos"] = self._cosine_term(student_out, teacher_out, inputs.get("attention_mask"))
            loss = loss + self.cos_weight * terms["cos"]
        return s, loss, terms

    def _cosine_term(self, student: TextClassifierOutput, teacher: TextClassifierOutput, mask) -> torch.Tensor:
        """Mean L_cos over mapped layers: student layer j's output vs teacher layer layer_map[j]'s."""
        losses = []
        for j, i in enumerate(self.layer_map):
            h_s = student.hidden_states[j + 1]  # (B, T, H_s); index 0 is the embeddings
            if self.cos_projection is not None:
                h_s = self.cos_projection(h_s)
            losses.append(hidden_cosine_loss(h_s, teacher.hidden_states[i + 1].float(), mask))
        return torch.stack(losses).mean()
