"""The teacher-output cache file: frozen-teacher logits per split, keyed by what produced them.

A cache is one ``torch.save`` file of plain tensors, strings and numbers (read back with
``weights_only=True``)::

    {
      "format": "lkd.teacher_cache/1",
      "dtype": "float16",                      # storage dtype of the logits
      "teacher": {"sha256": ..., "architecture": "ConvNet", "dtype": "float32", "checkpoint": "..."},
      "splits": {                              # by training stage: "train" (always), "val" (when there is one)
        "train": {
          "identity": {"dataset": ..., "split": ..., "rows": N, "sample_ids_sha256": ..., "content_sha256": ...,
                       "tokenizer": ..., "augmentation": "none"},
          "sample_ids": LongTensor (N,),       # the key of each row, in the data module's order
          "logits": Tensor (N, C),             # the teacher's raw logits (before any temperature)
          "max_abs_error": float,              # max |stored - fp32| measured when the cache was written
        },
        ...
      },
    }

Language models (:class:`lkd.modules.LMDistillModule`) store, instead of ``logits``, the teacher's
top-k tokens at every position of every block, and the file says what it holds::

      "targets": {"kind": "lm_topk", "k": 32, "temperature": 4.0, "vocab": 49152},
      "splits": {"train": {..., "topk_logprobs": Tensor (N, T, k),   # log softmax(z / T) of the top-k, fp16
                                "topk_indices": Tensor (N, T, k),    # token ids, int16 (offset) or int32
                                ...}}

With two tokenizers (cross-tokenizer distillation) the kind is ``"lm_aligned"``: the same top-k per teacher
position plus ``token_logprobs`` (N, T), the teacher's log-probability of each of its own tokens at T = 1 (ALM's
chunk likelihoods and the teacher's bits per byte), and each split's identity names both tokenizers'
fingerprints (``tokenizer``, ``teacher_tokenizer``), so a cache written for another pair is refused.

On prompt data (:class:`lkd.modules.OnPolicyDistillModule` with ``lmbda: 0`` and ``off_policy: teacher``:
sequence-level KD) the kind is ``"lm_completions"`` (``max_new_tokens`` M in the description too): per prompt row,
keyed by its ``row_index``, the teacher's greedy completion ``completion_ids`` (N, M) (pad after its end),
``completion_length`` (N,) and the top-k at each completion position (``topk_logprobs`` / ``topk_indices``
(N, M, k), the distribution that predicts completion token m).

So a cache is ``k · (2 + 2)`` bytes per token for vocabularies up to 65,536 (ids stored as int16 minus
32,768), ``k · (2 + 4)`` above; the full fp16 distribution would be ``2 · V``. The distillation loss reads
them through :func:`lkd.losses.kd.topk_kd_kl_div`: a **tail bucket**, not top-k renormalised. The teacher is
k + 1 outcomes (its k tokens and "anything else", mass 1 − Σ p), the student is bucketed the same way, and the
KL of those is taken; it keeps the teacher's absolute probabilities (renormalising would tell a student that
spreads mass over the rest of the vocabulary nothing) and equals the full KL when k = V. The log-probabilities
are stored at the distillation temperature T and T is part of the key: from T = 1 values the top-k at another
T could be re-normalised, but the tail mass at T depends on the logits that were not stored, so it could not.
``k``, ``T`` and the vocabulary are checked like the rest of the identity.

Everything under ``teacher`` and ``identity`` except ``teacher.checkpoint`` (a path, for messages) is
compared with the run that reads the cache; any difference is a stale cache and is refused
(:class:`StaleTeacherCacheError`), listing each differing field.

Storage dtype and its error: ``float16`` (default) rounds each logit to an 11-bit significand, so
``|stored − z| ≤ 2⁻¹¹·|z|`` (≈ 4.9·10⁻⁴ relative) for |z| ≤ 65504; larger logits would overflow and are
refused when the cache is written. ``bfloat16`` keeps the fp32 range with ``|stored − z| ≤ 2⁻⁸·|z|``;
``float32`` is exact. The KD loss sees ``softmax(stored / T)``, so with T = 4 a logit error of ε moves each
log-probability by at most 2ε/T.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import nn

FORMAT = "lkd.teacher_cache/1"
STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
LOGITS_TARGETS = {"kind": "logits"}
"""What a classification cache holds (files without a ``targets`` entry)."""
_INT16_OFFSET = 32768


def encode_token_ids(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """Token ids in the smallest signed dtype that holds the vocabulary: int16 (offset by 32,768) up to
    65,536 tokens, else int32."""
    if vocab <= 2 * _INT16_OFFSET:
        return (ids.long() - _INT16_OFFSET).to(torch.int16)
    return ids.to(torch.int32)


def decode_token_ids(stored: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode_token_ids`: int64 token ids."""
    return stored.long() + _INT16_OFFSET if stored.dtype == torch.int16 else stored.long()


