"""Students out of lkd, as folders that other tools run (issue 17): Hugging Face folders, ONNX, int8, a card.

    lkd export --config configs/lm/student_kd.yaml --ckpt_path checkpoints/lm/student_kd.ckpt --to exported/lm_kd
    lkd export --config configs/mnist/student_kd.yaml --ckpt_path checkpoints/mnist/student_kd.ckpt --to out \\
        --format all --quantize int8

What a folder holds, by student:

* **causal LMs** (the LM track's students): ``save_pretrained`` of the transformers model (``model.safetensors``,
  ``config.json``, ``generation_config.json``) and its tokenizer, so ``AutoModelForCausalLM.from_pretrained(DIR)``
  and ``pipeline("text-generation", model=DIR)`` load it offline. lkd's byte tokenizer is written as an
  equivalent byte-level ``tokenizer.json`` (:func:`lkd.tokenizers.byte_tokenizer_fast`).
* **text classifiers** without a DKVB on a BERT-like encoder (the GLUE students): an
  ``AutoModelForSequenceClassification`` folder with ``id2label`` / ``label2id`` (or the regression head), weight
  for weight (:func:`hf_sequence_classifier`), so ``pipeline("text-classification", model=DIR)`` runs it.
* **every other student** (the MNIST MLP / ConvNet / DKVB students, text classifiers with a DKVB):
  ``model.safetensors`` and ``lkd_student.json`` (its ``class_path`` and ``init_args``), which
  :func:`load_student` builds back without the Lightning checkpoint and without pickles.
* ``model.onnx`` (``--format onnx``; dynamic batch and sequence axes, torch's dynamo exporter) and
  ``model.int8.onnx`` (``--quantize int8``: onnxruntime's dynamic quantization of the weights), each checked in
  onnxruntime against the student's own outputs when written (the largest difference goes into the card).
* ``README.md``: the model card (what was distilled from what, data, method, losses, metrics, sizes, commands).
* ``lkd_export.json``: the manifest (lkd's version, what the folder is, the files the export wrote); every file
  written, ONNX external data (``model.onnx.data``) included, is listed there, in the card and in
  ``ExportResult.files``. Files are readable by all (``0o666`` less the umask, like any file ``open`` makes).

The folder is lkd's own, and an export never loses a file it did not write (issue 27). ``--to`` must be a new or
empty folder; with ``--overwrite`` it may also hold an earlier lkd export, of which only the files its manifest
lists are removed (every other file stays, and is named in the log). Refused before anything is loaded or written:
a file, the working folder or any of its parents, the home folder, the filesystem root, a folder holding the
checkpoint being exported or any ``*.ckpt``, and a non-empty folder that is not an lkd export (even with
``--overwrite``). A folder exported before the manifest existed is recognised by its model card (``README.md``
starting ``# <name>`` then "... with lkd (Lightning Knowledge Distillation)") next to ``model.safetensors`` and
``lkd_student.json`` or ``config.json``; ``--overwrite`` removes from it only the names in :data:`LEGACY_FILES`
(and weight shards). The export is written into a temporary folder beside ``--to`` and moved in when complete,
so a failed export (an ONNX exporter error, say) leaves the folder as it was.

Only the student leaves: for a distillation module its ``student``, for a module that trains one model alone
(``ClassifierModule``, ``GLUEClassifierModule``, ``CausalLMModule``) that model, said so in the card.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import torch
from torch import nn

Format = Literal["hf", "onnx", "all"]
STUDENT_SPEC = "lkd_student.json"
ONNX_TOLERANCE = 1e-3
"""Largest |onnxruntime fp32 − torch| logit difference accepted when an ONNX file is written."""


class ExportError(ValueError):
    """The student cannot be exported as asked (the message says why and what would work)."""


@dataclass
class ExportResult:
    """What :func:`export_student` wrote: ``files`` by role (every file, ONNX external data and the manifest
    included), the round-trip differences it measured and the files of the folder that are not lkd's (``kept``)."""

    folder: Path
    kind: str
    files: dict[str, Path] = field(default_factory=dict)
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    kept: list[Path] = field(default_factory=list)


