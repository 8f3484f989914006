"""Copy the best checkpoint of a run to a stable path, so later configs can name it, without ever replacing a file
another run, another data set or the run's own inputs own."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lkd.checkpoint import checkpoints_under
from lkd.data.identity import data_identity


class PublishError(ValueError):
    """``best_checkpoint.path`` cannot be written without losing a file (refused before training)."""


def _describe(source: dict) -> str:
    parts = [source.get("module", "?")]
    data = source.get("data") or {}
    if data:
        parts.append("data " + ", ".join(f"{k} {v}" for k, v in data.items()))
    if source.get("configs"):
        parts.append("config " + ", ".join(source["configs"]))
    if source.get("run"):
        parts.append(f"run {source['run']}")
    return "; ".join(parts)


def published_source(path: Path) -> dict | None:
    """What wrote the checkpoint at ``path`` (module class, data, configs, run folder), read from the copy of this
    callback's state inside it, or from its saved hyperparameters for a file written before lkd recorded it;
    None for a file that is not a readable Lightning checkpoint."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - any unreadable file: not a checkpoint lkd can vouch for
        return None
    if not isinstance(ckpt, dict):
        return None
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith("PublishBestCheckpoint") and isinstance(state, dict) and state.get("source"):
            return dict(state["source"])
    hparams = ckpt.get("hyper_parameters") or {}
    if not hparams:
        return None
    data = {"task": hparams["task"]} if hparams.get("task") else {}
    return {"module": hparams.get("_class_path", "?"), "data": data, "legacy": True}


