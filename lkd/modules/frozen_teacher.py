"""What every distillation module does with its frozen teacher: held in ``teacher_dtype``, eval mode for the
whole run, (with ``teacher_offload``) CPU memory between uses once the strategy has moved the model to its
device, and (with a teacher cache) the data module handed back without sample ids at teardown."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from typing_extensions import override

from lkd.memory import TeacherPlacement, check_teacher_fits

TEACHER_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""What a frozen teacher can be held in (``teacher_dtype``)."""


def hold_teacher_in(teacher: torch.nn.Module, dtype: str) -> None:
    """Cast a frozen teacher's parameters and buffers to ``dtype`` (once, in the module's ``setup``)."""
    teacher.to(TEACHER_DTYPES[dtype])


class FrozenTeacherHooks(pl.LightningModule):
    """Mixin for LightningModules with a frozen ``self.teacher`` and a ``self.teacher_placement``
    (:class:`lkd.memory.TeacherPlacement`). ``train()`` never puts the teacher back in training mode (dropout,
    batch-norm statistics stay fixed), and at the start of every stage the teacher is parked (a no-op without
    offloading or on a CPU)."""

    teacher_placement: TeacherPlacement

    @override
    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def check_teacher_fits(self) -> None:
        """Refuse (:class:`lkd.memory.TeacherMemoryError`) a teacher and student that cannot fit on the trainer's
        device, and teacher offloading under FSDP (which shards the teacher instead); call in ``setup("fit")``
        after the teacher is loaded and cast. Without a trainer: nothing to check."""
        if self._trainer is None:
            return
        from lightning.pytorch.strategies import FSDPStrategy

        if self.teacher_placement.offload and isinstance(self.trainer.strategy, FSDPStrategy):
            raise ValueError(
                "teacher_offload moves the whole teacher between CPU and GPU, but under trainer.strategy=fsdp the teacher "
                "is sharded across the GPUs (each holds 1/N of it already). HINT: drop model.init_args.teacher_offload, "
                "or use FSDP's own cpu_offload (trainer.strategy.init_args.cpu_offload: true)"
            )
        check_teacher_fits(self.teacher, self.student, self.trainer.strategy.root_device,
                           offload=self.teacher_placement.offload, teacher_dtype=getattr(self, "teacher_dtype", "float32"))

    def _park_teacher(self) -> None:
        placement = getattr(self, "teacher_placement", None)
        if placement is not None:
            placement.park()

    @override
    def teardown(self, stage: str) -> None:
        # with a teacher cache attached, hand the data module back as it was (batches without sample ids)
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if getattr(self, "_cache", None) is not None and hasattr(datamodule, "emit_sample_ids"):
            datamodule.emit_sample_ids = False
        super().teardown(stage)

    @override
    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._park_teacher()

    @override
    def on_validation_start(self) -> None:
        super().on_validation_start()
        self._park_teacher()

    @override
    def on_test_start(self) -> None:
        super().on_test_start()
        self._park_teacher()

    @override
    def on_predict_start(self) -> None:
        super().on_predict_start()
        self._park_teacher()
