"""Shared test setup: offline hub, one torch thread, quiet Lightning, paths, the hub-layout writer; the fixtures of
each track are registered once here (``pytest_plugins``), so no test file imports a fixture."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one pytest-xdist worker per core: one torch thread each
    import torch

    torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

pytest_plugins = ["tests.mnist_fixtures", "tests.glue_fixtures", "tests.lm_fixtures"]

HUB_README = """---
configs:
- config_name: {config}
  data_files:
{files}
---
"""


def write_hub_dataset(root: Path, config: str, splits: dict) -> Path:
    """Write ``{split: datasets.Dataset}`` as a hub-layout folder ``root`` (parquet + README configs)."""
    (root / config).mkdir(parents=True, exist_ok=True)
    files = []
    for split, ds in splits.items():
        ds.to_parquet(str(root / config / f"{split}-00000-of-00001.parquet"))
        files.append(f"  - split: {split}\n    path: {config}/{split}-*")
    (root / "README.md").write_text(HUB_README.format(config=config, files="\n".join(files)))
    return root


@pytest.fixture(autouse=True)
def _quiet_lightning(monkeypatch):
    monkeypatch.setenv("LKD_RICH", "0")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is ~100x faster than two fighting over a
    loaded CPU (3 ms vs up to 1.3 s per tiny MoE forward, measured). Every test, so a plain ``pytest`` run
    matches ``make test``, whose xdist workers are set to one thread above."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
