"""Sizes and memory: parameter counts and bytes of modules, the estimate of what a distillation run needs on
its device (checked before the first step by :meth:`lkd.teacher.Teacher.check_fits`), and activation
checkpointing for the student. Where the teacher lives between uses is :class:`lkd.teacher.TeacherPlacement`.

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


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


def count_inference_numbers(module: nn.Module) -> int:
    """Numbers a deployed copy of ``module`` must hold: its parameters, plus the keys and the fixed random
    projection of every :class:`~lkd.models.DiscreteKeyValueBottleneck` in it (buffers, not parameters, yet
    read at every lookup). A DKVB's EMA statistics (cluster sizes, running sums) are training state, not
    counted. The honest size of a DKVB student next to a network that is all parameters."""
    from lkd.models.dkvb import DiscreteKeyValueBottleneck

    return count_parameters(module) + sum(m.lookup_numel() for m in module.modules() if isinstance(m, DiscreteKeyValueBottleneck))


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
