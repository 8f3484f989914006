"""The GLUE / text-classification track: fine-tuning and distillation (BERT-style teacher → smaller student,
optionally with a DKVB)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn
from torchmetrics import MetricCollection
from typing_extensions import override

from lkd.losses import hard_label_loss, hinton_kd_loss, labelled_rows, layerwise_loss, regression_kd_loss
from lkd.losses.kd import kd_problems
from lkd.memory import enable_activation_checkpointing
from lkd.metrics.glue import glue_metrics, glue_score
from lkd.models.text_classifier import TransformerClassifier
from lkd.models.transfer import check_layer_map, copy_transformer_weights, default_layer_map
from lkd.modules.base import LKDModule, StepOutput
from lkd.schedules import ScheduleName
from lkd.teacher import Teacher
from lkd.tokenizers import load_tokenizer

TextModelFactory = Callable[[int], TransformerClassifier]
"""Builds a :class:`TransformerClassifier` given its number of outputs (YAML ``class_path``
``lkd.models.TransformerClassifier``; ``num_classes`` is linked from the data module)."""


def _inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


class GLUEModule(LKDModule):
    """Metrics, checks and data connection shared by GLUE fine-tuning and distillation.

    Logs ``{stage}/loss``, every loss term, every task metric (``{stage}/acc``, ``/f1``, ``/mcc``,
    ``/pearson``, ``/spearman``) and ``{stage}/score`` (their mean, the GLUE leaderboard's task score; the
    default checkpoint monitor of GLUE configs). Subclasses implement ``loss`` and ``trained_model``. Training rows
    without labels (a transfer set) are accepted by distillation only, and left out of the training metrics.

    Args:
        num_classes: outputs (linked from the data module; 1 = regression with an MSE loss).
        task: GLUE task name (linked from the data module); picks the metrics.
        optimizer: optimiser factory (default AdamW), given the trainable parameters.
        lr_schedule: ``linear`` (warm-up then linear decay to 0, BERT's schedule), ``cosine``, ``onecycle`` or
            ``constant`` (:mod:`lkd.schedules`); counted in optimizer steps.
        warmup_ratio: fraction of the optimizer steps spent warming up.
    """

    transfer_set_option = "data.init_args.transfer_copies > 0, labelled_size or transfer_texts"
    unlabelled_hint = "use GLUEDistillModule, or set transfer_copies: 0 and leave labelled_size and transfer_texts out"

    def __init__(self, num_classes: int = 2, task: str = "sst2", optimizer: OptimizerCallable = torch.optim.AdamW,
                 lr_schedule: ScheduleName = "linear", warmup_ratio: float = 0.1):
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
        self.num_classes, self.task = num_classes, task
        super().__init__(optimizer, lr_schedule, warmup=warmup_ratio)

    @override
    def make_metrics(self) -> MetricCollection:
        return glue_metrics(self.task, self.num_classes)

    @override
    def epoch_metrics(self, stage: str, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**values, f"{stage}/score": glue_score(values)} if values else values

    @property
    def tokenizer_name(self) -> str:
        """The tokenizer the data must be encoded with: the trained network's encoder."""
        return self.trained_model.encoder_name

    @property
    def max_length(self) -> int:
        return self.trained_model.max_length

    @property
    def is_regression(self) -> bool:
        return self.num_classes == 1

    @override
    def connect_data(self, datamodule) -> None:
        if hasattr(datamodule, "connect"):
            datamodule.connect(self.tokenizer_name, self.max_length)

    @override
    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        return self.trained_model(input_ids, attention_mask, token_type_ids).logits

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy, or MSE for a regression task."""
        return hard_label_loss(logits, labels.float() if self.is_regression else labels)

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """Class ids (B,), or scores (B,) for regression."""
        return logits.reshape(-1).float() if self.is_regression else logits.argmax(dim=-1)

    def loss(self, batch: dict, stage: str) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """-> (logits (B, C), loss, terms)."""
        raise NotImplementedError

    @override
    def step(self, batch: dict, stage: str) -> StepOutput:
        labels = batch["labels"]
        self.check_labels(labels, stage)
        logits, loss, terms = self.loss(batch, stage)
        preds = self.predictions(logits.detach())
        if stage == "train" and not (keep := labelled_rows(labels)).all():  # transfer-set rows: no label to score
            preds, labels = preds[keep], labels[keep]
        return StepOutput(loss, len(batch["labels"]), terms, metric_args=(preds, labels), outputs={"preds": preds, "labels": labels})

    @override
    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        logits = self.trained_model(**_inputs(batch)).logits
        return {"idx": batch["idx"], "prediction": self.predictions(logits)}


class GLUEClassifierModule(GLUEModule):
    """Fine-tunes one :class:`TransformerClassifier` (plain, or with a DKVB) on a GLUE task.

    Args:
        model: the network factory; see :class:`GLUEModule` for the rest.
    """

    def __init__(self, model: TextModelFactory, num_classes: int = 2, task: str = "sst2",
                 optimizer: OptimizerCallable = torch.optim.AdamW, lr_schedule: ScheduleName = "linear",
                 warmup_ratio: float = 0.1):
        super().__init__(num_classes, task, optimizer, lr_schedule, warmup_ratio)
        self.save_hyperparameters(ignore=["model", "optimizer"])
        self.model = model(num_classes)

    @property
    @override
    def trained_model(self) -> TransformerClassifier:
        return self.model

    @override
    def loss(self, batch, stage):
        logits = self.model(**_inputs(batch)).logits
        return logits, self.task_loss(logits, batch["labels"]), {}


class GLUEDistillModule(GLUEModule):
    """Distils a fine-tuned teacher into a student on a GLUE task (Sanh et al. 2019, DistilBERT):

        loss = α · T² · KL(p_t^T ‖ p_s^T) + (1 − α) · CE(s, y) + cos_weight · L_cos

    (regression tasks: α · MSE(s, t) + (1 − α) · MSE(s, y)). ``L_cos`` is the cosine loss between each student
    layer's output and its mapped teacher layer's (:func:`lkd.losses.layerwise_loss`, padding masked). Every
    term is logged (``train/kd``, ``train/ce``, ``train/cos``).

    The teacher (:class:`lkd.teacher.Teacher`: architecture, a GLUE checkpoint, dtype, offload, cache) is
    loaded in ``setup`` and frozen. Teacher and student must share the tokenizer. A teacher cache holds
    logits, so it needs ``cos_weight: 0``.

    Args:
        student: network factory.
        teacher: the frozen teacher (its ``model`` gets ``num_classes`` from the data through the CLI).
        student_init: ``"model"``: the student as its factory built it (e.g. pretrained layers picked by
            ``keep_layers``); ``"teacher"``: copy the loaded teacher into the student the DistilBERT way
            (embeddings, the layers of ``layer_map``, head, and the DKVB when the teacher has one: a student's
            DKVB under a plain teacher keeps its own keys and values), shape-checked; needs equal widths.
        layer_map: teacher layer (0-based) for each student layer (for ``"teacher"`` init and ``L_cos``);
            default evenly spaced (6 → 3: [0, 2, 5]).
        temperature, alpha: the KD loss (T > 0, α in [0, 1]).
        cos_weight: weight of ``L_cos`` (0 = off, no hidden states computed). A student narrower than the
            teacher gets a learned projection to the teacher's width for it.
        activation_checkpointing: recompute the student encoder's layers in the backward instead of storing
            their activations (transformers gradient checkpointing): less memory, about one more forward of time.
    """

    accepts_unlabelled = True

    def __init__(
        self,
        student: TextModelFactory,
        teacher: Teacher,
        num_classes: int = 2,
        task: str = "sst2",
        *,
        student_init: Literal["model", "teacher"] = "model",
        layer_map: list[int] | None = None,
        temperature: float = 2.0,
        alpha: float = 0.5,
        cos_weight: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_schedule: ScheduleName = "linear",
        warmup_ratio: float = 0.1,
        activation_checkpointing: bool = False,
    ):
        super().__init__(num_classes, task, optimizer, lr_schedule, warmup_ratio)
        problems = kd_problems(temperature=temperature, alpha=alpha)
        if teacher.cache_path is not None and cos_weight > 0:
            problems.append(f"teacher.cache holds logits only, so cos_weight must be 0 with it, got {cos_weight}")
        if cos_weight < 0:
            problems.append(f"cos_weight must be >= 0, got {cos_weight}")
        if student_init not in ("model", "teacher"):
            problems.append(f"student_init must be 'model' or 'teacher', got {student_init!r}")
        if problems:
            raise ValueError("GLUEDistillModule: " + "; ".join(problems))
        self.save_hyperparameters(ignore=["student", "teacher", "optimizer"])
        self.student = student(num_classes)
        teacher.check_classes(num_classes)
        self.teacher = teacher
        if activation_checkpointing:
            enable_activation_checkpointing(self.student)
        self.student_init = student_init
        self.temperature, self.alpha, self.cos_weight = temperature, alpha, cos_weight
        t_net = teacher.model
        self._check_pair(self.student, t_net)
        n_s, n_t = self.student.num_layers, t_net.num_layers
        self.layer_map = check_layer_map(default_layer_map(n_t, n_s) if layer_map is None else layer_map, n_s, n_t)
        s_h, t_h = self.student.hidden_size, t_net.hidden_size
        self.cos_projection = nn.Linear(s_h, t_h) if cos_weight > 0 and s_h != t_h else None

    @override
    def teacher_expectations(self) -> dict:
        return {"task": self.task, "num_classes": self.num_classes}

    @staticmethod
    def _check_pair(s: TransformerClassifier, t: TransformerClassifier) -> None:
        s_vocab, t_vocab = s.config.vocab_size, t.config.vocab_size
        if s_vocab != t_vocab:
            raise ValueError(
                f"teacher vocabulary ({t.encoder_name}: {t_vocab}) and student vocabulary ({s.encoder_name}: {s_vocab}) "
                "differ; distillation needs one tokenizer. HINT: build the student from the teacher's tokenizer."
            )
        if s.encoder_name != t.encoder_name and load_tokenizer(s.encoder_name).get_vocab() != load_tokenizer(t.encoder_name).get_vocab():
            raise ValueError(
                f"teacher tokenizer ({t.encoder_name}) and student tokenizer ({s.encoder_name}) differ; both "
                "see the same token ids, so they must be the same tokenizer"
            )

    @property
    @override
    def trained_model(self) -> TransformerClassifier:
        return self.student

    @property
    def max_length(self) -> int:
        return min(self.student.max_length, self.teacher.model.max_length)

    @override
    def before_teacher_hold(self, stage: str) -> None:
        if stage == "fit" and self.student_init == "teacher":
            own_dkvb = ("dkvb.", "dkvb_in.") if self.teacher.model.dkvb is None else ()  # a DKVB the teacher lacks stays as built
            copy_transformer_weights(self.teacher.model, self.student, self.layer_map, skip=own_dkvb)  # from the fp32 weights

    @override
    def cache_targets(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(sample ids (B,), {"logits": (B, C)})`` of a batch."""
        return self.sample_ids(batch), {"logits": self.teacher(**_inputs(batch)).logits}

    @override
    def live_targets(self, batch: dict, stage: str) -> dict[str, torch.Tensor]:
        """The cached fields and, for ``L_cos``, the teacher's ``hidden_states`` (a cache is refused with cos_weight > 0)."""
        if self.cos_weight == 0:
            return super().live_targets(batch, stage)
        out = self.teacher(**_inputs(batch), output_hidden_states=True)
        return {"logits": out.logits, "hidden_states": out.hidden_states}

    @override
    def parameter_groups(self) -> list[dict]:
        groups = super().parameter_groups()
        if self.cos_projection is not None:
            groups.append({"params": list(self.cos_projection.parameters()), "name": "projection"})
        return groups

    @override
    def loss(self, batch, stage):
        inputs, labels = _inputs(batch), batch["labels"]
        hidden = self.cos_weight > 0
        student_out = self.student(**inputs, output_hidden_states=hidden)
        s = student_out.logits
        teacher = self.teacher_targets(batch, stage)  # from the cache or live (with the hidden states for L_cos)
        t = teacher["logits"]  # (B, C) fp32
        if self.is_regression:
            loss, terms = regression_kd_loss(s, t, labels, alpha=self.alpha)
        else:
            loss, terms = hinton_kd_loss(s, t, labels, temperature=self.temperature, alpha=self.alpha)
        if hidden:
            terms["cos"] = self._cosine_term(student_out.hidden_states, teacher["hidden_states"], inputs.get("attention_mask"))
            loss = loss + self.cos_weight * terms["cos"]
        return s, loss, terms

    def _cosine_term(self, student_states, teacher_states, mask) -> torch.Tensor:
        """L_cos over mapped layers: student layer j's output vs teacher layer layer_map[j]'s (index 0 of the
        hidden states is the embeddings)."""
        project = self.cos_projection if self.cos_projection is not None else (lambda h: h)
        student = [project(student_states[j + 1]) for j in range(len(self.layer_map))]  # (B, T, H_t) each
        teacher = [teacher_states[i + 1] for i in self.layer_map]
        return layerwise_loss(student, teacher, mask)
