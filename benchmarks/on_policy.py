"""On-policy distillation on a task with a checkable answer: multi-digit addition, a byte-level Llama teacher trained to
near-perfect held-out exact match, and a student with under a quarter of its parameters.

    OMP_NUM_THREADS=2 python benchmarks/on_policy.py           # resumes from runs/on_policy/runs.jsonl
    python benchmarks/on_policy.py --rows sft on_policy_b05 --seeds 0 --steps 40 --results-dir runs/op_trial   # a trial

Stages:

1. the task (:func:`lkd.data.arithmetic.write_arithmetic_task`): ``--n-train`` problems with references, ``--n-test``
   held-out ones, carved validation for the evaluation of the teacher;
2. the teacher (:class:`lkd.modules.CompletionSFTModule`, completion-only cross-entropy), trained once and kept in
   ``--workdir``; its held-out exact match is the reference;
3. seeds × rows, seed-major: each student trained ``--steps`` optimizer steps (batch ``--batch``), its greedy held-out
   exact match measured every ``--eval-every`` steps (evaluation time off the clock), each finished run appended to
   ``runs.jsonl``. Rows: the student on the references alone; off-policy (supervised) KD on the references;
   sequence-level KD on the teacher's greedy completions; on-policy with β ∈ {0, 0.5, 1} (λ = 1); λ = 0.5; the
   sampled-token reverse-KL estimator. Columns at equal optimizer steps and at equal wall-clock (the exact match of
   each run's last evaluation within the supervised-KD row's training time);
4. across tokenizers: the same student reading a byte-level BPE of ``BPE_VOCAB`` tokens trained on the task's training
   text (kept in ``--workdir``), warm-started by its own SFT on the references, then on the references alone,
   sequence-level KD (λ = 0) and on-policy (λ = 1), both scored by the byte teacher with the module's default
   cross-tokenizer loss (ALM, :mod:`lkd.modules.on_policy_tokenizers`).
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
from lkd.callbacks.completions import CompletionEvaluation
from lkd.data.arithmetic import answer_text, write_arithmetic_task
from lkd.data.prompts import PromptDataModule
from lkd.models import TinyLlamaLM
from lkd.modules import CompletionSFTModule, OnPolicyDistillModule
from lkd.teacher import Teacher
from lkd.tokenizers import load_tokenizer, train_bpe_if_missing

TEACHER = {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 384}
STUDENT = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 128}  # 0.11× the teacher
ROWS = {  # row: module options (None: the student on the references alone)
    "sft": None,
    "supervised_kd": {"lmbda": 0.0, "beta": 0.0, "off_policy": "reference"},
    "seq_kd": {"lmbda": 0.0, "beta": 0.0, "off_policy": "teacher"},
    "on_policy_b0": {"lmbda": 1.0, "beta": 0.0},
    "on_policy_b05": {"lmbda": 1.0, "beta": 0.5},
    "on_policy_b1": {"lmbda": 1.0, "beta": 1.0},
    "mixed_l05": {"lmbda": 0.5, "beta": 0.5},
    "sampled": {"lmbda": 1.0, "loss": "sampled"},
    "replay": {"lmbda": 1.0, "beta": 0.5, "replay_steps": 2},
    "sampled_lr1e4": {"lmbda": 1.0, "loss": "sampled", "lr": 1e-4},  # the estimator at a tenth of the learning rate
    # across tokenizers: the student reads a byte-level BPE (CROSS_ROWS), the byte teacher its own bytes; loss: the default (alm)
    "cross_sft": None,
    "cross_seq_kd": {"lmbda": 0.0, "off_policy": "teacher"},
    "cross_on_policy": {"lmbda": 1.0},
}
CROSS_ROWS = ("cross_sft", "cross_seq_kd", "cross_on_policy")
BPE_VOCAB = 300  # the cross rows' student tokenizer (not in the run key: a new size needs a new --workdir)
LABELS = {"sft": "student on the references alone (CE)", "supervised_kd": "off-policy KD on the references (forward KL)",
          "seq_kd": "sequence-level KD (teacher's greedy completions, forward KL)", "on_policy_b0": "on-policy, β = 0 (forward KL)",
          "on_policy_b05": "on-policy, β = 0.5 (JSD)", "on_policy_b1": "on-policy, β = 1 (reverse KL)",
          "mixed_l05": "λ = 0.5 (half the rows on-policy), β = 0.5", "sampled": "on-policy, sampled-token reverse KL",
          "replay": "on-policy, β = 0.5, each rollout trained on for 2 steps (replay)",
          "sampled_lr1e4": "on-policy, sampled-token reverse KL at lr 1e-4",
          "cross_sft": f"BPE student ({BPE_VOCAB}-token byte-level BPE) on the references alone (CE)",
          "cross_seq_kd": "BPE student, sequence-level KD across tokenizers (teacher's greedy completions, ALM)",
          "cross_on_policy": "BPE student, on-policy across tokenizers (λ = 1, ALM)"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_seeds_option(p, [0, 1, 2])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--digits", type=int, nargs=2, default=[3, 3])
    p.add_argument("--n-train", type=int, default=8000)
    p.add_argument("--n-test", type=int, default=300)
    p.add_argument("--teacher-epochs", type=int, default=30)
    p.add_argument("--teacher-lr", type=float, default=1e-3)
    p.add_argument("--teacher-ckpt", type=Path, default=None,
                   help="take the teacher from this checkpoint of configs/lm/onpolicy_arithmetic_teacher.yaml instead of training it")
    p.add_argument("--warm-steps", type=int, default=4000,
                   help="every student starts from one SFT student trained this many steps (GKD starts from SFT)")
    p.add_argument("--warm-seed", type=int, default=0, help="the seed of that SFT student (shared by every row and seed)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--skip-missing", action="store_true", help="train nothing: report the runs kept in runs.jsonl")
    p.add_argument("--workdir", type=Path, default=common.ROOT / "runs" / "on_policy")
    common.add_output_options(p)
    return p.parse_args()


def task(args) -> dict[str, Path]:
    """The task's files (configs/lm/onpolicy_arithmetic*.yaml's: reversed answers, addition)."""
    return write_arithmetic_task(args.workdir / "task", n_train=args.n_train, n_test=args.n_test, digits=tuple(args.digits),
                                 ops=("+",), seed=0, reversed_answer=True)


def data(args, *, batch: int, val_size: int = 200, seed: int = 0) -> PromptDataModule:
    """The task's prompts; ``seed`` orders the training rows (and carves the 200 validation rows from them)."""
    files = task(args)
    return PromptDataModule(data_files={"train": str(files["train"]), "test": str(files["test"])}, val_split=None,
                            val_size=val_size, batch_size=batch, eval_batch_size=100, seed=seed)


