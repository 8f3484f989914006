"""MNIST distillation benchmark: teacher, student alone, student distilled, over several seeds.

    python benchmarks/mnist_kd.py                       # 3 seeds, a teacher per seed, config epochs
    python benchmarks/mnist_kd.py --shared-teacher --teacher-epochs 15 --student-epochs 20
    python benchmarks/mnist_kd.py --shared-teacher --teacher-epochs 15 --student-epochs 20 --teacher-rotation 12 --teacher-scale 0.12
    python benchmarks/mnist_kd.py --shared-teacher --teacher-epochs 4 --student-epochs 6 --teacher-cache --pixel-dkvb
    python benchmarks/mnist_kd.py --few-labels --teacher-cache --workdir /tmp/bench_few   # the demo's setting and epochs, 3 seeds

Writes benchmarks/results/mnist_kd.json (all labels) or, with ``--few-labels``, mnist_kd_few_labels.json (the
demo's setting: 1,000 labels, the other training images a transfer set the teacher labels; a subsection of the
same section), and renders the "MNIST distillation" section of BENCHMARKS.md: test accuracy per seed and mean ±
std (best checkpoints), parameters, CPU inference time for the 10,000 test images (median of 7 passes, all
models taking turns, so a noisy machine slows them alike) and the speed ratio to the teacher measured in the same run.

Every model's result is appended to ``WORKDIR/progress.jsonl`` as soon as it is tested. An interrupted run goes
on with the same command plus ``--resume`` (same ``--workdir``): finished models are only tested again, the
others trained afresh (their partial checkpoints, and a retrained teacher's caches, are removed first).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.report import PERCENT, RATIO, column, table  # noqa: E402
from lkd.pipelines.mnist_kd import CONFIG_DIR, DEMO, RunResult, run, setting_tag, time_models, train_and_test  # noqa: E402

COLUMNS = [
    column("model", "model"), column("config", template="`{config}`"), column("runs", "runs"),
    column("test acc (%) mean ± std", "test_acc", aggregate="mean_std", **PERCENT),
    column("per seed (%)", "test_acc", aggregate="list", **PERCENT), column("params (+ DKVB keys)", "params", format="{:,}"),
    column("params / teacher", "params_vs_teacher", format="{:.3f}"),
    column("CPU inference 10k (s, median)", "inference_s", format="{:.3f}"),
    column("speed vs teacher", "speed_vs_teacher", format=RATIO),
]
FEW_LABELS_COLUMNS = [*COLUMNS[:2], column("training images: labelled + unlabelled", template="{labelled:,} + {unlabelled:,}"),
                      *COLUMNS[2:]]
# what each few-label row is, for the section's intro
FEW_LABELS_ROWS = {
    "teacher": "trained on all {train:,} labelled training images (the big model you already have)",
    "student_scratch": "the student alone on the {labelled:,} labelled images, no augmentation (the distilled student's recipe)",
    "student_kd": "the same student distilled from the teacher on the {labelled:,} labelled images plus the other "
                  "{unlabelled:,} without labels (soft targets only: the transfer set)",
    "student_scratch_shifts": "the student alone on the {labelled:,} labelled images with 2-pixel shifts (its best recipe here)",
    "student_kd_labelled_only": "distilled on the {labelled:,} labelled images only (soft targets, no transfer set)",
    "student_dkvb_encoder": "a DKVB on the frozen features of that seed's distilled student, its values distilled on the "
                            "same transfer set (keys fitted on every training image, no labels needed)",
}


MODELS = ("teacher", "student_scratch", "student_kd", "student_scratch_shifts", "student_kd_labelled_only",
          "student_dkvb_encoder", "student_dkvb_kd")


class Progress:
    """``WORKDIR/progress.jsonl``: one line per tested model (seed, setting, name, accuracy, ...), written at once."""

    def __init__(self, workdir: Path, setting: str):
        self.path, self.setting = workdir / "progress.jsonl", setting

    def done(self, seed: int) -> set[str]:
        """Models of ``seed`` in this setting already trained and tested."""
        if not self.path.is_file():
            return set()
        lines = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        return {r["name"] for r in lines if r["seed"] == seed and r["setting"] == self.setting}

    def record(self, seed: int, result: RunResult) -> None:
        row = {k: v for k, v in dataclasses.asdict(result).items() if k not in ("network", "infer_s")}
        with self.path.open("a") as f:
            f.write(json.dumps({"seed": seed, "setting": self.setting, **row}) + "\n")
        print(f"seed {seed}: {result.name} test acc {100 * result.test_acc:.2f} % ({result.seconds:.0f} s)", flush=True)


def clear_unfinished(workdir: Path, seed: int, tag: str, done: set[str], *, teacher_done: bool, shared_teacher: bool = False) -> None:
    """Before resuming a seed: remove the checkpoints this setting's models published without finishing (a best
    checkpoint is published after every improving epoch), and the teacher caches when the teacher is retrained
    (the seed's, or every seed's for a ``shared_teacher``)."""
    checkpoints = workdir / "checkpoints"
    for ckpt in checkpoints.glob(f"*-seed{seed}.ckpt"):
        stem = ckpt.name.removesuffix(f"-seed{seed}.ckpt")
        name = stem if stem == "teacher" or not tag else stem.removesuffix(tag) if stem.endswith(tag) else None
        if name in MODELS and name not in done:
            print(f"resume: {ckpt} is from an unfinished run; training {name} again", flush=True)
            ckpt.unlink()
    if not teacher_done:
        patterns = ["teacher_logits-seed*.pt"] if shared_teacher else [f"teacher_logits-seed{seed}.pt", f"teacher_logits-seed{seed}-*.pt"]
        for cache in (c for pattern in patterns for c in checkpoints.glob(pattern)):
            cache.unlink()


def teacher_augmentation(args: argparse.Namespace) -> str:
    """How the teacher's training images were changed beyond the configs' shifts, for the intro ('' if not)."""
    if not args.teacher_rotation and not args.teacher_scale:
        return ""
    return (f", trained on images also rotated up to {args.teacher_rotation:g}° and scaled by up to ±{args.teacher_scale:.0%} "
            f"(`--teacher-rotation {args.teacher_rotation:g} --teacher-scale {args.teacher_scale:g}`; the students keep "
            "the configs' shifts)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_seeds_option(parser, [0, 1, 2])
    parser.add_argument("--teacher-epochs", type=int, default=None)
    parser.add_argument("--student-epochs", type=int, default=None)
    parser.add_argument("--shared-teacher", action="store_true", help="train one teacher (first seed) for all seeds")
    parser.add_argument("--teacher-rotation", type=float, default=0.0,
                        help="the teacher trains on images also rotated up to this many degrees (default 0: shifts only)")
    parser.add_argument("--teacher-scale", type=float, default=0.0,
                        help="the teacher trains on images also scaled by up to this fraction (default 0)")
    parser.add_argument("--workdir", type=Path, default=None)
    common.add_output_options(parser)
    parser.add_argument("--reuse", action="store_true", help="test checkpoints an earlier run left in --workdir")
    parser.add_argument("--resume", action="store_true",
                        help="go on with an interrupted run in --workdir: models in its progress.jsonl are only tested again")
    parser.add_argument("--no-dkvb", action="store_true", help="skip the DKVB student")
    parser.add_argument("--pixel-dkvb", action="store_true", help="also the DKVB on raw pixels (student_dkvb_kd.yaml)")
    parser.add_argument("--dkvb-epochs", type=int, default=None, help="default: the DKVB configs'")
    parser.add_argument("--teacher-cache", action="store_true",
                        help="students read the teacher's logits from a cache (no shift augmentation for any student)")
    parser.add_argument("--few-labels", action="store_true",
                        help="the demo's setting: the students get few labels, the distilled ones the other training images as "
                             "a transfer set; adds two baselines; writes mnist_kd_few_labels.json")
    parser.add_argument("--labelled-size", type=int, default=None,
                        help=f"with --few-labels: labelled training images (default {DEMO['labelled_size']:,}, the demo's)")
    parser.add_argument("--labelled-epochs", type=int, default=None,
                        help="with --few-labels: epochs of the students trained on the labelled images only")
    # with --few-labels every epoch option left out is the demo's (lkd.pipelines.mnist_kd.DEMO)
    args = parser.parse_args()
    if args.resume and args.workdir is None:
        parser.error("--resume needs the --workdir of the interrupted run")
    if (args.labelled_size is not None or args.labelled_epochs is not None) and not args.few_labels:
        parser.error("--labelled-size and --labelled-epochs need --few-labels")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lkd-mnist-bench-"))
    (workdir / "checkpoints").mkdir(parents=True, exist_ok=True)
    labelled_size = (args.labelled_size or DEMO["labelled_size"]) if args.few_labels else None
    if args.few_labels:  # the demo's epochs unless told otherwise
        for key in ("teacher_epochs", "student_epochs", "labelled_epochs", "dkvb_epochs"):
            if getattr(args, key) is None:
                setattr(args, key, DEMO[key])
    tag = setting_tag(labelled_size)
    teacher_extra = [f"--data.init_args.max_rotation={args.teacher_rotation}", f"--data.init_args.max_scale={args.teacher_scale}"]
    progress = Progress(workdir, setting=tag or "all labels")

    rows: dict[str, list[RunResult]] = {}
    teacher_ckpt = None
    if args.shared_teacher:
        seed = args.seeds[0]
        if args.resume:
            clear_unfinished(workdir, seed, tag, progress.done(seed), teacher_done="teacher" in progress.done(seed),
                             shared_teacher=True)
        teacher = train_and_test("teacher", CONFIG_DIR / "teacher.yaml", workdir, seed, args.teacher_epochs,
                                 teacher_extra, reuse=args.reuse or args.resume)
        progress.record(seed, teacher)
        rows["teacher"] = [teacher]
        teacher_ckpt = str(workdir / "checkpoints" / f"teacher-seed{seed}.ckpt")
    for seed in args.seeds:
        if args.resume:
            done = progress.done(seed)
            clear_unfinished(workdir, seed, tag, done, teacher_done=args.shared_teacher or "teacher" in done)
        for model in run(seed, workdir, args.teacher_epochs, args.student_epochs, teacher_ckpt=teacher_ckpt,
                         with_dkvb=not args.no_dkvb, reuse=args.reuse or args.resume, dkvb_epochs=args.dkvb_epochs,
                         pixel_dkvb=args.pixel_dkvb, teacher_cache=args.teacher_cache, labelled_size=labelled_size,
                         labelled_epochs=args.labelled_epochs, baselines=args.few_labels,
                         on_result=lambda r, seed=seed: progress.record(seed, r), teacher_extra=teacher_extra):
            rows.setdefault(model.name, []).append(model)
    time_models([r for results in rows.values() for r in results])

    teacher_time = statistics.median(r.infer_s for r in rows["teacher"])
    teacher_params = rows["teacher"][0].params
    model_rows = []
    for name, results in rows.items():
        infer = statistics.median(r.infer_s for r in results)
        model_rows.append({
            "model": name, "config": str(results[0].config), "runs": len(results), "test_acc": [r.test_acc for r in results],
            "labelled": results[0].labelled, "unlabelled": results[0].unlabelled,
            "params": results[0].params, "params_vs_teacher": results[0].params / teacher_params, "inference_s": infer,
            "inference_s_per_run": [r.infer_s for r in results], "speed_vs_teacher": teacher_time / infer,
            "fit_test_s_per_run": [r.seconds for r in results],
        })
    teacher_note = (
        f"one teacher (seed {args.seeds[0]}) shared by all student seeds" if args.shared_teacher else "a teacher per seed"
    ) + teacher_augmentation(args)
    timing = ("Accuracy on the 10,000 MNIST test images, each model on its best validation checkpoint. Inference: eval "
              "mode, batches of 1,000, every model of the table taking turns, median of 7 passes per model.")
    if args.few_labels:
        result = common.new_result("MNIST distillation", args, seeds=args.seeds,
                                   subsection="Few labels: the demo's setting (a transfer set labelled by the teacher)")
        result["intro"] = few_labels_intro(args, rows, teacher_note) + [timing]
        result["tables"] = [table(FEW_LABELS_COLUMNS, model_rows)]
        result["notes"] = few_labels_notes(rows)
        common.finish(result, "mnist_kd_few_labels", args)
        return
    result = common.new_result("MNIST distillation", args, seeds=args.seeds)
    result["intro"] = [
        f"Seeds {args.seeds}; {teacher_note}. Epochs: teacher {args.teacher_epochs or 'config'}, students "
        f"{args.student_epochs or 'config'}, DKVB students {args.dkvb_epochs or 'config'}; students alone and distilled "
        "use the same data, augmentation "
        + ("(none: the distilled students read the teacher's logits from a cache of unaugmented images)"
           if args.teacher_cache else "(2-pixel shifts)")
        + ", optimiser and epochs. `student_dkvb_encoder`: a DKVB on the frozen features of that seed's distilled "
        "student (its size counts the encoder, keys, projection, values and head). *params* counts a DKVB's keys "
        "and random projection too (buffers it reads at every lookup). " + timing
    ]
    result["tables"] = [table(COLUMNS, [{k: v for k, v in r.items() if k not in ("labelled", "unlabelled", "fit_test_s_per_run")}
                                        for r in model_rows])]
    result["notes"] = kd_target_note(model_rows) + [target_note(r) for r in model_rows if r["model"] == "student_dkvb_encoder"]
    common.finish(result, "mnist_kd", args)


def kd_target_note(model_rows: list[dict]) -> list[str]:
    """Issue 31's target for the all-labels benchmark: the distilled student ≥ 99.3 % and ahead of the student alone
    by more than the larger of the two rows' standard deviations."""
    by = {r["model"]: [100 * a for a in r["test_acc"]] for r in model_rows}
    if "student_kd" not in by or "student_scratch" not in by or min(len(by["student_kd"]), len(by["student_scratch"])) < 2:
        return []
    kd, alone = by["student_kd"], by["student_scratch"]
    gap, bar = statistics.mean(kd) - statistics.mean(alone), max(statistics.stdev(kd), statistics.stdev(alone))
    met = statistics.mean(kd) >= 99.3 and gap > bar
    return [f"Target (distilled ≥ 99.3 % and ahead of the student alone by more than the larger std): distilled "
            f"{statistics.mean(kd):.2f} ± {statistics.stdev(kd):.2f} %, alone {statistics.mean(alone):.2f} ± "
            f"{statistics.stdev(alone):.2f} %, a gap of {gap:+.2f} points against {bar:.2f} — **{'met' if met else 'not met'}**."]


