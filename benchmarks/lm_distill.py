"""Language-model distillation benchmark: a tiny Qwen3-MoE teacher, then students distilled through every
routing mode of :mod:`lkd.models.routing`, equal steps and batches, several seeds.

    OMP_NUM_THREADS=1 python benchmarks/lm_distill.py                       # everything missing, then the section
    OMP_NUM_THREADS=1 python benchmarks/lm_distill.py --variants sar --seeds 0 1 --no-render   # a share of the runs
    OMP_NUM_THREADS=1 python benchmarks/lm_distill.py --render-only         # the section from the kept runs
    OMP_NUM_THREADS=1 python benchmarks/lm_distill.py --teacher-steps 50 --student-steps 20 --seeds 0 --out /tmp/lm --no-write

Rows (same student architecture, the same initial weights and batches per seed, the same optimizer steps;
every distilled row uses one loss, T²·KL at T = 1, so only the routing differs): ``scratch`` (next-token CE),
``teacher`` (the teacher's own top-2 gating: plain KD), ``all`` (all 8 experts), ``ka`` (Knowledge
Augmentation: 7 experts, 5 % of tokens a sampled set, 2 teacher passes averaged), ``sar`` (the paper's
student-aware gate retraining), ``student_aware`` (lkd's router, top-k 1 → 4, τ 2 → 0.5). Two rows run across
tokenizers: the same byte-level teacher and a student that reads a 512-token byte-level BPE, ALM + CE, without
(``cross_teacher``) and with the student-aware router (``cross_student_aware``).

Each run is kept as one line of ``OUT/runs.jsonl`` (several processes may share the work); the section is
rendered from the kept runs: test perplexity per byte (bits per byte for the cross rows) mean ± std, the 95 %
interval of each mode's paired difference to plain KD, and the train time per step; a separate timing pass
(modes interleaved in one process) gives each mode's step cost against plain KD.

Offline data: the WikiText-2 mirror has no train split, so training uses ``validation[:90%]`` and the test the
first ``--test-blocks`` blocks of ``test``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

common.offline_hub()

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402

from benchmarks.report import RATIO, column, table  # noqa: E402
from lkd.callbacks import DistillationReport, RouterExpertUsage, RoutingSchedule  # noqa: E402
from lkd.data.text import TextDataModule  # noqa: E402
from lkd.evaluation import expert_specialisation  # noqa: E402
from lkd.memory import count_parameters  # noqa: E402
from lkd.models.router import StudentAwareRouter  # noqa: E402
from lkd.models.routing import AllExperts, KnowledgeAugmentation, StudentAwareGate  # noqa: E402
from lkd.modules import CausalLMModule, LMDistillModule  # noqa: E402
from lkd.teacher import Teacher  # noqa: E402

MODES = ("teacher", "all", "ka", "sar", "student_aware")
VARIANTS = ("scratch", *MODES, "cross_teacher", "cross_student_aware")
EVERY = {"sar_every4": "sar", "student_aware_every4": "student_aware"}  # trained routing, learning every 4th step only
ALL_VARIANTS = (*VARIANTS, *EVERY)
LABELS = {"scratch": "scratch (CE, no teacher)", "teacher": "teacher: its own routing (plain KD)", "all": "all: every expert",
          "ka": "ka: Knowledge Augmentation", "sar": "sar: student-aware gate retraining",
          "student_aware": "student_aware: lkd's router", "cross_teacher": "two tokenizers, plain ALM + CE",
          "cross_student_aware": "two tokenizers, student_aware router", "sar_every4": "sar, gate learning every 4th step",
          "student_aware_every4": "student_aware, router learning every 4th step"}
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}  # Student's t, 97.5 %


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher-steps", type=int, default=1200)
    p.add_argument("--student-steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--test-blocks", type=int, default=400)
    p.add_argument("--teacher-lr", type=float, default=2e-3)
    p.add_argument("--student-lr", type=float, default=2e-3)
    p.add_argument("--router-lr", type=float, default=4e-3, help="student_aware router (2x the student's)")
    p.add_argument("--router-lm-weight", type=float, default=1.0, help="λ of the routed teacher's LM loss (student_aware)")
    p.add_argument("--sa-top-k", type=int, nargs=2, default=[1, 4], metavar=("START", "END"),
                   help="student_aware's top-k schedule (END bounded by the teacher's experts)")
    p.add_argument("--sa-temperature", type=float, nargs=2, default=[2.0, 0.5], metavar=("START", "END"),
                   help="student_aware's routing temperature schedule")
    p.add_argument("--sar-lr", type=float, default=1e-3, help="learning rate of the sar gate copy")
    p.add_argument("--sar-balance", type=float, default=0.01, help="load-balance weight of sar (the paper's 0.01)")
    p.add_argument("--sar-lm-weight", type=float, default=0.0, help="λ of the routed teacher's LM loss for sar (the paper: 0)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--cross-vocab", type=int, default=512, help="the cross rows' student BPE vocabulary")
    p.add_argument("--cross-block-size", type=int, default=64, help="student tokens per block in the cross rows")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=ALL_VARIANTS)
    p.add_argument("--timing-variants", nargs="+", default=None, choices=ALL_VARIANTS,
                   help="rows of the timing pass (default: the routed rows of --variants)")
    common.add_seeds_option(p, [0, 1, 2, 3, 4], help="student initialisation and batch order; one run each")
    p.add_argument("--teacher-seed", type=int, default=0)
    p.add_argument("--teacher-experts", type=int, default=8, help="experts per MoE layer of the teacher")
    p.add_argument("--teacher-top-k", type=int, default=2, help="experts per token of the teacher's own routing")
    p.add_argument("--teacher-expert-size", type=int, default=192, help="intermediate size of each expert")
    p.add_argument("--teacher-aux", type=float, default=0.01, help="the teacher's load-balancing loss coefficient")
    p.add_argument("--teacher-only", action="store_true", help="train and describe the teacher, nothing else")
    p.add_argument("--timing-steps", type=int, default=30, help="steps per mode and round of the timing pass (0: none)")
    p.add_argument("--timing-rounds", type=int, default=3)
    p.add_argument("--out", default="runs/lm_benchmark", help="folder for the teacher, runs.jsonl and timing.json")
    common.add_output_options(p, "do not touch BENCHMARKS.md or benchmarks/results")
    p.add_argument("--no-render", action="store_true", help="train the missing runs only (another process renders)")
    p.add_argument("--render-only", action="store_true", help="render from OUT/runs.jsonl and OUT/timing.json, train nothing")
    p.add_argument("--log-dir", default=None, help="TensorBoard logs of every student run here (routed runs also log the "
                   "router/expert_usage and router/schedule figures); default: no logger")
    p.add_argument("--note", default="", help="appended to the command line in the section (how the kept runs were made)")
    return p.parse_args(argv)


# ---- pieces ----------------------------------------------------------------------------------------------
def data(args, *, cross: bool = False, test_blocks: int | None = None) -> TextDataModule:
    kw = dict(tokenizer="bytes")
    if cross:
        kw = dict(tokenizer=str(Path(args.out) / f"bpe{args.cross_vocab}"), train_tokenizer=args.cross_vocab,
                  teacher_block_size=args.block_size)
    return TextDataModule("Salesforce/wikitext", "wikitext-2-raw-v1", train_split="validation[:90%]", val_split="validation[90%:]",
                          test_split="test", block_size=args.cross_block_size if cross else args.block_size,
                          batch_size=args.batch_size, max_blocks=test_blocks, **kw)


def trainer(max_steps: int, callbacks=(), logger=False) -> pl.Trainer:
    return common.quiet_trainer(max_steps=max_steps, logger=logger, gradient_clip_val=1.0, callbacks=list(callbacks),
                                deterministic=False)


def adamw(lr: float):
    return lambda groups: torch.optim.AdamW(groups, lr=lr, weight_decay=0.01)


class Report(DistillationReport):
    """The test report kept in memory only."""

    @staticmethod
    def write(report: dict, folder: Path) -> Path:
        return folder


def teacher_name(args) -> str:
    shape = getattr(args, "teacher_experts", 8), getattr(args, "teacher_top_k", 2), getattr(args, "teacher_expert_size", 192)
    aux = getattr(args, "teacher_aux", 0.01)
    suffix = "" if (shape, aux) == ((8, 2, 192), 0.01) else f"_e{shape[0]}k{shape[1]}m{shape[2]}aux{aux:g}"
    return f"teacher_seed{args.teacher_seed}_steps{args.teacher_steps}{suffix}"


def teacher_sizes(args) -> dict:
    return dict(num_experts=getattr(args, "teacher_experts", 8), top_k=getattr(args, "teacher_top_k", 2),
                moe_intermediate_size=getattr(args, "teacher_expert_size", 192), router_aux_loss_coef=getattr(args, "teacher_aux", 0.01))


def train_teacher(args, out: Path) -> torch.nn.Module:
    path = out / f"{teacher_name(args)}.pt"
    teacher = common.lm_teacher(args.teacher_seed, **teacher_sizes(args))
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        if all(key.startswith("model.") for key in state):  # saved by the former CausalLM wrapper
            state = {key.removeprefix("model."): value for key, value in state.items()}
        teacher.load_state_dict(state)
        return teacher
    module = CausalLMModule(teacher, tokenizer="bytes", optimizer=adamw(args.teacher_lr))
    pl.seed_everything(args.teacher_seed)
    start = time.perf_counter()
    trainer(args.teacher_steps).fit(module, data(args))
    (out / f"{teacher_name(args)}_train_s.json").write_text(json.dumps({"train_s": time.perf_counter() - start}))
    torch.save(teacher.state_dict(), path)
    return teacher


def teacher_facts(teacher, args, out: Path) -> dict:
    """Test perplexity and expert specialisation of the teacher (cached in OUT/teacher.json)."""
    path = out / f"{teacher_name(args)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    report = evaluate(copy.deepcopy(teacher), teacher, args, cross=False)
    dm = data(args, test_blocks=args.test_blocks)
    dm.setup("test")
    spec = expert_specialisation(teacher, dm.test_dataloader())
    facts = {"ppl": report["retention"]["student_ppl"], "params": count_parameters(teacher), "specialisation": spec}
    train = out / f"{teacher_name(args)}_train_s.json"
    facts["train_s"] = json.loads(train.read_text())["train_s"] if train.is_file() else None
    path.write_text(json.dumps(facts, indent=2))
    return facts


def make_module(variant: str, teacher, args, seed: int):
    """The LightningModule and callbacks of one row (a fresh student from ``seed``)."""
    cross = variant.startswith("cross_")
    mode = EVERY.get(variant, variant).removeprefix("cross_")
    vocab = {"vocab_size": args.cross_vocab} if cross else {}
    student = common.lm_student(seed + 1, **vocab)  # the same initial weights for every row of a seed
    if variant == "scratch":
        return CausalLMModule(student, tokenizer="bytes", optimizer=adamw(args.student_lr)), []
    routing, callbacks, extra = None, [], {}
    if mode == "all":
        routing = AllExperts()
    elif mode == "ka":
        routing = KnowledgeAugmentation(sampling_prob=0.05, repeats=2)
    elif mode == "sar":
        routing = StudentAwareGate()
        extra = dict(router_lr=args.sar_lr, router_lm_weight=args.sar_lm_weight, router_balance_weight=args.sar_balance)
    elif mode == "student_aware":
        routing = StudentAwareRouter()
        start_k, end_k = (min(k, teacher_sizes(args)["num_experts"]) for k in args.sa_top_k)  # bounded by the teacher's experts
        (t0, t1) = args.sa_temperature
        callbacks.append(RoutingSchedule(start_top_k=start_k, end_top_k=end_k, start_temperature=t0, end_temperature=t1, mode="cosine"))
        extra = dict(router_lr=args.router_lr, router_lm_weight=args.router_lm_weight)
    if variant in EVERY:
        extra["router_every_n_steps"] = 4
    weights = {"alm": 1.0, "ce": 1.0} if cross else {"kl": 1.0}
    tok = dict(tokenizer=str(Path(args.out) / f"bpe{args.cross_vocab}"), teacher_tokenizer="bytes") if cross else dict(tokenizer="bytes")
    module = LMDistillModule(student, Teacher(copy.deepcopy(teacher)), router=routing, loss_weights=weights,
                             temperature=args.temperature, optimizer=adamw(args.student_lr), **tok, **extra)
    return module, callbacks


def train_student(variant: str, teacher, args, seed: int):
    module, callbacks = make_module(variant, teacher, args, seed)
    logger = False
    if args.log_dir:
        from lightning.pytorch.loggers import TensorBoardLogger

        logger = TensorBoardLogger(args.log_dir, name=f"{variant}_seed{seed}")
        if module.routed_teacher is not None and module.routed_teacher.active:
            callbacks.append(RouterExpertUsage(log_every_n_steps=50))
    pl.seed_everything(seed)  # the same batches for every row of a seed
    start = time.perf_counter()
    t = trainer(args.student_steps, callbacks, logger)
    t.fit(module, data(args, cross=variant.startswith("cross_")))
    seconds = time.perf_counter() - start
    last = {k.removeprefix("train/").removesuffix("_step"): float(v) for k, v in t.callback_metrics.items()
            if k.startswith("train/") and k.endswith("_step") and v.numel() == 1}
    return module, seconds, last


def evaluate(student, teacher, args, *, cross: bool = False) -> dict:
    """The test report (:class:`lkd.callbacks.DistillationReport`) of ``student`` against ``teacher``'s own routing."""
    if cross:
        m = LMDistillModule(student, Teacher(teacher), tokenizer=str(Path(args.out) / f"bpe{args.cross_vocab}"),
                            teacher_tokenizer="bytes", loss_weights={"alm": 1.0}, temperature=args.temperature)
    else:
        m = LMDistillModule(student, Teacher(teacher), tokenizer="bytes", loss_weights={"kl": 1.0})
    report = Report()
    trainer(1, [report]).test(m, data(args, cross=cross, test_blocks=args.test_blocks), verbose=False)
    return report.report