def max_new_tokens(args) -> int:
    return args.digits[1] + 2  # the answer's digits, a carry and the end of sequence


def optimizer(lr: float):
    return lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=0.01)


def held_out(module, dm: PromptDataModule) -> dict[str, float]:
    """Greedy held-out (test split) scores of ``module``'s trained model: ``exact_match`` and ``digit_accuracy`` (the share
    of the reference's characters the answer has at the same place: partial credit, a smoother signal)."""
    dm.setup("test")
    scorer = CompletionEvaluation(max_batches=None, checker="exact_match", compare_teacher=False, teacher_nll=False, show=0)
    values, rows = scorer.scores(module, list(dm.test_dataloader()))
    digits = [sum(a == b for a, b in zip(answer_text(student), ref, strict=False)) / len(ref) for _, ref, student, _ in rows]
    return {"exact_match": values["exact_match"], "digit_accuracy": statistics.mean(digits)}


def exact_match(module, dm: PromptDataModule) -> float:
    """Greedy held-out (test split) exact match of ``module``'s trained model."""
    return held_out(module, dm)["exact_match"]


def teacher_model(args) -> tuple[TinyLlamaLM, float, int]:
    """The trained teacher (kept in --workdir), its held-out exact match and its parameters."""
    path = args.workdir / "teacher.pt"
    model = TinyLlamaLM(vocab_size=257, max_position_embeddings=64, seed=0, **TEACHER)
    module = CompletionSFTModule(model, tokenizer="bytes", max_new_tokens=max_new_tokens(args), optimizer=optimizer(args.teacher_lr))
    dm = data(args, batch=64)
    module.connect_data(dm)
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
    elif args.teacher_ckpt is not None:
        state = torch.load(args.teacher_ckpt, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
        torch.save(model.state_dict(), path)
    else:
        pl.seed_everything(0, verbose=False)
        print(f"training the teacher ({args.teacher_epochs} epochs)", flush=True)
        common.quiet_trainer(max_epochs=args.teacher_epochs, gradient_clip_val=1.0).fit(module, datamodule=dm)
        torch.save(model.state_dict(), path)
    return model, exact_match(module, dm), sum(p.numel() for p in model.parameters())


class Curve(pl.Callback):
    """Exact match every ``every`` optimizer steps, against training seconds (evaluation time off the clock)."""

    def __init__(self, dm, every: int):
        self.dm, self.every, self.points, self.train_s, self._mark = dm, every, [], 0.0, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._mark = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train_s += time.perf_counter() - self._mark
        step = trainer.global_step
        if step % self.every == 0 or step == trainer.max_steps:
            self.points.append({"step": step, "train_s": self.train_s, **held_out(pl_module, self.dm)})


def bpe_folder(args) -> Path:
    """The cross rows' student tokenizer: a byte-level BPE of ``BPE_VOCAB`` tokens trained once (deterministically) on the
    task's training text, each prompt followed by its reference completion (``123+456=975``), kept in --workdir. Digit
    pairs (and some triples) merge into one token; the byte teacher reads them byte by byte."""
    train = task(args)["train"]

    def texts() -> list[str]:
        rows = [json.loads(line) for line in train.read_text().splitlines() if line.strip()]
        return [r["prompt"] + r["completion"] for r in rows]
    return train_bpe_if_missing(args.workdir / f"bpe{BPE_VOCAB}", BPE_VOCAB, texts)


def student_tokenizer(row: str, args) -> tuple[str, int]:
    """``(tokenizer, vocabulary size)`` of ``row``'s student: ``bytes``, or the BPE folder for the cross rows."""
    if row not in CROSS_ROWS:
        return "bytes", 257
    folder = str(bpe_folder(args))
    return folder, len(load_tokenizer(folder))


def warm_start(args, tokenizer: str = "bytes", vocab_size: int = 257) -> tuple[dict, float]:
    """The student after ``--warm-steps`` of SFT on the references from ``--warm-seed`` (kept in --workdir), and its exact
    match: every row and seed starts from it, so a seed changes only the data order, the samples and the rows drawn.
    The BPE student (``tokenizer`` a folder) has its own, with the same steps and settings."""
    seed = args.warm_seed
    tag = "" if tokenizer == "bytes" else f"bpe{vocab_size}_"
    path = args.workdir / f"warm_{tag}{STUDENT['num_layers']}x{STUDENT['hidden_size']}_seed{seed}_{args.warm_steps}.pt"
    student = TinyLlamaLM(vocab_size=vocab_size, max_position_embeddings=64, seed=seed, **STUDENT)
    module = CompletionSFTModule(student, tokenizer=tokenizer, max_new_tokens=max_new_tokens(args), optimizer=optimizer(args.lr))
    dm = data(args, batch=args.batch)
    module.connect_data(dm)
    if path.is_file():
        student.load_state_dict(torch.load(path, weights_only=True))
    else:
        pl.seed_everything(seed, verbose=False)
        print(f"warm start of seed {seed} ({tokenizer}): {args.warm_steps} SFT steps", flush=True)
        common.quiet_trainer(max_steps=args.warm_steps, max_epochs=-1, gradient_clip_val=1.0).fit(module, datamodule=dm)
        torch.save(student.state_dict(), path)
    return student.state_dict(), exact_match(module, dm)


def run(row: str, seed: int, teacher: TinyLlamaLM, args) -> dict:
    tokenizer, vocab = student_tokenizer(row, args)
    warm, warm_em = warm_start(args, tokenizer, vocab)
    pl.seed_everything(seed, verbose=False)
    student = TinyLlamaLM(vocab_size=vocab, max_position_embeddings=64, seed=seed, **STUDENT)
    student.load_state_dict(warm)
    options = dict(ROWS[row] or {}) or None
    lr = options.pop("lr", args.lr) if options else args.lr  # a row may set its own learning rate
    if options is None:
        module = CompletionSFTModule(student, tokenizer=tokenizer, max_new_tokens=max_new_tokens(args), optimizer=optimizer(args.lr))
    else:
        if row in CROSS_ROWS:  # the byte teacher reads the BPE student's completions as text, in its own bytes
            options["teacher_tokenizer"] = "bytes"
        module = OnPolicyDistillModule(student, Teacher(model=teacher), tokenizer=tokenizer, max_new_tokens=max_new_tokens(args), seed=seed,
                                       optimizer=optimizer(lr), **options)
    dm, eval_dm = data(args, batch=args.batch, seed=seed), data(args, batch=args.batch)
    module.connect_data(eval_dm)
    curve = Curve(eval_dm, args.eval_every)
    common.quiet_trainer(max_steps=args.steps, max_epochs=-1, gradient_clip_val=1.0, callbacks=[curve]).fit(module, datamodule=dm)
    out = {"row": row, "seed": seed, "exact_match": curve.points[-1]["exact_match"], "digit_accuracy": curve.points[-1]["digit_accuracy"],
           "train_s": curve.train_s, "curve": curve.points,
           "warm_exact_match": warm_em,
           "params": sum(p.numel() for p in student.parameters())}
    if row in CROSS_ROWS:
        out["tokenizer"] = f"byte-level BPE, {vocab} tokens"
    print(f"{row} seed {seed}: exact match {out['exact_match']:.3f}, digits {out['digit_accuracy']:.3f} ({out['train_s']:.0f} s)",
          flush=True)
    return out


def at_seconds(run: dict, seconds: float) -> float:
    """The exact match of ``run``'s last evaluation within ``seconds`` of training (its warm start's before its first)."""
    within = [p["exact_match"] for p in run["curve"] if p["train_s"] <= seconds + 1e-9]
    return within[-1] if within else run["warm_exact_match"]


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def cross_target(on: list[dict], off: list[dict]) -> str:
    """The across-tokenizer target: on-policy (``on``'s runs) against its off-policy version, sequence-level KD
    (``off``'s), at equal steps and at equal time (the faster row's mean training time, each run at its last
    evaluation within it)."""
    n = min(len(on), len(off))
    clock = min(statistics.mean(r["train_s"] for r in on), statistics.mean(r["train_s"] for r in off))
    steps = [[r["exact_match"] for r in runs] for runs in (on, off)]
    timed = [[at_seconds(r, clock) for r in runs] for runs in (on, off)]
    higher = [statistics.mean(a) > statistics.mean(b) for a, b in (steps, timed)]
    verdict = lambda up: "higher" if up else "not higher"  # noqa: E731
    points = [p["step"] for p in on[0]["curve"]]
    curve = lambda runs: ", ".join(f"{statistics.mean(r['curve'][i]['exact_match'] for r in runs):.3f}"  # noqa: E731
                                   for i in range(len(points)))
    return (f"Target (across tokenizers): on-policy {mean_std(steps[0])} vs its off-policy version (sequence-level KD, λ = 0, "
            f"the same loss) {mean_std(steps[1])} held-out exact match at equal steps over {n} seeds ({verdict(higher[0])}); at "
            f"equal time (the faster row's mean training time, {clock:.0f} s) {mean_std(timed[0])} vs {mean_std(timed[1])} "
            f"({verdict(higher[1])}): {'met' if all(higher) and n >= 3 else 'not met'} (met if on-policy is higher at both). "
            f"Mean exact match from the shared start ({on[0]['warm_exact_match']:.3f}) at steps {', '.join(map(str, points))}: "
            f"on-policy {curve(on)}, sequence-level KD {curve(off)}.")


def run_key(args) -> str:
    keys = ("digits", "n_train", "n_test", "teacher_epochs", "teacher_lr", "warm_steps", "warm_seed", "steps", "batch", "lr", "eval_every")
    return json.dumps({k: getattr(args, k) for k in keys}
                      | {"teacher": TEACHER, "student": STUDENT}, sort_keys=True)



def section(results: list[dict], teacher: dict, args) -> dict:
    by_row: dict[str, list[dict]] = {}
    for r in results:
        by_row.setdefault(r["row"], []).append(r)
    budget = statistics.mean(r["train_s"] for r in by_row["supervised_kd"]) if "supervised_kd" in by_row else None
    rows = [{"name": "teacher (trained on the references)", "em": [teacher["exact_match"]], "params": teacher["params"]}]
    byte_runs = [r for r in results if r["row"] not in CROSS_ROWS]
    cross_runs = [r for r in results if r["row"] in CROSS_ROWS]
    warm = {r["seed"]: r["warm_exact_match"] for r in byte_runs}
    cross_warm = {r["seed"]: r["warm_exact_match"] for r in cross_runs}
    if warm:
        rows.append({"name": f"every byte student's start: SFT on the references, {args.warm_steps} steps",
                     "em": [warm[min(warm)]], "params": byte_runs[0]["params"]})
    for row in ROWS:
        if row not in by_row:
            continue
        if row in CROSS_ROWS and cross_warm and not any(r in CROSS_ROWS and r in by_row for r in list(ROWS)[:list(ROWS).index(row)]):
            rows.append({"name": f"every BPE student's start: SFT on the references, {args.warm_steps} steps",
                         "em": [cross_warm[min(cross_warm)]], "params": cross_runs[0]["params"]})
        runs = sorted(by_row[row], key=lambda r: r["seed"])
        rows.append({"name": LABELS[row], "em": [r["exact_match"] for r in runs], "params": runs[0]["params"],
                     "digits": [r.get("digit_accuracy") for r in runs],
                     "train_s": statistics.mean(r["train_s"] for r in runs),
                     "em_time": [at_seconds(r, budget) for r in runs] if budget is not None else None})
    mean = lambda row: statistics.mean(r["exact_match"] for r in by_row[row])  # noqa: E731
    std = lambda row: statistics.stdev([r["exact_match"] for r in by_row[row]]) if len(by_row[row]) > 1 else 0.0  # noqa: E731
    notes = []
    on_policy = [r for r in ("on_policy_b0", "on_policy_b05", "on_policy_b1", "mixed_l05", "sampled", "replay", "sampled_lr1e4")
                 if r in by_row]
    if on_policy and "supervised_kd" in by_row:
        best = max(on_policy, key=mean)
        margin = (mean(best) - mean("supervised_kd")) / max(std(best), std("supervised_kd"), 1e-9)
        n = min(len(by_row[best]), len(by_row["supervised_kd"]))
        timed = statistics.mean(at_seconds(r, budget) for r in by_row[best])
        notes.append(f"Target (checkable task): best on-policy row {LABELS[best]} {mean(best):.3f} vs off-policy KD "
                     f"{mean('supervised_kd'):.3f} held-out exact match at equal steps over {n} seeds: {margin:+.1f} std (> 2: "
                     f"{'met' if margin > 2 and n >= 3 else 'not met'}); at the off-policy row's training time ({budget:.0f} s) it "
                     f"reaches {timed:.3f} ({'not worse: met' if timed >= mean('supervised_kd') else 'worse: not met'}).")
    if {"cross_seq_kd", "cross_on_policy"} <= set(by_row):
        notes.append(cross_target(by_row["cross_on_policy"], by_row["cross_seq_kd"]))
    if "cross_sft" in by_row and cross_warm and "sft" in by_row and warm:
        notes.append(f"The BPE student ({BPE_VOCAB} tokens, digit pairs merged) starts at {cross_warm[min(cross_warm)]:.3f} exact match "
                     f"after the same {args.warm_steps} SFT steps (the byte student: {warm[min(warm)]:.3f}) and on the references "
                     f"alone ends at {mean('cross_sft'):.3f} (the byte student: {mean('sft'):.3f}).")
    if "sft" in by_row and warm:
        notes.append(f"The student on the references alone ends at {mean('sft'):.3f} exact match (its start {warm[min(warm)]:.3f}) "
                     f"against the teacher's {teacher['exact_match']:.3f}: two layers are too few for carries, so there is room "
                     "for distillation to show (the issue asks for ≤ 0.8).")
    if teacher["exact_match"] >= 0.99 and {"sft", "supervised_kd", "seq_kd"} <= set(by_row):
        notes.append("Why the off-policy rows coincide: a teacher this right puts almost all of its mass on the reference "
                     "token, so the forward KL on the references is the cross-entropy, and its greedy completions are the "
                     "references: the three rows train on the same targets. On-policy rows differ only where the student "
                     "strays from the reference path, and this capacity-limited student (it ends below its start whatever it "
                     "learns from) gains nothing measurable there: every byte row but the sampled estimator is within 1 std "
                     "of the others. A task that separates them needs a teacher whose distribution carries more "
                     "than the answer (several right answers, or graded uncertainty), or a student with the capacity to follow it.")
    if "sampled" in by_row and warm and mean("sampled") < min(warm.values()) - 0.1:
        notes.append(f"The sampled-token estimator fell below every seed's start (to {mean('sampled'):.3f}) at lr {args.lr:g}: with a "
                     "teacher this certain, a token it rules out gets an advantage near log p_t ≈ −18, and those pushes swamp "
                     "the rest." + (f" At lr 1e-4 it holds ({mean('sampled_lr1e4'):.3f}, with the other rows): the estimator is "
                                    "unbiased but noisy, so it wants a smaller step." if "sampled_lr1e4" in by_row else
                                    " A smaller learning rate or clipped advantages is the next thing to try."))
    result = common.new_result("On-policy distillation", args, seeds=args.seeds, threads=True)
    result["intro"] = [
        f"{args.digits[0]}-to-{args.digits[1]}-digit addition written as prompts (`123+456=`) with reference answers least "
        f"significant digit first (`975`; `lkd.data.arithmetic`, `configs/lm/onpolicy_arithmetic*.yaml`): {args.n_train:,} "
        f"training problems, {args.n_test} held-out ones, byte tokens. The teacher (a Llama, hidden {TEACHER['hidden_size']}, "
        f"{TEACHER['num_layers']} layers) is trained on the references ({args.teacher_epochs} epochs, lr {args.teacher_lr:g}, "
        f"completion-only cross-entropy); every student (hidden {STUDENT['hidden_size']}, "
        f"{STUDENT['num_layers']} layers) starts from one SFT student "
        f"({args.warm_steps} steps on the references from seed {args.warm_seed}: GKD distils SFT students too; a seed then changes "
        f"only the data order, the samples and the rows drawn), then trains {args.steps} more optimizer steps of {args.batch} "
        f"prompts (AdamW lr {args.lr:g}, "
        "warm-up then cosine), held-out exact match at greedy decoding and digit accuracy (the share of the reference's "
        "characters the answer has in place). \"equal time\" is each run's exact match at its "
        "last evaluation within the off-policy KD row's mean training time (evaluation off the clock).",
    ]
    if cross_runs:
        result["intro"].append(
            f"Across tokenizers (the BPE rows): the same student architecture reads a byte-level BPE of {BPE_VOCAB} tokens "
            "trained on the training split's text (prompt and reference, `lkd.tokenizers.train_byte_level_bpe`: digit pairs "
            "and some triples are one token), starts from its own SFT student (the same steps and settings), and the byte "
            "teacher reads its completions as text, byte by byte (`teacher_tokenizer: bytes`); the distillation rows use "
            "the module's default cross-tokenizer loss, ALM on the completion's aligned chunks (`lkd.modules.on_policy_tokenizers`).")
    columns = [column("student: training", "name"), column("exact match (equal steps)", "em", format="{:.3f}", aggregate="mean_std"),
               column("per seed", "em", format="{:.3f}", aggregate="list"),
               column("digit accuracy", "digits", format="{:.3f}", aggregate="mean_std", missing=""),
               column("exact match (equal time)", "em_time", format="{:.3f}", aggregate="mean_std", missing=""),
               column("parameters", "params", format="{:,}"), column("train time (s, mean)", "train_s", format="{:.0f}", missing="")]
    result.update(tables=[table(columns, rows)], notes=notes, data={"runs": results, "run_key": run_key(args), "teacher": teacher})
    return result


def main() -> None:
    args = parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, em, params = teacher_model(args)
    teacher = {"exact_match": em, "params": params}
    print(f"teacher held-out exact match {em:.3f} ({params:,} parameters)", flush=True)
    results = common.seed_major_runs("on_policy", args.workdir, run_key(args), args.seeds, args.rows,
                                     lambda row, seed: run(row, seed, model, args), skip_missing=args.skip_missing)
    common.finish(section(results, teacher, args), "on_policy", args)


if __name__ == "__main__":
    main()
