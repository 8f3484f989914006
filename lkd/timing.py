"""Timing and peak memory, shared by the test report (:class:`lkd.callbacks.DistillationReport`) and the
benchmark scripts: a burn-in, then a timed stage, on the same inputs for every model compared."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable

import torch


def seconds_per_call(fn: Callable[[], object], *, repeats: int = 3, burn_in: int = 1, device: torch.device | None = None) -> float:
    """Mean wall-clock seconds of ``fn()`` over ``repeats`` calls after ``burn_in`` untimed ones (CUDA synced)."""
    sync = torch.cuda.synchronize if device is not None and device.type == "cuda" else (lambda: None)
    for _ in range(burn_in):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / max(repeats, 1)


@torch.no_grad()
def tokens_per_second(model: torch.nn.Module, input_ids: torch.Tensor, *, repeats: int = 3) -> float:
    """Tokens/s of a no-grad forward of a causal LM on ``input_ids`` (B, T)."""
    return input_ids.numel() / seconds_per_call(lambda: model(input_ids=input_ids), repeats=repeats, device=input_ids.device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: the CUDA allocator's peak on a GPU, else the resident-set peak (Linux: KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