def hyperparameters(variant: str, args) -> dict:
    """The settings a row depends on beyond the shared ones: rows with other values are kept (a search) but not
    mixed into the table."""
    mode = EVERY.get(variant, variant).removeprefix("cross_")
    hp = {"teacher": teacher_name(args), "temperature": args.temperature, "student_lr": args.student_lr}
    if mode == "sar":
        hp |= {"sar_lr": args.sar_lr, "sar_balance": args.sar_balance, "sar_lm_weight": args.sar_lm_weight}
    if mode == "student_aware":
        hp |= {"router_lr": args.router_lr, "router_lm_weight": args.router_lm_weight}
        if list(args.sa_top_k) != [1, 4] or list(args.sa_temperature) != [2.0, 0.5]:  # rows before these options: the defaults
            hp |= {"top_k": list(args.sa_top_k), "router_temperature": list(args.sa_temperature)}
    return hp


def run_one(variant: str, seed: int, teacher, args) -> dict:
    module, seconds, last = train_student(variant, teacher, args, seed)
    student = module.model if variant == "scratch" else module.student
    rep = evaluate(student, teacher, args, cross=variant.startswith("cross_"))
    r = rep["retention"]
    row = {"variant": variant, "seed": seed, "steps": args.student_steps, "hp": hyperparameters(variant, args), "train_s": seconds, "s_per_step": seconds / args.student_steps,
           "speed_ratio": rep["speed"]["speed_ratio"], "last_step": last}
    if variant.startswith("cross_"):
        row |= {"bpb": r["student_bpb"], "teacher_bpb": r["teacher_bpb"]}
    else:
        row |= {"ppl": r["student_ppl"], "kl": r["kl"], "top1": r["top1_agreement"], "bpb": math.log2(r["student_ppl"])}
    return row