# ---- which network leaves --------------------------------------------------------------------------------
def student_network(module: nn.Module) -> tuple[nn.Module, str, str]:
    """``(network, kind, role)``: the network to export, ``"causal_lm"`` or ``"lkd"``, and ``"student"`` (of a
    distillation module) or ``"model"`` (a module that trains one network alone)."""
    student = getattr(module, "student", None)
    role = "student"
    if student is None:
        student, role = getattr(module, "model", None), "model"
    if not isinstance(student, nn.Module):
        raise ExportError(
            f"{type(module).__name__} holds no student to export (no `student` or `model` network). HINT: export a "
            "distillation config (DistillModule, GLUEDistillModule, LMDistillModule) or one that trains a single model"
        )
    from lkd.models.causal_lm import CausalLM

    network = student.model if isinstance(student, CausalLM) else student
    kind = "causal_lm" if hasattr(getattr(network, "config", None), "vocab_size") and hasattr(network, "generate") else "lkd"
    return network, kind, role


def check_student_state(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], role: str, ckpt_path: str | Path,
                        architecture: str = "") -> None:
    """Refuse a checkpoint whose ``role`` (``student`` / ``model``) weights are not the config's: every missing,
    unexpected and differently shaped tensor listed (checkpoint vs config shape), as
    :func:`lkd.checkpoint.load_network_weights` does.

    Args:
        own: the config-built module's ``state_dict()``; state: the checkpoint's.

    Raises:
        ExportError: ending in a HINT to export with the config that trained the checkpoint."""
    prefix = f"{role}."
    own = {k: v for k, v in own.items() if k.startswith(prefix)}
    given = {k: v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = sorted(set(own) - set(given)), sorted(set(given) - set(own))
    shapes = {k: (tuple(given[k].shape), tuple(own[k].shape)) for k in sorted(set(own) & set(given))
              if given[k].shape != own[k].shape}
    if not (missing or unexpected or shapes):
        return
    lines = [f"--ckpt_path {ckpt_path} does not fit this config's {role}{f' ({architecture})' if architecture else ''}:"]
    if missing:
        lines.append(f"  missing in the checkpoint: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        lines.append(f"  not in the config's {role}: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    lines += [f"  {k}: checkpoint {theirs} vs config {mine}" for k, (theirs, mine) in list(shapes.items())[:8]]
    if len(shapes) > 8:
        lines.append(f"  ... and {len(shapes) - 8} more tensors of other shapes")
    lines.append(f"HINT: export --ckpt_path {ckpt_path} with the config that trained it (its run folder's "
                 f"runs/<name>/version_N/config.yaml), or set the config's {role} to the checkpoint's architecture")
    raise ExportError("\n".join(lines))


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


def _checkpoints_under(folder: Path, *, limit: int | None = None) -> list[str]:
    """Up to three ``*.ckpt`` files under ``folder`` (relative names); ``limit`` bounds the entries looked at."""
    found, seen = [], 0
    for root, dirs, files in os.walk(folder):
        for name in files:
            if name.endswith(".ckpt"):
                found.append(str((Path(root) / name).relative_to(folder)))
                if len(found) == 3:
                    return found
        seen += len(files) + len(dirs)
        if limit is not None and seen > limit:
            break
    return found


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
    if ckpts := _checkpoints_under(folder, limit=None if previous is not None else 10_000):
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


def _files_under(folder: Path) -> list[str]:
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
    written = _files_under(stage)
    present = _files_under(folder) if folder.exists() else []
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
    from lkd import __version__

    path = folder / MANIFEST
    path.write_text(json.dumps({
        "lkd_export": MANIFEST_FORMAT, "lkd_version": __version__,
        "what": "a student exported by `lkd export`; `lkd export --overwrite` replaces only the files listed here",
        "kind": kind, "checkpoint": None if ckpt_path is None else str(ckpt_path),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": sorted(files),
    }, indent=2) + "\n")
    return path


def save_causal_lm(model: nn.Module, tokenizer, folder: Path) -> dict[str, Path]:
    """``save_pretrained`` of a transformers causal LM and its tokenizer (safetensors, no pickles)."""
    from transformers import GenerationConfig

    from lkd.hub import ByteTokenizer, as_tokenizer
    from lkd.tokenizers import byte_tokenizer_fast

    tok = as_tokenizer(tokenizer)
    if isinstance(tok, ByteTokenizer):
        tok = byte_tokenizer_fast()
    config = model.config
    for name in ("eos_token_id", "pad_token_id"):
        value = getattr(tok, name, None)
        if value is not None:
            setattr(config, name, value)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id or tok.eos_token_id,
                                               bos_token_id=getattr(config, "bos_token_id", None), max_new_tokens=64)
    model.save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
    return {"weights": folder / "model.safetensors", "config": folder / "config.json", "tokenizer": folder / "tokenizer.json"}


def hf_sequence_classifier(network: nn.Module, label_names: list[str] | None = None):
    """A :class:`lkd.models.TransformerClassifier` without a DKVB as the equivalent transformers
    ``AutoModelForSequenceClassification``, or None when its encoder has no such head to map onto.

    lkd's head is BERT's: ``classifier(dropout(tanh(pre_classifier(h_CLS))))`` is the pooler (dense + tanh) then
    dropout then ``classifier``, so a BERT-like encoder maps weight for weight; ``num_classes = 1`` is the
    regression head (``problem_type="regression"``)."""
    from transformers import AutoModelForSequenceClassification

    if getattr(network, "dkvb", None) is not None or not hasattr(network, "pre_classifier"):
        return None
    config = network.config.__class__.from_dict(network.config.to_dict())
    n = int(network.num_classes)
    names = label_names if label_names and len(label_names) == n else [f"LABEL_{i}" for i in range(n)]
    config.num_labels = n
    config.id2label, config.label2id = dict(enumerate(names)), {name: i for i, name in enumerate(names)}
    config.problem_type = "regression" if n == 1 else "single_label_classification"
    try:
        hf = AutoModelForSequenceClassification.from_config(config)
    except ValueError:
        return None
    pooler = getattr(hf.base_model, "pooler", None)
    if pooler is None or not hasattr(pooler, "dense") or not hasattr(hf, "classifier"):
        return None
    missing, unexpected = hf.base_model.load_state_dict(network.encoder.state_dict(), strict=False)
    if unexpected or any(not k.startswith("pooler.") for k in missing):
        return None
    pooler.dense.load_state_dict(network.pre_classifier.state_dict())
    hf.classifier.load_state_dict(network.classifier.state_dict())
    return hf.eval()


def save_sequence_classifier(hf, tokenizer_name: str, folder: Path) -> dict[str, Path]:
    from lkd.hub import load_tokenizer

    hf.save_pretrained(str(folder), safe_serialization=True)
    load_tokenizer(tokenizer_name).save_pretrained(str(folder))
    return {"weights": folder / "model.safetensors", "config": folder / "config.json", "tokenizer": folder / "tokenizer.json"}


def save_lkd_student(network: nn.Module, spec: dict, folder: Path) -> dict[str, Path]:
    """``model.safetensors`` + ``lkd_student.json`` (``{"class_path", "init_args"}``)."""
    from safetensors.torch import save_file

    if not spec or "class_path" not in spec:
        raise ExportError(f"{type(network).__name__} is saved as safetensors + {STUDENT_SPEC}, which needs the class_path and "
                          "init_args it was built with (the config's student). HINT: export through `lkd export --config ...`")
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    save_file(_untied(state), str(folder / "model.safetensors"), metadata={"format": "pt"})
    spec = _without_checkpoints({"class_path": spec["class_path"], "init_args": spec.get("init_args", {})})
    (folder / STUDENT_SPEC).write_text(json.dumps(spec, indent=2, default=str))
    return {"weights": folder / "model.safetensors", "config": folder / STUDENT_SPEC}


def _untied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory: copy the later names of a shared tensor."""
    seen, out = set(), {}
    for key, value in state.items():
        ptr = (value.data_ptr(), value.shape)
        out[key] = value.clone() if ptr in seen else value
        seen.add(ptr)
    return out


def _without_checkpoints(spec):
    """The spec with every nested ``checkpoint`` path dropped: a student built inside a folder gets all its weights
    (a TrainedEncoder's too) from ``model.safetensors``, and the training machine's paths mean nothing elsewhere."""
    if isinstance(spec, dict):
        return {k: _without_checkpoints(v) for k, v in spec.items() if k != "checkpoint"}
    if isinstance(spec, list):
        return [_without_checkpoints(v) for v in spec]
    return spec


def _build(spec):
    """Instantiate ``{"class_path", "init_args"}``, nested ones first (e.g. a DKVB's ``encoder``)."""
    if isinstance(spec, list):
        return [_build(v) for v in spec]
    if not isinstance(spec, dict):
        return spec
    if "class_path" not in spec:
        return {k: _build(v) for k, v in spec.items()}
    module_name, _, class_name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**{k: _build(v) for k, v in spec.get("init_args", {}).items()})


def check_safetensors(path: Path) -> None:
    """Refuse a ``.safetensors`` file that is missing, truncated or corrupt (its header and its length disagree),
    naming it, before a library reads it.

    Raises:
        ExportError: naming ``path``, what is wrong and to export (or copy) it again."""
    import struct

    hint = "HINT: export the student again (`lkd export ... --to FOLDER --overwrite`) or copy the folder again"
    if not path.is_file():
        raise ExportError(f"{path} is missing: the folder holds no weights. {hint}")
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > size - 8:
                raise ValueError(f"its header says {length:,} header bytes, the file has {size:,} bytes")
            header = json.loads(f.read(length))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        if size != 8 + length + end:
            raise ValueError(f"its header says {8 + length + end:,} bytes, the file has {size:,}")
    except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error) as err:
        why = str(err) if isinstance(err, ValueError) and "header says" in str(err) else f"{type(err).__name__}: {str(err)[:120]}"
        raise ExportError(f"{path} cannot be read: it is truncated or corrupt ({why}). {hint}") from None


def load_student(folder: str | Path) -> nn.Module:
    """A student folder back as a network in eval mode: a causal LM folder through transformers, an lkd folder
    (``lkd_student.json``) by importing its class and loading ``model.safetensors`` (no pickles, no remote code).

    Raises:
        ExportError: the folder is no exported student, or a file in it is missing, truncated or corrupt (named)."""
    from safetensors.torch import load_file

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ExportError(f"{folder} is not a folder. HINT: pass the folder `lkd export --to` wrote")
    spec_path = folder / STUDENT_SPEC
    again = "HINT: export the student again (`lkd export ... --to FOLDER --overwrite`) or copy the folder again"
    if not spec_path.is_file():
        if (folder / "config.json").is_file():
            from transformers import AutoModelForCausalLM

            for weights in sorted(folder.glob("*.safetensors")) or [folder / "model.safetensors"]:
                check_safetensors(weights)
            try:
                return AutoModelForCausalLM.from_pretrained(str(folder)).eval()
            except Exception as err:  # noqa: BLE001 - any transformers failure becomes one message naming the folder
                reason = (str(err).strip().splitlines() or [""])[0][:200]
                raise ExportError(f"{folder} cannot be loaded by transformers ({type(err).__name__}: {reason}). {again}") from None
        raise ExportError(f"{folder} is not an exported student: neither {STUDENT_SPEC} nor config.json is there. HINT: pass "
                          "the folder `lkd export --to` wrote")
    try:
        spec = json.loads(spec_path.read_text())
        if not isinstance(spec, dict) or "class_path" not in spec:
            raise ValueError("no class_path")
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ExportError(f"{spec_path} cannot be read: it is truncated or corrupt ({type(err).__name__}: "
                          f"{str(err)[:120]}). {again}") from None
    try:
        network = _build(spec)
    except (ImportError, AttributeError, TypeError, ValueError) as err:
        raise ExportError(f"{spec_path} names {spec['class_path']}, which cannot be built here ({type(err).__name__}: "
                          f"{str(err)[:200]}). HINT: install the lkd version that exported it, or export the student again") from None
    weights = folder / "model.safetensors"
    check_safetensors(weights)
    try:
        state = load_file(str(weights))
    except Exception as err:  # noqa: BLE001 - safetensors' own errors name no file
        raise ExportError(f"{weights} cannot be read: it is truncated or corrupt ({type(err).__name__}: {str(err)[:120]}). "
                          f"{again}") from None
    missing, unexpected = network.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ExportError(f"{weights} does not fit {spec['class_path']}: missing {missing[:5]}, unexpected {unexpected[:5]}. "
                          f"{again}")
    return network.eval()


# ---- ONNX ------------------------------------------------------------------------------------------------
class LogitsOnly(nn.Module):
    """The network's logits from one plain tensor (what ONNX and onnxruntime see): ``x`` for a classifier,
    ``input_ids`` for a causal LM."""

    def __init__(self, network: nn.Module, kind: str):
        super().__init__()
        self.network, self.kind = network, kind

    def forward(self, x):
        if self.kind == "causal_lm":
            return self.network(input_ids=x, use_cache=False).logits
        out = self.network(x)
        return getattr(out, "logits", out)


class TextLogits(nn.Module):
    """A text classifier's logits from ``input_ids`` and ``attention_mask``."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, input_ids, attention_mask):
        return self.network(input_ids, attention_mask).logits


def logits_wrapper(network: nn.Module, kind: str, inputs: dict) -> nn.Module:
    return (TextLogits(network) if list(inputs) == ["input_ids", "attention_mask"] else LogitsOnly(network, kind)).eval()


def example_inputs(network: nn.Module, kind: str, example: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Named example inputs for the exporter (from ``example``, or made from the network's sizes)."""
    if example:
        return example
    if kind == "causal_lm":
        return {"input_ids": torch.randint(0, int(network.config.vocab_size), (2, 16))}
    if hasattr(network, "encoder_name"):  # a text classifier
        ids = torch.randint(0, int(network.config.vocab_size), (2, 16))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    encoder = getattr(network, "encoder", None)  # a DKVB reads what its frozen encoder reads
    if isinstance(encoder, nn.Module):
        inner = getattr(encoder, "model", encoder)  # TrainedEncoder wraps the classifier it came from
        if getattr(encoder, "deskew", False):  # a deskewing PCAEncoder reads square one-channel images
            side = int(round(int(encoder.in_features) ** 0.5))
            return {"x": torch.rand(2, 1, side, side)}
        return example_inputs(inner, kind, None)
    if hasattr(network, "in_features"):
        return {"x": torch.rand(2, int(network.in_features))}
    if hasattr(network, "image_size"):
        return {"x": torch.rand(2, int(getattr(network, "in_channels", 1)), int(network.image_size), int(network.image_size))}
    raise ExportError(f"no example input for {type(network).__name__}: pass one (an exported batch) to export it to ONNX")


def export_onnx(network: nn.Module, kind: str, inputs: dict[str, torch.Tensor], path: Path) -> float:
    """Write ``path`` (dynamic batch and sequence axes) and return max |onnxruntime − torch| on the inputs."""
    import warnings

    import onnxruntime as ort

    wrapper = logits_wrapper(network, kind, inputs)
    args = tuple(inputs.values())
    dims = tuple({0: torch.export.Dim("batch", min=1), **({1: torch.export.Dim("sequence", min=2)} if x.dtype == torch.long else {})}
                 for x in args)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, args, str(path), input_names=list(inputs), output_names=["logits"],
                              dynamic_shapes=dims, dynamo=True, verbose=False)
    except Exception as err:  # noqa: BLE001 - any exporter failure becomes one clear message
        reason = str(err).strip().splitlines()[0][:300]
        raise ExportError(f"{type(network).__name__} could not be exported to ONNX ({type(err).__name__}: {reason}). It "
                          "exports as --format hf (safetensors folder) only") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return onnx_max_diff(session, wrapper, inputs)


