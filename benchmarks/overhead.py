"""Framework overhead: one distillation epoch through Lightning vs a plain PyTorch loop doing the same work.

    python benchmarks/overhead.py [--repeats 3] [--train-size 20000]

Same process, same data tensors, same teacher and student (the configs' architectures), same optimiser,
KD loss and augmentation. The Lightning side is ``DistillModule`` + ``MNISTDataModule`` in a ``Trainer`` with
a TensorBoard logger (no validation, no checkpointing, no progress bar, which a user can also switch off).
Both sides alternate ``--repeats`` times after a burn-in; the ratio of the medians is reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import command, machine, write_section  # noqa: E402

from lkd.data import MNISTDataModule  # noqa: E402
from lkd.data.transforms import normalize_uint8, random_shift  # noqa: E402
from lkd.losses import hinton_kd_loss  # noqa: E402
from lkd.models import ConvNet  # noqa: E402
from lkd.modules import DistillModule  # noqa: E402

student_net = partial(ConvNet, channels=(16, 32), convs_per_block=1, downsample="stride", hidden=128, batch_norm=False)
teacher_net = partial(ConvNet, channels=(32, 64), convs_per_block=1, downsample="pool", hidden=768, dropout=0.3)


def lightning_epoch(data: MNISTDataModule, logdir: str) -> float:
    module = DistillModule(student_net, teacher_net, temperature=4.0, alpha=0.9, optimizer=partial(torch.optim.Adam, lr=3e-3))
    trainer = pl.Trainer(
        max_epochs=1, limit_val_batches=0, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, logger=pl.loggers.TensorBoardLogger(logdir), num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    return time.perf_counter() - start


def plain_epoch(data: MNISTDataModule) -> float:
    student, teacher = student_net(10), teacher_net(10).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    loader = data.train_dataloader()
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=len(loader))
    start = time.perf_counter()
    for step, (images, labels) in enumerate(loader):
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
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    data = MNISTDataModule(train_size=args.train_size, val_size=1000, batch_size=128, max_shift=2)
    data.setup("fit")
    logdir = tempfile.mkdtemp(prefix="lkd-overhead-")
    pl.seed_everything(0, verbose=False)
    burn_in = MNISTDataModule(train_size=2000, val_size=100, batch_size=128, max_shift=2)
    burn_in.setup("fit")
    lightning_epoch(burn_in, logdir), plain_epoch(burn_in)
    times = {"lightning": [], "plain": []}
    for _ in range(args.repeats):
        times["plain"].append(plain_epoch(data))
        times["lightning"].append(lightning_epoch(data, logdir))
        print({k: [round(t, 2) for t in v] for k, v in times.items()}, flush=True)
    plain, light = statistics.median(times["plain"]), statistics.median(times["lightning"])
    steps = len(data.train_dataloader())
    body = "\n".join(
        [
            f"Command: `{command()}`",
            "",
            f"Machine: {machine()}",
            "",
            f"One distillation epoch ({args.train_size:,} MNIST images, {steps} steps of 128; CNN teacher 2.44 M "
            f"params frozen, CNN student 207 k; Adam + one-cycle; 2-pixel shifts), median of {args.repeats} "
            "alternating runs in one process after a burn-in.",
            "",
            "| loop | epoch time (s, median) | runs (s) | ratio to plain PyTorch |",
            "|---|---|---|---|",
            f"| plain PyTorch | {plain:.2f} | {', '.join(f'{t:.2f}' for t in times['plain'])} | 1.00× |",
            f"| Lightning (`DistillModule`) | {light:.2f} | {', '.join(f'{t:.2f}' for t in times['lightning'])} | {light / plain:.2f}× |",
        ]
    )
    print(body)
    if not args.no_write:
        write_section("Framework overhead", body)


if __name__ == "__main__":
    main()
