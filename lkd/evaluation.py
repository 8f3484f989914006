"""Measurements shared by the demo, the benchmarks and the notebook."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def _one_pass(model: nn.Module, inputs: torch.Tensor, batch_size: int) -> float:
    start = time.perf_counter()
    for chunk in inputs.split(batch_size):
        model(chunk)
    if inputs.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


@torch.inference_mode()
def interleaved_inference_seconds(
    models: dict[str, nn.Module], inputs: torch.Tensor, *, batch_size: int = 1000, repeats: int = 7
) -> dict[str, float]:
    """Median seconds per pass over ``inputs`` for each model, the models taking turns in every repeat, so a
    noisy machine slows them alike and their ratios stay meaningful. One warm-up pass each; eval mode."""
    modes = {name: m.training for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    try:
        for m in models.values():
            m.eval()
            _one_pass(m, inputs, batch_size)
        for _ in range(repeats):
            for name, m in models.items():
                times[name].append(_one_pass(m, inputs, batch_size))
    finally:
        for name, m in models.items():
            m.train(modes[name])
    return {name: statistics.median(t) for name, t in times.items()}


def read_scalars(log_dir, tags: list[str] | None = None) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` from the TensorBoard event files under ``log_dir`` (all runs inside it
    merged by tag; a tag that no run logged is absent). For plots in notebooks and reports."""
    from pathlib import Path

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for folder in sorted({p.parent for p in Path(log_dir).rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            if tags is None or tag in tags:
                out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {tag: sorted(values) for tag, values in out.items()}
