"""Class-incremental MNIST benchmark: DKVB vs MLP on class pairs (0,1) -> (2,3) -> (4,5) -> (6,7).

    python benchmarks/continual.py [--seeds 0 1 2] [--only dkvb_adam mlp_adam ...]

Each variant is an ordinary ``lkd fit`` of a YAML under configs/mnist/ (overrides listed in the table),
run in-process; the accuracy matrix comes from the ContinualEvaluation callback (test split, one head over
the 8 classes). Writes the "Continual class pairs" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import command, machine, write_section  # noqa: E402

from lkd.callbacks import ContinualEvaluation  # noqa: E402
from lkd.cli import LKDCLI  # noqa: E402
from lkd.metrics import average_accuracy, forgetting  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "mnist"
SGD = ['--model.init_args.optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 1.0}}']
JOINT = ["--data.init_args.stages=[[0, 1, 2, 3, 4, 5, 6, 7]]", "--data.init_args.epochs_per_stage=3", "--trainer.max_epochs=3"]
VARIANTS = {
    # name: (config, overrides, what keys / encoder saw)
    "mlp_adam": ("continual_mlp.yaml", [], "no keys; MLP trained on the stages"),
    "dkvb_adam": ("continual_dkvb.yaml", [], "keys: EMA on all unlabelled train images, then frozen"),
    "dkvb_sgd": ("continual_dkvb.yaml", SGD, "keys: EMA on all unlabelled train images, then frozen"),
    "dkvb_paper_sgd": ("continual_dkvb_paper.yaml", [], "keys: EMA on all unlabelled train images, then frozen"),
    "dkvb_pca_adam": ("continual_dkvb_pca.yaml", [], "PCA encoder + keys: fitted on all unlabelled train images, then frozen"),
    "dkvb_pca_sgd": ("continual_dkvb_pca.yaml", SGD, "PCA encoder + keys: fitted on all unlabelled train images, then frozen"),
    "dkvb_pca_adam_joint": ("continual_dkvb_pca.yaml", JOINT, "reference: all 8 classes at once, 3 epochs"),
}


def run_variant(name: str, seed: int, workdir: Path) -> dict:
    config, overrides, _ = VARIANTS[name]
    start = time.perf_counter()
    cli = LKDCLI(args=[
        "fit", "-c", str(CONFIGS / config), f"--seed_everything={seed}", f"--data.init_args.seed={seed}",
        f"--trainer.logger.init_args.save_dir={workdir}", f"--trainer.logger.init_args.name={name}",
        f"--trainer.logger.init_args.version=seed{seed}", f"--trainer.default_root_dir={workdir}",
        "--trainer.enable_progress_bar=false", *overrides,
    ])
    evaluation = next(cb for cb in cli.trainer.callbacks if isinstance(cb, ContinualEvaluation))
    matrix = evaluation.matrix.as_matrix()
    return {
        "matrix": matrix,
        "final": matrix[-1].mean().item(),
        "avg_seen": average_accuracy(matrix)[-1].item(),
        "forgetting": forgetting(matrix).mean().item() if len(matrix) > 1 else float("nan"),
        "seconds": time.perf_counter() - start,
    }


def fmt(values: list[float], scale: float = 100.0) -> str:
    values = [scale * v for v in values]
    if any(v != v for v in values):
        return "n/a"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def matrix_table(matrix: torch.Tensor) -> list[str]:
    s = matrix.shape[0]
    groups = ["(0,1)", "(2,3)", "(4,5)", "(6,7)"][:s] if s > 1 else ["0-7"]
    lines = ["| after stage | " + " | ".join(groups) + " |", "|---" * (s + 1) + "|"]
    for i in range(s):
        cells = [f"{100 * v:.1f}" if v == v else "" for v in matrix[i].tolist()]
        lines.append(f"| {groups[i]} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lkd-continual-"))
    results: dict[str, list[dict]] = {}
    for seed in args.seeds:
        for name in args.only:
            r = run_variant(name, seed, workdir)
            results.setdefault(name, []).append(r)
            print(f"seed {seed} {name}: final {100 * r['final']:.2f} forgetting {100 * r['forgetting']:.2f} "
                  f"({r['seconds']:.0f} s)", flush=True)
        # after every seed, so a long run that is stopped early still reports the seeds it finished
        report(results, args, seeds_done=args.seeds[: args.seeds.index(seed) + 1])


def report(results: dict[str, list[dict]], args, seeds_done: list[int]) -> None:

    lines = [
        f"Command: `{command()}`", "", f"Machine: {machine()}", "",
        f"Seeds {seeds_done} (of {args.seeds} asked). Stages (0,1) → (2,3) → (4,5) → (6,7), 3 epochs each, batch 32, one head over the 8 "
        "classes (class-incremental), accuracy on the MNIST test images of digits 0-7. *Final* = mean accuracy over "
        "the four groups after the last stage; *forgetting* = best earlier accuracy − final, mean over the first "
        "three groups (points). Keys and the PCA encoder never see labels (they are fitted on every unlabelled "
        "training image, all 10 digits); without an encoder the DKVB reads a fixed random projection of the pixels.",
        "",
        "| variant | config + overrides | keys / data | final acc (%) | forgetting (points) | time per run (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, rs in results.items():
        config, overrides, keys = VARIANTS[name]
        over = " ".join(o.split("=")[0].replace("--", "") for o in overrides) or "—"
        lines.append(
            f"| {name} | `{config}` {over} | {keys} | {fmt([r['final'] for r in rs])} | "
            f"{fmt([r['forgetting'] for r in rs])} | {statistics.mean(r['seconds'] for r in rs):.0f} |"
        )
    for name, rs in results.items():
        mean_matrix = torch.stack([r["matrix"] for r in rs]).mean(0)
        lines += ["", f"Accuracy matrix of `{name}` (%, mean over seeds; row = after stage, column = group):", ""]
        lines += matrix_table(mean_matrix)
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("Continual class pairs", body)


if __name__ == "__main__":
    main()
