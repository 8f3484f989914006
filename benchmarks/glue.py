"""GLUE distillation benchmark (offline models): MiniLM-L6 teacher → 3-layer student, with and without a DKVB.

    python benchmarks/glue.py [--tasks sst2 mrpc] [--seed 0]

Every row is an ordinary ``lkd fit`` of a YAML under configs/glue/, run in-process with the overrides
printed in the section (train subset, epochs, paths). The score is the task's GLUE dev score (mean of its
metrics) of the weights at the end of training (no checkpoint selection on dev). Speed: CPU inference
over 512 dev examples padded to their longest, teacher and student taking turns (ratio = teacher seconds /
student seconds). Writes benchmarks/results/glue.json and the "GLUE" section of BENCHMARKS.md after every row.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.report import RATIO, column, table  # noqa: E402
from lkd.cli import LKDCLI  # noqa: E402
from lkd.evaluation import interleaved_inference_seconds  # noqa: E402
from lkd.metrics import glue_metric_names  # noqa: E402
from lkd.memory import count_parameters  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "glue"
# per task: training examples (seeded subset), epochs, batch size
BUDGET = {"sst2": (4000, 2, 32), "mrpc": (2000, 3, 16), "rte": (2490, 3, 16), "cola": (4000, 2, 32)}
ROWS = [
    # name, config, teacher it reads, what
    ("teacher", "teacher.yaml", None, "MiniLM-L6 fine-tuned (6 layers)"),
    ("teacher_dkvb", "teacher_dkvb.yaml", None, "MiniLM-L6 + DKVB (keys from own embeddings, EMA)"),
    ("student_alone", "student_alone.yaml", None, "3-layer student fine-tuned alone"),
    ("student_kd", "student_kd.yaml", "teacher", "distilled, no DKVB (KL·T² + CE + L_cos)"),
    ("student_dkvb_kd", "student_dkvb_kd.yaml", "teacher", "distilled + DKVB, EMA keys on own features"),
    ("student_dkvb_keyinit", "student_dkvb_keyinit.yaml", "teacher", "distilled + DKVB, keys init from teacher embeddings"),
    ("student_dkvb_carry", "student_dkvb_carry.yaml", "teacher_dkvb", "distilled + DKVB, keys+values carried from DKVB teacher every 100 steps"),
    # not in the default set: DistilBERT-style init from the *fine-tuned* teacher instead of the pretrained encoder
    ("student_kd_init_teacher", "student_kd.yaml", "teacher", "distilled, student initialised from the fine-tuned teacher (layers 0, 2, 5)"),
]
DEFAULT_ROWS = [r[0] for r in ROWS if r[0] != "student_kd_init_teacher"]
EXTRA_ARGS = {"student_kd_init_teacher": ["--model.init_args.student_init=teacher"]}
COLUMNS = [
    column("task", "task"), column("model", "model"), column("params", "params", format="{:.1f} M", scale=1e-6),
    column("dev score %", "score", format="{:.2f}"), column("metrics %", "metrics", aggregate="items", format="{:.2f}"),
    column("retained vs teacher", "retained_pct", format="{:.1f}%", missing="–"),
    column("speed vs teacher", "speedup", format=RATIO, missing="–"), column("train s", "seconds"),
]


class OnTokenIds(nn.Module):
    """``model(input_ids)`` for the timing helper: attention mask from the padding id 0."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.network(input_ids, attention_mask=(input_ids != 0).long()).logits


def run_row(task: str, name: str, config: str, teacher: str | None, workdir: Path, seed: int) -> tuple[LKDCLI, dict]:
    train_size, epochs, batch = BUDGET[task]
    ckpt = workdir / task / f"{name}.ckpt"
    args = [
        "fit", "-c", str(CONFIGS / config), f"--seed_everything={seed}", f"--data.init_args.task={task}",
        f"--data.init_args.train_size={train_size}", f"--data.init_args.batch_size={batch}", f"--data.init_args.seed={seed}",
        f"--trainer.max_epochs={epochs}", "--trainer.val_check_interval=1.0", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={workdir / task / name}", f"--trainer.logger.init_args.save_dir={workdir}",
        f"--trainer.logger.init_args.name={task}_{name}", f"--best_checkpoint.path={ckpt}", *EXTRA_ARGS.get(name, []),
    ]
    if teacher:
        args.append(f"--model.init_args.teacher.checkpoint={workdir / task / f'{teacher}.ckpt'}")
    start = time.perf_counter()
    cli = LKDCLI(args=args)
    seconds = time.perf_counter() - start
    m = cli.trainer.callback_metrics
    names = (*glue_metric_names(task, cli.model.num_classes), "score")
    metrics = {name: round(100 * float(m[f"val/{name}"]), 2) for name in names}
    return cli, {"metrics": metrics, "score": metrics["score"], "seconds": round(seconds),
                 "params": count_parameters(cli.model.network), "steps": cli.trainer.global_step}


def dev_inputs(cli: LKDCLI, n: int = 512) -> torch.Tensor:
    data = cli.datamodule
    dev = data.split("validation")  # tokenised (lazily) with the model's tokenizer
    examples = [dev[i] for i in range(min(n, len(dev)))]
    return data._collate(examples)["input_ids"]  # (n, T_max)