def kept_runs(out: Path, args=None) -> list[dict]:
    """The rows of OUT/runs.jsonl; with ``args``, those made with its steps and hyperparameters."""
    path = out / "runs.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    if args is not None:
        rows = [r for r in rows if r["steps"] == args.student_steps and r.get("hp") == hyperparameters(r["variant"], args)]
    return rows


# ---- timing ----------------------------------------------------------------------------------------------
def timing_pass(teacher, args, out: Path) -> dict:
    """Every mode trained ``timing_steps`` steps per round from fresh weights, modes interleaved in this process."""

    def run(variant):
        def go() -> float:
            module, callbacks = make_module(variant, teacher, args, seed=0)
            pl.seed_everything(0)
            timer = common.train_timer()
            trainer(args.timing_steps + 3, [*callbacks, timer]).fit(module, data(args, cross=variant.startswith("cross_")))
            return sum(timer.step_seconds[3:])  # after 3 burn-in steps
        return go

    names = args.timing_variants or [v for v in ("teacher", "all", "ka", "sar", "student_aware", "cross_teacher", "cross_student_aware")
                                     if v in args.variants]
    if "teacher" not in names:
        names = ["teacher", *names]
    timing = common.paired_timing({v: run(v) for v in names}, baseline="teacher", repeats=args.timing_rounds,
                                  burn_in={v: (lambda: None) for v in names})
    result = {v: timing.row(v) for v in names}
    if "cross_teacher" in result:  # the cross rows against their own plain row
        for v in names:
            if v.startswith("cross_"):
                result[v]["ratio"] = timing.median(v) / timing.median("cross_teacher")
    (out / "timing.json").write_text(json.dumps({"steps": args.timing_steps, "rounds": args.timing_rounds, "rows": result}, indent=2))
    return result


