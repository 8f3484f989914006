"""Class-incremental MNIST over class orders: DKVB recipes vs an MLP on pairs of digits learnt one pair after another,
in the original order (0,1) → (2,3) → (4,5) → (6,7) and in seeded random orders of digits 0-7.

    python benchmarks/continual.py                  # 5 random orders + the original; resumes from runs/continual/runs.jsonl
    python benchmarks/continual.py --skip-missing   # train nothing: report the runs kept
    python benchmarks/continual.py --orders 2 --only mlp_adam dkvb_pca_adagrad --workdir /tmp/cont_trial/runs \\
        --results-dir /tmp/cont_trial --data.init_args.train_size=2000 --trainer.limit_train_batches=5   # a trial

Orders: :func:`lkd.data.class_pair_orders` (``--orders K`` random ones after the original, drawn from ``--order-seed``;
fewer orders are a prefix of more). Each variant is an ordinary ``lkd fit`` of a YAML under configs/mnist/ with the
order as ``--data.init_args.stages`` (overrides listed in the table), run in-process; the accuracy matrix comes from
the ContinualEvaluation callback (test split, one head over the 8 classes in stage order). Every order runs at the
same training seeds (``--seeds``, default one: 0), so data split, initialisation, PCA encoder and keys are the same in
every order and the spread over orders is the order's. A variant that sets its own stages (the joint reference) runs
once, at the original order and the first seed. Any ``--data.*``, ``--model.*`` or ``--trainer.*`` argument is passed
to every fit (a tiny trial) and is part of each run's recipe fingerprint.

Resuming: each finished run is appended to ``WORKDIR/runs.jsonl`` under its row, order, seed and recipe (a hash of
the parsed YAML with every override applied, so a changed recipe trains again); a run found there, or in the committed
``benchmarks/results/continual.json``, is not trained again. Writes ``continual.json`` and the "Continual class
pairs" section of BENCHMARKS.md after every order.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.report import column, table  # noqa: E402
from lkd.callbacks import ContinualEvaluation  # noqa: E402
from lkd.cli import LKDCLI  # noqa: E402
from lkd.data import class_pair_orders  # noqa: E402
from lkd.metrics import average_accuracy, forgetting  # noqa: E402
from lkd.models import DiscreteKeyValueBottleneck  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "mnist"
RUN_KEY = "continual-orders-v1"  # the protocol: metrics as below, test split; recipes are fingerprinted per run
RUN_FIELDS = ("row", "order", "seed", "recipe")
PASSED_ON = ("--data.", "--model.", "--trainer.")  # overrides given to every fit
def optimizer(name: str, lr: float) -> list[str]:
    """The override that trains the values with ``torch.optim.<name>(lr=lr)``."""
    return [f'--model.init_args.optimizer={{"class_path": "torch.optim.{name}", "init_args": {{"lr": {lr}}}}}']


SGD, ADAM = optimizer("SGD", 1.0), optimizer("Adam", 0.001)  # ADAM: the recipe before Adagrad
JOINT = ["--data.init_args.stages=[[0, 1, 2, 3, 4, 5, 6, 7]]", "--data.init_args.epochs_per_stage=3", "--trainer.max_epochs=3"]
NO_DESKEW = ["--model.init_args.model.init_args.encoder.init_args.deskew=false"]
PCA_KEYS = "deskew + PCA encoder + keys: fitted on all unlabelled train images, then frozen"
VARIANTS = {
    # name: (config, overrides, what keys / encoder saw, and what differs)
    "mlp_adam": ("continual_mlp.yaml", [], "no keys; MLP trained on the stages"),
    "dkvb_adam": ("continual_dkvb.yaml", [], "the original notebook's sizes; keys: EMA on all unlabelled train images, then frozen"),
    "dkvb_sgd": ("continual_dkvb.yaml", SGD, "keys: EMA on all unlabelled train images, then frozen"),
    "dkvb_paper_sgd": ("continual_dkvb_paper.yaml", [], "keys: EMA on all unlabelled train images, then frozen"),
    # lkd's recipe (configs/mnist/continual_dkvb_pca.yaml): values trained with Adagrad lr 0.1
    "dkvb_pca_adagrad": ("continual_dkvb_pca.yaml", [], f"{PCA_KEYS}; values: Adagrad lr 0.1"),
    "dkvb_pca_adagrad_no_deskew": ("continual_dkvb_pca.yaml", NO_DESKEW, "PCA encoder + keys: fitted on all unlabelled train images, "
                                   "then frozen; values: Adagrad lr 0.1"),
    "dkvb_pca_adagrad_joint": ("continual_dkvb_pca.yaml", JOINT, "reference: all 8 classes at once, 3 epochs (one order)"),
    # the previous recipe (values with Adam) and the search where it forgets (keys and encoder never see a label)
    "dkvb_pca_adam": ("continual_dkvb_pca.yaml", ADAM, f"{PCA_KEYS}; values: Adam lr 1e-3 (the recipe before Adagrad)"),
    "dkvb_pca_adam_no_deskew": ("continual_dkvb_pca.yaml", [*ADAM, *NO_DESKEW], "as dkvb_pca_adam without deskew"),
    "dkvb_pca_sgd": ("continual_dkvb_pca.yaml", SGD, f"{PCA_KEYS}; values: SGD lr 1"),
    "dkvb_pca_adam_joint": ("continual_dkvb_pca.yaml", [*ADAM, *JOINT], "reference for dkvb_pca_adam: all 8 classes at once, 3 epochs"),
    "dkvb_pca_adam_keys2048": ("continual_dkvb_pca.yaml", [*ADAM, "--model.init_args.model.init_args.num_keys=2048"],
                               "as dkvb_pca_adam with 2048 keys per codebook (4x: fewer keys shared by two digits)"),
    "dkvb_pca_adam_keys4096": ("continual_dkvb_pca.yaml", [*ADAM, "--model.init_args.model.init_args.num_keys=4096"],
                               "as dkvb_pca_adam with 4096 keys per codebook (8x)"),
    "dkvb_pca_adam_1epoch": ("continual_dkvb_pca.yaml", [*ADAM, "--data.init_args.epochs_per_stage=1", "--trainer.max_epochs=4"],
                             "as dkvb_pca_adam with 1 epoch per stage (fewer updates to the values a new pair shares)"),
    "dkvb_pca_adam_batch_classes": ("continual_dkvb_pca.yaml", [*ADAM, "--model.init_args.loss_classes=batch"],
                                    "as dkvb_pca_adam with the training softmax over the batch's classes (labels trick): "
                                    "a new pair does not push down the logits of earlier digits"),
    "dkvb_pca_adagrad_lr003": ("continual_dkvb_pca.yaml", optimizer("Adagrad", 0.03),
                               "as dkvb_pca_adagrad with lr 0.03: a value's steps shrink with the gradient it has had, so the "
                               "values of keys used in earlier stages move less"),
    "dkvb_pca_adagrad_lr03": ("continual_dkvb_pca.yaml", optimizer("Adagrad", 0.3), "as dkvb_pca_adagrad with lr 0.3"),
    "mlp_adam_batch_classes": ("continual_mlp.yaml", ["--model.init_args.loss_classes=batch"],
                               "MLP with the training softmax over the batch's classes (labels trick)"),
}
# the rows README.md's results table reads, the previous recipe and the joint ceiling beside them
DEFAULT_ROWS = ["mlp_adam", "dkvb_pca_adagrad", "dkvb_pca_adam", "dkvb_pca_adagrad_no_deskew", "dkvb_pca_adagrad_joint"]


def per_order(name: str) -> bool:
    """Whether ``name`` follows the order (False: it sets its own stages, e.g. the joint reference)."""
    return not any(o.startswith("--data.init_args.stages=") for o in VARIANTS[name][1])


def order_label(stages: list[list[int]]) -> str:
    """``[[0, 1], [2, 3]]`` -> ``"(0,1) → (2,3)"``: how an order is named in the tables and the runs file."""
    return " → ".join("(" + ",".join(map(str, g)) + ")" for g in stages)


def effective_config(name: str, extra: list[str]) -> dict:
    """What ``name`` trains: its parsed YAML with its overrides and ``extra`` applied (``--a.b=value`` sets
    ``settings[a][b]`` to ``value`` parsed as YAML, as the CLI reads it)."""
    config, overrides, _ = VARIANTS[name]
    settings = yaml.safe_load((CONFIGS / config).read_text())
    for arg in [*overrides, *extra]:
        dotted, _, value = arg.removeprefix("--").partition("=")
        *parents, leaf = dotted.split(".")
        node = settings
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = yaml.safe_load(value)
    return settings


def recipe(name: str, extra: list[str]) -> str:
    """A fingerprint of what ``name`` trains (:func:`effective_config`; comments and spelling do not count: a YAML
    holding an override's value gives the same fingerprint as the override)."""
    return hashlib.sha256(json.dumps(effective_config(name, extra), sort_keys=True).encode()).hexdigest()[:12]


def matrix_values(matrix: torch.Tensor) -> list[list[float | None]]:
    """An accuracy matrix as JSON values: fractions, ``None`` where it holds NaN (not measured)."""
    return [[v if v == v else None for v in row] for row in matrix.tolist()]


def as_matrix(values: list[list[float | None]]) -> torch.Tensor:
    return torch.tensor([[float("nan") if v is None else v for v in row] for row in values])


@torch.no_grad()
def final_confusion(module, data) -> list[list[int]]:
    """(C, C) counts of the final model on the test images of every group: row = true label, column = predicted
    (labels in stage order: label ``k`` is digit ``data.classes[k]``)."""
    module.eval()
    counts = torch.zeros(data.num_classes, data.num_classes, dtype=torch.long)
    for group in range(data.num_stages):
        images, labels = data.group_tensors("test", group)  # (N, 1, 28, 28), (N,)
        preds = torch.cat([module(chunk.to(module.device)).argmax(-1).cpu() for chunk in images.split(1000)])
        counts += torch.bincount(labels * data.num_classes + preds, minlength=data.num_classes ** 2).view_as(counts)
    return counts.tolist()


@torch.no_grad()
def key_overlap(module, data) -> dict | None:
    """How much the digits share keys: for each digit, its test images' distribution over the keys of each codebook
    ``p_d`` (C, K); ``overlap[a][b]`` = Σ_k min(p_a, p_b), mean over the codebooks (1: the same keys, 0: none shared).
    Digits in ascending order (``digits``); ``None`` for a model without a DKVB. The keys never saw a label, so the
    matrix is the same in every order at one seed."""
    dkvb = next((m for m in module.modules() if isinstance(m, DiscreteKeyValueBottleneck)), None)
    if dkvb is None:
        return None
    was_training = dkvb.training
    dkvb.eval()
    per_digit = {}
    for group in range(data.num_stages):
        images, labels = data.group_tensors("test", group)  # (N, 1, 28, 28), (N,)
        indices = torch.cat([dkvb.forward_with_codes(chunk.to(module.device)).indices.cpu() for chunk in images.split(1000)])  # (N, C)
        for label in labels.unique().tolist():
            chosen = indices[labels == label]  # (n, C)
            counts = torch.zeros(dkvb.num_codebooks, dkvb.num_keys).scatter_add_(1, chosen.T, torch.ones(chosen.T.shape))
            per_digit[data.classes[label]] = counts / len(chosen)  # (C, K)
    dkvb.train(was_training)
    digits = sorted(per_digit)
    overlap = [[torch.minimum(per_digit[a], per_digit[b]).sum(-1).mean().item() for b in digits] for a in digits]
    return {"digits": digits, "overlap": overlap}


def run_variant(name: str, stages: list[list[int]], seed: int, workdir: Path, extra: list[str]) -> dict:
    config, overrides, _ = VARIANTS[name]
    start = time.perf_counter()
    version = "_".join("".join(map(str, g)) for g in stages) + f"_seed{seed}"
    cli = LKDCLI(args=[
        "fit", "-c", str(CONFIGS / config), f"--seed_everything={seed}", f"--data.init_args.seed={seed}",
        f"--data.init_args.stages={json.dumps(stages)}", f"--trainer.logger.init_args.save_dir={workdir}",
        f"--trainer.logger.init_args.name={name}", f"--trainer.logger.init_args.version={version}",
        f"--trainer.default_root_dir={workdir}", "--trainer.enable_progress_bar=false", *extra, *overrides,
    ])
    evaluation = next(cb for cb in cli.trainer.callbacks if isinstance(cb, ContinualEvaluation))
    matrix = evaluation.matrix.as_matrix()
    data = cli.datamodule
    return {
        "row": name, "order": order_label(stages), "seed": seed, "recipe": recipe(name, extra), "stages": data.stages,
        "final": matrix[-1].mean().item(), "avg_seen": average_accuracy(matrix)[-1].item(),
        "forgetting": forgetting(matrix).mean().item() if len(matrix) > 1 else None,  # none with one stage
        "forgetting_per_group": forgetting(matrix).tolist() if len(matrix) > 1 else [],
        "matrix": matrix_values(matrix), "classes": data.classes, "confusion": final_confusion(cli.model, data),
        "key_overlap": key_overlap(cli.model, data),
        "seconds": time.perf_counter() - start,
    }


COLUMNS = [
    column("variant", "variant"), column("config + overrides", template="`{config}` {overrides}"),
    column("keys / data", "keys"), column("random orders × seeds", "runs"),
    column("final acc, random orders (%)", "final", aggregate="seeds", format="{:.2f}", scale=100, missing="n/a"),
    column("forgetting, random orders (points)", "forgetting", aggregate="seeds", format="{:.2f}", scale=100, missing="n/a"),
    column("original order: final (%)", "final_original", aggregate="seeds", format="{:.2f}", scale=100, missing="n/a"),
    column("original order: forgetting", "forgetting_original", aggregate="seeds", format="{:.2f}", scale=100, missing="n/a"),
    column("worst order (final % / forgetting)", "worst", missing="n/a"),
    column("time per run (s)", "time_s", format="{:.0f}"),
]


def matrix_table(name: str, runs: list[dict], which: str) -> dict:
    """The mean accuracy matrix of ``runs`` (row = after stage, column = the group trained in that stage)."""
    matrix = torch.stack([as_matrix(r["matrix"]) for r in runs]).nanmean(0)
    s = matrix.shape[0]
    groups = [f"stage {i + 1}" for i in range(s)] if s > 1 else ["0-7"]
    columns = [column("after stage", "after stage")] + [column(g, g, format="{:.1f}", scale=100) for g in groups]
    rows = [{"after stage": stage, **dict(zip(groups, values))} for stage, values in zip(groups, matrix_values(matrix))]
    caption = (f"Accuracy matrix of `{name}` (%, mean over {len(runs)} run(s) of {which}; row = after stage, column = "
               "the pair trained in that stage):")
    return table(columns, rows, caption)


def mean(values: list[float]) -> float:
    return statistics.mean(values)


def split_runs(runs: list[dict], original: str) -> tuple[list[dict], list[dict]]:
    """``runs`` of one variant as (random orders, original order)."""
    return [r for r in runs if r["order"] != original], [r for r in runs if r["order"] == original]


def worst_order(runs: list[dict]) -> str | None:
    """The order with the lowest final accuracy (mean over its seeds), as ``"final / forgetting in ORDER"``."""
    by_order: dict[str, list[dict]] = {}
    for r in runs:
        by_order.setdefault(r["order"], []).append(r)
    if len(by_order) < 2:
        return None
    order, rs = min(by_order.items(), key=lambda item: mean([r["final"] for r in item[1]]))
    return f"{100 * mean([r['final'] for r in rs]):.2f} / {100 * mean([r['forgetting'] for r in rs]):.2f} in {order}"


def digit_stages(run: dict) -> dict[int, int]:
    """digit -> the stage (0-based) that trained it, in ``run``'s order."""
    return {c: i for i, g in enumerate(run["stages"]) for c in g}


def errors(run: dict) -> dict[tuple[int, int], int]:
    """(true digit, predicted digit) -> test images, the final model's errors in ``run``."""
    classes = run["classes"]
    return {(classes[t], classes[p]): n for t, row in enumerate(run["confusion"]) for p, n in enumerate(row) if t != p and n}


def confusions(runs: list[dict], top: int = 5) -> list[dict]:
    """The ``top`` (true digit, predicted digit) errors of ``runs`` after the last stage, in test images per run,
    with the number of runs whose order taught the predicted digit in a later stage than the true one."""
    summed: dict[tuple[int, int], int] = {}
    for r in runs:
        for pair, n in errors(r).items():
            summed[pair] = summed.get(pair, 0) + n
    ranked = sorted(summed.items(), key=lambda item: -item[1])[:top]
    return [{"true": t, "pred": p, "per_run": n / len(runs),
             "later": sum(digit_stages(r)[p] > digit_stages(r)[t] for r in runs)} for (t, p), n in ranked]


def later_error_share(runs: list[dict]) -> float:
    """Of all test errors after the last stage, the share that names a digit of a later stage than the true one's."""
    later = total = 0
    for r in runs:
        stage = digit_stages(r)
        for (t, p), n in errors(r).items():
            total += n
            later += n * (stage[p] > stage[t])
    return later / total if total else float("nan")


def cross_stage_overlap(run: dict) -> float | None:
    """Σ of the key overlap of every two digits that ``run``'s order puts in different stages (None: no DKVB)."""
    if not (kept := run.get("key_overlap")):
        return None
    stage, digits = digit_stages(run), kept["digits"]
    return sum(kept["overlap"][i][j] for i, a in enumerate(digits) for j, b in enumerate(digits) if i < j and stage[a] != stage[b])


def pearson(xs: list[float], ys: list[float]) -> float:
    mx, my = mean(xs), mean(ys)
    sx, sy = sum((x - mx) ** 2 for x in xs) ** 0.5, sum((y - my) ** 2 for y in ys) ** 0.5
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / (sx * sy) if sx and sy else float("nan")


def section(results: list[dict], orders: list[list[list[int]]], args, others: list[dict] = ()) -> dict:
    """The report of ``results`` (the rows and orders asked for); ``others``, kept runs of the current recipes that were
    not asked for this time, stay in its data so that a run of a few rows never drops the rest."""
    original = order_label(orders[0])
    rows, tables_after, by_row = [], [], {}
    for r in results:
        by_row.setdefault(r["row"], []).append(r)
    for name in [n for n in args.only if n in by_row]:
        config, overrides, keys = VARIANTS[name]
        rs = by_row[name]
        randoms, originals = split_runs(rs, original)
        rows.append({
            "variant": name, "config": config, "keys": keys,
            "overrides": " ".join(o.split("=")[0].replace("--", "") for o in overrides) or "—",
            "runs": f"{len({r['order'] for r in randoms})} × {len({r['seed'] for r in randoms})}" if randoms else "—",
            "final": [r["final"] for r in randoms] or None, "forgetting": [r["forgetting"] for r in randoms] or None,
            "final_original": [r["final"] for r in originals] or None,
            "forgetting_original": [r["forgetting"] for r in originals] or None,
            "worst": worst_order(rs), "time_s": mean([r["seconds"] for r in rs]),
        })
        tables_after.append(matrix_table(name, randoms, "the random orders") if randoms else
                            matrix_table(name, originals, "the original order"))
    result = common.new_result("Continual class pairs", args, seeds=args.seeds)
    random_labels = [order_label(o) for o in orders[1:]]
    done = {r["order"] for r in results if r["order"] != original}
    result["intro"] = [
        f"Class-incremental MNIST: four pairs of digits learnt one after another, 3 epochs each, batch 32, one head over "
        "the 8 classes; accuracy on the MNIST test images of the 8 digits. Orders: the original "
        f"{original} and {len(random_labels)} random order(s) of digits {args.digits} (`lkd.data.class_pair_orders`, seed "
        f"{args.order_seed}): {'; '.join(random_labels) or 'none'}"
        + (f" ({len(done)} done)" if len(done) < len(random_labels) else "") + ". "
        f"Every order at training seed(s) {args.seeds}: the same split, initialisation, PCA encoder and keys in every "
        "order, so the spread is the order's. *Final* = mean accuracy over the four groups after the last stage; "
        "*forgetting* = best earlier accuracy − final, mean over the first three groups (points); random-order cells "
        "are mean ± std over the random orders, the original order is reported beside them, the worst order is the one "
        "with the lowest final accuracy. Keys and the PCA encoder never see labels (they are fitted on every unlabelled "
        "training image, all 10 digits); without an encoder the DKVB reads a fixed random projection of the pixels. "
        "Variants that set their own stages (the joint reference) run once, at the first seed."
        + (f" Passed to every fit: `{' '.join(args.extra)}`." if args.extra else "")
    ]
    result["tables"] = [table(COLUMNS, rows), *tables_after]
    result["notes"] = notes(by_row, original, len(random_labels), args)
    result["data"] = {"run_key": RUN_KEY, "runs": [*results, *others], "orders": orders}
    return result


def notes(by_row: dict[str, list[dict]], original: str, asked: int, args) -> list[str]:
    """The target's verdict, the MLP beside it, and where the target's errors go after the last stage."""
    out = []
    target = by_row.get(args.target, [])
    randoms, originals = split_runs(target, original)
    goal = ("Target (mean over the random pair orders ≥ 96 % final accuracy and ≤ 1 point forgetting, encoder and keys "
            "never shown a label)")
    if randoms:
        final, forget = [100 * r["final"] for r in randoms], [100 * r["forgetting"] for r in randoms]
        met = mean(final) >= 96 and mean(forget) <= 1
        orders_done = len({r["order"] for r in randoms})
        out.append(
            f"{goal}: `{args.target}` {mean(final):.2f} % final, {mean(forget):.2f} points forgetting over {orders_done} "
            f"random order(s){f' of {asked}' if orders_done < asked else ''} (per run: "
            f"{', '.join(f'{f:.2f} / {g:.2f}' for f, g in zip(final, forget))})"
            + (f"; original order {100 * mean([r['final'] for r in originals]):.2f} / "
               f"{100 * mean([r['forgetting'] for r in originals]):.2f}" if originals else "")
            + (f"; worst order {worst}" if (worst := worst_order(target)) else "")
            + " — " + ("**met**." if met else "**not met**.")
            + ("" if orders_done == asked else " (Not all orders done: a provisional verdict.)"))
    else:
        out.append(f"{goal}: no random-order run of `{args.target}` yet.")
    if mlp := split_runs(by_row.get("mlp_adam", []), original)[0]:
        out.append(f"MLP baseline beside it (`mlp_adam`, random orders): {100 * mean([r['final'] for r in mlp]):.2f} % final, "
                   f"{100 * mean([r['forgetting'] for r in mlp]):.2f} points forgetting.")
    if randoms:
        groups = sorted(((100 * f, i, r["order"]) for r in randoms for i, f in enumerate(r["forgetting_per_group"]) if f > 0),
                        reverse=True)[:3]
        top = confusions(randoms)
        out.append(
            f"Where `{args.target}` forgets (random orders): largest drops "
            + (", ".join(f"{f:.1f} points for the stage-{i + 1} pair of {o}" for f, i, o in groups) or "none")
            + f". After the last stage {100 * later_error_share(randoms):.0f} % of its test errors name a digit of a later "
            "stage than the true one's (original order: "
            + (f"{100 * later_error_share(originals):.0f} %" if originals else "n/a") + "); most frequent errors "
            "(true → predicted, test images per run, runs where the predicted digit came later): "
            + ", ".join(f"{c['true']} → {c['pred']} {c['per_run']:.1f} ({c['later']}/{len(randoms)})" for c in top) + ".")
    if (runs := [r for r in target if r.get("key_overlap")]) and len({r["order"] for r in runs}) > 1:
        kept = runs[0]["key_overlap"]
        digits = kept["digits"]
        pairs = sorted(((kept["overlap"][i][j], a, b) for i, a in enumerate(digits) for j, b in enumerate(digits) if i < j), reverse=True)[:5]
        cross = [cross_stage_overlap(r) for r in runs]
        forget = [100 * r["forgetting"] for r in runs]
        out.append(
            f"Key sharing of `{args.target}` (per digit, its test images' keys; overlap = Σ_k min(p_a, p_b), mean over "
            "codebooks): most shared " + ", ".join(f"{a}–{b} {v:.2f}" for v, a, b in pairs) + ". Overlap of the digits "
            "an order puts in different stages vs that order's forgetting: "
            + "; ".join(f"{r['order']} {c:.2f} / {f:.2f}" for r, c, f in sorted(zip(runs, cross, forget), key=lambda t: t[1]))
            + f" (Pearson r = {pearson(cross, forget):.2f} over {len(runs)} runs).")
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_seeds_option(parser, [0], help="training seeds; every order runs at each (seeds × orders runs per variant)")
    parser.add_argument("--orders", type=int, default=5, help="random pair orders after the original (0: the original alone)")
    parser.add_argument("--order-seed", type=int, default=0, help="seed of the random orders")
    parser.add_argument("--digits", type=int, nargs="+", default=list(range(8)),
                        help="the digits the random orders are drawn from (4 pairs; see lkd.data.class_pair_orders)")
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), default=DEFAULT_ROWS)
    parser.add_argument("--target", choices=list(VARIANTS), default="dkvb_pca_adagrad", help="the recipe the notes judge")
    parser.add_argument("--skip-missing", action="store_true", help="train nothing: report the runs kept")
    parser.add_argument("--workdir", type=Path, default=common.ROOT / "runs" / "continual",
                        help="runs.jsonl and the TensorBoard logs")
    common.add_output_options(parser)
    args, extra = parser.parse_known_args()
    if bad := [a for a in extra if not (a.startswith(PASSED_ON) and "=" in a)]:
        parser.error(f"unknown arguments {bad}. HINT: only --data.*=, --model.*= and --trainer.*= overrides (with '=') "
                     "are passed on to every fit")
    args.extra = extra
    return args


