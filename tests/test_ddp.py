"""Two CPU processes (gloo) through the real `lkd` command: DKVB codebooks must stay one codebook."""

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT

DDP_CONFIG = """
trainer:
  accelerator: cpu
  devices: 2
  strategy: ddp
  max_epochs: 1
  limit_train_batches: 6
  limit_val_batches: 0  # validation forwards through DDP would broadcast rank 0's buffers and hide drift
  enable_progress_bar: false
  logger: false
  callbacks:
    - class_path: tests.ddp_probe.SaveDKVBPerRank
      init_args: {{out_dir: {out}}}
model:
  class_path: lkd.modules.ClassifierModule
  init_args:
    model:
      class_path: lkd.models.DiscreteKeyValueBottleneck
      init_args: {{num_codebooks: 4, num_keys: 32, key_dim: 4, sync_codebook: {sync}}}
    lr_schedule: constant
data:
  class_path: lkd.data.MNISTDataModule
checkpoint:
  monitor: null
"""


def run_ddp(tmp_path, tiny_data_args, sync: str = "null"):
    """Fit a DKVB (keys moving by EMA at every step: no key callback) on 2 processes; each saves its DKVB."""
    out = tmp_path / "ranks"
    config = tmp_path / "ddp.yaml"
    config.write_text(DDP_CONFIG.format(out=out, sync=sync))
    args = [sys.executable, "-m", "lkd", "fit", "-c", str(config), *tiny_data_args]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.slow
def test_two_process_ddp_keeps_one_codebook(tmp_path, tiny_data_args):
    rank0, rank1 = run_ddp(tmp_path, tiny_data_args)
    assert rank0["world_size"] == rank1["world_size"] == 2
    torch.testing.assert_close(rank0["keys"], rank1["keys"], rtol=0, atol=1e-6)
    torch.testing.assert_close(rank0["values"], rank1["values"])  # gradients all-reduced by DDP


@pytest.mark.slow
def test_without_sync_the_codebooks_drift_apart(tmp_path, tiny_data_args):
    rank0, rank1 = run_ddp(tmp_path, tiny_data_args, sync="false")
    assert not torch.allclose(rank0["keys"], rank1["keys"])  # so the test above can fail
