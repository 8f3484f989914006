"""Loading network weights out of Lightning checkpoints, safely and with errors that say what differs."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn


class CheckpointMismatchError(ValueError):
    """A checkpoint holds a network of another architecture than the one it is loaded into."""


class CheckpointReadError(ValueError):
    """A file that is not a readable checkpoint: truncated, corrupt, not a torch file, or holding pickled objects."""


def load_checkpoint(path: str | Path, *, what: str = "checkpoint") -> dict:
    """``torch.load(path, weights_only=True)`` on CPU, with errors that name the file and never advise unsafe loading.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointReadError: the file is truncated or corrupt, not a torch checkpoint, or holds pickled Python
            objects besides tensors (which lkd does not unpickle).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}. HINT: check the path, or train it first")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every unreadable file gets the same explanation
        with path.open("rb") as f:
            head = f.read(4)
        text = str(err)
        if head[:2] not in (b"PK", b"\x80"):  # neither a torch zip archive nor a (legacy) pickle
            why, detail = "it is not a torch checkpoint", f"the file starts with {head!r}"
        elif "Unsupported global" in text or "Weights only load failed" in text:
            found = re.search(r"GLOBAL ([\w.]+)", text)
            why = ("it holds pickled Python objects besides tensors, which lkd does not load (unpickling can run code, "
                   "so lkd reads checkpoints with weights_only=True only)")
            detail = f"found {found.group(1)}" if found else type(err).__name__
        else:
            why, detail = "it is truncated or corrupt (an interrupted copy or download?)", f"{type(err).__name__}: {text.splitlines()[0][:120]}"
        raise CheckpointReadError(
            f"{what} {path} cannot be read: {why} ({detail}).\nHINT: point it at a .ckpt written by `lkd fit` "
            "(checkpoints/..., or runs/<name>/version_N/checkpoints/), or copy the file again"
        ) from None


def read_checkpoint_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning checkpoint (or a plain state-dict file), loaded with ``weights_only``."""
    path = Path(path).expanduser()
    if not path.is_file():
        hint = ""
        if path.parent.is_dir():
            found = sorted(p.name for p in path.parent.glob("*.ckpt"))
            hint = f" Checkpoints in {path.parent}: {found or 'none'}."
        raise FileNotFoundError(
            f"checkpoint not found: {path}.{hint} HINT: train it first (e.g. `lkd fit --config "
            "configs/mnist/teacher.yaml`) or point the config at an existing .ckpt file."
        )
    ckpt = load_checkpoint(path, what="checkpoint")
    return ckpt["state_dict"] if isinstance(ckpt, dict) and "state_dict" in ckpt else ckpt


def load_network_weights(
    network: nn.Module,
    path: str | Path,
    *,
    prefixes: Sequence[str] = ("model.", "student."),
    what: str = "network",
    num_classes: int | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Copy weights from a checkpoint into ``network``, key by key with a shape check.

    The checkpoint's keys are taken under the first of ``prefixes`` that matches (``model.`` for a
    ClassifierModule, ``student.`` for a DistillModule), or unprefixed for a plain state dict.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointMismatchError: missing, unexpected or differently shaped tensors (all listed).
    """
    state = read_checkpoint_state(path) if state is None else state
    own = network.state_dict()
    prefix = next((p for p in prefixes if any(k.startswith(p) for k in state)), "")
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = {k: (tuple(weights[k].shape), tuple(own[k].shape)) for k in set(own) & set(weights) if weights[k].shape != own[k].shape}
    if missing or unexpected or shapes:
        lines = [f"{what} checkpoint {path} does not fit the {what} built from the config ({type(network).__name__}):"]
        if missing:
            lines.append(f"  missing in checkpoint: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            lines.append(f"  not in the {what}: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        for k, (theirs, mine) in sorted(shapes.items()):
            lines.append(f"  {k}: checkpoint {theirs} vs {what} {mine}")
        if num_classes is not None and any(m and t and m[0] == num_classes and t[0] != num_classes for t, m in shapes.values()):
            counts = sorted({t[0] for t, m in shapes.values() if m and m[0] == num_classes})
            lines.append(f"  class-count mismatch: the checkpoint predicts {counts} classes, this run has {num_classes}.")
        lines.append(
            f"HINT: the {what} in the YAML must be the architecture the checkpoint was trained with "
            "(see config.yaml in the checkpoint's run folder), and the data must have the same classes."
        )
        raise CheckpointMismatchError("\n".join(lines))
    network.load_state_dict(weights)


class TeacherMismatchError(ValueError):
    """A teacher checkpoint trained for another task, label set or tokenizer than the run's data."""
