"""Loading network weights out of Lightning checkpoints, safely and with errors that say what differs."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn


class CheckpointMismatchError(ValueError):
    """A checkpoint holds a network of another architecture than the one it is loaded into."""


class CheckpointReadError(ValueError):
    """A file that is not a readable checkpoint: truncated, corrupt, not a torch file, or holding pickled objects."""


def checkpoints_under(folder: str | Path, *, most: int = 4, look_at: int = 20_000) -> tuple[list[Path], int]:
    """``*.ckpt`` files under ``folder`` (recursively): up to ``most`` of them, newest first, as ``folder / <relative
    name>``, and how many were found; at most ``look_at`` entries are looked at (a checkpoint folder, not a disk)."""
    folder, found, seen = Path(folder), [], 0
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [Path(root) / name for name in sorted(files) if name.endswith(".ckpt")]
        seen += len(files) + len(dirs)
        if seen > look_at:
            break

    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:
            return 0.0

    return sorted(found, key=mtime, reverse=True)[:most], len(found)


def checkpoint_path_problem(path: str | Path, what: str, *, option: str | None = None) -> str | None:
    """Why ``path`` cannot be a checkpoint file, in one line ending in a HINT, or None when it is a file.

    A folder: says so and lists the ``.ckpt`` files under it (newest first). A missing file: a relative path names
    the working directory it was read from and the absolute path tried, and a parent folder of the working
    directory that holds that relative path (the usual slip: running from a subfolder). ``what`` starts the
    message (``"teacher checkpoint"``); ``option`` is the YAML/CLI key that names the path, shown with its value
    and in the HINT (``"model.init_args.teacher.checkpoint"``; default: ``--ckpt_path`` out of ``"--ckpt_path
    checkpoint"``).
    """
    given = Path(path).expanduser()
    option = option or (what.split()[0] if what.startswith("--") else None)
    if given.is_file():
        return None
    if given.is_dir():
        shown = f"{option}={path}" if option else f"{what} {path}"
        where = "" if given.is_absolute() else f" (a relative path, read from the working directory {Path.cwd()})"
        candidates, total = checkpoints_under(given)
        if not candidates:
            return (f"{shown} is a folder{where}, not a checkpoint file, and holds no .ckpt file. HINT: set {option or 'it'} "
                    "to a .ckpt file written by `lkd fit` (checkpoints/..., or runs/<name>/version_N/checkpoints/)")
        listed = ", ".join(str(c) for c in candidates) + (f" ({total} in all)" if total > len(candidates) else "")
        return (f"{shown} is a folder{where}, not a checkpoint file; the .ckpt files under it, newest first: {listed}. "
                f"HINT: set {option or 'it'} to one of them{f', e.g. {option}={candidates[0]}' if option else ''}")
    said, holder = [f"{what} not found: {path}."], None
    if not given.is_absolute():
        said.append(f"A relative path is read from the working directory {Path.cwd()}: lkd looked for {Path.cwd() / given}.")
        holder = next((d for d in Path.cwd().parents if (d / given).is_file()), None)
        if holder is not None:
            said.append(f"{given} exists under {holder}: run from there, or give the absolute path {holder / given}.")
    if holder is None and given.parent.is_dir():
        candidates, total = checkpoints_under(given.parent, look_at=2_000)
        if candidates:
            said.append(f".ckpt files near it: {', '.join(str(c) for c in candidates)}"
                        f"{f' ({total} in all)' if total > len(candidates) else ''}.")
    said.append(f"HINT: check {option or 'the path'} (an absolute path works from any folder), or train it first "
                "(e.g. `lkd fit --config configs/mnist/teacher.yaml`)")
    return " ".join(said)


def require_checkpoint_file(path: str | Path, what: str = "checkpoint", *, option: str | None = None) -> Path:
    """``path`` (user folder expanded) when it is a file; else :class:`FileNotFoundError` (missing) or
    :class:`IsADirectoryError` (a folder) with :func:`checkpoint_path_problem`'s message."""
    if problem := checkpoint_path_problem(path, what, option=option):
        raise (IsADirectoryError if Path(path).expanduser().is_dir() else FileNotFoundError)(problem)
    return Path(path).expanduser()


def load_checkpoint(path: str | Path, *, what: str = "checkpoint", option: str | None = None) -> dict:
    """``torch.load(path, weights_only=True)`` on CPU, with errors that name the file and never advise unsafe loading.

    ``what`` starts the messages; ``option`` is the setting the HINT names (see :func:`checkpoint_path_problem`).

    Raises:
        FileNotFoundError: no file at ``path`` (a relative path: the working directory it was read from is named).
        IsADirectoryError: ``path`` is a folder (its ``.ckpt`` files are listed).
        CheckpointReadError: the file is truncated or corrupt, not a torch checkpoint, or holds pickled Python
            objects besides tensors (which lkd does not unpickle).
    """
    path = require_checkpoint_file(path, what, option=option)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every unreadable file gets the same explanation
        try:
            with path.open("rb") as f:
                head = f.read(4)
        except OSError as read_err:  # no read permission: say so, not torch's wording of it
            raise CheckpointReadError(f"{what} {path} cannot be read: {read_err.strerror}. HINT: make it readable "
                                      "(chmod), or use a copy you can read") from None
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
