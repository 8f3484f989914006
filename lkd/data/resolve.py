"""The one place that turns a Hugging Face hub id into something `datasets.load_dataset` can read.

A data module names a hub id (``ylecun/mnist``). When a local mirror of that id exists in the hub layout
(parquet files plus a README with ``configs:``), we load the mirror, offline, with the same splits and
features. Mirrors are looked up in ``$LKD_DATA_DIR`` or, when that is unset, in ``../shared/data`` next to
the working directory or next to the lkd checkout. A mirror of ``owner/name`` is the folder
``<data dir>/name`` or ``<data dir>/owner/name``.
"""

from __future__ import annotations

import os
from pathlib import Path

import datasets

DATA_DIR_ENV = "LKD_DATA_DIR"
_REPO_ROOT = Path(__file__).resolve().parents[2]


class DatasetNotFoundError(FileNotFoundError):
    """A data set could be found neither as a local mirror nor on the hub."""


def candidate_data_dirs() -> list[Path]:
    """Folders searched for mirrors, in order."""
    if env := os.environ.get(DATA_DIR_ENV):
        return [Path(env).expanduser().resolve()]
    dirs = [Path.cwd() / ".." / "shared" / "data", _REPO_ROOT / ".." / "shared" / "data"]
    unique: list[Path] = []
    for d in dirs:
        d = d.resolve()
        if d not in unique:
            unique.append(d)
    return unique


def mirror_candidates(hub_id: str) -> list[Path]:
    """Every folder that would count as a mirror of ``hub_id``."""
    parts = hub_id.strip("/").split("/")
    names = [Path(*parts)] if len(parts) == 1 else [Path(parts[-1]), Path(*parts)]
    return [d / n for d in candidate_data_dirs() for n in names]


def resolve_dataset_path(hub_id: str) -> str:
    """Return a local mirror folder for ``hub_id`` if there is one, else ``hub_id`` unchanged.

    An existing local folder given directly is returned as an absolute path.
    """
    if Path(hub_id).expanduser().is_dir():
        return str(Path(hub_id).expanduser().resolve())
    for candidate in mirror_candidates(hub_id):
        if candidate.is_dir():
            return str(candidate)
    return hub_id


def _hub_is_offline() -> bool:
    return any(os.environ.get(v, "0").lower() in {"1", "true", "yes"} for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def load_hub_dataset(hub_id: str, config: str | None = None, **kwargs) -> datasets.DatasetDict | datasets.Dataset:
    """``datasets.load_dataset`` through the mirror resolver, with an error that says where it looked.

    Raises:
        DatasetNotFoundError: neither a mirror nor the hub could provide ``hub_id``/``config``.
    """
    path = resolve_dataset_path(hub_id)
    is_local = path != hub_id or Path(hub_id).is_dir()
    if not is_local and _hub_is_offline():
        raise DatasetNotFoundError(_not_found_message(hub_id, config, "the hub is switched off (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE)"))
    try:
        return datasets.load_dataset(path, config, **kwargs)
    except (FileNotFoundError, ConnectionError, OSError) as err:  # hub unreachable, or no such repo/config
        if is_local:
            raise DatasetNotFoundError(
                f"The mirror of '{hub_id}' at {path} could not be loaded with config {config!r}: {err}"
            ) from err
        raise DatasetNotFoundError(_not_found_message(hub_id, config, f"the hub said: {err}")) from err


def _not_found_message(hub_id: str, config: str | None, why: str) -> str:
    looked = "\n  ".join(str(p) for p in mirror_candidates(hub_id))
    return (
        f"Data set '{hub_id}' (config {config!r}) not found. No local mirror in:\n  {looked}\nand {why}.\n"
        f"HINT: put a hub-layout copy (parquet + README.md with `configs:`) in one of those folders, set "
        f"${DATA_DIR_ENV} to the folder that holds it, or allow hub access."
    )