def few_labels_intro(args: argparse.Namespace, rows: dict[str, list[RunResult]], teacher_note: str) -> list[str]:
    """What the few-label section measured: the setting, then what every row is."""
    kd = rows["student_kd"][0]
    counts = {"train": rows["teacher"][0].labelled, "labelled": kd.labelled, "unlabelled": kd.unlabelled}
    rows_text = "; ".join(f"`{name}`: {FEW_LABELS_ROWS[name].format(**counts)}" for name in rows if name in FEW_LABELS_ROWS)
    setting = (
        f"The setting of `python -m lkd.pipelines.mnist_kd` (`make demo`, docs/mnist_demo.md) over seeds {args.seeds}; "
        f"{teacher_note}. Each seed draws its own train/val split and its own {kd.labelled:,} labelled images (balanced: "
        f"{kd.labelled // 10:,} per digit; `--data.init_args.labelled_size`). Hinton et al.'s transfer set: the teacher "
        "was trained on every label; the students get few, and a distilled student learns the other training images "
        "from the teacher's soft targets alone. Validation (5,000 labelled images, for the best checkpoint) is the "
        f"same for every model. Epochs: teacher {args.teacher_epochs or 'config'}, students on the transfer set "
        f"{args.student_epochs or 'config'}, students on the labelled images only {args.labelled_epochs or args.student_epochs or 'config'}, "
        f"DKVB {args.dkvb_epochs or 'config'}."
    )
    return [setting, "Rows: " + rows_text + "."]


