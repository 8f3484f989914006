"""An export folder is lkd's own: the manifest, the checks before anything is written, staging and commit."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from lkd.checkpoint import checkpoints_under
from lkd.export.result import STUDENT_SPEC, ExportError

# ---- folders ---------------------------------------------------------------------------------------------
# An export folder is lkd's own: `lkd export` never deletes or overwrites a file it did not write. Every export
# writes MANIFEST listing its files; --overwrite accepts a non-empty folder only when it holds that manifest (or a
# legacy export, see `previous_export`), removes only the files listed there, and keeps every other file.
MANIFEST = "lkd_export.json"
MANIFEST_FORMAT = 1
CARD_MARK = "with lkd (Lightning Knowledge Distillation)"
"""Words of the model card's first paragraph: how a folder written before the manifest is recognised."""
LEGACY_FILES = ("README.md", "model.safetensors", STUDENT_SPEC, "config.json", "generation_config.json", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "added_tokens.json", "vocab.txt",
                "vocab.json", "merges.txt", "model.onnx", "model.onnx.data", "model.int8.onnx", "model.int8.onnx.data",
                "model.safetensors.index.json")
LEGACY_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
"""The file names an export wrote before the manifest existed (and a large LM's weight shards, ``LEGACY_SHARD``):
all that --overwrite removes from such a folder."""
NEW_FOLDER_HINT = "choose an empty or new folder for --to, e.g. --to exported/<name>"


def _protected(folder: Path) -> str | None:
    """What ``folder`` (resolved) is when it is a folder lkd export never writes into, else None."""
    cwd = Path.cwd().resolve()
    try:
        home = Path.home().resolve()
    except RuntimeError:  # no home folder known
        home = None
    if folder == Path(folder.anchor):
        return "the filesystem root"
    if folder == cwd:
        return "the working folder"
    if folder in cwd.parents:
        return "a parent of the working folder"
    if home is not None and folder == home:
        return "the home folder"
    if home is not None and folder in home.parents:
        return "a parent of the home folder"
    return None


def _is_relative_file_name(name) -> bool:
    return isinstance(name, str) and bool(name) and not Path(name).is_absolute() and ".." not in Path(name).parts


def read_manifest(folder: Path) -> dict:
    """The manifest of an export folder, checked: ``files`` are names inside the folder.

    Raises:
        ExportError: the manifest is unreadable, or not lkd's, or lists a path outside the folder."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        reason = f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
        raise ExportError(f"{path} cannot be read ({reason}), so lkd cannot tell which files its export wrote and deletes "
                          f"none; nothing was written. HINT: {NEW_FOLDER_HINT}") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(manifest, dict) or manifest.get("lkd_export") is None or not isinstance(files, list):
        raise ExportError(f"{path} is not an lkd export manifest (no `lkd_export` and `files`), so lkd deletes nothing "
                          f"there; nothing was written. HINT: {NEW_FOLDER_HINT}")
    if bad := [f for f in files if not _is_relative_file_name(f)]:
        raise ExportError(f"{path} lists files outside its folder ({bad[:3]}), so lkd deletes nothing there; nothing was "
                          f"written. HINT: {NEW_FOLDER_HINT}")
    return manifest


def previous_export(folder: Path) -> list[str] | None:
    """The files of an earlier lkd export in ``folder`` (relative names, those present), or None when it holds none.

    A folder with :data:`MANIFEST` is an export and its files are the listed ones. A folder written before the
    manifest existed (lkd < issue 27) counts as a *legacy* export when its ``README.md`` is lkd's model card (first
    line ``# <name>``, then the line "A student distilled / model trained with lkd (Lightning Knowledge
    Distillation)") next to ``model.safetensors`` (or a shard index) and ``lkd_student.json`` or ``config.json``;
    its files are the :data:`LEGACY_FILES` and weight shards present. Anything else is not lkd's."""
    folder = Path(folder)
    if (folder / MANIFEST).exists():
        return [f for f in read_manifest(folder)["files"] if (folder / f).is_file() or (folder / f).is_symlink()]
    card = folder / "README.md"
    try:
        head = card.read_text(errors="replace")[:2000].splitlines() if card.is_file() else []
    except OSError:
        head = []
    is_card = len(head) >= 3 and head[0].startswith("# ") and CARD_MARK in head[2]
    weights = (((folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file())
               and ((folder / STUDENT_SPEC).is_file() or (folder / "config.json").is_file()))
    if is_card and weights:
        return sorted(p.name for p in folder.iterdir() if p.is_file() and (p.name in LEGACY_FILES or LEGACY_SHARD.fullmatch(p.name)))
    return None


def check_request(to: str | Path, formats: str, quantize: str | None, overwrite: bool,
                  ckpt_path: str | Path | None = None) -> list[str]:
    """Refuse an export that cannot be done as asked, or that could lose a file that is not lkd's, before anything
    is loaded or written; return the files of the earlier lkd export that ``--overwrite`` will replace (relative
    names; empty for a new or empty folder).

    Refused: a --to that is a file, the working folder or one of its parents, the home folder, the filesystem
    root, a folder holding ``ckpt_path`` or any ``*.ckpt``, a non-empty folder that is not an lkd export (even
    with ``overwrite``), and an lkd export without ``overwrite``."""
    if formats not in ("hf", "onnx", "all"):
        raise ExportError(f"--format must be hf, onnx or all, got {formats!r}")
    if quantize not in (None, "int8"):
        raise ExportError(f"--quantize must be int8 (or left out), got {quantize!r}")
    if quantize and formats == "hf":
        raise ExportError("--quantize int8 quantizes the ONNX file, but --format hf writes none. HINT: --format all "
                          "(or onnx) --quantize int8")
    folder = Path(to).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"--to {to} is a file, not a folder: an export writes a folder of files, and lkd leaves this file "
                          f"alone; nothing was written. HINT: {NEW_FOLDER_HINT}")
    resolved = folder.resolve()
    if what := _protected(resolved):
        raise ExportError(f"--to {to} is {what} ({resolved}); lkd export writes only into a folder of its own and never "
                          f"into (or over) this one; nothing was written. HINT: {NEW_FOLDER_HINT}")
    if ckpt_path is not None:
        ckpt = Path(ckpt_path).expanduser()
        if any(resolved == p for p in (*Path(os.path.abspath(ckpt)).parents, *ckpt.resolve().parents)):
            raise ExportError(f"--to {to} holds the checkpoint being exported ({ckpt_path}); lkd export never writes into "
                              f"a folder that holds checkpoints; nothing was written. HINT: {NEW_FOLDER_HINT}")
    if not folder.exists() or not any(folder.iterdir()):
        return []
    previous = previous_export(folder)
    found, _ = checkpoints_under(folder, most=3, look_at=10**9 if previous is not None else 10_000)
    if ckpts := [str(p.relative_to(folder)) for p in found]:
        raise ExportError(f"--to {to} holds checkpoints ({', '.join(ckpts)}); lkd export never writes into a folder that "
                          f"holds checkpoints; nothing was written. HINT: {NEW_FOLDER_HINT}")
    if previous is None:
        raise ExportError(f"--to {to} is not empty and is not an lkd export (no {MANIFEST}); lkd will not delete its files"
                          f"{' even with --overwrite' if overwrite else ''} nor write among them; nothing was written. HINT: "
                          f"{NEW_FOLDER_HINT}")
    if not overwrite:
        raise ExportError(f"--to {to} holds an earlier lkd export; nothing was written. HINT: pass --overwrite to replace "
                          f"the {len(previous)} files that export wrote (other files stay), or choose another --to")
    return previous