def main() -> None:
    args = parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    orders = class_pair_orders(args.orders, seed=args.order_seed, digits=args.digits)
    recipes = {name: recipe(name, args.extra) for name in args.only}
    kept = common.kept_runs("continual", args.workdir, RUN_KEY, RUN_FIELDS)
    asked = {(name, order_label(stages), seed) for name in args.only for stages in orders for seed in args.seeds}
    others = [r for k, r in kept.items() if k[0] in VARIANTS and k[3] == recipe(k[0], args.extra) and k[:3] not in asked]
    results = []
    for seed in args.seeds:
        for i, stages in enumerate(orders):
            for name in args.only:
                if not per_order(name) and (i > 0 or seed != args.seeds[0]):
                    continue
                label = order_label(stages)
                if (found := kept.get((name, label, seed, recipes[name]))) is not None:
                    results.append(found)
                    continue
                if args.skip_missing:
                    continue
                r = run_variant(name, stages, seed, args.workdir, args.extra)
                results.append(r)
                with (args.workdir / "runs.jsonl").open("a") as f:
                    f.write(json.dumps({"key": RUN_KEY, **r}) + "\n")
                forgot = "n/a" if r["forgetting"] is None else f"{100 * r['forgetting']:.2f}"
                print(f"seed {seed} order {i} {label} {name}: final {100 * r['final']:.2f} forgetting {forgot} "
                      f"({r['seconds']:.0f} s)", flush=True)
            if not args.skip_missing:  # after every order, so a stopped run still reports the orders it finished
                common.finish(section(results, orders, args, others), "continual", args, echo=False)
    common.finish(section(results, orders, args, others), "continual", args)


if __name__ == "__main__":
    main()