def run_task(task: str, args, workdir: Path, results: dict) -> None:
    networks = {}
    for name, config, teacher, _ in ROWS:
        if name not in args.rows:
            continue
        cli, row = run_row(task, name, config, teacher, workdir, args.seed)
        results.setdefault(task, {})[name] = row
        networks[name] = cli.model.network
        print(f"[glue] {task} {name}: {json.dumps(row)}", flush=True)
        inputs = dev_inputs(cli)
        write_report(results, args)
    if "teacher" not in networks:  # a partial rerun: keep the timing of the run that had the teacher
        return
    timed = {"teacher": "teacher", "student": "student_kd", "student_dkvb": "student_dkvb_kd"}
    speed = interleaved_inference_seconds(
        {key: OnTokenIds(networks[name]) for key, name in timed.items() if name in networks}, inputs, batch_size=64, repeats=5)
    add_speedups(results[task], speed)
    results[task]["_timing"] = {k: round(v, 3) for k, v in speed.items()} | {"examples": len(inputs), "tokens": inputs.shape[1]}
    print(f"[glue] {task} timing: {results[task]['_timing']}", flush=True)
    write_report(results, args)


def read_previous_log(path: Path) -> dict:
    """Rows and timings of an earlier run of this script, from the lines it printed."""
    results: dict = {}
    for line in path.read_text().splitlines():
        if line.startswith("[glue] ") and ": {" in line:
            head, payload = line[len("[glue] "):].split(": ", 1)
            task, name = head.split(" ", 1)
            results.setdefault(task, {})["_timing" if name == "timing" else name] = json.loads(payload.replace("'", '"'))
    for rows in results.values():
        add_speedups(rows, rows.get("_timing", {}))
    return results


def add_speedups(task_rows: dict, speed: dict) -> None:
    """Each row's speed vs the teacher: the teacher's inference seconds over those of the timed model of the
    row's kind (teacher, student, student with a DKVB); none for the DKVB teacher (only the source of carried keys)."""
    for name, row in task_rows.items():
        key = "teacher" if name == "teacher" else "student_dkvb" if "dkvb" in name else "student"
        if name not in ("_timing", "teacher_dkvb") and key in speed:
            row["speedup"] = round(speed["teacher"] / speed[key], 2)


def table_rows(results: dict) -> list[dict]:
    """The rows of the GLUE table: every model row of every task (raw numbers), then the task's budget."""
    rows = []
    for task, task_rows in results.items():
        teacher = task_rows.get("teacher", {}).get("score")
        train_size, epochs, batch = BUDGET[task]
        for name, _, _, what in ROWS:
            if name not in task_rows:
                continue
            r = task_rows[name]
            rows.append({
                "task": task, "name": name, "model": what, "params": r["params"], "score": r["score"],
                "metrics": {k: v for k, v in r["metrics"].items() if k != "score"},
                "retained_pct": 100 * r["score"] / teacher if teacher else None, "speedup": r.get("speedup"),
                "seconds": r["seconds"], "steps": r.get("steps"),
            })
        budget = f"train {train_size} ex., {epochs} epochs, batch {batch}"
        rows.append({"task": task, "model": "budget", "params": "", "score": "", "metrics": budget, "retained_pct": "",
                     "speedup": "", "seconds": ""})
    return rows


def write_report(results: dict, args) -> None:
    result = common.new_result("GLUE", args, seeds=[args.seed])
    result["intro"] = [
        "Offline models: teacher all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) fine-tuned; student = its embeddings "
        "+ pretrained layers 0, 2, 5 (DistilBERT-style init). One seed "
        f"({args.seed}); train on a seeded subset, score = GLUE dev score (mean of the task's metrics) of the final weights. "
        "Speed = teacher CPU inference time / model time on 512 dev examples (interleaved, batch 64)."
    ]
    result["tables"] = [table(COLUMNS, table_rows(results))]
    result["notes"] = [
        "Target: distilled student ≥ 97 % of the teacher's dev score at ≥ 1.8× its speed; DKVB variants "
        "compared with the plain distilled student. DistilBERT for scale (Sanh et al. 2019, dev): SST-2 91.3 vs "
        "BERT-base 92.7, MRPC 87.5 vs 88.6."
    ]
    result["data"] = {"timing": {task: rows["_timing"] for task, rows in results.items() if "_timing" in rows}}
    common.finish(result, "glue", args, echo=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["sst2", "mrpc"], choices=sorted(BUDGET))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-size", type=int, default=None, help="override the per-task training subset (quick checks)")
    parser.add_argument("--epochs", type=int, default=None, help="override the per-task epochs (quick checks)")
    parser.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, choices=[r[0] for r in ROWS],
                        help="which rows to run (a student row needs its teacher row, earlier in the same run)")
    parser.add_argument("--previous-log", type=Path, default=None,
                        help="keep the rows and timings a previous run printed ('[glue] ...' lines) in the table")
    parser.add_argument("--workdir", type=Path, default=None, help="where checkpoints and TensorBoard logs go (default: a temp dir)")
    common.add_output_options(parser)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lkd_glue_"))
    for task in args.tasks:
        size, epochs, batch = BUDGET[task]
        BUDGET[task] = (args.train_size or size, args.epochs or epochs, batch)
    results = read_previous_log(args.previous_log) if args.previous_log else {}
    for task in args.tasks:
        run_task(task, args, workdir, results)
    print(f"[glue] done; logs and checkpoints in {workdir}")


if __name__ == "__main__":
    main()