def files_under(folder: Path) -> list[str]:
    """Every file under ``folder`` as a relative posix name, sorted."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def _umask() -> int:
    """The process's umask, read without changing it where Linux says it (``os.umask`` sets it to read it)."""
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("Umask:"))
        return int(line.split()[1], 8)
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


@contextmanager
def staging(folder: Path):
    """A fresh hidden folder beside ``folder`` to write the export into; removed afterwards, with any parents of
    ``folder`` it had to create when the export failed (so a failed export leaves nothing behind)."""
    created = [p for p in (folder.parent, *folder.parent.parents) if not p.exists()]
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{folder.name}.lkd-export-", dir=folder.parent))
    except OSError as err:
        raise ExportError(f"--to {folder} cannot be written ({type(err).__name__}: {err.strerror or err}); nothing was "
                          f"written. HINT: choose a folder you can write, e.g. --to exported/<name>") from None
    ok = False
    try:
        yield stage
        ok = True
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # lkd's own temporary folder, made above
        if not ok:
            for parent in created:  # deepest first
                try:
                    parent.rmdir()
                except OSError:
                    break


def commit(stage: Path, folder: Path, previous: list[str]) -> tuple[list[str], list[str]]:
    """Move the staged export into ``folder``: remove the earlier export's files (``previous``, and nothing else),
    move the new files in (the manifest first) readable by all (0o666 less the umask, as ``open`` makes files) and
    return ``(written, kept)``: the new files and the files of ``folder`` that are not lkd's and stay.

    Raises:
        ExportError: a file that is not the earlier export's has the name of a file this export writes (checked
            before anything in ``folder`` changes)."""
    written = files_under(stage)
    present = files_under(folder) if folder.exists() else []
    ours = set(previous) | {MANIFEST}
    clashes = [name for name in written if name not in ours and ((folder / name).exists() or (folder / name).is_symlink())]
    if clashes:
        raise ExportError(f"--to {folder} holds {', '.join(clashes[:3])}, which the earlier lkd export did not write (not in "
                          f"its {MANIFEST}) and this export would overwrite; nothing was written. HINT: move "
                          f"{clashes[0]} out of {folder}, or {NEW_FOLDER_HINT}")
    folder.mkdir(parents=True, exist_ok=True)
    for name in previous:
        path = folder / name
        if path.is_file() or path.is_symlink():
            path.unlink()
            for parent in path.parents:  # sub-folders emptied by the removal go too, never `folder` itself
                if parent == folder or any(parent.iterdir()):
                    break
                parent.rmdir()
    mode = 0o666 & ~_umask()
    for name in sorted(written, key=lambda n: n != MANIFEST):  # the manifest first: a folder is always recognisable
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / name, target)
        target.chmod(mode)
    kept = [name for name in present if name not in ours and name not in written]
    return written, kept


def write_manifest(folder: Path, files: list[str], kind: str, ckpt_path: str | Path | None) -> Path:
    """:data:`MANIFEST`: what the folder is and the files the export wrote (all --overwrite will ever remove)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        lkd_version = version("lkd")  # the installed distribution's (the package root is above this layer)
    except PackageNotFoundError:
        lkd_version = "unknown"
    path = folder / MANIFEST
    path.write_text(json.dumps({
        "lkd_export": MANIFEST_FORMAT, "lkd_version": lkd_version,
        "what": "a student exported by `lkd export`; `lkd export --overwrite` replaces only the files listed here",
        "kind": kind, "checkpoint": None if ckpt_path is None else str(ckpt_path),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": sorted(files),
    }, indent=2) + "\n")
    return path


