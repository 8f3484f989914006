"""The Kaggle notebook runs end to end on CPU with its smallest settings, and refuses bad parameters."""

from __future__ import annotations

import re

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from tests.conftest import REPO_ROOT, SHARED_DATA

NOTEBOOK = REPO_ROOT / "notebooks" / "kaggle_distill.ipynb"


def load(**params) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += "\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())  # as papermill injects them
    return nb


def execute(nb, tmp_path) -> nbformat.NotebookNode:
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    return nb


def outputs_text(nb) -> str:
    return "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/markdown", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


@pytest.mark.slow  # the whole notebook in a Jupyter kernel: 80 s
@pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason="needs the offline MNIST mirror")
def test_notebook_runs_on_cpu_with_smoke_settings(tmp_path):
    # 16-bit as on Kaggle (CPU autocast is bf16; a GPU picks its own, see test_precision_auto_choice)
    nb = execute(load(SMOKE=True, TRACKS=["mnist", "lm"], PRECISION="bf16-mixed", WORKDIR=str(tmp_path / "runs")), tmp_path)
    text = outputs_text(nb)
    assert "precision: CPU (no CUDA device): bf16-mixed (as requested)" in text
    assert "| student_kd |" in text and "| teacher |" in text  # the MNIST table
    assert "| student_routed |" in text  # the LM table
    # distilled students' rows carry the DistillationReport's numbers (KL, top-1 agreement, speed ratio)
    for student in ("student_kd", "student_routed"):
        assert re.search(rf"\| {student} \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+× \|", text), student
        assert list((tmp_path / "runs" / "lm" / f"lm_{student}").rglob("retention.json")), student
    assert list((tmp_path / "runs").rglob("events.out.tfevents.*"))


@pytest.mark.parametrize("params, message", [
    ({"TRACKS": ["mnist", "imagenet"]}, "unknown track(s) ['imagenet']; choose from ['mnist', 'continual', 'glue', 'lm']"),
    ({"PRECISION": "16-mixed"}, "precision '16-mixed' cannot run on CPU (no CUDA device); it runs ['32-true', 'bf16-mixed']"),
])
@pytest.mark.slow  # starts a Jupyter kernel: 7-8 s each
def test_bad_parameters_fail_in_the_setup_cell(tmp_path, params, message):
    nb = load(WORKDIR=str(tmp_path / "runs"), **params)
    with pytest.raises(CellExecutionError) as err:
        execute(nb, tmp_path)
    assert message in str(err.value)
    assert not (tmp_path / "runs").exists()  # failed before any training


@pytest.mark.parametrize("gpu, expected", [
    (None, "32-true"),
    (("Tesla T4", (7, 5), False), "16-mixed"),  # Kaggle T4 / P100: fp16 AMP with a grad scaler
    (("NVIDIA A100", (8, 0), True), "bf16-mixed"),
])
def test_precision_auto_choice(monkeypatch, gpu, expected):
    import torch

    from lkd.devices import choose_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu is not None)
    if gpu is not None:
        name, capability, bf16 = gpu
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: name)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: capability)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    precision, why = choose_precision("auto")
    assert precision == expected and expected in why
    if gpu is not None and not gpu[2]:
        with pytest.raises(ValueError, match="'bf16-mixed' cannot run on CUDA Tesla T4"):
            choose_precision("bf16-mixed")