# ---- the section -----------------------------------------------------------------------------------------
def paired_interval(values: dict[int, float], base: dict[int, float]) -> tuple[float, float, float, int] | None:
    """Mean of the per-seed differences ``values − base`` and its 95 % t interval: (mean, low, high, n)."""
    seeds = sorted(set(values) & set(base))
    if len(seeds) < 2:
        return None
    d = [values[s] - base[s] for s in seeds]
    mean, sd = statistics.mean(d), statistics.stdev(d)
    half = T975[len(d) - 1] * sd / math.sqrt(len(d))
    return mean, mean - half, mean + half, len(d)


def mean_std(xs: list[float], fmt: str) -> str:
    return f"{fmt.format(statistics.mean(xs))} ± {fmt.format(statistics.stdev(xs))}" if len(xs) > 1 else fmt.format(xs[0])


COLUMNS = [column("row", "row"), column("test ppl per byte (mean ± std)", "ppl_ms"), column("bits per byte", "bpb_ms"),
           column("per seed", "per_seed"), column("Δ to plain KD, 95 % interval", "delta"),
           column("KL(teacher‖student)", "kl", format="{:.4f}"), column("routed teacher LM loss − own (nats, last step)", "degr", format="{:+.4f}"),
           column("gate KL (last step)", "gate_kl", format="{:.4f}"), column("train s / step", "s_step", format="{:.3f}"),
           column("step vs plain KD (timing pass)", "step_ratio", format=RATIO)]


