"""MNIST distillation benchmark: teacher, student alone, student distilled, over several seeds.

    python benchmarks/mnist_kd.py                       # 3 seeds, a teacher per seed, config epochs
    python benchmarks/mnist_kd.py --shared-teacher --teacher-epochs 15 --student-epochs 20

Writes the "MNIST distillation" section of BENCHMARKS.md: test accuracy mean ± std (best checkpoints),
parameters, CPU inference time for the 10,000 test images (median of 7 passes, all models taking turns, so a
noisy machine slows them alike) and the speed ratio to the teacher measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import command, machine, write_section  # noqa: E402

from lkd.pipelines.mnist_kd import CONFIG_DIR, run, time_models, train_and_test  # noqa: E402


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher-epochs", type=int, default=None)
    parser.add_argument("--student-epochs", type=int, default=None)
    parser.add_argument("--shared-teacher", action="store_true", help="train one teacher (first seed) for all seeds")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    parser.add_argument("--reuse", action="store_true", help="test checkpoints an earlier run left in --workdir")
    parser.add_argument("--no-dkvb", action="store_true", help="skip the DKVB student")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lkd-mnist-bench-"))

    rows: dict[str, list] = {}
    teacher_ckpt = None
    if args.shared_teacher:
        teacher = train_and_test("teacher", CONFIG_DIR / "teacher.yaml", workdir, args.seeds[0], args.teacher_epochs,
                                 reuse=args.reuse)
        rows["teacher"] = [teacher]
        teacher_ckpt = str(workdir / "checkpoints" / f"teacher-seed{args.seeds[0]}.ckpt")
    for seed in args.seeds:
        for result in run(seed, workdir, args.teacher_epochs, args.student_epochs, teacher_ckpt=teacher_ckpt,
                          with_dkvb=not args.no_dkvb, reuse=args.reuse):
            rows.setdefault(result.name, []).append(result)
            print(f"seed {seed}: {result.name} test acc {100 * result.test_acc:.2f} %", flush=True)
    time_models([r for results in rows.values() for r in results])

    teacher_time = statistics.median(r.infer_s for r in rows["teacher"])
    table = [
        "| model | config | runs | test acc (%) mean ± std | per seed (%) | params | params / teacher | CPU inference 10k (s, median) | speed vs teacher |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    teacher_params = rows["teacher"][0].params
    for name, results in rows.items():
        accs = [100 * r.test_acc for r in results]
        infer = statistics.median(r.infer_s for r in results)
        table.append(
            f"| {name} | `{results[0].config}` | {len(results)} | {mean_std(accs)} | {', '.join(f'{a:.2f}' for a in accs)} | "
            f"{results[0].params:,} | {results[0].params / teacher_params:.3f} | {infer:.3f} | {teacher_time / infer:.2f}× |"
        )
    teacher_note = (
        f"one teacher (seed {args.seeds[0]}) shared by all student seeds" if args.shared_teacher else "a teacher per seed"
    )
    body = "\n".join(
        [
            f"Command: `{command()}`",
            "",
            f"Machine: {machine()}",
            "",
            f"Seeds {args.seeds}; {teacher_note}. Epochs: teacher {args.teacher_epochs or 'config'}, students "
            f"{args.student_epochs or 'config'}; students alone and distilled use the same data, augmentation "
            "(2-pixel shifts), optimiser and epochs. Accuracy on the 10,000 MNIST test images, each model on its "
            "best validation checkpoint. Inference: eval mode, batches of 1,000, every model of the table taking turns, "
            "median of 7 passes per model.",
            "",
            *table,
        ]
    )
    print(body)
    if not args.no_write:
        write_section("MNIST distillation", body)


if __name__ == "__main__":
    main()
