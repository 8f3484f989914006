"""Response-based knowledge distillation of a student from a frozen teacher (Hinton et al. 2015)."""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from typing_extensions import override

from lkd.cache import TeacherCache, TeacherCacheError, attach_teacher_cache
from lkd.checkpoint import load_network_weights
from lkd.losses import hinton_kd_loss
from lkd.memory import TeacherPlacement
from lkd.modules.base import ClassificationModuleBase, ModelFactory
from lkd.modules.frozen_teacher import TEACHER_DTYPES, FrozenTeacherHooks, hold_teacher_in

class DistillModule(FrozenTeacherHooks, ClassificationModuleBase):
    """Trains ``student`` on ``alpha · T² · KL(teacher ‖ student) + (1 − alpha) · CE``.

    The teacher is built from its YAML factory, loaded from ``teacher_ckpt`` (a ClassifierModule or
    DistillModule checkpoint; ``weights_only``) in ``setup``, and frozen: ``requires_grad_(False)`` and eval mode for the
    whole run (``train()`` never switches it back), so dropout and batch-norm statistics stay fixed.
    Validation and test report the student; ``val/teacher_acc`` is logged once per epoch for reference.

    With ``teacher_cache`` (a file written by ``lkd cache-teacher``, :mod:`lkd.cache`) the teacher's logits
    for training and validation batches are read from the cache by sample id instead of computed; the loss
    is unchanged. The cache is checked against this run's teacher weights and data in ``setup`` and
    refused if stale; it needs unaugmented training data (``max_shift: 0``). Test still runs the teacher.

    Args:
        student: student network factory.
        teacher: teacher network factory (the architecture of ``teacher_ckpt``).
        teacher_ckpt: checkpoint with the teacher's weights; None keeps the freshly built teacher (tests only).
        num_classes: linked from the data module; teacher and student are built with it.
        temperature: softmax temperature T > 0.
        alpha: weight of the soft (KL) term in [0, 1]; 1 − alpha weights the cross-entropy.
        optimizer: optimiser factory for the student.
        lr_schedule: see :class:`ClassificationModuleBase`.
        teacher_cache: path of a teacher cache to read teacher logits from (None: run the teacher live).
        teacher_dtype: dtype the frozen teacher is held and run in (``"bfloat16"`` halves its memory; inputs
            are cast to it and its logits back to fp32 for the loss). Cast once in ``setup``, after loading.
        teacher_offload: keep the teacher in CPU memory and move it to the accelerator only for its forward
            (:class:`lkd.memory.TeacherPlacement`; a no-op on a CPU). Before fitting, the teacher and the
            student's training state are checked against the device's free memory (:func:`lkd.memory.check_teacher_fits`).
    """

    def __init__(
        self,
        student: ModelFactory,
        teacher: ModelFactory,
        teacher_ckpt: str | None = None,
        num_classes: int = 10,
        temperature: float = 4.0,
        alpha: float = 0.9,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_schedule: Literal["onecycle", "cosine", "constant"] = "onecycle",
        *,
        teacher_cache: str | None = None,
        teacher_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        teacher_offload: bool = False,
    ):
        super().__init__(num_classes, optimizer, lr_schedule)
        problems = []
        if teacher_dtype not in TEACHER_DTYPES:
            problems.append(f"teacher_dtype must be one of {list(TEACHER_DTYPES)}, got {teacher_dtype!r}")
        if not temperature > 0:
            problems.append(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            problems.append(f"alpha must be in [0, 1], got {alpha}")
        if problems:
            raise ValueError("DistillModule: " + "; ".join(problems))
        self.save_hyperparameters(ignore=["student", "teacher", "optimizer"])
        self.temperature, self.alpha = temperature, alpha
        self.student = student(num_classes)
        self.teacher = teacher(num_classes)
        self.teacher_ckpt = teacher_ckpt
        self.teacher.eval().requires_grad_(False)
        self.teacher_placement = TeacherPlacement(self.teacher, offload=teacher_offload)
        self.teacher_val_acc = self.val_acc.clone()
        self.teacher_cache, self.teacher_dtype = teacher_cache, teacher_dtype
        self._cache: TeacherCache | None = None  # attached in setup("fit")
        self._sample_ids: torch.Tensor | None = None  # (B,) of the batch in flight, when batches carry them

    @override
    def setup(self, stage: str) -> None:
        super().setup(stage)
        # Before any step, so a missing or mismatched teacher (or a stale cache) fails before training. A
        # resumed run then restores the (identical) teacher weights from its own checkpoint.
        self.load_teacher()
        if stage == "fit":
            self.check_teacher_fits()
        self._cache = None
        if self.teacher_cache is not None and stage == "fit":
            self._cache = attach_teacher_cache(self, self.teacher_cache, num_classes=self.num_classes)

    def load_teacher(self) -> None:
        """Load ``teacher_ckpt`` into the frozen teacher (shape-checked), then hold it in ``teacher_dtype``."""
        if self.teacher_ckpt is not None:
            load_network_weights(self.teacher, self.teacher_ckpt, what="teacher", num_classes=self.num_classes)
        hold_teacher_in(self.teacher, self.teacher_dtype)

    def _run_teacher(self, images: torch.Tensor) -> torch.Tensor:
        # inputs in the dtype the teacher is held in (teacher_dtype, or the trainer's under "bf16-true"/"16-true")
        weight = next(self.teacher.parameters(), None)
        images = images.to(weight.dtype) if weight is not None and weight.is_floating_point() else images
        return self.teacher(images).float()  # (B, C) fp32 for the loss

    @override
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.student(images)

    @override
    def classify(self, images: torch.Tensor) -> torch.Tensor:
        return self.student(images)

    def teacher_logits(self, images: torch.Tensor, stage: str | None = None) -> torch.Tensor:
        """The teacher's logits (B, C): from the cache for a cached stage, else a forward without gradients."""
        if self._cache is not None and stage in self._cache.stages:
            if self._sample_ids is None:
                raise TeacherCacheError(
                    "a teacher cache is attached but the batch has no sample ids. HINT: use MNISTDataModule, "
                    "which adds them once the module asks (emit_sample_ids)"
                )
            return self._cache.logits(stage, self._sample_ids)
        with torch.no_grad():
            return self._run_teacher(images)

    def teacher_batch_targets(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(sample_ids (B,), {"logits": (B, C)})`` of an ``(images, labels, sample_ids)`` batch (cache building)."""
        images, _, sample_ids = batch
        return sample_ids, {"logits": self._run_teacher(images)}

    @override
    def _shared_step(self, batch, batch_idx: int, stage: str) -> dict[str, torch.Tensor]:
        # Batches may carry sample ids as a third item (for the teacher cache); the base step takes (images, labels).
        images, labels, *sample_ids = batch
        self._sample_ids = sample_ids[0] if sample_ids else None
        try:
            return super()._shared_step((images, labels), batch_idx, stage)
        finally:
            self._sample_ids = None

    @override
    def compute_loss(self, images, labels, stage):
        student_logits = self.student(images)
        teacher_logits = self.teacher_logits(images, stage)
        loss, terms = hinton_kd_loss(student_logits, teacher_logits, labels, temperature=self.temperature, alpha=self.alpha)
        if stage == "val":
            self.teacher_val_acc(teacher_logits, labels)
            self.log("val/teacher_acc", self.teacher_val_acc, on_step=False, on_epoch=True)
        return student_logits, loss, terms

    @override
    def trainable_parameters(self):
        return self.student.parameters()