def few_labels_notes(rows: dict[str, list[RunResult]]) -> list[str]:
    """The distilled student's gain over each baseline, per seed (paired: same split, same labelled images), and
    the issue's target: a mean gain above twice the larger of the two rows' standard deviations."""
    kd = [100 * r.test_acc for r in rows["student_kd"]]
    notes = []
    for name in ("student_scratch", "student_scratch_shifts", "student_kd_labelled_only"):
        if name not in rows:
            continue
        base = [100 * r.test_acc for r in rows[name]]
        gains = [k - b for k, b in zip(kd, base)]
        bar = 2 * max(statistics.stdev(kd), statistics.stdev(base)) if len(kd) > 1 else float("nan")
        mean = statistics.mean(gains)
        verdict = ("**met**" if mean > bar and min(gains) > 0 else "**not met**") if name == "student_scratch" else (
            "above" if mean > bar and min(gains) > 0 else "not above")
        spread = f" ± {statistics.stdev(gains):.2f}" if len(gains) > 1 else ""
        line = (f"`student_kd` − `{name}`: {mean:+.2f}{spread} points (per seed: {', '.join(f'{g:+.2f}' for g in gains)}); "
                f"twice the larger standard deviation of the two rows: {bar:.2f} points")
        if name == "student_scratch":
            line = f"Target (issue 27: distilled beats alone by more than 2 std over {len(kd)} seeds): " + line + f" — {verdict}."
        else:
            line += f" — {verdict} it."
        notes.append(line)
    return notes


def target_note(row: dict) -> str:
    """Issue 20's DKVB-student target, checked against the measured row."""
    acc = [100 * a for a in row["test_acc"]]
    mean = statistics.mean(acc)
    checks = {"≥ 98.5 % test accuracy": mean >= 98.5, "≥ 3× faster CPU inference than the teacher": row["speed_vs_teacher"] >= 3,
              "≤ 1/5 of its parameters, keys counted": row["params_vs_teacher"] <= 0.2}
    missed = [k for k, ok in checks.items() if not ok]
    return (f"Target for the DKVB student ({'; '.join(checks)}): {mean:.2f} % over {len(acc)} seed(s), "
            f"{row['speed_vs_teacher']:.2f}× the teacher's speed, {row['params_vs_teacher']:.3f} of its parameters — "
            + ("**met**." if not missed else f"**not met** ({', '.join(missed)}).")
            + " The encoder is the seed's distilled student, so a weaker student makes a weaker DKVB student.")


if __name__ == "__main__":
    main()