def section(runs: list[dict], teacher: dict, timing: dict | None, args, search: list[dict] = ()) -> dict:
    by = {}
    for r in runs:
        if r["variant"] in args.variants and r["steps"] == args.student_steps:
            by.setdefault(r["variant"], {})[r["seed"]] = r
    seeds = sorted({s for v in by.values() for s in v})
    result = common.new_result("Language models", args, seeds=seeds)
    if args.note:
        result["command_note"] = f" — {args.note}"
    spec = teacher["specialisation"]
    result["intro"] = [
        "Offline setting: WikiText-2 raw, **trained on `validation[:90%]`** (the mirror has no train split), tested on the "
        f"first {args.test_blocks} blocks of `test`; byte-level tokens (vocab 257), blocks of {args.block_size}, batch "
        f"{args.batch_size}. Teacher: Qwen3-MoE, {args.teacher_experts} experts of width {args.teacher_expert_size}, top-{args.teacher_top_k}, load-balance coefficient {args.teacher_aux}, {teacher['params'] / 1e6:.2f} M params, {args.teacher_steps} "
        f"steps (seed {args.teacher_seed}). Students: Llama architecture, {args.student_steps} AdamW steps each (lr "
        f"{args.student_lr}, warm-up + cosine), the same initial weights and batches within a seed; every distilled "
        f"one-tokenizer row uses T²·KL at T = {args.temperature} only, so the rows differ in the routing alone. Perplexities "
        "are per byte. The cross rows: the same teacher (bytes) and a student reading a "
        f"{args.cross_vocab}-token byte-level BPE trained on the training split, blocks of {args.cross_block_size} student "
        "tokens, ALM + CE.",
        f"Teacher test perplexity **{teacher['ppl']:.3f}** ({math.log2(teacher['ppl']):.4f} bits per byte). Its experts: "
        f"usage entropy {spec['usage_entropy']:.3f} of the maximum (1 = all used equally), mean gate entropy "
        f"{spec['gate_entropy']:.3f}; next-byte loss {spec['nll_own']:.4f} nats with its own routing, "
        f"{spec['nll_next_best']:.4f} forced to the next-best {spec['top_k']} expert(s) (ranks {spec['top_k'] + 1}..{2 * spec['top_k']}) (+{spec['nll_next_best'] - spec['nll_own']:.4f}), "
        f"{spec['nll_random']:.4f} with {spec['top_k']} random expert(s) (+{spec['nll_random'] - spec['nll_own']:.4f}), on the test blocks.",
    ]
    base = {s: r["ppl"] for s, r in by.get("teacher", {}).items()}
    cross_base = {s: r["bpb"] for s, r in by.get("cross_teacher", {}).items()}
    rows = []
    for v in args.variants:
        if v not in by:
            continue
        rs = [by[v][s] for s in sorted(by[v])]
        cross = v.startswith("cross_")
        row = {"row": LABELS[v], "bpb_ms": mean_std([r["bpb"] for r in rs], "{:.4f}"),
               "s_step": statistics.mean(r["s_per_step"] for r in rs)}
        if not cross:
            row["ppl_ms"] = mean_std([r["ppl"] for r in rs], "{:.3f}")
            row["per_seed"] = ", ".join(f"{r['ppl']:.3f}" for r in rs)
            row["kl"] = statistics.mean(r["kl"] for r in rs)
            ref, values = base, {s: r["ppl"] for s, r in by[v].items()}
        else:
            row["per_seed"] = ", ".join(f"{r['bpb']:.4f}" for r in rs)
            ref, values = cross_base, {s: r["bpb"] for s, r in by[v].items()}
        if v not in ("teacher", "cross_teacher", "scratch") and (ci := paired_interval(values, ref)) is not None:
            mean, lo, hi, n = ci
            fmt = "{:+.4f}" if cross else "{:+.3f}"
            verdict = "better" if hi < 0 else "worse" if lo > 0 else "no difference shown"
            row["delta"] = f"{fmt.format(mean)} [{fmt.format(lo)}, {fmt.format(hi)}] ({verdict}, {n} seeds)"
        degr = [r["last_step"].get("teacher_lm_degradation") for r in rs if r["last_step"].get("teacher_lm_degradation") is not None]
        if degr:
            row["degr"] = statistics.mean(degr)
        gkl = [r["last_step"]["gate_kl"] for r in rs if "gate_kl" in r["last_step"]]
        if gkl:
            row["gate_kl"] = statistics.mean(gkl)
        if timing and v in timing:
            row["step_ratio"] = timing[v]["ratio"]
        rows.append(row)
    result["tables"] = [table(COLUMNS, rows)]
    result["notes"] = notes(by, base, cross_base, timing, args) + search_notes(search, runs, base)
    result["data"] = {"teacher": teacher, "runs": {v: {str(seed): r for seed, r in rs.items()} for v, rs in by.items()}, "timing": timing}
    return result


