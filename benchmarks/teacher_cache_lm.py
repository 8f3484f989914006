"""Teacher-cache benchmark (language model): distillation from a top-k cache vs a live teacher vs the student alone.

    OMP_NUM_THREADS=1 python benchmarks/teacher_cache_lm.py            # results/teacher_cache_lm.json, "Teacher cache"
    OMP_NUM_THREADS=1 python benchmarks/teacher_cache_lm.py --timing-steps 30 --repeats 2 --steps 50 --no-write

The models and data of ``benchmarks/lm_distill.py`` (byte-level WikiText-2 blocks of 128, batch 8; the tiny
Qwen3-MoE teacher it trains, reused from ``runs/lm_benchmark`` when present; the tiny Llama student), with the
KL at T = 1 as the only loss. Stages:

1. the cache: ``lkd cache-teacher``'s code, top-``k`` log-probabilities and token ids of every training and
   validation position, fp16 + int16;
2. timing: a burn-in per mode, then ``--repeats`` rounds in which the three modes take turns, each a fresh
   model trained ``--timing-steps`` steps (no validation); median seconds, ratio to the student alone;
3. quality: each mode trained ``--steps`` steps from the same seed, then the test perplexity (first
   ``--test-blocks`` test blocks) and the KL to the teacher.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.lm_distill import adamw, data, evaluate, prepare, train_teacher, trainer  # noqa: E402
from benchmarks.report import column, table  # noqa: E402
from lkd.memory import count_parameters  # noqa: E402
from lkd.modules import CausalLMModule, LMDistillModule  # noqa: E402
from lkd.teacher import Teacher  # noqa: E402

MODES = ("student only", "distillation, live teacher", "distillation, cached teacher")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--k", type=int, default=32, help="top-k tokens per position in the cache")
    p.add_argument("--timing-steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=500, help="training steps of the quality runs (0 = skip them)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--out", default="runs/lm_benchmark", help="where benchmarks/lm_distill.py keeps its teacher")
    common.add_output_options(p)
    args = p.parse_args()
    # the settings of benchmarks/lm_distill.py that its helpers read
    args.batch_size, args.block_size, args.test_blocks = 8, 128, 400
    args.teacher_steps, args.teacher_seed, args.teacher_lr = 1200, 0, 2e-3
    return args


def build(mode: str, teacher, cache: Path, args):
    student = common.lm_student(args.seed + 1)
    if mode == "student only":
        return CausalLMModule(student, tokenizer="bytes", optimizer=adamw(args.lr))
    wrapped = Teacher(teacher, cache=str(cache) if "cached" in mode else None, cache_top_k=args.k)
    return LMDistillModule(student, wrapped, tokenizer="bytes", loss_weights={"kl": 1.0}, temperature=1.0,
                           optimizer=adamw(args.lr))


def train(mode: str, teacher, cache: Path, args, steps: int) -> tuple[torch.nn.Module, float]:
    module = build(mode, teacher, cache, args)
    timer = common.train_timer()
    pl.seed_everything(args.seed)  # the same batches for every mode
    trainer(steps, [timer]).fit(module, data(args))
    return module.trained_model, timer.seconds


def main() -> None:
    args = parse_args()
    teacher = train_teacher(args, prepare(args))
    workdir = Path(tempfile.mkdtemp(prefix="lkd-lm-cache-"))
    cache_path = workdir / f"teacher_top{args.k}.cache"

    # 1. the cache
    dm = data(args)
    dm.setup("fit")
    started = time.perf_counter()
    cache = build("distillation, cached teacher", teacher, cache_path, args).write_teacher_cache(dm, cache_path)
    build_s = time.perf_counter() - started
    tokens = {s: v["sample_ids"].numel() * args.block_size for s, v in cache.content["splits"].items()}
    per_token = cache.bytes_per_example() / args.block_size
    max_err = float(max(s["max_abs_error"] for s in cache.content["splits"].values()))
    print(f"cache: {tokens} tokens in {build_s:.1f} s, {per_token:.1f} B/token, max |err| {max_err:.2e}", flush=True)

    # 2. timing
    burn_in_steps = max(args.timing_steps // 5, 5)
    timing = common.paired_timing(
        {m: lambda m=m: train(m, teacher, cache_path, args, args.timing_steps)[1] for m in MODES},
        baseline="student only", repeats=args.repeats,
        burn_in={m: lambda m=m: train(m, teacher, cache_path, args, burn_in_steps) for m in MODES},
    )

    # 3. quality
    quality = {}
    if args.steps > 0:
        for mode in MODES:
            student, _ = train(mode, teacher, cache_path, args, args.steps)
            r = evaluate(student, teacher, args)["retention"]
            quality[mode] = {"ppl": r["student_ppl"], "kl": r["kl"]}
            print(f"{mode}: test ppl {r['student_ppl']:.3f}, KL {r['kl']:.4f}", flush=True)

    columns = [
        column("mode", "mode"),
        *common.timing_columns(f"{args.timing_steps} training steps (s, median of {args.repeats})", "per round (s)",
                               "vs student only"),
        column(f"test ppl after {args.steps} steps", "ppl", format="{:.3f}", missing="not run"),
        column("KL to the teacher", "kl", format="{:.4f}", missing="not run"),
    ]
    rows = [{"mode": mode, **timing.row(mode), **quality.get(mode, {})} for mode in MODES]
    teacher_params = count_parameters(teacher)
    vocab, file_bytes = cache.targets["vocab"], cache_path.stat().st_size
    result = common.new_result("Teacher cache", args, subsection="Language model", seeds=[args.seed], threads=True)
    result["intro"] = [
        "The models and data of `benchmarks/lm_distill.py` (\"Language models\": the byte-level tiny Qwen3-MoE teacher, "
        f"{teacher_params / 1e6:.1f} M parameters, and the tiny Llama student; WikiText-2 "
        f"blocks of {args.block_size} bytes, batch {args.batch_size}), KL at T = 1 as the only loss, fp32 on the CPU. "
        "Timing: a burn-in per mode, then the three modes take turns, each a fresh model trained for the steps named; "
        "the ratio is to the student alone (next-token cross-entropy) in the same run. Quality: each mode trained "
        f"{args.steps} steps from seed {args.seed} on the same batches, test perplexity on the first {args.test_blocks} "
        "test blocks and KL(teacher ‖ student) there (one seed)."
    ]
    result["tables"] = [table(columns, rows)]
    result["notes"] = [
        f"Cache: top-{args.k} of the teacher's {vocab}-token distribution at every position, "
        f"log-probabilities in float16 and token ids in int16: {per_token:.1f} bytes per token "
        f"({cache.bytes_per_example():.0f} per block, its int64 id included; the full fp16 distribution would be "
        f"{2 * vocab} bytes per token), {sum(tokens.values()):,} tokens (train + val), file "
        f"{file_bytes / 1e6:.1f} MB, written in {build_s:.1f} s; largest |stored − fp32| log-probability "
        f"error {max_err:.2e}. The KL reads it as the top-{args.k} tokens plus a tail bucket for the rest of the "
        "teacher's mass (`lkd.losses.kd.topk_kd_kl_div`)."
    ]
    result["data"] = {"teacher_params": teacher_params,
                      "cache": {"top_k": args.k, "vocab": vocab, "tokens": tokens, "bytes_per_token": float(per_token),
                                "bytes_per_block": float(cache.bytes_per_example()), "file_bytes": file_bytes,
                                "build_s": build_s, "max_abs_error": max_err}}
    common.finish(result, "teacher_cache_lm", args)


if __name__ == "__main__":
    main()
