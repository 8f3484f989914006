"""Language-model distillation benchmark: a tiny Qwen3-MoE teacher, then four students with equal steps and data.

    OMP_NUM_THREADS=1 python benchmarks/lm_distill.py                 # benchmarks/results/lm_distill.json, "Language models"
    OMP_NUM_THREADS=1 python benchmarks/lm_distill.py --teacher-steps 50 --student-steps 20 --no-write  # quick look

Variants (same student architecture, same initial weights, same batches, same number of optimizer steps):
``scratch`` (next-token CE only), ``kl`` (T²·KL only), ``multi`` (KL 0.7, feature 0.1, attention 0.1,
layer-wise 0.05, contrastive 0.05) and ``routed`` (multi + the student-aware router, top-k 1 → 4,
temperature 2 → 0.5). Every student is then tested the same way (an :class:`LMDistillModule` test with the
:class:`lkd.callbacks.DistillationReport` callback, against the teacher's own top-2 routing): test perplexity,
KL(teacher ‖ student), top-1 / top-5 agreement, tokens/s (:func:`lkd.timing.tokens_per_second`).

Offline data: the WikiText-2 mirror has no train split, so training uses ``validation[:90%]`` and the test
uses the first ``--test-blocks`` blocks of ``test``. Tokens are UTF-8 bytes (vocab 257): with SmolLM2's 49152-token
vocabulary the softmax alone costs ~1 s per step on this CPU, too slow for four students here.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

common.offline_hub()

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402

from benchmarks.report import RATIO, column, table  # noqa: E402
from lkd.callbacks import DistillationReport  # noqa: E402
from lkd.callbacks.figures import RouterExpertUsage  # noqa: E402
from lkd.callbacks.routing_schedule import RoutingSchedule  # noqa: E402
from lkd.data.text import TextDataModule  # noqa: E402
from lkd.losses.lm import DEFAULT_LOSS_WEIGHTS  # noqa: E402
from lkd.memory import count_parameters  # noqa: E402
from lkd.models.router import StudentAwareRouter  # noqa: E402
from lkd.modules import CausalLMModule, LMDistillModule  # noqa: E402
from lkd.teacher import Teacher  # noqa: E402

VARIANTS = ("scratch", "kl", "multi", "routed")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher-steps", type=int, default=1200)
    p.add_argument("--student-steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--test-blocks", type=int, default=400)
    p.add_argument("--teacher-lr", type=float, default=2e-3)
    p.add_argument("--student-lr", type=float, default=2e-3)
    p.add_argument("--router-lr", type=float, default=4e-3, help="2x the student's, as 1e-4 vs 5e-5 in the configs")
    p.add_argument("--router-lm-weight", type=float, default=1.0, help="λ of the routed teacher's LM loss")
    p.add_argument("--start-top-k", type=int, default=1)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    common.add_seeds_option(p, [0, 1], help="student initialisation and batch order; one run each")
    p.add_argument("--teacher-seed", type=int, default=0)
    p.add_argument("--out", default="runs/lm_benchmark", help="folder for results.json and the teacher")
    common.add_output_options(p, "do not touch BENCHMARKS.md or benchmarks/results (results go to OUT/results_no_write.json)")
    p.add_argument("--log-dir", default=None, help="TensorBoard logs of every student run here (routed runs also log "
                   "the router/expert_usage and router/schedule figures); default: no logger")
    p.add_argument("--render-only", action="store_true", help="rewrite the result file and the section from OUT/results.json "
                   "without training")
    return p.parse_args()


def data(args, test_blocks: int | None = None) -> TextDataModule:
    dm = TextDataModule("Salesforce/wikitext", "wikitext-2-raw-v1", train_split="validation[:90%]",
                        val_split="validation[90%:]", test_split="test", block_size=args.block_size,
                        batch_size=args.batch_size, tokenizer="bytes", max_blocks=test_blocks)
    return dm


def trainer(max_steps: int, callbacks=(), logger=False) -> pl.Trainer:
    return common.quiet_trainer(max_steps=max_steps, logger=logger, gradient_clip_val=1.0, callbacks=list(callbacks),
                                deterministic=False)


def adamw(lr: float):
    return lambda groups: torch.optim.AdamW(groups, lr=lr, weight_decay=0.01)


class Report(DistillationReport):
    """:class:`lkd.callbacks.DistillationReport` that keeps its report in memory only (the numbers go to
    results.json and BENCHMARKS.md, not retention.json)."""

    @staticmethod
    def write(report: dict, folder: Path) -> Path:
        return folder


def evaluate(student, teacher, args) -> dict:
    """Test perplexity and retention of ``student`` against ``teacher`` (its own top-2 routing): the test report
    of :class:`lkd.callbacks.DistillationReport` (``retention``, ``compression``, ``speed``, ``peak_memory_mb``)."""
    module = LMDistillModule(student, Teacher(teacher), tokenizer="bytes", loss_weights={"kl": 1.0})
    report = Report()
    dm = data(args)
    dm.max_blocks = args.test_blocks
    trainer(1, [report]).test(module, dm, verbose=False)
    return report.report


def unwrapped(state: dict) -> dict:
    """A teacher's state dict without the ``model.`` prefix of the former ``CausalLM`` wrapper (files it saved put
    every key under ``model.``; the transformers model's own ``lm_head.weight`` is outside it)."""
    if all(key.startswith("model.") for key in state):
        return {key.removeprefix("model."): value for key, value in state.items()}
    return state


