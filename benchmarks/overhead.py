"""Framework overhead: one distillation epoch through Lightning vs a plain PyTorch loop doing the same work.

    python benchmarks/overhead.py [--repeats 3] [--train-size 20000]
    python benchmarks/overhead.py --repeats 1 --train-size 2000 --results-dir /tmp/lkd-results   # a quick trial

Same process, same data tensors, same teacher and student (the configs' architectures), same optimiser,
KD loss and augmentation. The Lightning side is ``DistillModule`` + ``MNISTDataModule`` in a ``Trainer`` with
a TensorBoard logger (no validation, no checkpointing, no progress bar, which a user can also switch off).
Both sides alternate ``--repeats`` times after a burn-in; the ratio of the medians is reported in
``benchmarks/results/overhead.json`` and the "Framework overhead" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.report import column, table  # noqa: E402
from lkd.data import MNISTDataModule  # noqa: E402
from lkd.data.transforms import normalize_uint8, random_shift  # noqa: E402
from lkd.losses import hinton_kd_loss  # noqa: E402
from lkd.models import ConvNet  # noqa: E402
from lkd.modules import DistillModule  # noqa: E402
from lkd.teacher import Teacher  # noqa: E402

student_net = partial(ConvNet, channels=(16, 32), convs_per_block=1, downsample="stride", hidden=128, batch_norm=False)
teacher_net = partial(ConvNet, channels=(32, 64), convs_per_block=1, downsample="pool", hidden=768, dropout=0.3)


def lightning_epoch(data: MNISTDataModule, logdir: str) -> float:
    module = DistillModule(student_net, Teacher(teacher_net(10)), temperature=4.0, alpha=0.9, optimizer=partial(torch.optim.Adam, lr=3e-3))
    trainer = common.quiet_trainer(max_epochs=1, logger=pl.loggers.TensorBoardLogger(logdir))
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    return time.perf_counter() - start


def plain_epoch(data: MNISTDataModule) -> float:
    student, teacher = student_net(10), teacher_net(10).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    loader = data.train_dataloader()
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=len(loader))
    start = time.perf_counter()
    for step, (images, labels, _sample_ids) in enumerate(loader):
        images = random_shift(images[:, None], data.max_shift, torch.Generator().manual_seed(step))
        images = normalize_uint8(images)
        with torch.no_grad():
            t_logits = teacher(images)
        s_logits = student(images)
        loss, _ = hinton_kd_loss(s_logits, t_logits, labels, temperature=4.0, alpha=0.9)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=20_000)
    common.add_output_options(parser)
    args = parser.parse_args()
    data = MNISTDataModule(train_size=args.train_size, val_size=1000, batch_size=128, max_shift=2)
    data.setup("fit")
    logdir = tempfile.mkdtemp(prefix="lkd-overhead-")
    pl.seed_everything(0, verbose=False)
    burn_in = MNISTDataModule(train_size=2000, val_size=100, batch_size=128, max_shift=2)
    burn_in.setup("fit")
    timing = common.paired_timing(
        {"plain": lambda: plain_epoch(data), "lightning": lambda: lightning_epoch(data, logdir)}, baseline="plain",
        repeats=args.repeats, burn_in={"plain": lambda: plain_epoch(burn_in), "lightning": lambda: lightning_epoch(burn_in, logdir)},
    )
    steps = len(data.train_dataloader())
    result = common.new_result("Framework overhead", args, seeds=[0])
    result["intro"] = [
        f"One distillation epoch ({args.train_size:,} MNIST images, {steps} steps of 128; CNN teacher 2.44 M "
        f"params frozen, CNN student 207 k; Adam + one-cycle; 2-pixel shifts), median of {args.repeats} "
        "alternating runs in one process after a burn-in."
    ]
    columns = [column("loop", "loop"), *common.timing_columns("epoch time (s, median)", "runs (s)", "ratio to plain PyTorch")]
    rows = [{"loop": "plain PyTorch", **timing.row("plain")}, {"loop": "Lightning (`DistillModule`)", **timing.row("lightning")}]
    result["tables"] = [table(columns, rows)]
    common.finish(result, "overhead", args)


if __name__ == "__main__":
    main()
