"""Writing a teacher cache (``lkd cache-teacher``) and attaching one to a distillation module."""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info

from lkd.cache import sources
from lkd.cache.store import (
    LOGITS_TARGETS,
    STORAGE_DTYPES,
    TeacherCache,
    TeacherCacheError,
    encode_token_ids,
    teacher_fingerprint,
    write_cache,
)


def build_teacher_cache(
    module: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    path: str | Path,
    *,
    dtype: str = "float16",
    device: torch.device | str = "cpu",
    forward_context=contextlib.nullcontext,
    overwrite: bool = False,
) -> TeacherCache:
    """Run ``module``'s frozen teacher once over the training (and validation) split and store its logits.

    ``module`` is a distillation module with ``load_teacher()`` and ``teacher_batch_targets(batch) ->
    (sample_ids (B,), {field: tensor})``: ``{"logits": (B, C)}`` for :class:`lkd.modules.DistillModule` and
    :class:`lkd.modules.GLUEDistillModule`; top-k log-probabilities and token ids, described by its
    ``teacher_cache_targets()``, for :class:`lkd.modules.lm_distill.LMDistillModule`. The data are read in
    order and unaugmented.
    ``forward_context`` wraps each teacher forward (the trainer's precision context, so cached logits are
    those a live teacher would give under the same precision).

    Returns the written cache, loaded back. Raises :class:`TeacherCacheError` for an unsupported data
    module, an existing file without ``overwrite``, or logits that overflow ``dtype``.
    """
    if dtype not in STORAGE_DTYPES:
        raise TeacherCacheError(f"cache dtype must be one of {sorted(STORAGE_DTYPES)}, got {dtype!r}")
    path = Path(path).expanduser()
    if path.exists() and not overwrite:
        raise TeacherCacheError(f"teacher cache {path} exists. HINT: pass --overwrite=true to replace it, or another path")
    sources.check_supported(datamodule)
    started = time.perf_counter()
    if hasattr(datamodule, "connect") and hasattr(module, "tokenizer_name"):
        datamodule.connect(module.tokenizer_name, getattr(module, "max_length", None))  # GLUE: the model's tokenizer
    if getattr(datamodule, "tokenizer_arg", "") is None:  # text: the model's tokenizer (no trainer to ask here)
        datamodule.tokenizer_arg = module.tokenizer
    targets = module.teacher_cache_targets() if hasattr(module, "teacher_cache_targets") else dict(LOGITS_TARGETS)
    datamodule.prepare_data()
    datamodule.setup("fit")
    module.load_teacher()
    teacher = module.teacher.to(device)
    splits = {}
    for stage in sources.CACHED_STAGES:
        if not sources.has_split(datamodule, stage):
            continue
        identity = sources.split_identity(datamodule, stage)
        expected_ids = sources.sample_ids(datamodule, stage)
        ids, parts = [], {}
        with torch.no_grad(), forward_context():
            for batch in sources.ordered_batches(datamodule, stage, torch.device(device)):
                batch_ids, fields = module.teacher_batch_targets(batch)
                ids.append(batch_ids.cpu())
                for name, value in fields.items():
                    parts.setdefault(name, []).append(value.cpu())
        ids = torch.cat(ids).long()  # (N,)
        if not torch.equal(ids, expected_ids):
            raise TeacherCacheError(f"the {stage} loader did not yield the split's rows in order; cannot key the cache")
        split, error = {"identity": asdict(identity), "sample_ids": ids}, 0.0
        for name, values in parts.items():
            full = torch.cat(values)
            if full.is_floating_point():  # logits / log-probabilities: the storage dtype, error measured
                split[name] = _to_storage(full.float(), dtype, stage)
                error = max(error, float((split[name].float() - full.float()).abs().max()) if full.numel() else 0.0)
            else:  # token ids
                split[name] = encode_token_ids(full, int(targets["vocab"]))
        splits[stage] = {**split, "max_abs_error": error}
    if "train" not in splits:
        raise TeacherCacheError("the data module has an empty training split; nothing to cache")
    fingerprint = teacher_fingerprint(module.teacher.cpu(), getattr(module, "teacher_ckpt", None))
    write_cache(path, teacher=fingerprint, splits=splits, dtype=dtype, targets=targets)
    cache = TeacherCache.load(path)
    summary = ", ".join(f"{s} {len(v['sample_ids'])} rows (max |error| {v['max_abs_error']:.2e})" for s, v in splits.items())
    rank_zero_info(
        f"teacher cache {path}: {summary}; {dtype}, {cache.bytes_per_example():.0f} bytes per example; "
        f"{time.perf_counter() - started:.1f} s"
    )
    return cache


def _to_storage(logits: torch.Tensor, dtype: str, stage: str) -> torch.Tensor:
    stored = logits.to(STORAGE_DTYPES[dtype])
    if not torch.isfinite(stored).all():
        worst = float(logits.abs().max())
        raise TeacherCacheError(
            f"the teacher's {stage} logits do not fit {dtype} (largest |logit| {worst:.4g}). HINT: use "
            "--dtype=bfloat16 or --dtype=float32"
        )
    return stored


def attach_teacher_cache(module: pl.LightningModule, path: str | Path, *, num_classes: int | None = None) -> TeacherCache:
    """Load the cache at ``path`` and check it against ``module``'s teacher and its trainer's data module
    (called from the module's ``setup("fit")``, after the data module's setup and the teacher's loading).

    A missing file is written first (as ``lkd cache-teacher`` would, float16; on global rank 0 while the
    other ranks wait), so the first fit of a config builds the cache and later fits reuse it. An existing
    file is never rebuilt silently: a stale one is refused.

    Also switches the data module to batches that carry sample ids. Raises
    :class:`~lkd.cache.store.StaleTeacherCacheError` / :class:`TeacherCacheError` before any step.
    """
    datamodule = module.trainer.datamodule if module._trainer is not None else None
    sources.check_supported(datamodule)
    trainer = module.trainer
    if not Path(path).expanduser().exists():
        if trainer.is_global_zero:
            rank_zero_info(f"teacher cache {path} does not exist yet: running the teacher once to write it")
            build_teacher_cache(module, datamodule, path, device=trainer.strategy.root_device,
                                forward_context=trainer.precision_plugin.forward_context)
        trainer.strategy.barrier("lkd_teacher_cache")
    cache = TeacherCache.load(path)
    identities = {s: sources.split_identity(datamodule, s) for s in sources.CACHED_STAGES if sources.has_split(datamodule, s)}
    targets = module.teacher_cache_targets() if hasattr(module, "teacher_cache_targets") else None
    cache.check(teacher_fingerprint(module.teacher, getattr(module, "teacher_ckpt", None)), identities,
                num_classes=num_classes, targets=targets)
    if hasattr(datamodule, "emit_sample_ids"):
        datamodule.emit_sample_ids = True
    live = [s for s in identities if s not in cache.stages]
    rank_zero_info(
        f"teacher cache {cache.path}: {', '.join(cache.stages)} from the cache ({cache.dtype})"
        + (f"; {', '.join(live)} with the live teacher" if live else "")
    )
    return cache
