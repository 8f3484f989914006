"""MNIST end to end: train the teacher, the student alone, the student by distillation and a DKVB student by
distillation, test each on its best checkpoint, and compare accuracy, size and CPU inference time.

    python -m lkd.pipelines.mnist_kd                # the `make demo` run (seed 42, short epochs, teacher cache)
    python -m lkd.pipelines.mnist_kd --teacher-epochs 10 --student-epochs 12 --live-teacher   # the configs' full runs
    python -m lkd.pipelines.mnist_kd --seed 1 --teacher-epochs 1 --student-epochs 1 --workdir /tmp/x

Every stage is an ordinary ``lkd fit`` of a YAML under ``configs/mnist/`` run in-process, with overrides for
the seed, epochs and output folders only, so what the demo does is what the configs do.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
from torch import nn

from lkd.cli import LKDCLI
from lkd.data.transforms import normalize_uint8
from lkd.evaluation import interleaved_inference_seconds
from lkd.memory import count_inference_numbers

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "mnist"
# `make demo`: short epochs (5.7 min of training, testing and timing on 2 idle CPU cores, measured; README)
DEMO = {"teacher_epochs": 2, "student_epochs": 4, "dkvb_epochs": 3}


@dataclasses.dataclass
class RunResult:
    """One trained model, tested on its best checkpoint (``infer_s`` filled by :func:`time_models`)."""

    name: str
    config: str
    test_acc: float
    params: int
    best_ckpt: str
    network: nn.Module = dataclasses.field(repr=False)
    infer_s: float = float("nan")


def train_and_test(name: str, config: Path, workdir: Path, seed: int, epochs: int | None, extra: list[str] = (),
                   reuse: bool = False) -> RunResult:
    """``lkd fit`` one config, then test its best checkpoint (published to ``workdir/checkpoints``).

    With ``reuse`` and that checkpoint already there (an earlier run of the same command), skip training."""
    published = workdir / "checkpoints" / f"{name}-seed{seed}.ckpt"
    args = [
        "-c", str(config),
        f"--seed_everything={seed}", f"--data.init_args.seed={seed}",
        f"--trainer.default_root_dir={workdir / 'runs'}",
        f"--trainer.logger.init_args.save_dir={workdir / 'runs'}",
        f"--trainer.logger.init_args.version=seed{seed}",
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
    network = module.student if hasattr(module, "student") else module.model
    return RunResult(
        name=name,
        config=str(config.relative_to(CONFIG_DIR.parents[1])),
        test_acc=metrics["test/acc"],
        params=count_inference_numbers(network),
        best_ckpt=ckpt_path,
        network=network.cpu(),
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
        pixel_dkvb: bool = False, teacher_cache: bool = False) -> list[RunResult]:
    """Teacher (or a given teacher checkpoint), student alone, student distilled, and the DKVB student: a DKVB on
    the distilled student's frozen features (``student_dkvb_encoder.yaml``), its values distilled from the
    teacher. ``pixel_dkvb`` adds the DKVB on raw pixels (``student_dkvb_kd.yaml``). One seed.

    ``teacher_cache``: the students read the teacher's logits from a cache written once
    (``checkpoints/teacher_logits-seed{seed}.pt``, :mod:`lkd.cache`) instead of running the teacher every step;
    the cache holds unaugmented images, so every student (the one trained alone too, for a fair comparison)
    trains without shifts and the distilled one uses ``student_kd_cached.yaml``. DKVB students train for
    ``dkvb_epochs`` (default: their configs'). ``extra``: CLI overrides for every run (e.g. the notebook's
    ``--trainer.precision=16-mixed`` or a smaller ``--data.init_args.train_size``)."""
    results = []
    if teacher_ckpt is None:
        teacher = train_and_test("teacher", CONFIG_DIR / "teacher.yaml", workdir, seed, teacher_epochs, list(extra), reuse=reuse)
        results.append(teacher)
        teacher_ckpt = str(workdir / "checkpoints" / f"teacher-seed{seed}.ckpt")
    from_teacher = [*extra, f"--model.init_args.teacher.checkpoint={teacher_ckpt}"]
    alone = list(extra)
    kd_config = "student_kd"
    if teacher_cache:
        from_teacher.append(f"--model.init_args.teacher.cache={workdir / 'checkpoints' / f'teacher_logits-seed{seed}.pt'}")
        alone.append("--data.init_args.max_shift=0")
        kd_config = "student_kd_cached"
    results.append(train_and_test("student_scratch", CONFIG_DIR / "student_scratch.yaml", workdir, seed, student_epochs, alone,
                                  reuse=reuse))
    results.append(train_and_test("student_kd", CONFIG_DIR / f"{kd_config}.yaml", workdir, seed, student_epochs, from_teacher,
                                  reuse=reuse))
    if with_dkvb:
        distilled = workdir / "checkpoints" / f"student_kd-seed{seed}.ckpt"  # its published best checkpoint
        encoder = f"--model.init_args.student.init_args.encoder.init_args.checkpoint={distilled}"
        results.append(train_and_test("student_dkvb_encoder", CONFIG_DIR / "student_dkvb_encoder.yaml", workdir, seed,
                                      dkvb_epochs, [*from_teacher, encoder], reuse=reuse))
    if pixel_dkvb:
        results.append(train_and_test("student_dkvb_kd", CONFIG_DIR / "student_dkvb_kd.yaml", workdir, seed, dkvb_epochs,
                                      from_teacher, reuse=reuse))
    return results


def format_table(results: list[RunResult], reference: str = "teacher") -> str:
    """Markdown table: test accuracy, parameters, inference time and speed-up over the reference row."""
    ref = next((r for r in results if r.name == reference), None)
    lines = [
        "| model | config | test acc (%) | params (+ DKVB keys) | CPU inference, 10k images (s) | speed vs teacher |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = f"{ref.infer_s / r.infer_s:.2f}×" if ref else "n/a"
        lines.append(f"| {r.name} | `{r.config}` | {100 * r.test_acc:.2f} | {r.params:,} | {r.infer_s:.3f} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", type=Path, default=Path("."), help="runs/ and checkpoints/ go here")
    parser.add_argument("--teacher-epochs", type=int, default=DEMO["teacher_epochs"],
                        help="default %(default)s, the demo's (teacher.yaml says 10 for a full run)")
    parser.add_argument("--student-epochs", type=int, default=DEMO["student_epochs"])
    parser.add_argument("--dkvb-epochs", type=int, default=DEMO["dkvb_epochs"], help="default %(default)s (the DKVB configs say 3 and 5)")
    parser.add_argument("--live-teacher", action="store_true",
                        help="run the teacher at every student step (with the configs' shift augmentation) instead of "
                             "reading its logits from a cache written once")
    parser.add_argument("--no-dkvb", action="store_true", help="skip the DKVB student")
    parser.add_argument("--pixel-dkvb", action="store_true", help="also the DKVB on raw pixels")
    args = parser.parse_args(argv)
    torch.set_float32_matmul_precision("high")
    start = time.perf_counter()
    results = run(args.seed, args.workdir, args.teacher_epochs, args.student_epochs, with_dkvb=not args.no_dkvb,
                  dkvb_epochs=args.dkvb_epochs, pixel_dkvb=args.pixel_dkvb, teacher_cache=not args.live_teacher)
    time_models(results)
    print("\nMNIST distillation (test split, best checkpoints, CPU threads: %d)\n" % torch.get_num_threads())
    print(format_table(results))
    print(f"\nTrained, tested and timed in {(time.perf_counter() - start) / 60:.1f} min. "
          f"TensorBoard: tensorboard --logdir {args.workdir / 'runs'}")


if __name__ == "__main__":
    main()
