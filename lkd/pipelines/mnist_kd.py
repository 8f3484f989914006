"""MNIST end to end: train the teacher, the student alone, the student by distillation and a DKVB student by
distillation, test each on its best checkpoint, and compare accuracy, size and CPU inference time.

    python -m lkd.pipelines.mnist_kd                # the `make demo` run: 1,000 labels + transfer set (below)
    python -m lkd.pipelines.mnist_kd --all-labels     # every student on all 55,000 labels (the earlier demo)
    python -m lkd.pipelines.mnist_kd --all-labels --teacher-epochs 10 --student-epochs 12 --live-teacher   # the configs' full runs
    python -m lkd.pipelines.mnist_kd --seed 1 --teacher-epochs 1 --student-epochs 1 --workdir /tmp/x

The demo's setting (Hinton et al. 2015's transfer set): the teacher is trained on all 55,000 labelled training
images (the big model you already have); the students get only 1,000 of those labels (100 per digit,
``--data.init_args.labelled_size=1000``). The student alone trains on those 1,000 images
(``--data.init_args.unlabelled=drop``); the distilled student also sees the other 54,000 images, without labels,
through the teacher's soft targets (``unlabelled=transfer``). On all labels a distilled student gains a tenth of
a point on MNIST; with few labels it gains several (docs/mnist_demo.md).

Every stage is an ordinary ``lkd fit`` of a YAML under ``configs/mnist/`` run in-process, with overrides for the
seed, epochs, output folders, the labelled rows and the teacher cache's consequences only, so what the demo does
is what the configs do.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lkd.cli import LKDCLI
from lkd.data.transforms import normalize_uint8
from lkd.evaluation import interleaved_inference_seconds
from lkd.losses import labelled_rows
from lkd.memory import count_inference_numbers

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "mnist"
# `make demo`: 1,000 labelled training images and short epochs (measured time in docs/mnist_demo.md). The students
# trained on the labelled images only see 1,000 images an epoch, the distilled ones 55,000: `labelled_epochs` is
# theirs (the student alone's validation accuracy is flat by then: 100 epochs gave +0.1 point)
DEMO = {"labelled_size": 1000, "teacher_epochs": 2, "student_epochs": 4, "labelled_epochs": 30, "dkvb_epochs": 3,
        "timing_repeats": 3}


@dataclasses.dataclass
class RunResult:
    """One trained model, tested on its best checkpoint (``infer_s`` filled by :func:`time_models`).

    Attributes:
        name: the model's row name (``teacher``, ``student_scratch``, ``student_kd``, ...).
        config: the config file it was fitted with, relative to the repository.
        test_acc: test accuracy of its best checkpoint, in [0, 1].
        params: numbers read at inference (:func:`lkd.memory.count_inference_numbers`).
        best_ckpt: the checkpoint tested.
        labelled: training images it learnt with their label.
        unlabelled: training images it learnt without one (the teacher's soft targets only: a transfer set).
        seconds: wall time of its fit and test.
        infer_s: CPU seconds for one pass over the test images (:func:`time_models`).
    """

    name: str
    config: str
    test_acc: float
    params: int
    best_ckpt: str
    network: nn.Module = dataclasses.field(repr=False)
    labelled: int = 0
    unlabelled: int = 0
    seconds: float = float("nan")
    infer_s: float = float("nan")


def setting_tag(labelled_size: int | None) -> str:
    """What tells a setting's students apart in file names: ``""`` with all labels, ``"-labels1000"`` with 1,000."""
    return "" if labelled_size is None else f"-labels{labelled_size}"


def train_and_test(name: str, config: Path, workdir: Path, seed: int, epochs: int | None, extra: list[str] = (),
                   reuse: bool = False, tag: str = "", log_version: str | None = None) -> RunResult:
    """``lkd fit`` one config, then test its best checkpoint (published to
    ``workdir/checkpoints/{name}{tag}-seed{seed}.ckpt``; ``tag`` keeps the runs of two settings apart). Logs go to
    ``workdir/runs/<the config's logger name>/<log_version>`` (default ``seed{seed}{tag}``).

    With ``reuse`` and that checkpoint already there (an earlier run of the same command), skip training."""
    start = time.perf_counter()
    published = workdir / "checkpoints" / f"{name}{tag}-seed{seed}.ckpt"
    args = [
        "-c", str(config),
        f"--seed_everything={seed}", f"--data.init_args.seed={seed}",
        f"--trainer.default_root_dir={workdir / 'runs'}",
        f"--trainer.logger.init_args.save_dir={workdir / 'runs'}",
        f"--trainer.logger.init_args.version={log_version or f'seed{seed}{tag}'}",
        f"--best_checkpoint.path={published}",
        *extra,
    ]
    if epochs is not None:
        args.append(f"--trainer.max_epochs={epochs}")
    if reuse and published.is_file():
        cli = LKDCLI(args=args, run=False)
        ckpt_path = str(published)
    else:
        cli = LKDCLI(args=["fit", *args])
        ckpt_path = cli.trainer.checkpoint_callback.best_model_path
    trainer, module, data = cli.trainer, cli.model, cli.datamodule
    (metrics,) = trainer.test(module, datamodule=data, ckpt_path=ckpt_path, verbose=False)
    network = module.trained_model
    labelled = labelled_rows(data.datasets["train"].labels)  # (N,) bool; UNLABELLED rows: a transfer set
    return RunResult(
        name=name,
        config=str(config.relative_to(CONFIG_DIR.parents[1])),
        test_acc=metrics["test/acc"],
        params=count_inference_numbers(network),
        best_ckpt=ckpt_path,
        network=network.cpu(),
        labelled=int(labelled.sum()),
        unlabelled=int((~labelled).sum()),
        seconds=time.perf_counter() - start,
    )


def time_models(results: list[RunResult], data_seed: int = 42, num_images: int | None = None, repeats: int = 7) -> None:
    """CPU inference time over the 10,000 test images (or the first ``num_images``) for every result, the
    models taking turns ``repeats`` times."""
    from lkd.data import MNISTDataModule

    data = MNISTDataModule(seed=data_seed)
    data.setup("test")
    images = normalize_uint8(data.datasets["test"].images[:num_images])  # (10000, 1, 28, 28)
    seconds = interleaved_inference_seconds({str(i): r.network for i, r in enumerate(results)}, images, repeats=repeats)
    for i, r in enumerate(results):
        r.infer_s = seconds[str(i)]


def run(seed: int = 42, workdir: Path = Path("."), teacher_epochs: int | None = None,
        student_epochs: int | None = None, teacher_ckpt: str | None = None, with_dkvb: bool = True,
        reuse: bool = False, extra: list[str] = (), dkvb_epochs: int | None = None,
        pixel_dkvb: bool = False, teacher_cache: bool = False, labelled_size: int | None = None,
        labelled_epochs: int | None = None, baselines: bool = False,
        on_result: Callable[[RunResult], None] | None = None, teacher_extra: list[str] = ()) -> list[RunResult]:
    """Teacher (or a given teacher checkpoint), student alone, student distilled, and the DKVB student: a DKVB on
    the distilled student's frozen features (``student_dkvb_encoder.yaml``), its values distilled from the
    teacher. ``pixel_dkvb`` adds the DKVB on raw pixels (``student_dkvb_kd.yaml``). One seed.

    ``labelled_size`` (None: every label): the students get that many labelled training images
    (``MNISTDataModule(labelled_size=...)``, balanced per class; the teacher keeps every label). The student alone
    trains on the labelled images only (``unlabelled=drop``) for ``labelled_epochs`` (default: ``student_epochs``);
    the distilled ones also on the other training images, without labels (the transfer set). Their checkpoints,
    logs and teacher cache are tagged ``-labels{N}``, so one workdir holds both settings. ``baselines`` adds two
    rows that say where the gain comes from: ``student_scratch_shifts`` (the student alone with 2-pixel shifts,
    its best recipe here) and ``student_kd_labelled_only`` (distilled on the labelled images only, no transfer set).

    ``teacher_cache``: the students read the teacher's logits from a cache written once
    (``checkpoints/teacher_logits-seed{seed}{tag}.pt``, :mod:`lkd.cache`) instead of running the teacher every
    step; the cache holds unaugmented images, so every student (the one trained alone too, for a fair comparison)
    trains without shifts and the distilled one uses ``student_kd_cached.yaml``. DKVB students train for
    ``dkvb_epochs`` (default: their configs'). ``extra``: CLI overrides for every run (e.g. the notebook's
    ``--trainer.precision=16-mixed`` or a smaller ``--data.init_args.train_size``); ``teacher_extra``: more for the
    teacher's own training only (e.g. its augmentation, ``--data.init_args.max_rotation=12``). ``on_result`` is called with
    each model's result as soon as it is tested (a benchmark writes it down, so an interruption loses little)."""
    results = []

    def done(result: RunResult) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    if teacher_ckpt is None:
        done(train_and_test("teacher", CONFIG_DIR / "teacher.yaml", workdir, seed, teacher_epochs, [*extra, *teacher_extra],
                            reuse=reuse))
        teacher_ckpt = str(workdir / "checkpoints" / f"teacher-seed{seed}.ckpt")
    few_labels = labelled_size is not None
    tag = setting_tag(labelled_size)
    alone_epochs = labelled_epochs if few_labels and labelled_epochs is not None else student_epochs
    sizes = [f"--data.init_args.labelled_size={labelled_size}", "--data.init_args.unlabelled=transfer"] if few_labels else []
    drop = ["--data.init_args.unlabelled=drop"] if few_labels else []  # after `sizes`: the later override wins
    from_teacher = [*extra, *sizes, f"--model.init_args.teacher.checkpoint={teacher_ckpt}"]
    alone = [*extra, *sizes, *drop]
    kd_config = "student_kd"

    def cached(args: list[str], cache_tag: str) -> list[str]:
        if not teacher_cache:
            return args
        return [*args, f"--model.init_args.teacher.cache={workdir / 'checkpoints' / f'teacher_logits-seed{seed}{cache_tag}.pt'}"]

    if teacher_cache:
        alone.append("--data.init_args.max_shift=0")
        kd_config = "student_kd_cached"

    def student(name: str, config: str, epochs: int | None, args: list[str], baseline: bool = False) -> None:
        version = f"seed{seed}{tag}-{name}" if baseline else None  # a config's second run here logs apart from its first
        done(train_and_test(name, CONFIG_DIR / config, workdir, seed, epochs, args, reuse=reuse, tag=tag, log_version=version))

    student("student_scratch", "student_scratch.yaml", alone_epochs, alone)
    student("student_kd", f"{kd_config}.yaml", student_epochs, cached(from_teacher, tag))
    if few_labels and baselines:
        student("student_scratch_shifts", "student_scratch.yaml", alone_epochs, [*extra, *sizes, *drop], baseline=True)
        student("student_kd_labelled_only", f"{kd_config}.yaml", alone_epochs, cached([*from_teacher, *drop], f"{tag}-drop"),
                baseline=True)
    if with_dkvb:
        distilled = workdir / "checkpoints" / f"student_kd{tag}-seed{seed}.ckpt"  # its published best checkpoint
        encoder = f"--model.init_args.student.init_args.encoder.init_args.checkpoint={distilled}"
        student("student_dkvb_encoder", "student_dkvb_encoder.yaml", dkvb_epochs, cached([*from_teacher, encoder], tag))
    if pixel_dkvb:
        student("student_dkvb_kd", "student_dkvb_kd.yaml", dkvb_epochs, cached(from_teacher, tag))
    return results


def format_table(results: list[RunResult], reference: str = "teacher") -> str:
    """Markdown table: training images, test accuracy, parameters, inference time and speed-up over the reference
    row, and the wall time of each fit and test."""
    ref = next((r for r in results if r.name == reference), None)
    lines = [
        ("| model | config | training images: labelled + unlabelled | test acc (%) | params (+ DKVB keys) "
         "| CPU inference, 10k images (s) | speed vs teacher | fit + test (s) |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = f"{ref.infer_s / r.infer_s:.2f}×" if ref else "n/a"
        lines.append(f"| {r.name} | `{r.config}` | {r.labelled:,} + {r.unlabelled:,} | {100 * r.test_acc:.2f} | {r.params:,} "
                     f"| {r.infer_s:.3f} | {ratio} | {r.seconds:.0f} |")
    return "\n".join(lines)


def distillation_gain(results: list[RunResult]) -> str | None:
    """One line: how many points of test accuracy the distilled student gains over the same student alone, and
    with how many labels (None without both rows)."""
    by_name = {r.name: r for r in results}
    alone, kd = by_name.get("student_scratch"), by_name.get("student_kd")
    if alone is None or kd is None:
        return None
    transfer = f" + {kd.unlabelled:,} unlabelled images labelled by the teacher" if kd.unlabelled else ""
    return (f"Distilled vs alone: {100 * (kd.test_acc - alone.test_acc):+.2f} points with {alone.labelled:,} labels "
            f"(student_kd {100 * kd.test_acc:.2f} % on {kd.labelled:,} labelled images{transfer}; "
            f"student_scratch {100 * alone.test_acc:.2f} % on its {alone.labelled:,} labelled images alone).")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", type=Path, default=Path("."), help="runs/ and checkpoints/ go here")
    parser.add_argument("--teacher-epochs", type=int, default=DEMO["teacher_epochs"],
                        help="default %(default)s, the demo's (teacher.yaml says 10 for a full run)")
    parser.add_argument("--student-epochs", type=int, default=DEMO["student_epochs"],
                        help="epochs of the students that see every training image (default %(default)s)")
    parser.add_argument("--labelled-epochs", type=int, default=DEMO["labelled_epochs"],
                        help="with few labels: epochs of the student alone over its labelled images (default %(default)s)")
    parser.add_argument("--dkvb-epochs", type=int, default=DEMO["dkvb_epochs"], help="default %(default)s (the DKVB configs say 3 and 5)")
    parser.add_argument("--labelled-size", type=int, default=None,
                        help=f"labelled training images the students get (default {DEMO['labelled_size']:,}, 100 per digit; "
                             "the teacher gets every label)")
    parser.add_argument("--all-labels", action="store_true",
                        help="every student gets all 55,000 labels (the earlier demo: distillation gains a tenth of a point)")
    parser.add_argument("--timing-repeats", type=int, default=DEMO["timing_repeats"],
                        help="inference timing: passes over the test images per model, models taking turns (default %(default)s)")
    parser.add_argument("--live-teacher", action="store_true",
                        help="run the teacher at every student step (with the configs' shift augmentation) instead of "
                             "reading its logits from a cache written once")
    parser.add_argument("--no-dkvb", action="store_true", help="skip the DKVB student")
    parser.add_argument("--pixel-dkvb", action="store_true", help="also the DKVB on raw pixels")
    args = parser.parse_args(argv)
    torch.set_float32_matmul_precision("high")
    start = time.perf_counter()
    if args.all_labels and args.labelled_size is not None:
        parser.error("--labelled-size and --all-labels contradict each other: give one")
    labelled_size = None if args.all_labels else args.labelled_size or DEMO["labelled_size"]
    results = run(args.seed, args.workdir, args.teacher_epochs, args.student_epochs, with_dkvb=not args.no_dkvb,
                  dkvb_epochs=args.dkvb_epochs, pixel_dkvb=args.pixel_dkvb, teacher_cache=not args.live_teacher,
                  labelled_size=labelled_size, labelled_epochs=args.labelled_epochs)
    time_models(results, repeats=args.timing_repeats)
    print("\nMNIST distillation (test split, best checkpoints, CPU threads: %d)\n" % torch.get_num_threads())
    print(format_table(results))
    if gain := distillation_gain(results):
        print("\n" + gain)
    print(f"\nTrained, tested and timed in {(time.perf_counter() - start) / 60:.1f} min. "
          f"TensorBoard: tensorboard --logdir {args.workdir / 'runs'}")


if __name__ == "__main__":
    main()