class TeacherCacheError(ValueError):
    """A teacher cache that cannot be used: missing file, wrong format, missing rows, bad settings."""


class StaleTeacherCacheError(TeacherCacheError):
    """A teacher cache written for another teacher, data set, split, tokenizer or data version."""


def cache_path_problem(path: str | Path, option: str = "model.init_args.teacher.cache", *, rewrite: bool = False) -> str | None:
    """Why a teacher cache cannot be used at ``path``, in one line ending in a HINT, or None when it can.

    A readable cache file is fine wherever it lies (a read-only mount too). A path with no file yet must be writable,
    since the first fit writes the cache there (with ``<path>.partial/`` beside it): refused when it is a folder, when a
    parent is a file, when the nearest existing parent folder cannot be written (permissions, a read-only mount,
    ``/proc``; tried by creating and removing an empty file, as permission bits do not bind root). ``rewrite``: the
    file is to be written even if it exists (``lkd cache-teacher --overwrite``). ``option`` is the setting named in
    the message.
    """
    given = Path(path).expanduser()
    shown = f"{option}={path}" + ("" if given.is_absolute() else f" (read from the working directory {Path.cwd()})")
    if given.is_dir():
        return (f"{shown} is a folder; a teacher cache is one file. HINT: name a file in it, e.g. "
                f"{option}={given / 'teacher.cache'}")
    if given.is_file() and not rewrite:
        if os.access(given, os.R_OK):
            return None
        return f"{shown} exists but cannot be read (permissions). HINT: make it readable, or point {option} at another file"
    parent = given.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return (f"{shown} cannot be written: {parent} is a file, not a folder. HINT: point {option} at a file in a "
                "folder you can write (or drop it to run the teacher live)")
    made = "" if parent == given.parent else f"the folder {given.parent} and "
    try:  # what the first fit will do: create a file in `parent`
        fd, probe = tempfile.mkstemp(prefix=".lkd-write-test-", dir=parent)
    except OSError as err:
        return (f"{shown} cannot be written: nothing can be created in {parent} ({err.strerror}), where the first fit would "
                f"write {made}the cache. HINT: point {option} at a folder you can write, or write the cache where you can "
                "(`lkd cache-teacher`) and point the option at that file")
    os.close(fd)
    os.unlink(probe)
    return None


@dataclass(frozen=True)
class SplitIdentity:
    """What a split of training data is, as far as the teacher's outputs on it are concerned.

    Attributes:
        dataset: data module class, hub id and config/task, e.g. ``"MNISTDataModule ylecun/mnist/mnist"``.
        split: the data module's name of the split (``train``, ``val``, ``validation``).
        rows: number of examples.
        sample_ids_sha256: hash of the sample ids in loader order (which rows, in which order).
        content_sha256: hash of the model inputs and labels (the data version; for text, after tokenising).
        tokenizer: tokenizer name (or fingerprint), None for images.
        augmentation: what is done to inputs before the teacher sees them; caches hold ``"none"``.
        teacher_tokenizer: the teacher's tokenizer fingerprint when it differs from the student's (aligned
            two-tokenizer blocks), else None.
    """

    dataset: str
    split: str
    rows: int
    sample_ids_sha256: str
    content_sha256: str
    tokenizer: str | None = None
    augmentation: str = "none"
    teacher_tokenizer: str | None = None


@runtime_checkable
class CacheableData(Protocol):
    """What a data module offers a teacher cache (lkd's MNIST, GLUE and text data modules implement it), so
    :mod:`lkd.cache` never needs to know a data module's type.

    ``stage`` is a training stage, ``"train"`` or ``"val"``.
    """

    def cache_stages(self) -> list[str]:
        """The stages (of ``train``, ``val``) the set-up data module has rows for."""

    def cache_identity(self, stage: str) -> SplitIdentity:
        """The split's identity; raises :class:`TeacherCacheError` when it cannot be cached (augmented or
        changing training data), saying what to change."""

    def cache_sample_ids(self, stage: str):
        """The split's sample ids (N,) in the order :meth:`cache_batches` yields them."""

    def cache_batches(self, stage: str) -> Iterable:
        """The split's batches in order, unaugmented, before device transfer, each carrying its sample ids."""