def _same_source(old: dict, new: dict) -> bool:
    if str(old.get("module")).rsplit(".", 1)[-1] != str(new.get("module")).rsplit(".", 1)[-1]:
        return False  # by class name: a legacy file records the config's class path (lkd.modules.X)
    if old.get("legacy"):  # only the module class and its task were recorded
        return all(new.get("data", {}).get(k) == v for k, v in old.get("data", {}).items())
    if old.get("data") != new.get("data"):
        return False
    return not (old.get("configs") and new.get("configs") and old["configs"] != new["configs"])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PublishBestCheckpoint(Callback):
    """Keeps ``path`` a copy of ``trainer.checkpoint_callback.best_model_path``.

    The copy is refreshed at every epoch start, at the end of fit and when fit fails, so a crashed run
    still leaves its best checkpoint at the stable path. The copy is written to a temporary file first and
    renamed, so a reader never sees half a file. ``path=None`` disables it.

    Before the first step (:meth:`check_target`) the path is checked, and the run refused, when publishing would
    lose a file: ``path`` is a folder or under a file; it is a file this run reads (its teacher's checkpoint or
    cache, an encoder's checkpoint, ``--ckpt_path``); it holds the best checkpoint of another module class, other
    data (hub id, files, task, classes) or another config, unless ``overwrite``; another run is publishing to it
    right now (a ``<path>.lock`` file of a live process). A file of the same module, data and config (the same
    command run again) is replaced, and the log says so.

    Args:
        path: stable destination, e.g. ``checkpoints/mnist/teacher.ckpt``.
        overwrite: replace a checkpoint at ``path`` that another module, data set or config wrote.
    """

    def __init__(self, path: str | None = None, overwrite: bool = False):
        self.path = Path(path) if path else None
        self.overwrite = overwrite
        self._published: str = ""
        self._source: dict = {}
        self._replacing: str = ""
        self._lock: Path | None = None
        self._made: list[Path] = []
        self.checked = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(path=str(self.path))

    # ---- before training -----------------------------------------------------------------------------
    def check_target(self, module: pl.LightningModule, datamodule: pl.LightningDataModule | None, *,
                     reads: dict[str, str] | None = None, configs: list[str] | None = None, run: str = "") -> None:
        """Refuse a ``path`` whose writing would lose a file (see the class docstring); take its lock.

        Args:
            reads: files this run reads, by the option that names them (``{"model.init_args.teacher.checkpoint": ...}``).
            configs: the run's config files (a checkpoint of another config at ``path`` is not replaced).
            run: the run's log folder, recorded in the checkpoint.
        """
        self.checked = True
        if self.path is None:
            return
        path, option = self.path, f"best_checkpoint.path={self.path}"
        if path.is_dir():
            found = [str(p.relative_to(path)) for p in checkpoints_under(path, most=5)[0]]
            raise PublishError(f"{option} is a folder{f' holding {found}' if found else ''}; the best checkpoint is "
                               f"copied to a file. HINT: --best_checkpoint.path={path / 'best.ckpt'}")
        blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            raise PublishError(f"{option}: {blocking} is a file, so no folder can be made for the checkpoint there. "
                               "HINT: choose a path under a folder")
        for name, value in (reads or {}).items():
            if value and Path(value).expanduser().resolve() == path.expanduser().resolve():
                raise PublishError(f"{option} is the file this run reads as {name}: publishing would replace it. "
                                   f"HINT: give the run its own path, e.g. --best_checkpoint.path={path.with_stem(path.stem + '_student')}")
        teacher = getattr(module, "frozen_teacher", None)
        self._source = {"module": f"{type(module).__module__}.{type(module).__qualname__}", "data": data_identity(datamodule), "configs": [str(c) for c in configs or []], "run": run,
                        **({"teacher": str(teacher.checkpoint)} if teacher is not None and teacher.checkpoint else {})}
        if path.is_file():
            old = published_source(path)
            if old is None or not _same_source(old, self._source):
                if not self.overwrite:
                    what = _describe(old) if old else "a file lkd cannot read as a Lightning checkpoint"
                    raise PublishError(
                        f"{option} holds {what}\nthis run is {_describe(self._source)}\nPublishing would replace it; nothing "
                        f"was written. HINT: give this run its own --best_checkpoint.path (e.g. "
                        f"{path.with_stem(path.stem + '_new')}), or pass --best_checkpoint.overwrite=true to replace it")
                self._replacing = f"{path} ({_describe(old) if old else 'unreadable'}; best_checkpoint.overwrite=true)"
            else:
                self._replacing = f"{path} (an earlier run of the same module, data and config{', ' + old['run'] if old.get('run') else ''})"
            rank_zero_info(f"best_checkpoint.path {path} exists: this run's best checkpoint will replace {self._replacing}")
        self._take_lock()

    def _take_lock(self) -> None:
        lock = self.path.with_name(self.path.name + ".lock")
        self._made = [p for p in lock.parents if not p.exists()]  # removed again if the run publishes nothing
        lock.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "run": self._source.get("run", ""), "since": time.time()}
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    other = json.loads(lock.read_text() or "{}")
                except (OSError, ValueError):
                    other = {}
                alive = other.get("host") == me["host"] and isinstance(other.get("pid"), int) and _pid_alive(other["pid"])
                if other.get("pid") == me["pid"] and other.get("host") == me["host"]:
                    self._lock = lock  # this process's own lock (a second check in the same process)
                    return
                if alive or (other.get("host") and other.get("host") != me["host"]):
                    raise PublishError(
                        f"best_checkpoint.path={self.path}: another run is publishing to it right now (process {other.get('pid')} "
                        f"on {other.get('host')}, {other.get('run') or 'run folder unknown'}; lock file {lock}). Two runs on "
                        "one path would replace each other's best. HINT: give this run its own --best_checkpoint.path, or "
                        f"delete {lock} if that run is gone") from None
                lock.unlink(missing_ok=True)  # left by a run that died
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self._lock = lock
            return

    def release(self) -> None:
        """Drop the lock, and the folders taking it made if nothing was published into them."""
        if self._lock is not None:
            self._lock.unlink(missing_ok=True)
            self._lock = None
        for folder in self._made:  # innermost first
            try:
                folder.rmdir()
            except OSError:  # not empty: the checkpoint (or anything else) is there
                break
        self._made = []

    # ---- during and after training ---------------------------------------------------------------------
    def publish(self, trainer: pl.Trainer) -> None:
        ckpt = trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
        if self.path is None or not best or best == self._published or not trainer.is_global_zero:
            return
        if not Path(best).is_file():  # a run resumed from another folder: its best file is not where it was recorded
            rank_zero_warn(f"best checkpoint {best} (recorded in the resumed checkpoint) is not there from {Path.cwd()}; "
                           f"{self.path} is left as it is until a new best is written")
            self._published = best
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        shutil.copyfile(best, tmp)
        tmp.replace(self.path)
        self._published = best
        replacing, self._replacing = self._replacing, ""
        rank_zero_info(f"Best checkpoint {best} published to {self.path}" + (f", replacing {replacing}" if replacing else ""))

    @property
    def published(self) -> str:
        """The run checkpoint last copied to ``path`` ("" before the first)."""
        return self._published

    @override
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and not self.checked and trainer.is_global_zero:  # a Trainer used without the lkd command
            self.check_target(pl_module, trainer.datamodule)

    @override
    def on_train_start(self, trainer, pl_module) -> None:
        """Refuse a run that ends before its first validation: it would publish nothing (and the next config, which
        names this path as its teacher, would find no file)."""
        if self.path is None or trainer.fast_dev_run or trainer.max_steps is None or trainer.max_steps < 0 or trainer.global_step > 0:
            return
        accumulate = max(1, trainer.accumulate_grad_batches)
        batches, val_batch, every = trainer.num_training_batches, trainer.val_check_batch, trainer.check_val_every_n_epoch
        if not isinstance(val_batch, int) or batches == float("inf"):
            return  # validation by time, or an endless loader: no step count to compare
        first_val = (val_batch + (every - 1) * int(batches) if every else val_batch) // accumulate
        validates = trainer.limit_val_batches != 0 and sum(trainer.num_val_batches or [1]) > 0
        if validates and trainer.max_steps >= first_val:
            return
        why = ("validation is off (limit_val_batches 0)" if not validates else
               f"the first validation comes after {first_val} optimizer steps; an epoch is {int(batches) // accumulate}")
        self.release()
        raise PublishError(
            f"--trainer.max_steps={trainer.max_steps} ends the run before it validates once ({why}), so no best checkpoint "
            f"would be written or published to best_checkpoint.path={self.path}. HINT: --trainer.max_steps={first_val} or "
            f"more, or validate sooner (--trainer.val_check_interval={max(1, trainer.max_steps * accumulate)} counts batches), "
            "or --best_checkpoint.path=null for a run that publishes nothing")

    @override
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.publish(trainer)

    @override
    def on_fit_end(self, trainer, pl_module) -> None:
        self.publish(trainer)
        self.release()

    @override
    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.publish(trainer)
        self.release()

    @override
    def state_dict(self) -> dict:
        return {"published": self._published, "source": self._source}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self._published = state_dict.get("published", "")
