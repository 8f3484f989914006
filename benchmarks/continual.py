"""Class-incremental MNIST benchmark: DKVB vs MLP on class pairs (0,1) -> (2,3) -> (4,5) -> (6,7).

    python benchmarks/continual.py [--seeds 0 1 2] [--only dkvb_adam mlp_adam ...]

Each variant is an ordinary ``lkd fit`` of a YAML under configs/mnist/ (overrides listed in the table),
run in-process; the accuracy matrix comes from the ContinualEvaluation callback (test split, one head over
the 8 classes). Writes benchmarks/results/continual.json and the "Continual class pairs" section of
BENCHMARKS.md after every seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.report import column, table  # noqa: E402
from lkd.callbacks import ContinualEvaluation  # noqa: E402
from lkd.cli import LKDCLI  # noqa: E402
from lkd.metrics import average_accuracy, forgetting  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "mnist"
SGD = ['--model.init_args.optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 1.0}}']
JOINT = ["--data.init_args.stages=[[0, 1, 2, 3, 4, 5, 6, 7]]", "--data.init_args.epochs_per_stage=3", "--trainer.max_epochs=3"]
NO_DESKEW = ["--model.init_args.model.init_args.encoder.init_args.deskew=false"]
VARIANTS = {
    # name: (config, overrides, what keys / encoder saw)
    "mlp_adam": ("continual_mlp.yaml", [], "no keys; MLP trained on the stages"),
    "dkvb_adam": ("continual_dkvb.yaml", [], "the original notebook's sizes; keys: EMA on all unlabelled train images, then frozen"),
    "dkvb_sgd": ("continual_dkvb.yaml", SGD, "keys: EMA on all unlabelled train images, then frozen"),
    "dkvb_paper_sgd": ("continual_dkvb_paper.yaml", [], "keys: EMA on all unlabelled train images, then frozen"),
    "dkvb_pca_adam": ("continual_dkvb_pca.yaml", [], "deskew + PCA encoder + keys: fitted on all unlabelled train images, then frozen"),
    "dkvb_pca_adam_no_deskew": ("continual_dkvb_pca.yaml", NO_DESKEW, "PCA encoder + keys: fitted on all unlabelled train images, then frozen"),
    "dkvb_pca_sgd": ("continual_dkvb_pca.yaml", SGD, "deskew + PCA encoder + keys: fitted on all unlabelled train images, then frozen"),
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
        "forgetting": forgetting(matrix).mean().item() if len(matrix) > 1 else None,  # none with one stage
        "seconds": time.perf_counter() - start,
    }


GROUPS = ["(0,1)", "(2,3)", "(4,5)", "(6,7)"]
COLUMNS = [
    column("variant", "variant"), column("config + overrides", template="`{config}` {overrides}"),
    column("keys / data", "keys"), column("seeds", "runs"),
    column("final acc (%)", "final", aggregate="mean_std", format="{:.2f}", scale=100, missing="n/a"),
    column("forgetting (points)", "forgetting", aggregate="mean_std", format="{:.2f}", scale=100, missing="n/a"),
    column("time per run (s)", "time_s", format="{:.0f}"),
]


def matrix_values(matrix: torch.Tensor) -> list[list[float | None]]:
    """An accuracy matrix as JSON values: fractions, ``None`` where it holds NaN (not measured)."""
    return [[v if v == v else None for v in row] for row in matrix.tolist()]


def matrix_table(name: str, matrix: torch.Tensor) -> dict:
    """The accuracy matrix (row = after stage, column = group) as a table of the result file."""
    s = matrix.shape[0]
    groups = GROUPS[:s] if s > 1 else ["0-7"]
    columns = [column("after stage", "after stage")] + [column(g, g, format="{:.1f}", scale=100) for g in groups]
    rows = [{"after stage": stage, **dict(zip(groups, values))} for stage, values in zip(groups, matrix_values(matrix))]
    return table(columns, rows, f"Accuracy matrix of `{name}` (%, mean over seeds; row = after stage, column = group):")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_seeds_option(parser, [0, 1, 2])
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--first-seed-only", nargs="+", choices=list(VARIANTS), default=[],
                        help="variants run at the first seed only (the long original-size row, the joint reference)")
    parser.add_argument("--workdir", type=Path, default=None)
    common.add_output_options(parser)
    parser.add_argument("--merge", nargs="+", type=Path, default=None,
                        help="continual.json files of earlier runs (e.g. seeds run in two processes): their runs are "
                             "combined per variant and the section is written; nothing is trained")
    args = parser.parse_args()
    if args.merge:
        merge(args)
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lkd-continual-"))
    results: dict[str, list[dict]] = {}
    for seed in args.seeds:
        for name in args.only:
            if name in args.first_seed_only and seed != args.seeds[0]:
                continue
            r = run_variant(name, seed, workdir)
            results.setdefault(name, []).append(r)
            forgot = "n/a" if r["forgetting"] is None else f"{100 * r['forgetting']:.2f}"
            print(f"seed {seed} {name}: final {100 * r['final']:.2f} forgetting {forgot} ({r['seconds']:.0f} s)", flush=True)
        # after every seed, so a long run that is stopped early still reports the seeds it finished
        report(results, args, seeds_done=args.seeds[: args.seeds.index(seed) + 1])


def merge(args) -> None:
    """Rebuild the runs of earlier result files (their rows and per-seed matrices) and report them together."""
    results: dict[str, list[dict]] = {}
    seeds: list[int] = []
    sources = []
    for path in args.merge:
        saved = json.loads(path.read_text())
        seeds += [seed for seed in saved["seeds"] if seed not in seeds]
        sources.append(f"`{saved['command']}` (seeds {saved['seeds']})")
        for row in saved["tables"][0]["rows"]:
            for i in range(len(row["final"])):
                matrix = saved["data"]["matrices_per_seed"][row["variant"]][i]
                results.setdefault(row["variant"], []).append({
                    "matrix": torch.tensor([[float("nan") if v is None else v for v in r] for r in matrix]),
                    **{key: row[key][i] for key in ("final", "avg_seen", "forgetting", "seconds")},
                })
    report(results, args, seeds_done=sorted(seeds), sources=sources)


def report(results: dict[str, list[dict]], args, seeds_done: list[int], sources: list[str] = ()) -> None:
    rows = []
    for name, rs in results.items():
        config, overrides, keys = VARIANTS[name]
        rows.append({
            "variant": name, "config": config, "runs": len(rs),
            "overrides": " ".join(o.split("=")[0].replace("--", "") for o in overrides) or "—", "keys": keys,
            "final": [r["final"] for r in rs], "avg_seen": [r["avg_seen"] for r in rs],
            "forgetting": [r["forgetting"] for r in rs], "seconds": [r["seconds"] for r in rs],
            "time_s": statistics.mean(r["seconds"] for r in rs),
        })
    tables = [table(COLUMNS, rows)]
    tables += [matrix_table(name, torch.stack([r["matrix"] for r in rs]).mean(0)) for name, rs in results.items()]
    result = common.new_result("Continual class pairs", args, seeds=seeds_done)
    result["intro"] = [
        f"Seeds {seeds_done} (of {args.seeds} asked). Stages (0,1) → (2,3) → (4,5) → (6,7), 3 epochs each, batch 32, one head over the 8 "
        "classes (class-incremental), accuracy on the MNIST test images of digits 0-7. *Final* = mean accuracy over "
        "the four groups after the last stage; *forgetting* = best earlier accuracy − final, mean over the first "
        "three groups (points). Keys and the PCA encoder never see labels (they are fitted on every unlabelled "
        "training image, all 10 digits); without an encoder the DKVB reads a fixed random projection of the pixels."
        + (f" Run at the first seed only: {', '.join(args.first_seed_only)}." if args.first_seed_only else "")
        + (f" Runs of {' and '.join(sources)}, merged." if sources else "")
    ]
    result["tables"] = tables
    if "dkvb_pca_adam" in results:
        rs = results["dkvb_pca_adam"]
        final = [100 * r["final"] for r in rs]
        forget = [100 * r["forgetting"] for r in rs]
        met = statistics.mean(final) >= 96 and statistics.mean(forget) <= 1
        result["notes"] = [
            f"Target (DKVB final accuracy ≥ 96 %, forgetting ≤ 1 point, encoder and keys never see a label): "
            f"`dkvb_pca_adam` {statistics.mean(final):.2f} % final, {statistics.mean(forget):.2f} points forgetting "
            f"over {len(rs)} seed(s) (per seed: {', '.join(f'{f:.2f} / {g:.2f}' for f, g in zip(final, forget))}) — "
            + ("**met**." if met else "**not met**.")
        ]
    result["data"] = {"matrices_per_seed": {name: [matrix_values(r["matrix"]) for r in rs] for name, rs in results.items()}}
    common.finish(result, "continual", args)


if __name__ == "__main__":
    main()
