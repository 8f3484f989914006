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

Writes benchmarks/results/teacher_cache.json and the "Teacher cache" / "MNIST" subsection of BENCHMARKS.md
(``benchmarks/teacher_cache_lm.py`` writes the language-model one).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.report import PERCENT, column, table  # noqa: E402
from lkd.cache import TeacherCache  # noqa: E402
from lkd.cli import LKDCLI  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "mnist"
FULL_EPOCH_BATCHES = 430  # 55,000 training images in batches of 128
MODES = ("student only", "distillation, live teacher", "distillation, cached teacher")


def build(mode: str, args, cache_path: Path, seed: int):
    """(model, datamodule) of a mode, from the configs, with this benchmark's overrides."""
    config = CONFIGS / ("student_scratch.yaml" if mode == "student only" else "student_kd_cached.yaml")
    overrides = [f"--seed_everything={seed}", f"--data.init_args.seed={args.data_seed}", "--data.init_args.max_shift=0"]
    if mode != "student only":
        overrides.append(f"--model.init_args.teacher.checkpoint={args.teacher_ckpt}")
        cache = str(cache_path) if mode == "distillation, cached teacher" else "null"
        overrides.append(f"--model.init_args.teacher.cache={cache}")
    cli = LKDCLI(args=["-c", str(config), *overrides], run=False)
    return cli.model, cli.datamodule


def timed_epoch(mode: str, args, cache_path: Path, root: Path, batches: int) -> float:
    model, data = build(mode, args, cache_path, seed=0)
    timer = common.train_timer()
    common.quiet_trainer(default_root_dir=str(root), max_epochs=1, limit_train_batches=batches, callbacks=[timer]).fit(
        model, datamodule=data)
    return timer.epoch_seconds[0]


def accuracy_run(mode: str, args, cache_path: Path, root: Path) -> float:
    model, data = build(mode, args, cache_path, seed=args.seed)
    t = common.quiet_trainer(default_root_dir=str(root), max_epochs=args.epochs, limit_val_batches=None)  # validates
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
    common.add_output_options(parser)
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
    model.write_teacher_cache(data, cache_path, dtype=args.dtype, overwrite=True)
    build_s = time.perf_counter() - started
    cache = TeacherCache.load(cache_path)
    rows_cached = sum(len(s["sample_ids"]) for s in cache.content["splits"].values())
    max_err = float(max(s["max_abs_error"] for s in cache.content["splits"].values()))
    print(f"cache: {rows_cached} rows in {build_s:.1f} s, {cache.bytes_per_example():.0f} B/example, max |err| {max_err:.2e}", flush=True)
    lookup_us = lookup_microseconds(cache)

    # 2. timing: burn-in, then the modes take turns
    burn_in_batches = max(args.timing_batches // 5, 5)
    timing = common.paired_timing(
        {m: lambda m=m: timed_epoch(m, args, cache_path, workdir / "timing", args.timing_batches) for m in MODES},
        baseline="student only", repeats=args.repeats,
        burn_in={m: lambda m=m: timed_epoch(m, args, cache_path, workdir / "burn-in", burn_in_batches) for m in MODES},
    )

    # 3. accuracy
    acc = {}
    if args.epochs > 0:
        for mode in MODES:
            acc[mode] = accuracy_run(mode, args, cache_path, workdir / "accuracy")
            print(f"{mode}: test acc {100 * acc[mode]:.2f} %", flush=True)

    base = timing.median("student only")
    columns = [
        column("mode", "mode"),
        *common.timing_columns(f"training epoch of {args.timing_batches} batches (s, median of {args.repeats})",
                               "per round (s)", "vs student only"),
        column(f"test acc after {args.epochs} epochs (%)", "test_acc", **PERCENT, missing="not run"),
    ]
    rows = [{"mode": mode, **timing.row(mode), "test_acc": acc.get(mode)} for mode in MODES]
    file_bytes = cache_path.stat().st_size
    teacher_epoch_s = (timing.median("distillation, live teacher") - base) / args.timing_batches * FULL_EPOCH_BATCHES
    result = common.new_result("Teacher cache", args, subsection="MNIST", seeds=[args.seed], threads=True)
    result["intro"] = [
        "Models and data of `configs/mnist/student_kd_cached.yaml` (teacher: CNN, 2.44 M parameters; KD student: "
        "207 k) and `configs/mnist/student_scratch.yaml` (the same student alone), all without shift augmentation "
        "(a cache holds the logits of unaugmented images), batches of 128, fp32 training on the CPU. Timing: a burn-in "
        "epoch per mode, then the three modes take turns, each a fresh model trained for one epoch of the batches "
        "named (no validation); the ratio is to the student alone in the same run. Accuracy: each mode trained from "
        f"the same seed ({args.seed}) for the epochs named (validation each epoch), final weights, 10,000 test images; "
        "one seed, so a difference of a few tenths of a percent is within noise."
    ]
    result["tables"] = [table(columns, rows)]
    result["notes"] = [
        f"Cache: {args.dtype}, {rows_cached:,} rows (train + val), {cache.bytes_per_example():.0f} bytes per example "
        f"(10 logits + an int64 sample id; file {file_bytes / 1e6:.2f} MB); largest |stored − fp32| logit error "
        f"{max_err:.2e}. Reading a batch of 128 from it takes {lookup_us:.0f} µs "
        f"({100 * lookup_us * 1e-6 / (base / args.timing_batches):.2f} % of a student-only step), so the rest of the "
        "cached run's extra time is the distillation module's own per-step work (the KD loss, two more logged terms), "
        "not the cache. On a shared machine compare the per-round columns before the medians. "
        f"Built once in {build_s:.1f} s (the teacher over every train and val image, batches of 1,000), "
        f"while the live teacher adds about {teacher_epoch_s:.0f} s to every full epoch ({FULL_EPOCH_BATCHES} batches, "
        "extrapolated from the timed epochs)."
    ]
    result["data"] = {"cache": {"dtype": args.dtype, "rows": rows_cached, "bytes_per_example": float(cache.bytes_per_example()),
                                "file_bytes": file_bytes, "max_abs_error": max_err, "lookup_us": lookup_us,
                                "build_s": build_s, "live_teacher_full_epoch_s": teacher_epoch_s}}
    common.finish(result, "teacher_cache", args)


if __name__ == "__main__":
    main()
