"""Teacher-cache benchmark (MNIST): distillation reading cached teacher logits vs a live teacher vs the student alone.

    OMP_NUM_THREADS=1 python benchmarks/teacher_cache.py                 # needs checkpoints/mnist/teacher.ckpt
    OMP_NUM_THREADS=1 python benchmarks/teacher_cache.py --timing-batches 50 --repeats 2 --epochs 1 --no-write

Models and data come from ``configs/mnist/student_kd_cached.yaml`` (the teacher and KD student) and
``configs/mnist/student_scratch.yaml`` (the student alone), all three without shifts (a cache holds the
logits of unaugmented images). Stages:

1. build the cache (``lkd cache-teacher``'s code): the teacher over the 55,000 train + 5,000 val images;
2. timing: a burn-in epoch per mode, then ``--repeats`` rounds in which the three modes take turns, each a
   training epoch of ``--timing-batches`` batches (no validation); median seconds and the ratio to the
   student alone, measured in the same run;
3. accuracy: each mode trained ``--epochs`` full epochs from the same seed, final weights on the 10,000 test
   images.

Writes the "Teacher cache" / "MNIST" subsection of BENCHMARKS.md (``benchmarks/teacher_cache_lm.py`` writes the
language-model one).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from report import command, machine, write_subsection  # noqa: E402

from lkd.cache import TeacherCache, build_teacher_cache  # noqa: E402
from lkd.cli import LKDCLI  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "mnist"
FULL_EPOCH_BATCHES = 430  # 55,000 training images in batches of 128
MODES = ("student only", "distillation, live teacher", "distillation, cached teacher")


class EpochTimer(Callback):
    """Wall-clock seconds of each training epoch (setup, data loading into memory and validation excluded)."""

    def __init__(self):
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds.append(time.perf_counter() - self._start)


def build(mode: str, args, cache_path: Path, seed: int):
    """(model, datamodule) of a mode, from the configs, with this benchmark's overrides."""
    config = CONFIGS / ("student_scratch.yaml" if mode == "student only" else "student_kd_cached.yaml")
    overrides = [f"--seed_everything={seed}", f"--data.init_args.seed={args.data_seed}", "--data.init_args.max_shift=0"]
    if mode != "student only":
        overrides.append(f"--model.init_args.teacher_ckpt={args.teacher_ckpt}")
        cache = str(cache_path) if mode == "distillation, cached teacher" else "null"
        overrides.append(f"--model.init_args.teacher_cache={cache}")
    cli = LKDCLI(args=["-c", str(config), *overrides], run=False)
    return cli.model, cli.datamodule


def trainer(root: Path, **kwargs) -> pl.Trainer:
    settings = dict(default_root_dir=str(root), logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0)
    return pl.Trainer(**{**settings, **kwargs})


def timed_epoch(mode: str, args, cache_path: Path, root: Path, batches: int) -> float:
    model, data = build(mode, args, cache_path, seed=0)
    timer = EpochTimer()
    trainer(root, max_epochs=1, limit_train_batches=batches, limit_val_batches=0, callbacks=[timer]).fit(model, datamodule=data)
    return timer.seconds[0]


def accuracy_run(mode: str, args, cache_path: Path, root: Path) -> float:
    model, data = build(mode, args, cache_path, seed=args.seed)
    t = trainer(root, max_epochs=args.epochs)
    t.fit(model, datamodule=data)
    return float(t.test(model, datamodule=data, verbose=False)[0]["test/acc"])