def notes(by, base, cross_base, timing, args) -> list[str]:
    lines = []
    wins = []
    for v in MODES[1:]:
        if v in by and (ci := paired_interval({s: r["ppl"] for s, r in by[v].items()}, base)) is not None and ci[2] < 0:
            wins.append(f"{v} ({ci[0]:+.3f} [{ci[1]:+.3f}, {ci[2]:+.3f}])")
    lines.append("Target 1 (a routing mode beats plain KD on the mean of 5 seeds, 95 % interval of the difference below 0): "
                 + (f"**met** by {', '.join(wins)}." if wins else "**not met**: no mode's interval lies below zero (table)."))
    if timing:
        cost = {v: timing[v]["ratio"] for v in (*MODES[1:], *EVERY) if v in timing}
        ok = [v for v, r in cost.items() if r <= 1.5]
        lines.append("Target 2 (routing costs ≤ 1.5× a plain-KD step): " + ", ".join(f"{v} {r:.2f}×" for v, r in cost.items())
                     + f" — met by {', '.join(ok) or 'none'}. Timing pass: {args.timing_steps} steps per mode and round, "
                     f"{args.timing_rounds} rounds, modes interleaved in one process, fresh weights each time; the cross "
                     "row's ratio is to the plain cross row.")
    lines.append(
        f"Modes: `teacher` = the teacher's own top-{args.teacher_top_k}; `all` = every expert, weighted by the teacher's gate; `ka` = "
        f"Knowledge Augmentation (the E − 1 = {args.teacher_experts - 1} best experts, per token with probability 0.05 a set sampled from the gate, "
        "2 teacher passes per batch with the loss averaged); `sar` = a trainable copy of the gate weights, all experts, "
        f"trained on KL(teacher ‖ sg student) + {args.sar_balance} · load balance at lr {args.sar_lr}; `student_aware` = "
        f"lkd's router (student state, knowledge gap, the teacher's gate), top-k 1 → 4 and τ 2 → 0.5 (cosine, k bounded by the expert count), lr "
        f"{args.router_lr}, λ = {args.router_lm_weight}. All modes share the teacher's gate mass among the experts they "
        "pick (lkd.models.routing). Test perplexity and KL are against the teacher's own routing. The Δ column pairs each "
        "seed with plain KD of the same seed (same initial weights and batches): mean of the differences and its 95 % "
        "Student-t interval.")
    return lines


