"""On-policy distillation with real models: the packaged SmolLM2-135M-Instruct teaching its own depth-pruned half
(15 of 30 layers, ``configs/lm/student_pruned_depth.yaml``) on instruction prompts built from GLUE SST-2 sentences.

    python benchmarks/on_policy_real.py          # resumes from runs/on_policy_real/runs.jsonl
    python benchmarks/on_policy_real.py --rows on_policy_b05 --seeds 0 --steps 4 --results-dir runs/opr_trial   # a trial

Stages:

1. the prompts: ``--template`` over SST-2 sentences (offline mirror of ``nyu-mll/glue``), ``--n-train`` training
   sentences (``train``) and ``--n-test`` held-out ones (``validation``), SmolLM2's chat template;
2. the teacher's greedy completions of every prompt, generated once and kept in ``--workdir`` as JSONL (the
   sequence-level KD data, and the held-out references that ROUGE-L is measured against);
3. seeds × rows, seed-major, each finished run appended to ``runs.jsonl``: the pruned student trained ``--steps``
   optimizer steps of ``--batch`` prompts, scored every ``--eval-every`` steps (off the clock) on the held-out prompts
   by :class:`lkd.callbacks.CompletionEvaluation`: the teacher's mean NLL per token of the student's samples and ROUGE-L
   of its greedy completion against the teacher's. Rows: sequence-level KD on the teacher's completions (forward KL:
   off-policy); on-policy with β = 0.5 (JSD), λ = 1 (and β = 0, forward KL, with ``--rows``). Columns at equal optimizer
   steps and at the off-policy row's training time. One run takes about 10 min on this 2-core CPU (the 135 M teacher's
   forward dominates), so the defaults are small: 30 steps of 8 prompts, 32 held-out prompts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning.pytorch as pl
import torch

from benchmarks import common
from benchmarks.report import column, table
from lkd.callbacks import OnPolicySchedule
from lkd.callbacks.completions import CompletionEvaluation
from lkd.data.prompts import PromptDataModule
from lkd.models.causal_lm import CausalLM, SmolLM2
from lkd.models.pruning import prune_llama
from lkd.models.sampling import sample_completions
from lkd.modules import OnPolicyDistillModule
from lkd.teacher import Teacher
from lkd.tokenizers import load_tokenizer

DEPTH = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 29]  # configs/lm/student_pruned_depth.yaml
ROWS = {  # row: OnPolicyDistillModule options (None: scored as pruned)
    "untrained": None,
    "seq_kd": {"lmbda": 0.0, "beta": 0.0, "off_policy": "reference"},  # the references are the teacher's greedy completions
    "on_policy_b0": {"lmbda": 1.0, "beta": 0.0},
    "on_policy_b05": {"lmbda": 1.0, "beta": 0.5},
    "mixed_l05": {"lmbda": 0.5, "beta": 0.5, "off_policy": "reference"},  # GKD's mix, drawn per row
    "seq_kd_then_on_policy": {"lmbda": 0.0, "beta": 0.5, "off_policy": "reference", "off_policy_share": 0.5},  # OnPolicySchedule
}
ON_POLICY_ROWS = ("on_policy_b0", "on_policy_b05", "mixed_l05", "seq_kd_then_on_policy")
LABELS = {"untrained": "pruned student, untrained", "seq_kd": "sequence-level KD on the teacher's completions (forward KL)",
          "on_policy_b0": "on-policy, β = 0 (forward KL)", "on_policy_b05": "on-policy, β = 0.5 (JSD)",
          "mixed_l05": "λ = 0.5: half the rows sampled, half the teacher's completions (JSD, drawn per row)",
          "seq_kd_then_on_policy": "sequence-level KD (forward KL) for half the steps, then on-policy JSD (OnPolicySchedule)"}
OFF_POLICY = "seq_kd"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_seeds_option(p, [0, 1, 2])
    p.add_argument("--rows", nargs="+", choices=list(ROWS),
                   default=["untrained", "seq_kd", "on_policy_b05", "mixed_l05", "seq_kd_then_on_policy"])
    p.add_argument("--template", default="Continue this movie review with one more sentence: {sentence}")
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-test", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--eval-every", type=int, default=15)
    p.add_argument("--skip-missing", action="store_true", help="train nothing: report the runs kept in runs.jsonl")
    p.add_argument("--workdir", type=Path, default=common.ROOT / "runs" / "on_policy_real")
    common.add_output_options(p)
    return p.parse_args()


def prompts(args, split: str, n: int, *, completions: Path | None = None, seed: int = 0) -> PromptDataModule:
    """The SST-2 prompts of ``split`` (its first ``n``), with the teacher's completions as references when kept;
    ``seed`` orders the training rows."""
    if completions is None:
        return PromptDataModule("nyu-mll/glue", "sst2", prompt_template=args.template, completion_column=None,
                                train_split=f"{split}[:{n}]", test_split=None, batch_size=16, seed=0)
    return PromptDataModule(data_files={"train": str(completions)}, prompt_template=args.template, completion_column="teacher",
                            train_split="train", test_split=None, batch_size=args.batch, seed=seed)


def teacher_completions(teacher: CausalLM, args, split: str, n: int) -> Path:
    """The teacher's greedy completions of the prompts (kept: ``{split}_{n}.teacher.jsonl`` in --workdir)."""
    path = args.workdir / f"{split}_{n}_{args.max_new_tokens}.teacher.jsonl"
    if path.is_file():
        return path
    dm = prompts(args, split, n)
    dm.connect("smollm2")
    dm.setup("fit")
    tok = load_tokenizer("smollm2")
    rows = []
    print(f"the teacher's greedy completions of {n} {split} prompts", flush=True)
    for batch in dm._loader("train", shuffle=False):
        out = sample_completions(teacher.model, batch["prompt_ids"], batch["prompt_mask"], max_new_tokens=args.max_new_tokens,
                                 eos_token_id=tok.eos_token_id, pad_token_id=dm.pad_id, temperature=0.0)
        sentences = dm.raw("train").select(batch["row_index"].tolist())["sentence"]
        for r, sentence in enumerate(sentences):
            rows.append({"sentence": sentence, "teacher": tok.decode(out.tokens[r][out.mask[r]].tolist(), skip_special_tokens=True)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def student() -> CausalLM:
    return CausalLM(prune_llama(SmolLM2().model, keep_layers=DEPTH))


class Curve(pl.Callback):
    """The held-out scores every ``every`` optimizer steps against training seconds (evaluation off the clock)."""

    def __init__(self, batches: list[dict], every: int):
        self.batches, self.every, self.points, self.train_s, self._mark = batches, every, [], 0.0, None
        self.scorer = CompletionEvaluation(max_batches=None, compare_teacher=False, teacher_nll=True, show=0)

    def score(self, module, step: int) -> dict:
        module.eval()
        values, _ = self.scorer.scores(module, self.batches)
        module.train()
        point = {"step": step, "train_s": self.train_s, "teacher_nll": values["teacher_nll"], "rougeL": values["rougeL_reference"]}
        self.points.append(point)
        return point

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._mark = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train_s += time.perf_counter() - self._mark
        step = trainer.global_step
        if step % self.every == 0 or step == trainer.max_steps:
            self.score(pl_module, step)


def run(row: str, seed: int, teacher: CausalLM, files: dict[str, Path], args) -> dict:
    pl.seed_everything(seed, verbose=False)
    options = dict(ROWS[row] or {"lmbda": 0.0})
    share = options.pop("off_policy_share", None)
    schedule = [OnPolicySchedule(off_policy_steps=max(1, round(share * args.steps)), off_policy_beta=0.0)] if share else []
    model = student()
    module = OnPolicyDistillModule(model, Teacher(model=teacher), tokenizer="smollm2", max_new_tokens=args.max_new_tokens, seed=seed,
                                   optimizer=lambda params: torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01),
                                   **options)
    train = prompts(args, "train", args.n_train, completions=files["train"], seed=seed)
    test = prompts(args, "test", args.n_test, completions=files["test"])
    module.connect_data(test)
    test.setup("fit")
    held_out = list(test._loader("train", shuffle=False))
    curve = Curve(held_out, args.eval_every)
    if ROWS[row] is None:
        curve.score(module, 0)
    else:
        common.quiet_trainer(max_steps=args.steps, max_epochs=-1, gradient_clip_val=1.0, precision="bf16-mixed",
                             callbacks=[*schedule, curve]).fit(module, datamodule=train)
    last = curve.points[-1]
    out = {"row": row, "seed": seed, "teacher_nll": last["teacher_nll"], "rougeL": last["rougeL"], "train_s": curve.train_s,
           "steps": last["step"], "curve": curve.points}
    print(f"{row} seed {seed}: teacher NLL {out['teacher_nll']:.3f}, ROUGE-L {out['rougeL']:.3f} ({out['train_s']:.0f} s)", flush=True)
    return out


def at_seconds(run: dict, seconds: float, key: str) -> float:
    """``key`` at ``run``'s last evaluation within ``seconds`` of training (its first evaluation's otherwise)."""
    within = [p[key] for p in run["curve"] if p["train_s"] <= seconds + 1e-9]
    return within[-1] if within else run["curve"][0][key]


def run_key(args) -> str:
    return json.dumps({k: getattr(args, k) for k in ("template", "n_train", "n_test", "max_new_tokens", "steps", "batch", "lr",
                                                     "eval_every")} | {"depth": DEPTH}, sort_keys=True)


def section(results: list[dict], teacher: dict, args) -> dict:
    by_row: dict[str, list[dict]] = {}
    for r in results:
        by_row.setdefault(r["row"], []).append(r)
    budget = statistics.mean(r["train_s"] for r in by_row[OFF_POLICY]) if OFF_POLICY in by_row else None
    rows = [{"name": "teacher (its own samples; its greedy completions are the references)", "nll": [teacher["teacher_nll"]],
             "rouge": [1.0]}]
    for name in ROWS:
        if name not in by_row:
            continue
        runs = sorted(by_row[name], key=lambda r: r["seed"])
        trained = ROWS[name] is not None
        rows.append({"name": LABELS[name], "nll": [r["teacher_nll"] for r in runs], "rouge": [r["rougeL"] for r in runs],
                     "train_s": statistics.mean(r["train_s"] for r in runs) if trained else None,
                     "nll_time": [at_seconds(r, budget, "teacher_nll") for r in runs] if trained and budget else None,
                     "rouge_time": [at_seconds(r, budget, "rougeL") for r in runs] if trained and budget else None})
    notes = []
    stats = lambda name, key: (statistics.mean(r[key] for r in by_row[name]),  # noqa: E731
                               statistics.stdev([r[key] for r in by_row[name]]) if len(by_row[name]) > 1 else 0.0)
    on_policy = [r for r in ON_POLICY_ROWS if r in by_row]
    if on_policy and OFF_POLICY in by_row:
        verdicts = {}
        for name in on_policy:
            n = min(len(by_row[name]), len(by_row[OFF_POLICY]))
            (bn, bs), (on, os_) = stats(name, "teacher_nll"), stats(OFF_POLICY, "teacher_nll")
            (br, brs), (orr, ors) = stats(name, "rougeL"), stats(OFF_POLICY, "rougeL")
            verdicts[name] = "met" if bn < on and br > orr and n >= 3 else "not met" if n >= 3 else "open"
            notes.append(f"Target (real models, equal steps, {n} seeds), {LABELS[name]}: teacher NLL {bn:.3f} ± {bs:.3f} against "
                         f"sequence-level KD's {on:.3f} ± {os_:.3f} (lower is better), ROUGE-L against the teacher {br:.3f} ± "
                         f"{brs:.3f} against {orr:.3f} ± {ors:.3f}: both better is the target, {verdicts[name]}.")
        if "met" not in verdicts.values() and "untrained" in by_row:
            tried = "" if "seq_kd_then_on_policy" in by_row else (" Sequence-level KD first and on-policy after (or λ = 0.5 from "
                                                                   "the start) is the next thing to measure.")
            notes.append(f"Why, we think: the pruned student starts far from its teacher (the teacher's NLL of its samples "
                         f"{stats('untrained', 'teacher_nll')[0]:.2f}, of its own {teacher['teacher_nll']:.2f}), so its first "
                         "samples are nearly noise, and scoring noise teaches less than imitating the teacher's own text for "
                         f"{args.steps} steps. GKD distils students that were first fine-tuned on the task.{tried} A longer budget "
                         "than this CPU allows is what is left.")
    result = common.new_result("On-policy distillation", args, subsection="Real models: SmolLM2 into its depth-pruned half",
                               seeds=args.seeds, threads=True)
    result["intro"] = [
        f"The packaged SmolLM2-135M-Instruct teaches its depth-pruned half (15 of its 30 layers, no retraining before) on "
        f"prompts `{args.template}` over GLUE SST-2 sentences (offline): {args.n_train} training prompts, {args.n_test} "
        f"held-out ones (validation), SmolLM2's chat template, completions of up to {args.max_new_tokens} tokens. The "
        f"teacher's greedy completions are generated once: they are the sequence-level KD data and the held-out references. "
        f"Each student trains {args.steps} optimizer steps of {args.batch} prompts (AdamW lr {args.lr:g}, warm-up then "
        "cosine, bf16). Scores on the held-out prompts: the teacher's mean NLL per token of the student's samples "
        "(temperature 1; lower is better) and ROUGE-L F1 of the student's greedy completion against the teacher's. "
        "\"equal time\": each run's last evaluation within the off-policy row's mean training time (evaluation off the clock).",
    ]
    columns = [column("student: training", "name"),
               column("teacher NLL (equal steps)", "nll", format="{:.3f}", aggregate="mean_std"),
               column("ROUGE-L vs teacher (equal steps)", "rouge", format="{:.3f}", aggregate="mean_std"),
               column("teacher NLL (equal time)", "nll_time", format="{:.3f}", aggregate="mean_std", missing=""),
               column("ROUGE-L (equal time)", "rouge_time", format="{:.3f}", aggregate="mean_std", missing=""),
               column("train time (s, mean)", "train_s", format="{:.0f}", missing="")]
    result.update(tables=[table(columns, rows)], notes=notes, data={"runs": results, "run_key": run_key(args), "teacher": teacher,
                                                                  "steps": args.steps})
    return result


def teacher_score(teacher: CausalLM, files: dict[str, Path], args) -> dict:
    """The teacher's NLL of its own samples on the held-out prompts (kept in --workdir)."""
    kept = args.workdir / f"teacher_{args.n_test}_{args.max_new_tokens}.json"
    if kept.is_file():
        return json.loads(kept.read_text())
    module = OnPolicyDistillModule(student(), Teacher(model=teacher), tokenizer="smollm2", max_new_tokens=args.max_new_tokens, seed=0)
    module.student = teacher.model  # score the teacher's own samples
    test = prompts(args, "test", args.n_test, completions=files["test"])
    module.connect_data(test)
    test.setup("fit")
    scorer = CompletionEvaluation(max_batches=None, compare_teacher=False, teacher_nll=True, show=0)
    values, _ = scorer.scores(module, list(test._loader("train", shuffle=False)))
    out = {"teacher_nll": values["teacher_nll"]}
    kept.write_text(json.dumps(out))
    return out


def main() -> None:
    args = parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    teacher = SmolLM2()
    teacher.model.eval()
    files = {"train": teacher_completions(teacher, args, "train", args.n_train),
             "test": teacher_completions(teacher, args, "validation", args.n_test)}
    reference = teacher_score(teacher, files, args)
    print(f"teacher NLL of its own samples {reference['teacher_nll']:.3f}", flush=True)
    results = common.seed_major_runs("on_policy_real", args.workdir, run_key(args), args.seeds, args.rows,
                                     lambda row, seed: run(row, seed, teacher, files, args), skip_missing=args.skip_missing)
    common.finish(section(results, reference, args), "on_policy_real", args)


if __name__ == "__main__":
    main()
