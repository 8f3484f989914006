"""Which Lightning precision a device can run, and the one to pick (Kaggle P100/T4 → 16-mixed, ...)."""

from __future__ import annotations

import torch


def device_summary() -> tuple[str, list[str]]:
    """(a description of the accelerator, the precisions it runs, best first)."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        major, minor = torch.cuda.get_device_capability(0)
        if torch.cuda.is_bf16_supported():  # Ampere (sm_80) and newer
            return f"CUDA {name} (sm_{major}{minor}, bf16 supported)", ["bf16-mixed", "16-mixed", "32-true"]
        return f"CUDA {name} (sm_{major}{minor}, no bf16: e.g. P100, T4)", ["16-mixed", "32-true"]
    return "CPU (no CUDA device)", ["32-true", "bf16-mixed"]


def choose_precision(requested: str = "auto") -> tuple[str, str]:
    """The precision to pass to ``Trainer(precision=...)`` and why.

    ``"auto"``: ``bf16-mixed`` on GPUs with bf16 (no loss scaling needed), ``16-mixed`` (fp16 AMP with a grad
    scaler) on GPUs without it such as Kaggle's P100 and T4, ``32-true`` on CPU (CPU autocast is bf16 only,
    and on few cores it is rarely faster). Anything else is checked against what the device runs.

    Raises:
        ValueError: the device cannot run ``requested``; the message lists what it can.
    """
    device, supported = device_summary()
    if requested == "auto":
        precision = supported[0]
        why = {
            "bf16-mixed": "bf16 autocast: same range as fp32, no loss scaling",
            "16-mixed": "fp16 autocast with a gradient scaler: this GPU has no bf16",
            "32-true": "full fp32: CPU autocast is bf16-only and seldom faster on a few cores",
        }[precision]
        return precision, f"{device}: {precision} ({why})"
    if requested not in supported:
        raise ValueError(
            f"precision {requested!r} cannot run on {device}; it runs {supported} (or 'auto' to pick {supported[0]!r})"
        )
    return requested, f"{device}: {requested} (as requested)"


TRACKS = ("mnist", "continual", "glue", "lm")


def check_tracks(tracks: list[str]) -> list[str]:
    """The tracks a notebook/parameters cell asks for, checked against the ones lkd has."""
    unknown = [t for t in tracks if t not in TRACKS]
    if unknown or not tracks:
        raise ValueError(f"unknown track(s) {unknown or tracks!r}; choose from {list(TRACKS)}")
    return list(tracks)
