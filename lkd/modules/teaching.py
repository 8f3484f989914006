"""What a distillation module does with its :class:`lkd.teacher.Teacher`, mixed into :class:`lkd.modules.LKDModule`:
load, check and hold it (:meth:`TeacherLifeCycle.prepare_teacher`), give every step its targets from the cache or a
live forward (:meth:`TeacherLifeCycle.teacher_targets`, the one way a step gets them), write its cache
(:meth:`TeacherLifeCycle.write_teacher_cache`, handing :func:`lkd.cache.build_teacher_cache` a targets function, a
description and the data, never the module) and attach it (in ``setup("fit")``).

A module with a teacher implements :meth:`~TeacherLifeCycle.cache_targets` (what a cache stores for a batch) and, when
its losses read more than a cache holds, :meth:`~TeacherLifeCycle.live_targets`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info

from lkd.cache import TeacherCache, build_teacher_cache, check_cache_target, check_cacheable
from lkd.teacher import Teacher


class TeacherLifeCycle:
    """The teacher side of :class:`lkd.modules.LKDModule` (which it is mixed into: it reads ``self.teacher``,
    ``self.trainer``, ``self.num_classes``, :meth:`~lkd.modules.LKDModule.sample_ids` and
    :meth:`~lkd.modules.LKDModule.connect_data`)."""

    def prepare_teacher(self, stage: str = "fit") -> None:
        """Load the teacher's checkpoint and hold it in its dtype; before any step, so a missing or mismatched
        teacher fails before training (a resumed run then restores the identical teacher from its own checkpoint)."""
        self.teacher.load(num_classes=self.num_classes)
        self.teacher.check_trained_for(**self.teacher_expectations())
        self.before_teacher_hold(stage)
        self.teacher.hold()

    def teacher_expectations(self) -> dict:
        """What the teacher checkpoint's saved hyperparameters must agree with (``{"task": "sst2"}``);
        :meth:`lkd.teacher.Teacher.check_trained_for` refuses a mismatch. Default: nothing."""
        return {}

    def before_teacher_hold(self, stage: str) -> None:
        """Runs with the teacher's fp32 weights loaded, before it is cast (GLUE: copy it into the student)."""

    # ---- the teacher's targets: one call for every step, from the cache or live -------------------------------
    def teacher_targets(self, batch, stage: str) -> dict[str, torch.Tensor]:
        """The teacher's targets for a batch, the one way a step gets them: from the cache for a cached stage, else
        a live forward without gradients (:meth:`live_targets`)."""
        if (cached := self.teacher.cached(stage, self.sample_ids(batch))) is not None:
            return cached
        with torch.no_grad():
            return self.live_targets(batch, stage)

    def live_targets(self, batch, stage: str) -> dict[str, torch.Tensor]:
        """The live teacher's targets for a batch; default: what a cache stores (:meth:`cache_targets`). A module
        whose losses read more than a cache holds (hidden states) says so here."""
        return self.cache_targets(batch)[1]

    def cache_targets(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(sample ids (B,), {field: tensor})``: what a teacher cache stores for a batch (the cache builder's
        targets function)."""
        raise NotImplementedError

    def cache_description(self) -> dict:
        """What a teacher cache for this module holds (checked against the file)."""
        return {"kind": "logits"}

    def write_teacher_cache(self, datamodule, path: str | Path, *, dtype: str = "float16", device: torch.device | str = "cpu",
                            forward_context=contextlib.nullcontext, overwrite: bool = False, shard_batches: int = 16) -> TeacherCache:
        """Run the teacher once over the data's training (and validation) split and store its targets at ``path``
        (``lkd cache-teacher``): the path is checked first, then the data set up and connected and the teacher loaded,
        and :func:`lkd.cache.build_teacher_cache` is handed :meth:`cache_targets`, :meth:`cache_description`, the
        teacher's fingerprint and the data (see it for ``dtype``, ``forward_context``, ``shard_batches``)."""
        check_cache_target(path, dtype=dtype, overwrite=overwrite)  # before the data and the teacher are loaded
        check_cacheable(datamodule)
        datamodule.prepare_data()
        datamodule.setup("fit")
        self.connect_data(datamodule)
        self.prepare_teacher("fit")
        return self._build_teacher_cache(datamodule, path, dtype=dtype, device=device, forward_context=forward_context,
                                         overwrite=overwrite, shard_batches=shard_batches)

    def _build_teacher_cache(self, datamodule, path, *, device, **settings) -> TeacherCache:
        """:func:`lkd.cache.build_teacher_cache` with the teacher on ``device`` (then back in CPU memory)."""
        self.teacher.to(device)
        try:
            return build_teacher_cache(self.cache_targets, self.cache_description(), self.teacher.fingerprint(), datamodule,
                                       path, device=device, **settings)
        finally:
            self.teacher.cpu()

    def _attach_teacher_cache(self, datamodule) -> None:
        """In ``setup("fit")``, data connected and teacher loaded: the teacher serves targets from ``teacher.cache``
        (:meth:`lkd.teacher.Teacher.attach_cache`). A missing file is written first (as ``lkd cache-teacher`` would,
        float16; on global rank 0 while the other ranks wait), so the first fit of a config builds the cache and later
        fits reuse it; an existing file is never rebuilt silently (a stale one is refused)."""
        path = self.teacher.cache_path
        if path is not None:
            check_cacheable(datamodule)
            if not Path(path).expanduser().exists():
                if self.trainer.is_global_zero:
                    rank_zero_info(f"teacher cache {path} does not exist yet: running the teacher once to write it")
                    self._build_teacher_cache(datamodule, path, device=self.trainer.strategy.root_device,
                                              forward_context=self.trainer.precision_plugin.forward_context)
                self.trainer.strategy.barrier("lkd_teacher_cache")
        self.teacher.attach_cache(datamodule, self.cache_description(), num_classes=self.num_classes)

    @property
    def frozen_teacher(self) -> Teacher | None:
        """The module's :class:`~lkd.teacher.Teacher` (``self.teacher``), None for a module without one."""
        teacher = self._modules.get("teacher")
        return teacher if isinstance(teacher, Teacher) else None

    def _park_teacher(self) -> None:
        if self.frozen_teacher is not None:
            self.frozen_teacher.park()
