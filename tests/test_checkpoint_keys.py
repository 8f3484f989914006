"""Checkpoints written before issue 28's regrouping still load (test, resume, export): the MNIST and GLUE
distillation modules built from their configs have the state_dict keys and shapes those checkpoints hold, recorded
from checkpoints that the code at b3c1493 wrote for the same configs and tiny overrides (the LM track:
tests/test_lm_checkpoint_keys.py)."""

from __future__ import annotations

import hashlib

import pytest

from lkd.cli import LKDCLI
from tests.conftest import CONFIGS
from tests.mnist_fixtures import mnist_tiny_args
from tests.glue_fixtures import tiny_data_args, tiny_model_args

MNIST_KD_KEYS = """
student.features.0.weight 16x1x3x3
student.features.0.bias 16
student.features.2.weight 32x16x3x3
student.features.2.bias 32
student.head.1.weight 128x1568
student.head.1.bias 128
student.head.4.weight 10x128
student.head.4.bias 10
teacher.model.features.0.weight 32x1x3x3
teacher.model.features.1.weight 32
teacher.model.features.1.bias 32
teacher.model.features.1.running_mean 32
teacher.model.features.1.running_var 32
teacher.model.features.1.num_batches_tracked
teacher.model.features.4.weight 64x32x3x3
teacher.model.features.5.weight 64
teacher.model.features.5.bias 64
teacher.model.features.5.running_mean 64
teacher.model.features.5.running_var 64
teacher.model.features.5.num_batches_tracked
teacher.model.head.1.weight 768x3136
teacher.model.head.1.bias 768
teacher.model.head.4.weight 10x768
teacher.model.head.4.bias 10
"""
GLUE_KD_KEYS = (162, "c4488551d143e83c")  # configs/glue/student_kd.yaml + tiny overrides: count, sha256 of "key shape" lines


def _lines(module) -> list[str]:
    return [f"{k} {'x'.join(map(str, v.shape))}".strip() for k, v in module.state_dict().items()]


def test_mnist_distillation_keys_are_those_of_before(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = LKDCLI(args=["-c", str(CONFIGS / "mnist" / "student_kd.yaml"), *mnist_tiny_args(tiny_mnist)], run=False)
    assert sorted(_lines(cli.model)) == sorted(line.strip() for line in MNIST_KD_KEYS.strip().splitlines())


@pytest.mark.parametrize("config", ["student_kd.yaml"])
def test_glue_distillation_keys_are_those_of_before(config, tiny_glue, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = CONFIGS / "glue" / config
    cli = LKDCLI(args=["-c", str(path), *tiny_model_args(path), *tiny_data_args(tiny_glue)], run=False)
    lines = sorted(_lines(cli.model))
    assert (len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]) == GLUE_KD_KEYS, lines[:10]
