"""Which data a run trains on, in a few strings: what a published checkpoint records and an export's card states."""

from __future__ import annotations

IDENTITY_FIELDS = ("hub_id", "dataset", "config", "data_files", "task", "classes")
"""Data-module attributes that say *which* data (not how much of it, or how it is batched)."""


def data_identity(datamodule) -> dict[str, str]:
    """``{"class": "GLUEDataModule", "hub_id": "nyu-mll/glue", "task": "sst2", ...}``: the data module's class and
    its :data:`IDENTITY_FIELDS` that are set, as strings (empty for no data module)."""
    if datamodule is None:
        return {}
    out = {"class": type(datamodule).__name__}
    for name in IDENTITY_FIELDS:
        value = getattr(datamodule, name, None)
        if value is None or value == "" or callable(value):
            continue
        out[name] = str(list(value) if isinstance(value, tuple) else value)
    return out
