"""Multi-device benchmark (MNIST distillation): 2 CPU processes (DDP, gloo) vs 1 process on the same global batch.

    python benchmarks/ddp.py                     # needs checkpoints/mnist/teacher.ckpt; results/ddp.json, "Multi-device"
    python benchmarks/ddp.py --epochs 1 --no-write

Both runs are ``lkd fit -c configs/mnist/student_kd.yaml`` with the same seed, epochs and global batch
(1 process × 128, or 2 processes × 64 with ``trainer.strategy: ddp``), on the same cores (each DDP process
gets half the threads). Each final student is then tested by ``lkd test`` on one process over the 10,000
test images. Reported: final validation and test accuracy and loss, the fit's wall-clock time (process
start to exit) as a ratio to the one-process run, and the peak resident memory of the largest process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.report import PERCENT, RATIO, column, table  # noqa: E402
from lkd.evaluation import read_scalars  # noqa: E402

ROOT = common.ROOT
CONFIG = ROOT / "configs" / "mnist" / "student_kd.yaml"
COLUMNS = [
    column("run", "run"), column("val acc (%)", "val/acc", **PERCENT), column("val loss", "val/loss", format="{:.4f}"),
    column("test acc (%)", "test/acc", **PERCENT), column("test loss", "test/loss", format="{:.4f}"),
    column("fit wall-clock (s)", "seconds", format="{:.0f}"), column("vs 1 process", "vs_one_process", format=RATIO),
    column("peak memory per process (MiB)", "peak_mb", format="{:.0f}"),
]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--global-batch", type=int, default=128)
    p.add_argument("--teacher", default="checkpoints/mnist/teacher.ckpt")
    p.add_argument("--out", type=Path, default=Path("runs/ddp_benchmark"))
    common.add_output_options(p)
    return p.parse_args()


# The command runs under this wrapper, which reports the peak RSS of its own children (lkd and the processes
# lkd waits for) on its last stderr line, so each run's peak is its own.
PEAK_WRAPPER = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)")


def lkd(*args: str, threads: int) -> tuple[float, float]:
    """Run the ``lkd`` command; (wall-clock seconds, peak RSS in MiB of its largest process)."""
    env = {**os.environ, **common.OFFLINE_ENV, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, sys.executable, "-m", "lkd", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"lkd {' '.join(args[:3])} failed:\n{proc.stderr[-3000:]}")
    return seconds, int(proc.stderr.strip().splitlines()[-1]) / 1024


def run(processes: int, args) -> dict:
    out = args.out / f"{processes}proc"
    shared = [f"--model.init_args.teacher.checkpoint={args.teacher}", f"--trainer.default_root_dir={out}",
              f"--trainer.logger.init_args.save_dir={out}", "--trainer.enable_progress_bar=false"]
    fit = ["fit", "-c", str(CONFIG), *shared, f"--trainer.max_epochs={args.epochs}",
           f"--data.init_args.batch_size={args.global_batch // processes}", f"--best_checkpoint.path={out}/best.ckpt"]
    if processes > 1:
        fit += ["--trainer.accelerator=cpu", f"--trainer.devices={processes}", "--trainer.strategy=ddp"]
    cores = os.cpu_count() or 1
    seconds, peak = lkd(*fit, threads=max(1, cores // processes))
    latest = next(out.rglob("latest.ckpt"))
    lkd("test", "-c", str(CONFIG), *shared, f"--ckpt_path={latest}", threads=cores)
    scalars = read_scalars(out)
    last = {tag: scalars[tag][-1][1] for tag in ("val/acc", "val/loss", "test/acc", "test/loss") if tag in scalars}
    return {"seconds": seconds, "peak_mb": peak, **last}


def section(results: dict, args) -> dict:
    """The result file of the "Multi-device" section: a row per process count, time ratio to one process."""
    one = results[1]
    result = common.new_result("Multi-device", args, seeds=[42])
    result["intro"] = [
        f"`configs/mnist/student_kd.yaml` (CNN teacher from `{args.teacher}`, 207 k-parameter student, T = 4, α = 0.9, "
        f"shift augmentation), {args.epochs} epochs on 55,000 training images, global batch {args.global_batch}, seed 42: "
        "one process, and two CPU processes with Lightning's DDP strategy (gloo) at half the batch each. The cores are "
        "shared: each DDP process gets half the threads. Validation: 5,000 images, logged by the fit (reduced over both "
        "processes under DDP); test: the final (latest) checkpoint on the 10,000 test images, one process. Time: the "
        "whole `lkd fit` (process start to exit) as a ratio to the one-process run. Memory: peak resident set of the "
        "largest process. One seed: the runs see the same examples per epoch in different orders, so the accuracy "
        "difference is within seed noise."
    ]
    rows = [{"run": f"{n} process{'es (ddp)' if n > 1 else ''}", "processes": n, **r,
             "vs_one_process": r["seconds"] / one["seconds"]} for n, r in results.items()]
    result["tables"] = [table(COLUMNS, rows)]
    return result


def main() -> None:
    args = parse_args()
    if not (ROOT / args.teacher).is_file():
        raise SystemExit(f"teacher checkpoint {args.teacher} not found. HINT: lkd fit -c configs/mnist/teacher.yaml")
    results = {}
    for processes in (1, 2):
        results[processes] = run(processes, args)
        print(processes, results[processes], flush=True)
    common.finish(section(results, args), "ddp", args)


if __name__ == "__main__":
    main()