def lookup_microseconds(cache: TeacherCache, batch_size: int = 128, calls: int = 300) -> float:
    """Median time of one cache read (ids → fp32 logits) for random training batches."""
    ids = cache.content["splits"]["train"]["sample_ids"]
    generator = torch.Generator().manual_seed(0)
    batches = [ids[torch.randint(len(ids), (batch_size,), generator=generator)] for _ in range(calls)]
    cache.logits("train", batches[0])  # builds the id → row map once
    times = []
    for batch in batches:
        started = time.perf_counter()
        cache.logits("train", batch)
        times.append(time.perf_counter() - started)
    return 1e6 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher-ckpt", default="checkpoints/mnist/teacher.ckpt")
    parser.add_argument("--timing-batches", type=int, default=150, help="training batches (of 128) per timed epoch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2, help="full epochs of the accuracy runs (0 = skip them)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-seed", type=int, default=42)
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    if not Path(args.teacher_ckpt).is_file():
        sys.exit(f"teacher checkpoint {args.teacher_ckpt} not found. HINT: lkd fit --config configs/mnist/teacher.yaml, "
                 "or pass --teacher-ckpt")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lkd-cache-bench-"))
    cache_path = workdir / "teacher_logits.pt"

    # 1. the cache
    model, data = build("distillation, cached teacher", args, cache_path, seed=0)
    data.prepare_data()
    data.setup("fit")
    started = time.perf_counter()
    build_teacher_cache(model, data, cache_path, dtype=args.dtype, overwrite=True)
    build_s = time.perf_counter() - started
    cache = TeacherCache.load(cache_path)
    rows = sum(len(s["sample_ids"]) for s in cache.content["splits"].values())
    max_err = max(s["max_abs_error"] for s in cache.content["splits"].values())
    print(f"cache: {rows} rows in {build_s:.1f} s, {cache.bytes_per_example():.0f} B/example, max |err| {max_err:.2e}", flush=True)
    lookup_us = lookup_microseconds(cache)

    # 2. timing: burn-in, then the modes take turns
    for mode in MODES:
        timed_epoch(mode, args, cache_path, workdir / "burn-in", batches=max(args.timing_batches // 5, 5))
    seconds: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(args.repeats):
        for mode in MODES:
            seconds[mode].append(timed_epoch(mode, args, cache_path, workdir / "timing", args.timing_batches))
            print(f"round {r}: {mode}: {seconds[mode][-1]:.2f} s", flush=True)
    median = {m: statistics.median(v) for m, v in seconds.items()}

    # 3. accuracy
    acc = {}
    if args.epochs > 0:
        for mode in MODES:
            acc[mode] = accuracy_run(mode, args, cache_path, workdir / "accuracy")
            print(f"{mode}: test acc {100 * acc[mode]:.2f} %", flush=True)

    base = median["student only"]
    table = [
        f"| mode | training epoch of {args.timing_batches} batches (s, median of {args.repeats}) | per round (s) | "
        f"vs student only | test acc after {args.epochs} epochs (%) |",
        "|---|---|---|---|---|",
    ]
    for mode in MODES:
        accuracy = f"{100 * acc[mode]:.2f}" if mode in acc else "not run"
        table.append(f"| {mode} | {median[mode]:.2f} | {', '.join(f'{s:.2f}' for s in seconds[mode])} | "
                     f"{median[mode] / base:.2f}× | {accuracy} |")
    file_bytes = cache_path.stat().st_size
    teacher_epoch_s = (median["distillation, live teacher"] - base) / args.timing_batches * FULL_EPOCH_BATCHES
    body = "\n".join([
        f"Command: `OMP_NUM_THREADS={torch.get_num_threads()} {command()}`",
        "",
        f"Machine: {machine()}",
        "",
        "Models and data of `configs/mnist/student_kd_cached.yaml` (teacher: CNN, 2.44 M parameters; KD student: "
        "207 k) and `configs/mnist/student_scratch.yaml` (the same student alone), all without shift augmentation "
        "(a cache holds the logits of unaugmented images), batches of 128, fp32 training on the CPU. Timing: a burn-in "
        "epoch per mode, then the three modes take turns, each a fresh model trained for one epoch of the batches "
        "named (no validation); the ratio is to the student alone in the same run. Accuracy: each mode trained from "
        f"the same seed ({args.seed}) for the epochs named (validation each epoch), final weights, 10,000 test images; "
        "one seed, so a difference of a few tenths of a percent is within noise.",
        "",
        *table,
        "",
        f"Cache: {args.dtype}, {rows:,} rows (train + val), {cache.bytes_per_example():.0f} bytes per example "
        f"(10 logits + an int64 sample id; file {file_bytes / 1e6:.2f} MB); largest |stored − fp32| logit error "
        f"{max_err:.2e}. Reading a batch of 128 from it takes {lookup_us:.0f} µs "
        f"({100 * lookup_us * 1e-6 / (base / args.timing_batches):.2f} % of a student-only step), so the rest of the "
        "cached run's extra time is the distillation module's own per-step work (the KD loss, two more logged terms), "
        "not the cache. On a shared machine compare the per-round columns before the medians. "
        f"Built once in {build_s:.1f} s (the teacher over every train and val image, batches of 1,000), "
        f"while the live teacher adds about {teacher_epoch_s:.0f} s to every full epoch ({FULL_EPOCH_BATCHES} batches, "
        "extrapolated from the timed epochs).",
    ])
    print(body)
    if not args.no_write:
        write_subsection("Teacher cache", "MNIST", body)  # beside the language-model subsection


if __name__ == "__main__":
    main()
