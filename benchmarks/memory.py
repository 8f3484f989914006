"""Memory benchmark (LM track): peak memory and step time of routed-free LM distillation with the memory options.

    OMP_NUM_THREADS=1 python benchmarks/memory.py                 # benchmarks/results/memory.json, "Memory" section
    OMP_NUM_THREADS=1 python benchmarks/memory.py --steps 2 --no-write

Each variant runs in its own process (peak memory is a per-process high-water mark): an
:class:`lkd.modules.LMDistillModule` (KL + CE) with a Qwen3-MoE teacher and a Llama student
built from transformers configs (random weights: memory and time do not depend on the values), trained by a
Lightning ``Trainer`` on byte-level WikiText-2 blocks for ``--steps`` optimizer steps after one burn-in
step. Variants:

* ``student only``: :class:`lkd.modules.CausalLMModule`, the floor;
* ``fp32 teacher``: the baseline distillation;
* ``bf16 teacher``: ``teacher.dtype: bfloat16`` (:class:`lkd.teacher.Teacher`);
* ``bf16 teacher + checkpointing``: and ``activation_checkpointing: true`` for the student.

Reported: the peak memory during training (:func:`lkd.evaluation.peak_memory_mb`, the test report's measure: CPU:
the resident-set high-water mark, reset at train start through ``/proc/self/clear_refs``; CUDA: the
allocator's peak, reset there too), the modules' own bytes, the median step time, and both as ratios to the
fp32-teacher baseline measured in the same run. ``teacher.offload`` only matters on an accelerator (on a CPU
there is nowhere to offload to), so it is not a variant here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.report import RATIO, column, table  # noqa: E402

common.offline_hub()

VARIANTS = {  # name: (Teacher arguments, LMDistillModule arguments); student only: no teacher
    "student only": ({}, {}),
    "fp32 teacher": ({"dtype": "float32"}, {}),
    "bf16 teacher": ({"dtype": "bfloat16"}, {}),
    "bf16 teacher + checkpointing": ({"dtype": "bfloat16"}, {"activation_checkpointing": True}),
}
BASELINE = "fp32 teacher"
# the language-model pair of benchmarks/common.py, scaled up so that memory is worth measuring
TEACHER_SIZES = dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, head_dim=64, intermediate_size=1024,
                     moe_intermediate_size=1024, num_experts=16, max_position_embeddings=1024)
STUDENT_SIZES = dict(hidden_size=512, num_layers=12, num_heads=8, num_kv_heads=4, intermediate_size=1536,
                     max_position_embeddings=1024)
COLUMNS = [
    column("variant", "variant"), column("teacher held (MiB)", "teacher_mb", format="{:.0f}"),
    column("resident at train start (MiB)", "start_memory_mb", format="{:.0f}"),
    column("peak memory in training (MiB)", "peak_memory_mb", format="{:.0f}"),
    column("vs fp32 teacher", "peak_vs_baseline", format=RATIO), column("step (s, median)", "step_median_s", format="{:.2f}"),
    column("vs fp32 teacher", "step_vs_baseline", format=RATIO),
]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=4, help="timed optimizer steps after one burn-in step")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--block-size", type=int, default=256)
    common.add_output_options(p, "print the table, do not touch BENCHMARKS.md or benchmarks/results")
    p.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args()


def reset_peak_memory(device) -> None:
    """Start a new high-water mark for :func:`lkd.evaluation.peak_memory_mb`: the CUDA allocator's peak, or the
    process's resident-set high-water mark (Linux ``clear_refs`` 5, which ``getrusage``'s ``ru_maxrss`` follows)."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")


