"""Writing a teacher cache (``lkd cache-teacher``, or the first fit of a config whose cache is missing).

The builder knows neither a data module's type, nor a track, nor the module that owns the teacher. It is handed
what it needs: the data module, which offers its splits through :class:`lkd.cache.store.CacheableData`; a
**targets function** ``batch -> (sample_ids (B,), {field: tensor})``, what to store per batch (a distillation
module's ``cache_targets``); a **description** of what the file holds (``cache_description``, checked against
the file when it is read) and the **teacher's fingerprint** (:func:`lkd.cache.store.teacher_fingerprint`). The
module that owns the teacher calls it (:meth:`lkd.modules.LKDModule.write_teacher_cache`), not the other way round.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.utilities import rank_zero_info

from lkd.cache.store import (
    STORAGE_DTYPES,
    CacheableData,
    TeacherCache,
    TeacherCacheError,
    cache_path_problem,
    encode_token_ids,
    write_cache,
)

TargetsFn = Callable[[Any], tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""``batch -> (sample_ids (B,), {field: tensor})``: what a cache stores for one batch, e.g. ``{"logits": (B, C)}``."""


def check_cache_target(path: str | Path, *, dtype: str = "float16", overwrite: bool = False) -> Path:
    """The cache path, once it is known that a cache can be written there in ``dtype``: raises
    :class:`TeacherCacheError` for an unknown dtype, an existing file without ``overwrite`` or a path that cannot be
    written. Cheap: call it before the data and the teacher are loaded."""
    if dtype not in STORAGE_DTYPES:
        raise TeacherCacheError(f"cache dtype must be one of {sorted(STORAGE_DTYPES)}, got {dtype!r}")
    path = Path(path).expanduser()
    if path.is_file() and not overwrite:
        raise TeacherCacheError(f"teacher cache {path} exists. HINT: pass --overwrite=true to replace it, or another path")
    if problem := cache_path_problem(path, rewrite=True):
        raise TeacherCacheError(problem)
    return path


def check_cacheable(datamodule) -> CacheableData:
    """The data module, if it offers what a cache needs; else a :class:`TeacherCacheError` that says what is missing."""
    if datamodule is None:
        raise TeacherCacheError("a teacher cache needs a data module (trainer.fit(model, datamodule=...)), not bare dataloaders")
    if not isinstance(datamodule, CacheableData):
        missing = [m for m in ("cache_stages", "cache_identity", "cache_sample_ids", "cache_batches") if not hasattr(datamodule, m)]
        raise TeacherCacheError(
            f"{type(datamodule).__name__} cannot feed a teacher cache: it lacks {missing} (lkd.cache.store.CacheableData). "
            "HINT: use MNISTDataModule, GLUEDataModule, TextDataModule or PromptDataModule, or implement those methods."
        )
    return datamodule