def sha256_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """Hash of named tensors: names, dtypes, shapes and bytes, in sorted-name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def teacher_fingerprint(teacher: nn.Module, checkpoint: str | None) -> dict:
    """Identity of a teacher: a hash of its weights and buffers (not of the checkpoint file, so a copied or
    re-saved checkpoint with the same weights still matches), its class and its parameter dtype."""
    state = teacher.state_dict()
    dtype = next((str(t.dtype).removeprefix("torch.") for t in state.values() if t.is_floating_point()), "none")
    return {"sha256": sha256_tensors(state), "architecture": type(teacher).__name__, "dtype": dtype,
            "checkpoint": str(checkpoint) if checkpoint is not None else None}


def _differences(label: str, cached: Mapping, current: Mapping, ignore: tuple[str, ...] = ()) -> list[str]:
    return [
        f"  {label}.{key}: cache {cached.get(key)!r} vs this run {current.get(key)!r}"
        for key in sorted(set(cached) | set(current))
        if key not in ignore and cached.get(key) != current.get(key)
    ]


class TeacherCache:
    """A loaded teacher cache: checks itself against a run, then serves logits by sample id.

    Use :meth:`load`, then :meth:`check`, then :meth:`logits` for each batch of a checked stage.
    """

    def __init__(self, content: dict, path: str | Path):
        self.path = Path(path)
        self.content = content
        self._row_of_id: dict[str, torch.Tensor] = {}
        self._on_device: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    # ---- reading ------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> TeacherCache:
        path = Path(path).expanduser()
        if not path.is_file():
            raise TeacherCacheError(
                f"teacher cache not found: {path}. HINT: write it first with `lkd cache-teacher -c <the distillation "
                "config>` (same data and teacher overrides as the fit), or drop model.init_args.teacher.cache to run "
                "the teacher live."
            )
        try:
            content = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same explanation
            first = (str(err).strip().splitlines() or [""])[0][:160]  # torch's own message runs to a dozen lines
            raise TeacherCacheError(
                f"model.init_args.teacher.cache={path} is not a readable teacher cache ({type(err).__name__}: {first}). "
                "HINT: write it again (`lkd cache-teacher --overwrite=true` with the same config), or point the option at "
                "another file"
            ) from None
        if not isinstance(content, dict) or content.get("format") != FORMAT:
            found = content.get("format") if isinstance(content, dict) else type(content).__name__
            raise TeacherCacheError(
                f"{path} is not an lkd teacher cache of format {FORMAT!r} (found {found!r}). HINT: rebuild it with "
                "`lkd cache-teacher`."
            )
        return cls(content, path)

    @property
    def stages(self) -> list[str]:
        return list(self.content["splits"])

    @property
    def dtype(self) -> str:
        return self.content["dtype"]

    @property
    def targets(self) -> dict:
        """What the cache holds: ``{"kind": "logits"}``, or ``{"kind": "lm_topk" | "lm_aligned", "k", "temperature",
        "vocab"}`` (``lm_aligned``: two tokenizers, with ``token_logprobs`` (N, T) per block besides the top-k), or
        ``{"kind": "lm_completions", ..., "max_new_tokens"}`` (the teacher's greedy completions of prompts)."""
        return dict(self.content.get("targets", LOGITS_TARGETS))

    def num_classes(self) -> int | None:
        split = next(iter(self.content["splits"].values()))
        return int(split["logits"].shape[-1]) if "logits" in split else None

    def bytes_per_example(self) -> float:
        """Stored bytes per example (an image, a sentence, a block of tokens): every tensor of the train split."""
        split = self.content["splits"]["train"]
        n = max(len(split["sample_ids"]), 1)
        return sum(t.numel() * t.element_size() for t in split.values() if isinstance(t, torch.Tensor)) / n

    def check(self, teacher: Mapping, identities: Mapping[str, SplitIdentity], *, num_classes: int | None = None,
              targets: Mapping | None = None) -> None:
        """Refuse the cache unless it was written for this teacher and these splits.

        ``identities``: the current run's splits by stage; ``train`` must be in the cache, other stages
        are checked when the cache has them (the others run the teacher live).

        Raises:
            StaleTeacherCacheError: every differing field, cache value vs this run's, plus a HINT.
        """
        lines = _differences("teacher", self.content["teacher"], teacher, ignore=("checkpoint",))
        lines += _differences("targets", self.targets, dict(targets or LOGITS_TARGETS))
        if num_classes is not None and self.num_classes() != num_classes:
            lines.append(f"  logits: cache has {self.num_classes()} classes vs this run {num_classes}")
        if "train" not in self.content["splits"]:
            lines.append(f"  splits: the cache has no 'train' split (it has {self.stages})")
        for stage, identity in identities.items():
            if stage in self.content["splits"]:
                lines += _differences(stage, self.content["splits"][stage]["identity"], asdict(identity))
        if lines:
            where = self.content["teacher"].get("checkpoint")
            raise StaleTeacherCacheError(
                f"teacher cache {self.path} was written for another teacher or other data (teacher checkpoint then: "
                f"{where}):\n" + "\n".join(lines) + "\nHINT: rebuild it with `lkd cache-teacher -c <config>` using the "
                "same teacher and data overrides as this run (sample_ids/rows differ when train_size, val_size, "
                "classes or seed change; content when the data files, tokenizer or max_length change)."
            )

    def logits(self, stage: str, sample_ids: torch.Tensor) -> torch.Tensor:
        """Cached teacher logits (B, C) in fp32 for ``sample_ids`` (B,), on their device.

        Raises:
            TeacherCacheError: some ids are not in the cache (listed).
        """
        return self._rows(stage, sample_ids, "logits").float()  # (B, C)

    def topk(self, stage: str, sample_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A language-model cache's targets for blocks ``sample_ids`` (B,): top-k log-probabilities (B, T, k)
        fp32 and token ids (B, T, k) int64, on the ids' device."""
        logprobs, stored_ids = self._rows(stage, sample_ids, "topk_logprobs", "topk_indices")
        return logprobs.float(), decode_token_ids(stored_ids)

    def batch_targets(self, stage: str, sample_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """What a distillation step reads for ``sample_ids`` (B,): ``{"logits": (B, C)}``, or for a language-model
        cache ``{"topk": ((B, T, k) log-probabilities, (B, T, k) token ids)}``; for a sequence-level KD cache
        (``lm_completions``) also ``completion_ids`` (B, M) and ``completion_length`` (B,), with T = M."""
        if self.targets["kind"] == "lm_topk":
            return {"topk": self.topk(stage, sample_ids)}
        if self.targets["kind"] == "lm_completions":  # sequence-level KD: the teacher's greedy completions, top-k along them
            tokens, lengths = self._rows(stage, sample_ids, "completion_ids", "completion_length")
            return {"completion_ids": decode_token_ids(tokens), "completion_length": decode_token_ids(lengths),
                    "topk": self.topk(stage, sample_ids)}
        if self.targets["kind"] == "lm_aligned":  # two tokenizers: also the teacher's log-probability of its own tokens
            return {"topk": self.topk(stage, sample_ids),
                    "token_logprobs": self._rows(stage, sample_ids, "token_logprobs").float()}
        return {"logits": self.logits(stage, sample_ids)}

    def _rows(self, stage: str, sample_ids: torch.Tensor, *fields: str):
        """The rows of ``fields`` for ``sample_ids`` (kept on the ids' device after the first call)."""
        device = sample_ids.device
        key = (stage, device)
        if key not in self._on_device:
            split = self.content["splits"][stage]
            ids = split["sample_ids"]
            row_of_id = torch.full((int(ids.max()) + 2,), -1, dtype=torch.long)  # last slot: any unknown id
            row_of_id[ids] = torch.arange(len(ids))
            tensors = {k: v.to(device) for k, v in split.items() if isinstance(v, torch.Tensor) and k != "sample_ids"}
            self._on_device[key] = (row_of_id.to(device), tensors)
        row_of_id, tensors = self._on_device[key]
        ids = sample_ids.long().clamp(-1, len(row_of_id) - 1)
        ids = torch.where(ids < 0, len(row_of_id) - 1, ids)
        rows = row_of_id[ids]  # (B,)
        if bool((rows < 0).any()):
            missing = sample_ids[rows < 0].unique().tolist()
            raise TeacherCacheError(
                f"teacher cache {self.path} has no {stage} rows for sample ids {missing[:10]}"
                f"{' ...' if len(missing) > 10 else ''} ({len(missing)} missing). HINT: rebuild the cache for this data."
            )
        picked = tuple(tensors[f][rows] for f in fields)
        return picked[0] if len(picked) == 1 else picked


def write_cache(path: str | Path, *, teacher: Mapping, splits: Mapping[str, dict], dtype: str,
                targets: Mapping | None = None, build: Mapping | None = None) -> Path:
    """Write a cache file atomically (a temporary file renamed into place). ``build``: how it was made
    (``teacher_seconds``: teacher time summed over every session of an interrupted build, ``batches``, ...)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {"format": FORMAT, "dtype": dtype, "teacher": dict(teacher), "splits": dict(splits)}
    if build is not None:
        content["build"] = dict(build)
    if targets is not None and dict(targets) != LOGITS_TARGETS:
        content["targets"] = dict(targets)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(content, tmp)
    os.replace(tmp, path)
    return path