def child(variant: str, args) -> dict:
    """One variant in this process: build, train ``1 + steps`` steps, report peak memory and step times."""
    import torch

    from lkd.data import TextDataModule
    from lkd.evaluation import peak_memory_mb
    from lkd.memory import count_parameters, module_bytes
    from lkd.modules import CausalLMModule, LMDistillModule
    from lkd.teacher import Teacher

    memory_at_start = {}

    def reset_at_train_start(pl_module) -> None:
        reset_peak_memory(pl_module.device)
        memory_at_start["mb"] = peak_memory_mb(pl_module.device)  # resident when training starts

    torch.manual_seed(0)
    student, teacher = common.lm_student(1, **STUDENT_SIZES), None
    if variant == "student only":  # no teacher built at all
        module = CausalLMModule(student, tokenizer="bytes")
        teacher_bytes = 0
    else:
        teacher_args, module_args = VARIANTS[variant]
        teacher = common.lm_teacher(0, **TEACHER_SIZES)
        module = LMDistillModule(student, Teacher(teacher, **teacher_args), tokenizer="bytes",
                                 loss_weights={"kl": 1.0, "ce": 0.1}, **module_args)
        teacher_bytes = None  # measured after setup casts it
    data = TextDataModule("Salesforce/wikitext", "wikitext-2-raw-v1", train_split="validation[:90%]", val_split="validation[90%:]",
                          block_size=args.block_size, batch_size=args.batch_size, tokenizer="bytes", max_blocks=64)
    timer = common.train_timer(on_train_start=reset_at_train_start)
    trainer = common.quiet_trainer(max_steps=1 + args.steps, callbacks=[timer])
    trainer.fit(module, data)
    if teacher_bytes is None:
        teacher_bytes = module_bytes(module.teacher.model)
    return {
        "peak_memory_mb": peak_memory_mb(module.device),
        "start_memory_mb": memory_at_start["mb"],
        "teacher_mb": teacher_bytes / 2**20,
        "student_mb": module_bytes(student) / 2**20,
        "step_s": timer.step_seconds[1:],  # after the burn-in step
        "params": {"teacher": count_parameters(teacher) if teacher is not None else 0, "student": count_parameters(student)},
    }


def section(results: dict, args) -> dict:
    """The result file of the "Memory" section: a row per variant, ratios to :data:`BASELINE`."""
    base = results[BASELINE]
    base_step = statistics.median(base["step_s"])
    params = base["params"]
    rows = []
    for name, r in results.items():
        step = statistics.median(r["step_s"])
        rows.append({"variant": name, **r, "peak_vs_baseline": r["peak_memory_mb"] / base["peak_memory_mb"],
                     "step_median_s": step, "step_vs_baseline": step / base_step})
    result = common.new_result("Memory", args, seeds=[0])
    result["intro"] = [
        f"LM distillation (KL + 0.1·CE) of a Llama student ({params['student'] / 1e6:.1f} M parameters, 12 layers, width 512) "
        f"from a Qwen3-MoE teacher ({params['teacher'] / 1e6:.1f} M, 8 layers, 16 experts, top-2), byte-level WikiText-2 blocks "
        f"of {args.block_size} tokens, batch {args.batch_size}, AdamW, fp32 training on the CPU; each variant in its own "
        f"process, {args.steps} timed steps after one burn-in step. Peak memory: the process's resident-set high-water mark "
        "during training (reset at train start, after the models are built and the teacher cast; Python, torch and the "
        "data included); the ratios are to the fp32-teacher run measured in the same invocation."
    ]
    result["tables"] = [table(COLUMNS, rows)]
    step_memory = ", ".join(f"{name} {r['peak_memory_mb'] - r['start_memory_mb']:.0f}" for name, r in results.items())
    result["notes"] = [
        f"Memory a training step adds on top of what is resident at train start (peak − start, MiB): {step_memory}. "
        "Holding the teacher in bf16 saves its bytes at rest; on this CPU a bf16 forward also makes temporaries of its "
        "own, so the peak falls by less. Activation checkpointing removes most of the student's stored activations "
        "for one more forward of its layers per step.",
        "`teacher.offload: true` (teacher in CPU memory between its forwards) and the `TeacherMemoryError` check act on "
        "an accelerator's memory and are not measured on this CPU-only machine.",
    ]
    return result


def main() -> None:
    args = parse_args()
    if args.child:
        import warnings

        warnings.filterwarnings("ignore")
        args.out.write_text(json.dumps(child(args.child, args)))
        return
    results = {}
    for variant in VARIANTS:
        out = Path(f"/tmp/lkd_memory_{os.getpid()}.json")
        cmd = [sys.executable, __file__, "--child", variant, "--out", str(out), "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--block-size", str(args.block_size)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"variant {variant!r} failed:\n{proc.stderr[-3000:]}")
        results[variant] = json.loads(out.read_text())
        out.unlink()
        print(variant, {k: v for k, v in results[variant].items() if k != "params"}, flush=True)
    common.finish(section(results, args), "memory", args)


if __name__ == "__main__":
    main()
