"""Learning-rate schedules (lkd.schedules): warm-up then linear / cosine decay by hand values, one-cycle,
constant = no scheduler, bad settings named, and stepping on optimizer steps inside a fit."""

from __future__ import annotations

import math
import re
from functools import partial

import pytest
import torch

from lkd.data import MNISTDataModule
from lkd.modules import ClassifierModule
from lkd.schedules import build_scheduler, lr_factor, schedule_problems, warmup_steps
from tests.helpers import tiny_mlp, tiny_trainer


def lrs_over(name: str, total: int, **kwargs) -> list[list[float]]:
    """Each group's lr at optimizer steps 0..total-1 (two groups: lr 1.0 and 0.5)."""
    w = torch.nn.Parameter(torch.zeros(1))
    v = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [w], "lr": 1.0}, {"params": [v], "lr": 0.5}])
    entry = build_scheduler(optimizer, name, total, **kwargs)
    assert entry["interval"] == "step"
    seen = []
    for _ in range(total):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        entry["scheduler"].step()
    return seen


def test_linear_warmup_then_decay_by_hand():
    # 10 steps, warm-up 0.2 -> 2 steps: (s + 1) / 3 during warm-up, then 1 - (s - 2) / 8
    got = [g[0] for g in lrs_over("linear", 10, warmup=0.2)]
    expected = [1 / 3, 2 / 3, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8]
    assert got == pytest.approx(expected, abs=1e-12)


def test_linear_decay_ends_at_min_lr_ratio_and_scales_every_group():
    got = lrs_over("linear", 5, warmup=0, min_lr_ratio=0.2)
    # 1 - s/5 rescaled to [0.2, 1]: 1, 0.84, 0.68, 0.52, 0.36; the 0.5 group gets half of each
    expected = [0.2 + 0.8 * (1 - s / 5) for s in range(5)]
    assert [g[0] for g in got] == pytest.approx(expected, abs=1e-12)
    assert [g[1] for g in got] == pytest.approx([0.5 * e for e in expected], abs=1e-12)
    assert lr_factor(5, warmup=0, total=5, shape="linear", min_ratio=0.2) == pytest.approx(0.2)


def test_cosine_warmup_then_half_cosine_by_hand():
    # 10 steps, warm-up of 2 steps (a count, not a fraction), then 0.5 (1 + cos(pi (s - 2) / 8))
    got = [g[0] for g in lrs_over("cosine", 10, warmup=2)]
    expected = [1 / 3, 2 / 3] + [0.5 * (1 + math.cos(math.pi * (s - 2) / 8)) for s in range(2, 10)]
    assert got == pytest.approx(expected, abs=1e-12)
    assert got[4] == pytest.approx(0.5 * (1 + math.sqrt(0.5)), abs=1e-12)  # a quarter of the decay: 0.8536
    assert lr_factor(6, warmup=2, total=10, shape="cosine") == pytest.approx(0.5)  # half way: 0.5
    assert lr_factor(10, warmup=2, total=10, shape="cosine", min_ratio=0.1) == pytest.approx(0.1)


def test_warmup_is_a_fraction_below_one_else_a_step_count():
    assert warmup_steps(0.1, 50) == 5
    assert warmup_steps(7, 50) == 7
    assert warmup_steps(500, 50) == 50  # never past the end
    assert warmup_steps(0, 50) == 0


def test_onecycle_peaks_at_each_groups_lr():
    got = lrs_over("onecycle", 100, warmup=0.5)  # onecycle has its own warm-up: `warmup` is ignored
    first = [g[0] for g in got]
    assert first[0] == pytest.approx(1.0 / 25)  # OneCycleLR starts at max_lr / div_factor (25)
    peak = max(range(100), key=first.__getitem__)
    assert first[peak] == pytest.approx(1.0, rel=1e-3) and 25 <= peak <= 32  # ~30 % of the steps
    assert max(g[1] for g in got) == pytest.approx(0.5, rel=1e-3)  # each group its own maximum
    assert first[-1] < 1e-3


def test_constant_is_no_scheduler():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert build_scheduler(optimizer, "constant", 100, warmup=0.1) is None


@pytest.mark.parametrize(
    "name, warmup, min_ratio, message",
    [
        ("cosin", 0.0, 0.0, r"lr_schedule must be one of \['linear', 'cosine', 'onecycle', 'constant'\], got 'cosin'"),
        ("linear", -0.5, 0.0, r"warmup must be >= 0 .* got -0\.5"),
        ("cosine", 0.0, 1.5, r"min_lr_ratio must be in \[0, 1\], got 1\.5"),
    ],
)
def test_bad_settings_name_the_value(name, warmup, min_ratio, message):
    (problem,) = schedule_problems(name, warmup, min_ratio)
    assert re.search(message, problem), problem


def test_bad_schedule_is_refused_when_the_module_is_built():
    assert len(schedule_problems("x", -1, 2)) == 3  # all collected
    with pytest.raises(ValueError, match=r"ClassifierModule: lr_schedule must be one of .* got 'cosin'"):
        ClassifierModule(tiny_mlp, lr_schedule="cosin")


def test_schedule_counts_optimizer_steps_under_gradient_accumulation(tmp_path, tiny_mnist):
    """8 batches, accumulating 2: 4 optimizer steps. A linear schedule over them ends exactly at 0."""
    module = ClassifierModule(tiny_mlp, optimizer=partial(torch.optim.SGD, lr=0.1), lr_schedule="linear")
    data = MNISTDataModule(str(tiny_mnist), train_size=400, val_size=50, batch_size=50)
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_val_batches=0, accumulate_grad_batches=2)
    trainer.fit(module, datamodule=data)
    (config,) = trainer.lr_scheduler_configs
    assert trainer.global_step == 4 and config.scheduler.last_epoch == 4  # stepped once per optimizer step
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # 0.1 * (1 - 4/4)