def onnx_max_diff(session, wrapper: nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    with torch.no_grad():
        ref = wrapper(*inputs.values()).float().numpy()
    out = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    return float(abs(out - ref).max())


INT8_OPS = ("MatMul", "Gemm", "Gather")
"""The ops --quantize int8 quantizes: onnxruntime's dynamic int8 convolution (ConvInteger) ran at 0.35x the fp32
convolution on this CPU (BENCHMARKS.md "Export"), so convolutions stay fp32."""


def quantize_int8(fp32: Path, int8: Path) -> None:
    """onnxruntime's dynamic int8 quantization of the matrix products' and embeddings' weights (activations at run
    time); :data:`INT8_OPS` only."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, op_types_to_quantize=list(INT8_OPS))


# ---- the whole export ------------------------------------------------------------------------------------
def export_student(module: nn.Module, to: str | Path, *, formats: Format = "hf", quantize: Literal["int8"] | None = None,
                   overwrite: bool = False, spec: dict | None = None, tokenizer=None, example: dict | None = None,
                   card: dict | None = None, label_names: list[str] | None = None,
                   ckpt_path: str | Path | None = None) -> ExportResult:
    """Export ``module``'s student into the folder ``to`` (see the module docstring).

    The export is written into a temporary folder beside ``to`` and moved in only when every file is written and
    checked, so a failed export changes nothing. ``to`` must be new or empty, or (with ``overwrite``) an earlier
    lkd export: then only the files its :data:`MANIFEST` lists are replaced and every other file stays
    (``ExportResult.kept``); see :func:`check_request` for what is refused.

    Args:
        formats: ``"hf"`` (the folder), ``"onnx"`` (the folder and ``model.onnx``) or ``"all"`` (the same).
        quantize: ``"int8"`` adds ``model.int8.onnx`` (needs ONNX: ``formats`` "onnx" or "all").
        overwrite: replace an earlier lkd export in ``to`` (its files only).
        spec: ``{"class_path", "init_args"}`` of a non-transformers student (the config's).
        tokenizer: the LM student's tokenizer (a name or object; default the module's ``tokenizer``).
        example: named example inputs for ONNX (default: made from the network's sizes).
        card: what :func:`model_card` writes (source, data, method, metrics, commands).
        label_names: class names of a text classifier (its ``id2label``; default ``LABEL_i``).
        ckpt_path: the checkpoint the weights came from: refused as (inside) ``to``, written into the manifest.
    """
    previous = check_request(to, formats, quantize, overwrite, ckpt_path)
    network, kind, role = student_network(module)
    network.eval()
    folder = Path(to).expanduser()
    with staging(folder) as stage:
        result = ExportResult(folder, kind)
        if kind == "causal_lm":
            result.files |= save_causal_lm(network, tokenizer if tokenizer is not None else getattr(module, "tokenizer", "bytes"), stage)
        elif (hf := hf_sequence_classifier(network, label_names)) is not None:
            result.kind = kind = "sequence_classifier"
            result.files |= save_sequence_classifier(hf, network.encoder_name, stage)
        else:
            result.files |= save_lkd_student(network, spec or {}, stage)
        if formats in ("onnx", "all"):
            inputs = example_inputs(network, kind, example)
            result.files["onnx"] = stage / "model.onnx"
            result.max_abs_diff["onnx"] = export_onnx(network, kind, inputs, result.files["onnx"])
            if result.max_abs_diff["onnx"] > ONNX_TOLERANCE:
                raise ExportError(f"onnxruntime's logits differ from torch's by {result.max_abs_diff['onnx']:.2e} (> {ONNX_TOLERANCE}): "
                                  f"the ONNX file would not be faithful; nothing was written to {folder}. HINT: --format hf")
            if quantize == "int8":
                import onnxruntime as ort

                result.files["onnx_int8"] = stage / "model.int8.onnx"
                quantize_int8(result.files["onnx"], result.files["onnx_int8"])
                session = ort.InferenceSession(str(result.files["onnx_int8"]), providers=["CPUExecutionProvider"])
                result.max_abs_diff["onnx_int8"] = onnx_max_diff(session, logits_wrapper(network, kind, inputs), inputs)
        result.files = {role_name: path for role_name, path in result.files.items() if path.is_file()}
        listed = set(result.files.values())
        for name in _files_under(stage):  # what libraries wrote besides: ONNX external data, tokenizer files
            if (path := stage / name) not in listed:
                data_of = next((r for r, p in result.files.items() if r.startswith("onnx") and name == f"{p.name}.data"), None)
                result.files[f"{data_of}_data" if data_of else name] = path
        result.files["manifest"] = write_manifest(stage, [*(p.relative_to(stage).as_posix() for p in result.files.values()), "README.md"],
                                                  kind, ckpt_path)
        result.files["card"] = stage / "README.md"
        result.files["card"].write_text(model_card(network, kind, role, result, card or {}))
        _, kept = commit(stage, folder, previous)
    result.files = {role_name: folder / path.relative_to(stage) for role_name, path in result.files.items()}
    result.kept = [folder / name for name in kept]
    return result


def model_card(network: nn.Module, kind: str, role: str, result: ExportResult, info: dict) -> str:
    """The folder's README.md: what it is, where it came from, how it was made and measured, how to load it."""
    params = sum(p.numel() for p in network.parameters())
    lines = [f"# {info.get('name', result.folder.name)}", "",
             f"A {'student distilled' if role == 'student' else 'model trained'} with lkd (Lightning Knowledge Distillation): "
             f"`{type(network).__name__}`, {params:,} parameters."]
    if role == "model":
        lines.append("This config trains one model without a teacher; the folder holds that model.")
    rows = [("teacher", info.get("teacher")), ("data", info.get("data")), ("method", info.get("method")),
            ("losses", info.get("losses")), ("checkpoint", info.get("checkpoint"))]
    lines += ["", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows if v]]
    if metrics := info.get("metrics"):
        lines += ["", "## Metrics of this checkpoint", "", "| metric | value |", "|---|---|",
                  *[f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())]]
    lines += ["", "## Files", "", "| file | bytes | check |", "|---|---|---|"]
    for role_name, path in result.files.items():  # every file but the card itself (ONNX data, manifest included)
        if path.exists() and role_name != "card":
            check = result.max_abs_diff.get(role_name)
            lines.append(f"| {path.name} | {path.stat().st_size:,} | "
                         f"{'' if check is None else f'max abs logit difference to torch {check:.2e}'} |")
    lines += ["", "## Loading", ""]
    if kind == "sequence_classifier":
        lines += ["```python", "from transformers import AutoModelForSequenceClassification, pipeline",
                  f'model = AutoModelForSequenceClassification.from_pretrained("{result.folder.name}")',
                  f'classify = pipeline("text-classification", model="{result.folder.name}")', "```"]
    elif kind == "causal_lm":
        lines += ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline",
                  f'model = AutoModelForCausalLM.from_pretrained("{result.folder.name}")',
                  f'generate = pipeline("text-generation", model="{result.folder.name}")', "```"]
    else:
        lines += ["```python", "import lkd", f'student = lkd.load_student("{result.folder.name}")  # safetensors, no pickles', "```"]
    if "onnx" in result.files:
        lines += ["", "```python", "import onnxruntime as ort", f'session = ort.InferenceSession("{result.folder.name}/model.onnx")', "```"]
    if commands := info.get("commands"):
        lines += ["", "## Reproduce", "", "```bash", *commands, "```"]
    return "\n".join(lines) + "\n"
