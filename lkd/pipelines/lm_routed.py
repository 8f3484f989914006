"""Language models end to end: the tiny MoE teacher, then students distilled with plain KL and with the
student-aware router, each tested (perplexity, retention, speed). Used by the Kaggle notebook.

    python -m lkd.pipelines.lm_routed --workdir /tmp/lm --smoke

Every stage is an ordinary ``lkd fit`` of a YAML under ``configs/lm/`` run in-process; overrides change only
epochs, batch limits, output folders and precision (and, with ``smoke``, shrink the vocabulary to UTF-8
bytes so a CPU finishes in seconds).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lkd.cli import LKDCLI

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "lm"
STUDENTS = ("student_scratch", "student_kd", "student_routed")


def _smoke_args(config: str) -> list[str]:
    """Byte tokenizer and a 257-token vocabulary for every model of ``config``; tiny blocks and batches."""
    # the teacher's network is model.init_args.teacher.model (lkd.teacher.Teacher)
    roles = ("model",) if config in ("teacher_moe_tiny", "student_scratch") else ("student", "teacher.model")
    args = ["--model.init_args.tokenizer=bytes", "--data.init_args.block_size=32", "--data.init_args.batch_size=4",
            "--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2",
            "--trainer.limit_test_batches=2"]
    return args + [f"--model.init_args.{role}.init_args.vocab_size=257" for role in roles]


def fit_and_test(config: str, workdir: Path, *, precision: str, smoke: bool, seed: int, extra: list[str] = ()) -> dict:
    """``lkd fit`` then ``test`` on the best checkpoint; returns the test metrics (floats)."""
    published = workdir / f"{config}.ckpt"
    cli = LKDCLI(args=[
        "fit", "-c", str(CONFIG_DIR / f"{config}.yaml"), f"--seed_everything={seed}", f"--trainer.precision={precision}",
        f"--trainer.default_root_dir={workdir}", f"--trainer.logger.init_args.save_dir={workdir}",
        f"--best_checkpoint.path={published}", *(_smoke_args(config) if smoke else []), *extra,
    ])
    (metrics,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=str(published), verbose=False)
    return {k: float(v) for k, v in metrics.items()}


def run_lm_track(workdir: Path, *, precision: str = "32-true", smoke: bool = False, seed: int = 42) -> dict:
    """Teacher, then the students of :data:`STUDENTS` against it. Returns ``{"rows": {name: metrics}, "table": md}``."""
    workdir = Path(workdir)
    rows = {"teacher_moe_tiny": fit_and_test("teacher_moe_tiny", workdir, precision=precision, smoke=smoke, seed=seed)}
    teacher = [f"--model.init_args.teacher.checkpoint={workdir / 'teacher_moe_tiny.ckpt'}"]
    for name in STUDENTS:
        rows[name] = fit_and_test(name, workdir, precision=precision, smoke=smoke, seed=seed,
                                  extra=[] if name == "student_scratch" else teacher)
    return {"rows": rows, "table": format_table(rows)}


def format_table(rows: dict[str, dict]) -> str:
    """Markdown: test perplexity and, for distilled students, retention against the teacher."""
    lines = ["| model | test ppl | KL(teacher ‖ student) | top-1 agreement | student/teacher tokens/s |", "|---|---|---|---|---|"]
    for name, m in rows.items():
        def cell(key, fmt="{:.3f}"):
            return fmt.format(m[key]) if key in m else "–"

        lines.append(f"| {name} | {cell('test/ppl', '{:.2f}')} | {cell('test/kl')} | {cell('test/top1_agreement')} | "
                     f"{cell('test/speed_ratio', '{:.2f}×')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("runs/lm_pipeline"))
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--smoke", action="store_true", help="byte vocabulary, a few batches: seconds on a CPU")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    print(run_lm_track(args.workdir, precision=args.precision, smoke=args.smoke, seed=args.seed)["table"])


if __name__ == "__main__":
    main()