def train_teacher(args, out: Path) -> torch.nn.Module:
    seed = args.teacher_seed
    path = out / f"teacher_seed{seed}_steps{args.teacher_steps}.pt"
    teacher = common.lm_teacher(seed)
    if path.is_file():
        teacher.load_state_dict(unwrapped(torch.load(path, map_location="cpu", weights_only=True)))
        return teacher
    module = CausalLMModule(teacher, tokenizer="bytes", optimizer=adamw(args.teacher_lr))
    pl.seed_everything(seed)
    start = time.perf_counter()
    trainer(args.teacher_steps).fit(module, data(args))
    teacher.train_seconds = time.perf_counter() - start
    torch.save(teacher.state_dict(), path)
    return teacher


def train_student(variant: str, teacher, args, seed: int) -> tuple[torch.nn.Module, float]:
    student = common.lm_student(seed + 1)  # the same initial weights for every variant
    callbacks = []
    if variant == "scratch":
        module = CausalLMModule(student, tokenizer="bytes", optimizer=adamw(args.student_lr))
    else:
        weights = {"kl": 1.0} if variant == "kl" else DEFAULT_LOSS_WEIGHTS
        router = StudentAwareRouter() if variant == "routed" else None
        if router is not None:
            callbacks.append(RoutingSchedule(start_top_k=args.start_top_k, end_top_k=4, start_temperature=2.0, end_temperature=0.5, mode="cosine"))
            if args.log_dir:
                callbacks.append(RouterExpertUsage(log_every_n_steps=50))
        module = LMDistillModule(student, Teacher(copy.deepcopy(teacher)), tokenizer="bytes", router=router, loss_weights=weights,
                                 temperature=args.temperature, layer_map=[0, 1, 2, 3], router_lr=args.router_lr,
                                 router_lm_weight=args.router_lm_weight, optimizer=adamw(args.student_lr))
    pl.seed_everything(seed)  # the same batches for every variant
    start = time.perf_counter()
    logger = TensorBoardLogger(args.log_dir, name=f"{variant}_seed{seed}") if args.log_dir else False
    t = trainer(args.student_steps, callbacks, logger)
    t.fit(module, data(args))
    seconds = time.perf_counter() - start
    degradation = t.callback_metrics.get("train/teacher_lm_degradation_step")
    student.teacher_lm_degradation = None if degradation is None else float(degradation)
    return student, seconds


COLUMNS = [
    column("student", "student"), column("test ppl (mean)", "ppl", format="{:.3f}"),
    column("ppl per seed", "ppl_per_seed", aggregate="list", format="{:.3f}", sep=" / "),
    column("KL(teacher‖student)", "kl", format="{:.4f}"), column("top-1 agree", "top1", format="{:.3f}"),
    column("top-5 agree", "top5", format="{:.3f}"), column("student/teacher tokens/s", "speed_ratio", format=RATIO),
    column("train s", "train_s", format="{:.0f}"),
]


def targets(students: dict, variants: list[str]) -> str:
    """The paragraph on the two targets (distilled beats scratch; router beats plain KL) and the routed
    teacher's LM degradation, for the variants that ran."""
    s, lines = students, []
    if "scratch" in s:
        distilled = [v for v in variants if v != "scratch"]
        beats = [v for v in distilled if s[v]["ppl"] < s["scratch"]["ppl"]]
        lines.append(f"Target 1 (every distilled variant beats scratch on test perplexity): "
                     f"**{'met' if len(beats) == len(distilled) else 'not met'}** ({len(beats)} of {len(distilled)} beat it: "
                     f"{', '.join(beats) or 'none'}).")
    if "routed" in s and "kl" in s:
        ok = s["routed"]["ppl"] < s["kl"]["ppl"]
        wins = sum(s["routed"]["per_seed"][k]["ppl"] < s["kl"]["per_seed"][k]["ppl"] for k in s["routed"]["per_seed"])
        lines.append(f"Target 2 (router beats plain KL): **{'met' if ok else 'not met'}** on the mean "
                     f"({s['routed']['ppl']:.3f} vs {s['kl']['ppl']:.3f}); the router wins on {wins} of {len(s['routed']['per_seed'])} seeds.")
    if "routed" in s and s["routed"].get("teacher_lm_degradation_last_step") is not None:
        lines.append(f"Routed teacher's own LM loss minus its top-2 loss at the last training step (mean over seeds): "
                     f"{s['routed']['teacher_lm_degradation_last_step']:+.4f} nats/byte.")
    return "\n".join(lines)