def prepare(args) -> Path:
    """Quiet warnings, torch's threads from ``OMP_NUM_THREADS``; returns the ``--out`` folder."""
    warnings.filterwarnings("ignore")
    common.threads_from_env()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def search_notes(search: list[dict], used: list[dict], base: dict) -> list[str]:
    """One line per setting tried besides the table's (kept rows with other hyperparameters)."""
    used_keys = {(r["variant"], r["seed"], json.dumps(r.get("hp"), sort_keys=True)) for r in used}
    groups = {}
    for r in search:
        if (r["variant"], r["seed"], json.dumps(r.get("hp"), sort_keys=True)) in used_keys or "ppl" not in r:
            continue
        hp = {k: v for k, v in (r.get("hp") or {}).items() if k not in ("teacher", "temperature", "student_lr")}
        groups.setdefault((r["variant"], json.dumps(hp, sort_keys=True)), []).append(r)
    lines = []
    for (variant, hp), rs in sorted(groups.items()):
        cells = ", ".join(f"seed {r['seed']}: {r['ppl']:.3f}" + (f" (plain KD {base[r['seed']]:.3f})" if r["seed"] in base else "")
                          for r in sorted(rs, key=lambda r: r["seed"]))
        ci = paired_interval({r["seed"]: r["ppl"] for r in rs}, base)
        paired = "" if ci is None else f"; Δ to plain KD {ci[0]:+.3f} [{ci[1]:+.3f}, {ci[2]:+.3f}] over {ci[3]} seeds"
        lines.append(f"Also tried, {variant} with {hp}: test ppl {cells}{paired}.")
    return ["Search (rows not in the table): " + " ".join(lines)] if lines else []


def main(argv=None) -> None:
    args = parse_args(argv)
    out = prepare(args)
    teacher = train_teacher(args, out)
    facts = teacher_facts(teacher, args, out)
    print(f"teacher: {json.dumps(facts)}", flush=True)
    if args.teacher_only:
        return
    if not args.render_only:
        done = {(r["variant"], r["seed"]) for r in kept_runs(out, args)}
        for seed in args.seeds:
            for variant in args.variants:
                if (variant, seed) in done:
                    continue
                row = run_one(variant, seed, teacher, args)
                with (out / "runs.jsonl").open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{variant} seed {seed}: {json.dumps(row)}", flush=True)  # a script, not library code
        if args.timing_steps > 0 and not args.no_render:
            timing_pass(teacher, args, out)
    if args.no_render:
        return
    timing_path = out / "timing.json"
    timing = json.loads(timing_path.read_text())["rows"] if timing_path.is_file() else None
    common.finish(section(kept_runs(out, args), facts, timing, args, search=kept_runs(out)), "lm_distill", args)


if __name__ == "__main__":
    main()
