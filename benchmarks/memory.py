"""Memory benchmark (LM track): peak memory and step time of routed-free LM distillation with the memory options.

    OMP_NUM_THREADS=1 python benchmarks/memory.py                 # writes the "Memory" section of BENCHMARKS.md
    OMP_NUM_THREADS=1 python benchmarks/memory.py --steps 2 --no-write

Each variant runs in its own process (peak memory is a per-process high-water mark): an
:class:`lkd.modules.lm_distill.LMDistillModule` (KL + CE) with a Qwen3-MoE teacher and a Llama student
built from transformers configs (random weights: memory and time do not depend on the values), trained by a
Lightning ``Trainer`` on byte-level WikiText-2 blocks for ``--steps`` optimizer steps after one burn-in
step. Variants:

* ``student only``: :class:`lkd.modules.lm.CausalLMModule`, the floor;
* ``fp32 teacher``: the baseline distillation;
* ``bf16 teacher``: ``teacher_dtype: bfloat16``;
* ``bf16 teacher + checkpointing``: and ``activation_checkpointing: true`` for the student.

Reported: the peak memory during training (CPU: the resident-set high-water mark, reset at train start through
``/proc/self/clear_refs``; CUDA: the allocator's peak), the
modules' own bytes, the median step time, and both as ratios to the fp32-teacher baseline measured in the
same run. ``teacher_offload`` only matters on an accelerator (on a CPU there is nowhere to offload to), so
it is not a variant here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = {
    "student only": {},
    "fp32 teacher": {"teacher_dtype": "float32"},
    "bf16 teacher": {"teacher_dtype": "bfloat16"},
    "bf16 teacher + checkpointing": {"teacher_dtype": "bfloat16", "activation_checkpointing": True},
}
BASELINE = "fp32 teacher"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=4, help="timed optimizer steps after one burn-in step")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--no-write", action="store_true", help="print the table, do not touch BENCHMARKS.md")
    p.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args()


def teacher_model():
    from lkd.models.causal_lm import tiny_moe_lm

    return tiny_moe_lm(257, hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, head_dim=64, intermediate_size=1024,
                       moe_intermediate_size=1024, num_experts=16, top_k=2, max_position_embeddings=1024, seed=0)


def student_model():
    from lkd.models.causal_lm import tiny_llama_lm

    return tiny_llama_lm(257, hidden_size=512, num_layers=12, num_heads=8, num_kv_heads=4, intermediate_size=1536,
                         max_position_embeddings=1024, seed=1)


def reset_peak_memory(device) -> None:
    """Start a new high-water mark: CUDA allocator peak, or the process's VmHWM (Linux ``clear_refs`` 5)."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")


def training_peak_mb(device) -> float:
    """Peak memory since :func:`reset_peak_memory`: CUDA allocator peak, or VmHWM (resident set high-water mark)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024  # kB


def child(variant: str, args) -> dict:
    """One variant in this process: build, train ``1 + steps`` steps, report peak memory and step times."""
    import lightning.pytorch as pl
    import torch

    from lkd.data.text import TextDataModule
    from lkd.memory import module_bytes
    from lkd.modules.lm import CausalLMModule
    from lkd.modules.lm_distill import LMDistillModule

    class StepTimer(pl.Callback):
        """Step times, and the memory high-water mark reset once the models are built and cast (train start)."""

        def __init__(self):
            self.seconds: list[float] = []

        def on_train_start(self, trainer, pl_module):
            reset_peak_memory(pl_module.device)
            self.start_mb = training_peak_mb(pl_module.device)  # resident when training starts

        def on_train_batch_start(self, *a):
            self._t = time.perf_counter()

        def on_train_batch_end(self, *a):
            self.seconds.append(time.perf_counter() - self._t)

    torch.manual_seed(0)
    student, teacher = student_model(), None
    if variant == "student only":  # no teacher built at all
        module = CausalLMModule(student, tokenizer="bytes")
        teacher_bytes = 0
    else:
        teacher = teacher_model()
        module = LMDistillModule(student, teacher, tokenizer="bytes", loss_weights={"kl": 1.0, "ce": 0.1}, **VARIANTS[variant])
        teacher_bytes = None  # measured after setup casts it
    data = TextDataModule("Salesforce/wikitext", "wikitext-2-raw-v1", train_split="validation[:90%]", val_split="validation[90%:]",
                          block_size=args.block_size, batch_size=args.batch_size, tokenizer="bytes", max_blocks=64)
    timer = StepTimer()
    trainer = pl.Trainer(max_steps=1 + args.steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer])
    trainer.fit(module, data)
    if teacher_bytes is None:
        teacher_bytes = module_bytes(module.teacher)
    return {
        "peak_memory_mb": training_peak_mb(module.device),
        "start_memory_mb": timer.start_mb,
        "teacher_mb": teacher_bytes / 2**20,
        "student_mb": module_bytes(student) / 2**20,
        "step_s": timer.seconds[1:],  # after the burn-in step
        "params": {"teacher": sum(p.numel() for p in teacher.parameters()) if teacher is not None else 0,
                   "student": sum(p.numel() for p in student.parameters())},
    }


def markdown(results: dict, args) -> str:
    from benchmarks.report import command, machine

    base = results[BASELINE]
    base_step = statistics.median(base["step_s"])
    params = base["params"]
    lines = [
        f"Command: `{command()}`  ",
        f"Machine: {machine()}",
        "",
        f"LM distillation (KL + 0.1·CE) of a Llama student ({params['student'] / 1e6:.1f} M parameters, 12 layers, width 512) "
        f"from a Qwen3-MoE teacher ({params['teacher'] / 1e6:.1f} M, 8 layers, 16 experts, top-2), byte-level WikiText-2 blocks "
        f"of {args.block_size} tokens, batch {args.batch_size}, AdamW, fp32 training on the CPU; each variant in its own "
        f"process, {args.steps} timed steps after one burn-in step. Peak memory: the process's resident-set high-water mark "
        "during training (reset at train start, after the models are built and the teacher cast; Python, torch and the "
        "data included); the ratios are to the fp32-teacher run measured in the same invocation.",
        "",
        "| variant | teacher held (MiB) | resident at train start (MiB) | peak memory in training (MiB) | vs fp32 teacher | step (s, median) | vs fp32 teacher |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        step = statistics.median(r["step_s"])
        lines.append(
            f"| {name} | {r['teacher_mb']:.0f} | {r['start_memory_mb']:.0f} | {r['peak_memory_mb']:.0f} | {r['peak_memory_mb'] / base['peak_memory_mb']:.2f}× "
            f"| {step:.2f} | {step / base_step:.2f}× |"
        )
    step_memory = ", ".join(f"{name} {r['peak_memory_mb'] - r['start_memory_mb']:.0f}" for name, r in results.items())
    lines += [
        "",
        f"Memory a training step adds on top of what is resident at train start (peak − start, MiB): {step_memory}. "
        "Holding the teacher in bf16 saves its bytes at rest; on this CPU a bf16 forward also makes temporaries of its "
        "own, so the peak falls by less. Activation checkpointing removes most of the student's stored activations "
        "for one more forward of its layers per step.",
        "",
        "`teacher_offload: true` (teacher in CPU memory between its forwards) and the `TeacherMemoryError` check act on "
        "an accelerator's memory and are not measured on this CPU-only machine.",
    ]
    return "\n".join(lines)


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
    body = markdown(results, args)
    print(body)
    if not args.no_write:
        from benchmarks.report import write_section

        write_section("Memory", body)


if __name__ == "__main__":
    main()