def section(results: dict, args) -> dict:
    """The result file of the "Language models" section from this script's ``results.json`` content."""
    t, students = results["teacher"], results["students"]
    seeds = list(students[args.variants[0]]["per_seed"])
    result = common.new_result("Language models", args, seeds=[int(seed) for seed in seeds])
    result["command"] = results.get("command") or result["command"]
    result["machine"] = results.get("machine") or result["machine"]
    result["intro"] = [
        f"Total wall time: {results['wall_minutes']:.1f} min. Student seeds {', '.join(seeds)} "
        f"(initial weights and batch order), one teacher (seed {args.teacher_seed}); the table gives means over seeds.",
        "Offline setting: WikiText-2 raw, **trained on `validation[:90%]`** (the mirror has no train split), tested on the "
        f"first {args.test_blocks} blocks of `test` ({args.test_blocks * args.block_size:,} tokens); byte-level tokens "
        f"(vocab 257), blocks of {args.block_size}, batch {args.batch_size}. Teacher: Qwen3-MoE, 8 experts, top-2, "
        f"{t['params'] / 1e6:.2f} M params, {args.teacher_steps} steps. Students: Llama architecture, "
        f"{results['student_params'] / 1e6:.2f} M params ({t['params'] / results['student_params']:.1f}x fewer), "
        f"{args.student_steps} AdamW steps each (lr {args.student_lr}, warm-up + cosine), same initial weights and "
        f"batches; KD temperature T = {args.temperature}; router lr {args.router_lr}. Perplexities are per byte.",
        f"Teacher test perplexity: **{t['ppl']:.3f}**.",
    ]
    rows = [{"student": v, **students[v], "ppl_per_seed": [run["ppl"] for run in students[v]["per_seed"].values()]}
            for v in args.variants]
    result["tables"] = [table(COLUMNS, rows)]
    result["notes"] = [paragraph for paragraph in [targets(students, args.variants)] if paragraph] + [
        "Variants: scratch = next-token CE; kl = T²·KL only; multi = KL 0.7 + feature 0.1 + attention 0.1 + layer-wise "
        "0.05 + contrastive 0.05; routed = multi with the student-aware router (top-k 1→4, temperature 2→0.5, cosine) "
        "replacing the teacher's top-2 gating in the targets and trained on the same objective + the routed teacher's LM "
        "loss. Retention is measured against the teacher's own top-2 routing. Speed: no-grad forward of 4 × "
        f"{args.block_size} tokens, 1 thread; all students share one architecture, so the spread of that column is "
        "timing noise on this shared machine."
    ]
    result["data"] = {"teacher": t, "student_params": results["student_params"], "wall_minutes": results["wall_minutes"]}
    return result


def prepare(args) -> Path:
    """Quiet warnings, torch's threads from ``OMP_NUM_THREADS``; returns the ``--out`` folder (the teacher, results.json)."""
    warnings.filterwarnings("ignore")
    common.threads_from_env()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def main() -> None:
    args = parse_args()
    out = prepare(args)
    if args.render_only:
        common.finish(section(json.loads((out / "results.json").read_text()), args), "lm_distill", args)
        return
    start = time.perf_counter()
    teacher = train_teacher(args, out)
    teacher_report = evaluate(copy.deepcopy(teacher), teacher, args)  # the teacher against itself: its ppl
    results = {"teacher": {"ppl": teacher_report["retention"]["student_ppl"], "params": count_parameters(teacher),
                           "train_s": getattr(teacher, "train_seconds", None)}, "students": {}}
    for variant in args.variants:
        runs = {}
        for seed in args.seeds:
            student, seconds = train_student(variant, teacher, args, seed)
            rep = evaluate(student, teacher, args)
            r = rep["retention"]
            runs[str(seed)] = {"ppl": r["student_ppl"], "kl": r["kl"], "top1": r["top1_agreement"], "top5": r["top5_agreement"],
                               "speed_ratio": rep["speed"]["speed_ratio"], "train_s": seconds,
                               "teacher_lm_degradation_last_step": getattr(student, "teacher_lm_degradation", None)}
            results["student_params"] = count_parameters(student)
            print(f"{variant} seed {seed}: {runs[str(seed)]}", flush=True)  # a script, not library code
        mean = {k: sum(run[k] for run in runs.values()) / len(runs) for k in ("ppl", "kl", "top1", "top5", "speed_ratio", "train_s")}
        degr = [run["teacher_lm_degradation_last_step"] for run in runs.values() if run["teacher_lm_degradation_last_step"] is not None]
        mean["teacher_lm_degradation_last_step"] = sum(degr) / len(degr) if degr else None
        results["students"][variant] = {**mean, "per_seed": runs}
    results["wall_minutes"] = (time.perf_counter() - start) / 60
    results["command"], results["machine"] = common.command(), common.machine()
    (out / ("results_no_write.json" if args.no_write else "results.json")).write_text(json.dumps(results, indent=2))
    common.finish(section(results, args), "lm_distill", args)


if __name__ == "__main__":
    main()
