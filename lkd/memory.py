"""Fitting a frozen teacher and a training student into one device: a memory estimate checked before the
first step, the teacher moved off the device between uses, and activation checkpointing for the student.

What the estimate counts (bytes, from the modules themselves, after ``teacher_dtype`` is applied):

* the teacher's weights and buffers (in the dtype it is held in);
* the student's weights, one gradient per trainable weight and ``optimizer_slots`` optimizer tensors per
  trainable weight (Adam/AdamW: 2 moments).

Activations come on top and depend on batch and sequence length, so the check is a floor: a run it refuses
cannot fit, a run it accepts may still run out of memory (then lower the batch, or use activation
checkpointing). With ``teacher_offload`` the teacher lives in CPU memory and is moved to the device only for
its forward, so the peak is ``max(teacher + student weights + optimizer state, student weights + gradients +
optimizer state)``: the teacher and the student's gradients are never on the device together.

On a CPU-only run the teacher and student are already in the memory that would be checked, so no check is
made and offloading is a no-op (there is nowhere else to put the teacher).
"""

from __future__ import annotations

import torch
from torch import nn

GIB = 2**30


class TeacherMemoryError(MemoryError):
    """A teacher and a student that cannot both fit in the device's memory."""


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers as they are held now (their dtypes)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def trainable_bytes(parameters) -> int:
    """Bytes of the trainable (``requires_grad``) parameters among ``parameters``."""
    return sum(p.numel() * p.element_size() for p in parameters if p.requires_grad)


def device_budget(device: torch.device) -> int | None:
    """Free bytes on an accelerator (``torch.cuda.mem_get_info``); None for the CPU (not checked, see the
    module docstring) or a device whose free memory torch cannot tell."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return None


def memory_needed(teacher_bytes: int, student_bytes: int, student_trainable_bytes: int, *, offload: bool,
                  optimizer_slots: int = 2) -> int:
    """Floor on the device bytes a distillation run needs (see the module docstring), activations excluded."""
    state = student_bytes + optimizer_slots * student_trainable_bytes  # weights + optimizer moments, always there
    if offload:
        return state + max(teacher_bytes, student_trainable_bytes)  # teacher for its forward, gradients later
    return state + teacher_bytes + student_trainable_bytes


def check_teacher_fits(teacher: nn.Module, student: nn.Module, device: torch.device, *, offload: bool,
                       teacher_dtype: str = "float32", optimizer_slots: int = 2) -> int | None:
    """Raise :class:`TeacherMemoryError` (with every number and the ways out) when the teacher and the
    student's training state cannot fit in ``device``'s free memory; return the bytes needed (None: not checked).
    """
    available = device_budget(device)
    if available is None:
        return None
    t_bytes, s_bytes = module_bytes(teacher), module_bytes(student)
    s_train = trainable_bytes(student.parameters())
    need = memory_needed(t_bytes, s_bytes, s_train, offload=offload, optimizer_slots=optimizer_slots)
    if need <= available:
        return need
    hints = []
    if teacher_dtype == "float32":
        hints.append(f"model.init_args.teacher_dtype: bfloat16 (teacher {t_bytes / 2 / GIB:.2f} GiB)")
    if not offload:
        hints.append("model.init_args.teacher_offload: true (teacher in CPU memory between uses; needs "
                     f"{memory_needed(t_bytes, s_bytes, s_train, offload=True, optimizer_slots=optimizer_slots) / GIB:.2f} GiB)")
    hints.append("a teacher cache (model.init_args.teacher_cache + `lkd cache-teacher`: no teacher on the device)")
    hints.append("a smaller student or a device with more memory")
    raise TeacherMemoryError(
        f"the teacher ({t_bytes / GIB:.2f} GiB in {teacher_dtype}) and the student's training state ({s_bytes / GIB:.2f} GiB "
        f"of weights, {s_train / GIB:.2f} GiB of gradients, {optimizer_slots} optimizer tensors per weight) need at least "
        f"{need / GIB:.2f} GiB on {device}{' with the teacher offloaded' if offload else ''}, before activations; "
        f"{device} has {available / GIB:.2f} GiB free. HINT: " + "; or ".join(hints)
    )


class TeacherPlacement:
    """Where a frozen teacher lives between uses.

    Without offloading the teacher stays wherever the strategy put the LightningModule. With it, hooks on the
    teacher's own forward move it: before each forward to the device of its input tensors, after it back to
    CPU memory, so no call site changes. Set :attr:`hold` while a backward through the teacher still needs
    its weights on the device (routed distillation), then :meth:`park` after the backward. The module parks
    the teacher once the strategy has moved the model (``on_fit_start``, ``on_test_start``, ...). Inputs on
    the CPU never move it: on a CPU-only run offloading is a no-op.
    """

    def __init__(self, teacher: nn.Module, offload: bool = False):
        self.teacher, self.offload = teacher, offload
        self.hold = False  # keep the teacher on the device after its forward (a backward through it follows)
        self.moves = 0  # teacher transfers so far (for logs and tests)
        self._where: torch.device | None = None  # where this placement last put the teacher
        if offload:
            teacher.register_forward_pre_hook(self._before_forward, with_kwargs=True)
            teacher.register_forward_hook(self._after_forward)

    def _current(self) -> torch.device:
        return self._where or next(self.teacher.parameters(), torch.empty(0)).device

    def _move(self, device: torch.device) -> None:
        if self._current() != device:
            self.teacher.to(device)
            self._where = device
            self.moves += 1

    def park(self) -> None:
        """Teacher to CPU memory (when offloading and it is on an accelerator)."""
        if self.offload and self._current().type != "cpu":
            self._move(torch.device("cpu"))

    def _before_forward(self, module, args, kwargs):
        device = next((t.device for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)), None)
        if device is not None and device.type != "cpu":
            self._move(device)

    def _after_forward(self, module, args, output):
        if not self.hold:
            self.park()


def enable_activation_checkpointing(model: nn.Module) -> nn.Module:
    """Recompute the student's transformer layers in the backward instead of keeping their activations.

    Uses the transformers model inside ``model`` (``gradient_checkpointing_enable``, non-reentrant, so frozen
    inputs and ``torch.no_grad`` parts work) and turns its KV cache off (useless while training, and
    incompatible). Returns the transformers model it was enabled on.

    Raises:
        ValueError: ``model`` contains no transformers ``PreTrainedModel`` that supports it.
    """
    for module in model.modules():
        if getattr(module, "supports_gradient_checkpointing", False) and hasattr(module, "gradient_checkpointing_enable"):
            if hasattr(module, "activation_checkpointing_enable"):  # transformers >= 5.x name
                module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(module.config, "use_cache"):
                module.config.use_cache = False
            return module
    raise ValueError(
        f"activation_checkpointing needs a transformers model that supports gradient checkpointing inside the "
        f"student; {type(model).__name__} has none. HINT: set activation_checkpointing: false for this student"
    )
