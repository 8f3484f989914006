"""The frozen teacher: one component composed into every distillation module of every track.

In YAML every track writes the teacher the same way::

    model:
      init_args:
        teacher:
          model:                        # the teacher's architecture (any nn.Module; its weights come next)
            class_path: lkd.models.ConvNet
            init_args: {channels: [32, 64], hidden: 768}
          checkpoint: checkpoints/mnist/teacher.ckpt   # weights (weights_only, shape-checked); None: as built
          dtype: bfloat16               # held and run in this dtype; outputs reach the losses in fp32
          offload: false                # CPU memory between uses (accelerators only)
          cache: runs/teacher_cache.pt  # read targets from `lkd cache-teacher`'s file instead of running it
          cache_top_k: 32               # language models: tokens per position the cache keeps

:class:`Teacher` does everything a distillation module needs from its teacher: load the checkpoint (safe and
shape-checked, with the errors of :func:`lkd.checkpoint.load_network_weights`), freeze it and keep it in eval
mode for the whole run (``train()`` never switches it back), hold it in its dtype and hand fp32 outputs to
the losses, move it between CPU and accelerator (:class:`TeacherPlacement`), check before fitting that it and
the student fit on the device (:meth:`Teacher.check_fits`), and serve a batch's targets from a teacher cache
(:meth:`Teacher.cached`) when one is attached.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from jsonargparse.typing import final
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from typing_extensions import override

from lkd.checkpoint import (
    TeacherMismatchError,
    checkpoint_path_problem,
    load_checkpoint,
    load_network_weights,
    require_checkpoint_file,
)
from lkd.memory import GIB, TeacherMemoryError, device_budget, memory_needed, module_bytes, trainable_bytes

CHECKPOINT_OPTION, CACHE_OPTION = "model.init_args.teacher.checkpoint", "model.init_args.teacher.cache"
"""How a user writes the teacher's paths in YAML / on the command line (every distillation module has ``teacher``)."""
TeacherDType = Literal["float32", "bfloat16", "float16"]
TEACHER_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""What a frozen teacher can be held in (``teacher.dtype``)."""


def teacher_problems(dtype: str, cache_top_k: int, checkpoint: str | None = None, cache: str | None = None) -> list[str]:
    """What is wrong with a teacher's settings (empty: nothing). The one place these rules are written.

    Paths, when the config is built: a ``checkpoint`` that is a folder (its ``.ckpt`` files listed), a ``cache`` that
    is neither a readable file nor writable (:func:`lkd.cache.store.cache_path_problem`). A checkpoint that does not
    exist (yet) is refused when a run starts (:meth:`Teacher.check_files`): a config may be built before its teacher
    is trained.
    """
    problems = []
    if dtype not in TEACHER_DTYPES:
        problems.append(f"teacher.dtype must be one of {list(TEACHER_DTYPES)}, got {dtype!r}")
    if cache_top_k < 1:
        problems.append(f"teacher.cache_top_k must be >= 1, got {cache_top_k}")
    if checkpoint is not None and Path(checkpoint).expanduser().is_dir():
        problems.append(checkpoint_path_problem(checkpoint, "teacher checkpoint", option=CHECKPOINT_OPTION))
    if cache is not None:
        from lkd.cache.store import cache_path_problem

        if problem := cache_path_problem(cache, CACHE_OPTION):
            problems.append(problem)
    return problems


@final  # YAML gives its arguments directly under `teacher:` (no class_path)
class Teacher(nn.Module):
    """A frozen teacher network with its settings.

    Args:
        model: the teacher's architecture (YAML ``class_path``); its weights come from ``checkpoint``.
        checkpoint: a Lightning checkpoint of the teacher (its ``model.`` or ``student.`` weights, so a
            classifier's or a distilled student's), loaded with ``weights_only`` and shape-checked in the
            module's ``setup``; None keeps the weights the model was built with (pretrained, or tests). A folder
            is refused when the config is built (its ``.ckpt`` files listed); a relative path is read from the
            working directory.
        dtype: dtype the teacher is held and run in (``bfloat16`` halves its memory); floating inputs are cast
            to it and its floating outputs back to fp32 for the losses. Applied once, after loading.
        offload: keep the teacher in CPU memory and move it to the accelerator only for its forwards
            (:class:`TeacherPlacement`; a no-op on a CPU, refused under FSDP).
        cache: path of a teacher cache (``lkd cache-teacher``, :mod:`lkd.cache`): training and validation
            targets are read from it instead of running the teacher; written at the first fit if missing (so a
            missing one must be writable: checked when the config is built), refused if made for another teacher
            or other data.
        cache_top_k: language models: the teacher's most likely tokens per position the cache keeps.
        allow_mismatch: let a teacher checkpoint trained for another task or tokenizer than the run's through
            (logged); by default it is refused (:meth:`check_trained_for`).
    """

    def __init__(self, model: nn.Module, checkpoint: str | None = None, *, dtype: TeacherDType = "float32",
                 offload: bool = False, cache: str | None = None, cache_top_k: int = 32, allow_mismatch: bool = False):
        super().__init__()
        # jsonargparse 4.53 re-reads a dotted override under a class_path (`--model.init_args.teacher.checkpoint=null`)
        # from an f-string, so null arrives here as the string "None"
        checkpoint, cache = (None if v == "None" else v for v in (checkpoint, cache))
        if problems := teacher_problems(dtype, cache_top_k, checkpoint, cache):
            raise ValueError("Teacher: " + "; ".join(problems))
        self.model = model.eval().requires_grad_(False)
        self.checkpoint, self.dtype, self.offload = checkpoint, dtype, offload
        self.cache_path, self.cache_top_k, self.allow_mismatch = cache, cache_top_k, allow_mismatch
        self.trained_with: dict = {}  # the teacher checkpoint's saved hyperparameters (task, tokenizer, ...)
        self.placement = TeacherPlacement(self.model, offload=offload)
        self.store = None  # the attached lkd.cache.TeacherCache (module setup("fit"), when `cache` is set)
        self._loaded_from: str | None = None
        self.train(False)  # the wrapper too (nn.Module starts in train mode; Lightning restores captured modes)

    def check_classes(self, num_classes: int) -> None:
        """Refuse (at build time) a classification teacher built for another number of classes than the data's."""
        built = getattr(self.model, "num_classes", None)
        if built is not None and built != num_classes:
            raise ValueError(
                f"the teacher was built with num_classes={built} but the data has {num_classes} classes. HINT: set "
                f"model.init_args.teacher.model.init_args.num_classes: {num_classes} (the student gets it from the data)"
            )

    # ---- frozen for the whole run -------------------------------------------------------------------
    @override
    def train(self, mode: bool = True) -> Teacher:
        """Always eval: dropout and batch-norm statistics stay fixed, whatever the LightningModule is set to."""
        return super().train(False)

    # ---- weights and dtype --------------------------------------------------------------------------
    def load(self, *, num_classes: int | None = None) -> None:
        """Load ``checkpoint`` into the model (once; shape-checked, ``weights_only``). Call before :meth:`hold`."""
        if self.checkpoint is None or self._loaded_from == self.checkpoint:
            return
        ckpt = load_checkpoint(self.checkpoint, what="teacher checkpoint", option=CHECKPOINT_OPTION)
        state = ckpt["state_dict"] if isinstance(ckpt, dict) and "state_dict" in ckpt else ckpt
        load_network_weights(self.model, self.checkpoint, prefixes=("model.", "student."), what="teacher",
                             num_classes=num_classes, state=state)
        self.trained_with = dict(ckpt.get("hyper_parameters", {})) if isinstance(ckpt, dict) else {}
        self._loaded_from = self.checkpoint
        rank_zero_info(f"teacher weights from {self.checkpoint}")

    def check_files(self, stage: str = "fit") -> None:
        """Refuse, before any data is read or anything is written, a teacher checkpoint that is not there (for a
        relative path the message names the working directory it was read from) and, for ``stage="fit"``, a cache
        path that can be neither read nor written. Call it when a trainer run starts (the first thing its
        ``setup`` reaches is the data); once the weights are loaded there is nothing to check."""
        if self.checkpoint is not None and self._loaded_from != self.checkpoint:
            require_checkpoint_file(self.checkpoint, "teacher checkpoint", option=CHECKPOINT_OPTION)
        if self.cache_path is not None and stage == "fit":
            from lkd.cache.store import TeacherCacheError, cache_path_problem

            if problem := cache_path_problem(self.cache_path, CACHE_OPTION):
                raise TeacherCacheError(problem)

    def check_trained_for(self, **expected) -> None:
        """Refuse a teacher checkpoint whose saved hyperparameters say it was trained for another task, label
        set or tokenizer than this run's (``task="cola"``, ``tokenizer="bytes"``; None values and keys the
        checkpoint does not record are skipped), naming both values; ``allow_mismatch`` lets it through."""
        saved = getattr(self, "trained_with", {})
        lines = [f"  {k}: the teacher was trained with {saved[k]!r}, this run has {v!r}"
                 for k, v in expected.items() if v is not None and k in saved and saved[k] is not None and saved[k] != v]
        if not lines:
            return
        if self.allow_mismatch:
            rank_zero_info(f"teacher {self.checkpoint} was trained for other data (allow_mismatch: true):\n" + "\n".join(lines))
            return
        raise TeacherMismatchError(
            f"teacher checkpoint {self.checkpoint} was trained for other data than this run's:\n" + "\n".join(lines)
            + "\nHINT: use the teacher trained for this task (its lkd fit config), or set "
            "model.init_args.teacher.allow_mismatch: true if that is what you mean"
        )

    def hold(self) -> None:
        """Cast the model to ``dtype`` (after loading, and after any copy of its fp32 weights into the student)."""
        self.model.to(TEACHER_DTYPES[self.dtype])
        self.model.eval().requires_grad_(False)

    @property
    def weight_dtype(self) -> torch.dtype | None:
        """The dtype the teacher's weights are held in now (``dtype``, or the trainer's under ``*-true`` precision)."""
        weight = next((p for p in self.model.parameters() if p.is_floating_point()), None)
        return weight.dtype if weight is not None else None

    @override
    def forward(self, *args, **kwargs):
        """The model's forward with floating inputs in the teacher's dtype and floating outputs in fp32.

        Gradients are not switched off here: call it under ``torch.no_grad()`` unless a backward runs through
        the teacher (a router).
        """
        dtype = self.weight_dtype
        if dtype is not None:
            args = tuple(_cast_float(a, dtype) for a in args)
            kwargs = {k: _cast_float(v, dtype) for k, v in kwargs.items()}
        return _outputs_in_float32(self.model(*args, **kwargs))

    # ---- placement and memory -----------------------------------------------------------------------
    def park(self) -> None:
        """To CPU memory when offloading (a no-op otherwise); called at the start of every stage."""
        self.placement.park()

    def check_fits(self, student: nn.Module, trainer) -> None:
        """Refuse, before the first step of a fit, a teacher and a student that cannot both fit on the
        trainer's device (:class:`lkd.memory.TeacherMemoryError`, with the numbers and the ways out), and
        offloading under FSDP (which shards the teacher instead). On a CPU nothing is checked."""
        from lightning.pytorch.strategies import FSDPStrategy

        if self.offload and isinstance(trainer.strategy, FSDPStrategy):
            raise ValueError(
                "teacher.offload moves the whole teacher between CPU and GPU, but under trainer.strategy=fsdp the teacher "
                "is sharded across the GPUs (each holds 1/N of it already). HINT: drop model.init_args.teacher.offload, "
                "or use FSDP's own cpu_offload (trainer.strategy.init_args.cpu_offload: true)"
            )
        check_teacher_fits(self.model, student, trainer.strategy.root_device, offload=self.offload, teacher_dtype=self.dtype)

    # ---- the teacher cache ---------------------------------------------------------------------------
    def attach_cache(self, data, targets: dict, *, num_classes: int | None = None) -> None:
        """Serve targets from ``cache`` (none when it is not set), once the file is checked against this teacher, the
        splits of ``data`` (:class:`lkd.cache.CacheableData`) and ``targets``, what the module's targets are
        (its ``cache_description()``); a stale file is refused (:class:`lkd.cache.StaleTeacherCacheError`). The file
        must exist: the module writes a missing one first (:meth:`lkd.modules.LKDModule.write_teacher_cache`)."""
        self.store = None
        if self.cache_path is None:
            return
        from lkd.cache import TeacherCache

        cache = TeacherCache.load(self.cache_path)
        identities = {stage: data.cache_identity(stage) for stage in data.cache_stages()}
        cache.check(self.fingerprint(), identities, num_classes=num_classes, targets=targets)
        live = [s for s in identities if s not in cache.stages]
        rank_zero_info(
            f"teacher cache {cache.path}: {', '.join(cache.stages)} from the cache ({cache.dtype})"
            + (f"; {', '.join(live)} with the live teacher" if live else "")
        )
        self.store = cache

    def cached(self, stage: str, sample_ids: torch.Tensor | None) -> dict[str, torch.Tensor] | None:
        """The cached targets of a batch (``{"logits": (B, C)}`` or ``{"topk": ((B, T, k), (B, T, k))}``), or
        None when no cache serves ``stage`` (then run the teacher)."""
        if self.store is None or stage not in self.store.stages:
            return None
        if sample_ids is None:
            from lkd.cache import TeacherCacheError

            raise TeacherCacheError("a teacher cache is attached but the batch has no sample ids. HINT: use one of lkd's "
                                    "data modules (their batches carry them)")
        return self.store.batch_targets(stage, sample_ids)

    def fingerprint(self) -> dict:
        """What identifies this teacher's weights in a cache key."""
        from lkd.cache.store import teacher_fingerprint

        return teacher_fingerprint(self.model, self.checkpoint)


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
        hints.append(f"model.init_args.teacher.dtype: bfloat16 (teacher {t_bytes / 2 / GIB:.2f} GiB)")
    if not offload:
        hints.append("model.init_args.teacher.offload: true (teacher in CPU memory between uses; needs "
                     f"{memory_needed(t_bytes, s_bytes, s_train, offload=True, optimizer_slots=optimizer_slots) / GIB:.2f} GiB)")
    hints.append("a teacher cache (model.init_args.teacher.cache + `lkd cache-teacher`: no teacher on the device)")
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
    the teacher once the strategy has moved the model (at the start of every stage). Inputs on the CPU never
    move it: on a CPU-only run offloading is a no-op.
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

    def release(self) -> None:
        """End a :attr:`hold` (the backward through the teacher is done) and park."""
        self.hold = False
        self.park()

    def _before_forward(self, module, args, kwargs):
        device = next((t.device for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)), None)
        if device is not None and device.type != "cpu":
            self._move(device)

    def _after_forward(self, module, args, output):
        if not self.hold:
            self.park()


def _cast_float(value, dtype: torch.dtype):
    return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype else value


def _outputs_in_float32(output):
    """Floating tensors of a model output (a tensor, a transformers ``ModelOutput`` / dict, a tuple) in fp32."""
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() else output
    if isinstance(output, dict):  # ModelOutput is an OrderedDict: item assignment keeps its attributes in step
        for key, value in list(output.items()):
            output[key] = _outputs_in_float32(value)
        return output
    if isinstance(output, tuple) and not hasattr(output, "_fields"):
        return tuple(_outputs_in_float32(v) for v in output)
    return output