def build_teacher_cache(
    targets: TargetsFn,
    description: dict,
    teacher: dict,
    datamodule: CacheableData,
    path: str | Path,
    *,
    dtype: str = "float16",
    device: torch.device | str = "cpu",
    forward_context=contextlib.nullcontext,
    overwrite: bool = False,
    shard_batches: int = 16,
) -> TeacherCache:
    """Run ``targets`` once over the set-up data module's training (and validation) split and store what it returns.

    Args:
        targets: ``batch -> (sample_ids (B,), {field: tensor})`` (:data:`TargetsFn`): ``{"logits": (B, C)}`` for the
            classification tracks, top-k log-probabilities and token ids for language models; run without gradients
            inside ``forward_context`` (the trainer's precision context, so cached targets are those a live teacher
            would give under the same precision) on batches moved to ``device``.
        description: what the file holds (``{"kind": "logits"}``, ``{"kind": "lm_topk", "k": ..., "vocab": ...}``);
            token-id fields are stored in the fewest bytes ``description["vocab"]`` allows.
        teacher: the teacher's fingerprint (:func:`lkd.cache.store.teacher_fingerprint`).
        datamodule: set up for ``"fit"`` (:class:`lkd.cache.store.CacheableData`); read in order and unaugmented.

    A long build logs its progress (batches done, seconds per batch, time left) and keeps what it has done in
    ``<path>.partial/`` (a shard every ``shard_batches`` batches): run it again after an interruption and it
    continues from there, provided teacher, data and settings are unchanged (else the partial work is discarded,
    and the log says so). The folder is removed once the cache is written.

    Returns the written cache, loaded back. Raises :class:`TeacherCacheError` for a data module that cannot
    feed a cache, an existing file without ``overwrite``, a path that cannot be written (:func:`check_cache_target`),
    or logits that overflow ``dtype``.
    """
    path = check_cache_target(path, dtype=dtype, overwrite=overwrite)
    data = check_cacheable(datamodule)
    started = time.perf_counter()
    identities = {stage: data.cache_identity(stage) for stage in data.cache_stages()}
    progress = _Progress(path, {"teacher": teacher, "targets": description, "dtype": dtype,
                                "identities": {k: asdict(v) for k, v in identities.items()}}, shard_batches)
    splits = {}
    for stage, identity in identities.items():
        ids, parts = [], {}
        loader = data.cache_batches(stage)
        total = len(loader)
        stage_started, computed = time.perf_counter(), 0
        with torch.no_grad(), forward_context():
            for index, batch in enumerate(loader):
                if (done := progress.done(stage, index)) is not None:  # written before an interruption
                    batch_ids, fields = done
                else:
                    tic = time.perf_counter()
                    batch = datamodule.on_after_batch_transfer(move_data_to_device(batch, torch.device(device)), 0)
                    batch_ids, fields = targets(batch)
                    batch_ids, fields = batch_ids.cpu(), {k: v.cpu() for k, v in fields.items()}
                    progress.add(stage, index, batch_ids, fields, time.perf_counter() - tic)
                    computed += 1
                    if computed % max(1, total // 20) == 0 or index + 1 == total:
                        rate = (time.perf_counter() - stage_started) / computed
                        rank_zero_info(f"teacher cache {stage}: {index + 1}/{total} batches ({100 * (index + 1) / total:.0f} %), "
                                       f"{rate:.2f} s/batch, about {rate * (total - index - 1) / 60:.1f} min left")
                ids.append(batch_ids)
                for name, value in fields.items():
                    parts.setdefault(name, []).append(value)
        progress.flush(stage)
        ids = torch.cat(ids).long()  # (N,)
        if not torch.equal(ids, data.cache_sample_ids(stage).long()):
            raise TeacherCacheError(f"the {stage} batches did not come in the split's order; cannot key the cache")
        split, error = {"identity": asdict(identity), "sample_ids": ids}, 0.0
        for name, values in parts.items():
            full = torch.cat(values)
            if full.is_floating_point():  # logits / log-probabilities: the storage dtype, error measured
                split[name] = _to_storage(full.float(), dtype, stage)
                error = max(error, float((split[name].float() - full.float()).abs().max()) if full.numel() else 0.0)
            else:  # token ids
                split[name] = encode_token_ids(full, int(description["vocab"]))
        splits[stage] = {**split, "max_abs_error": error}
    if "train" not in splits:
        raise TeacherCacheError("the data module has an empty training split; nothing to cache")
    build = {"teacher_seconds": progress.seconds, "batches": progress.batches, "resumed_batches": len(progress.loaded),
             "device": str(device)}
    write_cache(path, teacher=teacher, splits=splits, dtype=dtype, targets=description, build=build)
    progress.remove()
    cache = TeacherCache.load(path)
    summary = ", ".join(f"{s} {len(v['sample_ids'])} rows (max |error| {v['max_abs_error']:.2e})" for s, v in splits.items())
    rank_zero_info(
        f"teacher cache {path}: {summary}; {dtype}, {cache.bytes_per_example():.0f} bytes per example; "
        f"{time.perf_counter() - started:.1f} s"
    )
    return cache


class _Progress:
    """The partial work of an interrupted cache build: shards of batches in ``<path>.partial/`` plus a manifest
    of what they were computed for."""

    def __init__(self, path: Path, manifest: dict, shard_batches: int):
        self.folder = path.with_name(path.name + ".partial")
        self.shard_batches = max(1, shard_batches)
        self.pending: dict[str, list] = {}
        self.loaded: dict[tuple[str, int], tuple] = {}
        self.seconds, self.batches = 0.0, 0  # teacher time over every session of this build, batches done
        manifest_file = self.folder / "manifest.pt"
        if self.folder.is_dir():
            try:
                previous = torch.load(manifest_file, weights_only=True)
            except Exception:  # noqa: BLE001 - an unreadable manifest is the same as a different one
                previous = None
            if previous == manifest:
                for shard in sorted(self.folder.glob("*-batches-*.pt")):
                    try:
                        content = torch.load(shard, weights_only=True)
                    except Exception:  # noqa: BLE001 - a shard cut short by the interruption is recomputed
                        continue
                    for index, ids, fields in content["batches"]:
                        self.loaded[(content["stage"], int(index))] = (ids, fields)
                    self.seconds += float(content.get("seconds", 0.0))
                    self.batches += len(content["batches"])
                rank_zero_info(f"teacher cache: continuing an interrupted build from {self.folder} "
                               f"({len(self.loaded)} batches already done)")
            else:
                rank_zero_info(f"teacher cache: {self.folder} was written for another teacher, data or settings; starting over")
                shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        torch.save(manifest, manifest_file)

    def done(self, stage: str, index: int) -> tuple | None:
        return self.loaded.get((stage, index))

    def add(self, stage: str, index: int, ids: torch.Tensor, fields: dict, seconds: float) -> None:
        self.pending.setdefault(stage, []).append((index, ids, fields))
        self.pending_seconds = getattr(self, "pending_seconds", 0.0) + seconds
        self.seconds += seconds
        self.batches += 1
        if len(self.pending[stage]) >= self.shard_batches:
            self.flush(stage)

    def flush(self, stage: str) -> None:
        batches = self.pending.pop(stage, [])
        if batches:
            name = self.folder / f"{stage}-batches-{batches[0][0]:06d}-{batches[-1][0]:06d}.pt"
            tmp = name.with_suffix(".tmp")
            torch.save({"stage": stage, "batches": batches, "seconds": getattr(self, "pending_seconds", 0.0)}, tmp)
            os.replace(tmp, name)
            self.pending_seconds = 0.0

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _to_storage(logits: torch.Tensor, dtype: str, stage: str) -> torch.Tensor:
    stored = logits.to(STORAGE_DTYPES[dtype])
    if not torch.isfinite(stored).all():
        worst = float(logits.abs().max())
        raise TeacherCacheError(
            f"the teacher's {stage} logits do not fit {dtype} (largest |logit| {worst:.4g}). HINT: use "
            "--dtype=bfloat16 or --dtype=float32"
        )
    return stored
