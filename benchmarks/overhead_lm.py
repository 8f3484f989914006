"""Framework overhead, language models: one distillation step of lkd (``LMDistillModule`` in a Lightning
``Trainer``) vs a plain PyTorch loop vs TRL's ``GKDTrainer``, side by side in one process.

    OMP_NUM_THREADS=2 python benchmarks/overhead_lm.py [--steps 60] [--rounds 5] [--note "..."]
    python benchmarks/overhead_lm.py --steps 5 --rounds 1 --no-write        # a quick trial

The same tiny byte-level teacher (the LM benchmark's Qwen3-MoE, 4.0 M) and student (Llama), the same batches
(WikiText-2 raw, blocks of 128 bytes, batch 8), forward KL(teacher ‖ student) at T = 1 on every position, AdamW at
a constant learning rate. Rows:

- ``plain``: a plain PyTorch loop (``torch.optim.AdamW``, lkd's ``kd_kl_div``), the baseline.
- ``lkd``: ``LMDistillModule`` in a Lightning ``Trainer`` with a TensorBoard logger (``torch.optim.AdamW``).
- ``trl``: ``GKDTrainer`` off-policy (``lmbda=0``, no generation) with ``beta=0`` (forward KL), its own masked,
  shifted loss, set to the same work: ``gradient_checkpointing=False``, ``optim="adamw_torch"`` (plain
  ``torch.optim.AdamW``), ``max_grad_norm=0`` (no clipping; lkd and the plain loop do not clip), weight decay 0.01
  (torch's AdamW default), no bf16, logging every 50 steps (as lkd's ``log_every_n_steps``).
- ``trl_defaults``: the same ``GKDTrainer`` with TRL's own defaults for what ``trl`` turns off. In trl 1.16 /
  transformers 5.23, ``GKDConfig`` (an ``SFTConfig``, whose base ``trl.trainer.base_config._BaseConfig``
  overrides ``TrainingArguments``) defaults to ``gradient_checkpointing=True`` (the student's forward recomputed in
  the backward) and, from ``TrainingArguments`` with torch >= 2.8, ``optim="adamw_torch_fused"`` (``AdamW(fused=True)``)
  and ``max_grad_norm=1.0`` (gradient clipping). bf16 stays off in both TRL rows (TRL would default it on:
  another precision, not the same work), and so do the explicit learning rate, schedule and logging steps.

Each framework's steps are timed inside its own loop (the time between consecutive step starts: data, both
forwards, loss, backward, optimizer step and logging), the first steps of a round dropped as warm-up; the
frameworks take turns round after round; step cost = the median of a framework's step times over the plain
loop's. Writes benchmarks/results/overhead_lm.json and its BENCHMARKS.md subsection.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.report import RATIO, column, table  # noqa: E402

LR = 1e-3


def batches(n: int, batch_size: int = 8, block_size: int = 128) -> list[torch.Tensor]:
    """``n`` training batches (B, T) of WikiText-2 bytes, as the LM benchmark reads them."""
    from lkd.data.text import TextDataModule

    data = TextDataModule("Salesforce/wikitext", "wikitext-2-raw-v1", train_split="validation[:90%]", val_split="validation[90%:]",
                          test_split="test", tokenizer="bytes", block_size=block_size, batch_size=batch_size)
    data.setup("fit")
    out = []
    for batch in data.train_dataloader():
        out.append(batch["input_ids"])
        if len(out) == n:
            return out
    raise ValueError(f"only {len(out)} batches of {batch_size} x {block_size} in the training split, asked for {n}")


class StepClock:
    """Start times of the steps of one run (perf_counter), and the per-step seconds after ``warmup`` steps."""

    def __init__(self):
        self.starts: list[float] = []

    def tick(self) -> None:
        self.starts.append(time.perf_counter())

    def steps(self, warmup: int) -> list[float]:
        return [b - a for a, b in zip(self.starts[warmup:], self.starts[warmup + 1:], strict=False)]


def plain_run(student, teacher, data: list[torch.Tensor], clock: StepClock) -> None:
    from lkd.losses import kd_kl_div

    optimizer = torch.optim.AdamW(student.parameters(), lr=LR)
    for input_ids in data + data[-1:]:  # one extra step: the last step's end is the next one's start
        clock.tick()
        with torch.no_grad():
            t_logits = teacher(input_ids).logits
        s_logits = student(input_ids).logits
        loss = kd_kl_div(s_logits, t_logits, 1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def lkd_run(student, teacher, data: list[torch.Tensor], clock: StepClock, logdir: str) -> None:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from lkd.modules import LMDistillModule
    from lkd.teacher import Teacher

    class Clock(pl.Callback):
        def on_train_batch_start(self, *args) -> None:
            clock.tick()

    module = LMDistillModule(student, Teacher(teacher), tokenizer="bytes", loss_weights={"kl": 1.0}, temperature=1.0,
                             optimizer=lambda params: torch.optim.AdamW(params, lr=LR), warmup_steps=0, min_lr_ratio=1.0)
    rows = [{"input_ids": ids[i], "sample_id": torch.tensor(i)} for ids in data + data[-1:] for i in range(len(ids))]
    loader = DataLoader(rows, batch_size=len(data[0]), shuffle=False)
    trainer = pl.Trainer(max_steps=len(data) + 1, logger=pl.loggers.TensorBoardLogger(logdir), callbacks=[Clock()],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0, log_every_n_steps=50)
    trainer.fit(module, loader)


def trl_run(student, teacher, data: list[torch.Tensor], clock: StepClock, outdir: str, *, defaults: bool = False) -> dict:
    """``defaults``: leave gradient checkpointing, the optimizer and gradient clipping at TRL's defaults (see the
    module docstring); otherwise they are set to the work lkd and the plain loop do. Returns those settings as run."""
    import datasets
    from transformers import TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from lkd.tokenizers import byte_tokenizer_fast

    class Clock(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            clock.tick()

    def collate(rows):
        ids = torch.tensor([r["input_ids"] for r in rows])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    rows = [ids[i].tolist() for ids in data + data[-1:] for i in range(len(ids))]
    matched = {} if defaults else {"gradient_checkpointing": False, "optim": "adamw_torch", "max_grad_norm": 0.0}
    config = GKDConfig(output_dir=outdir, max_steps=len(data) + 1, per_device_train_batch_size=len(data[0]), learning_rate=LR,
                       lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.01, lmbda=0.0, beta=0.0, temperature=1.0,
                       logging_steps=50, report_to=[], save_strategy="no", use_cpu=True, dataloader_num_workers=0,
                       disable_dropout=True, max_length=len(data[0][0]), seed=0, bf16=False, fp16=False, disable_tqdm=True, **matched)
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=config, train_dataset=datasets.Dataset.from_dict({"input_ids": rows}),
                         data_collator=collate, processing_class=byte_tokenizer_fast(), callbacks=[Clock()])
    trainer.train_dataloader_shuffle = False
    trainer.train()
    return {"gradient_checkpointing": config.gradient_checkpointing, "optim": str(getattr(config.optim, "value", config.optim)),
            "max_grad_norm": config.max_grad_norm, "bf16": config.bf16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per framework per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=5, help="steps dropped at the start of every run")
    parser.add_argument("--frameworks", nargs="+", default=["plain", "lkd", "trl", "trl_defaults"],
                        choices=["plain", "lkd", "trl", "trl_defaults"])
    parser.add_argument("--note", default="", help="printed after the command in the section (how the run was made)")
    common.add_output_options(parser)
    args = parser.parse_args()
    common.offline_hub()
    threads = common.threads_from_env()
    data = batches(args.steps + args.warmup)
    teacher = common.lm_teacher(0).eval().requires_grad_(False)
    student0 = common.lm_student(0)
    tmp = tempfile.mkdtemp(prefix="lkd-overhead-lm-")
    runners = {"plain": lambda s, c: plain_run(s, teacher, data, c), "lkd": lambda s, c: lkd_run(s, teacher, data, c, tmp),
               "trl": lambda s, c: trl_run(s, teacher, data, c, tmp),
               "trl_defaults": lambda s, c: trl_run(s, teacher, data, c, tmp, defaults=True)}
    seconds: dict[str, list[float]] = {name: [] for name in args.frameworks}
    trl_settings: dict[str, dict] = {}  # what each TRL row ran with, read back from its GKDConfig
    for r in range(args.rounds):
        for name in args.frameworks:
            clock = StepClock()
            ran = runners[name](copy.deepcopy(student0).train(), clock)
            if ran is not None:
                trl_settings[name] = ran
            steps = clock.steps(args.warmup)
            seconds[name].append(statistics.median(steps))
            print(f"[overhead_lm] round {r} {name}: median step {1000 * seconds[name][-1]:.1f} ms over {len(steps)} steps", flush=True)
    base = statistics.median(seconds["plain"]) if "plain" in seconds else None
    names = {"plain": "plain PyTorch loop", "lkd": "lkd (`LMDistillModule` + Lightning `Trainer`, TensorBoard)",
             "trl": "TRL `GKDTrainer` (off-policy, beta 0; matched: no gradient checkpointing, AdamW, no clipping)",
             # not "TRL ...": README's summary picks the matched row by the prefix "TRL"
             "trl_defaults": "`GKDTrainer` with TRL's defaults (gradient checkpointing, fused AdamW, clipping at norm 1)"}
    rows = [{"loop": names[n], "median_ms": 1000 * statistics.median(v), "rounds_ms": [1000 * x for x in v],
             "ratio": statistics.median(v) / base if base else None} for n, v in seconds.items()]
    result = common.new_result("Framework overhead", args, subsection="Language models: lkd, a plain loop and TRL", seeds=[0],
                               threads=True)
    if args.note:
        result["command_note"] = f" — {args.note}"
    result["intro"] = [
        f"One distillation step (WikiText-2 bytes, batch 8 × 128; byte-level Qwen3-MoE teacher 4.0 M, frozen; Llama "
        f"student; forward KL at T = 1; AdamW, constant lr), {args.steps} timed steps per framework per round after "
        f"{args.warmup} warm-up steps, {args.rounds} rounds with the frameworks taking turns, {threads} torch threads. "
        "Cell: median step time (each round's median, then the median of the rounds)."
    ]
    columns = [column("loop", "loop"), column("step (ms, median)", "median_ms", format="{:.1f}"),
               column("rounds (ms)", "rounds_ms", aggregate="list", format="{:.1f}"),
               column("ratio to the plain loop", "ratio", format=RATIO)]
    result["tables"] = [table(columns, rows)]
    by = {n: statistics.median(v) / base for n, v in seconds.items()} if base else {}
    result["notes"] = []
    if "lkd" in by:
        result["notes"].append(f"Target (lkd's step ≤ 1.03× the plain loop{', and ahead of TRL (matched)' if 'trl' in by else ''}): "
                               f"lkd {by['lkd']:.2f}×" + (f", TRL {by['trl']:.2f}×" if "trl" in by else "")
                               + f" — **{'met' if by['lkd'] <= 1.03 and by['lkd'] <= by.get('trl', 9) else 'not met'}**.")
    if "trl" in seconds and "trl_defaults" in seconds:
        import transformers
        import trl

        cost = statistics.median(seconds["trl_defaults"]) / statistics.median(seconds["trl"])
        d = trl_settings["trl_defaults"]
        result["notes"].append(
            f"TRL's defaults cost {cost:.2f}× its matched step"
            + (f" ({by['trl_defaults']:.2f}× the plain loop)" if "trl_defaults" in by else "")
            + f": with trl {trl.__version__} and transformers {transformers.__version__}, `GKDConfig` left alone runs "
            f"`gradient_checkpointing={d['gradient_checkpointing']}` (TRL's own default, trl/trainer/base_config.py: the "
            f"student's forward is run again in the backward), `optim=\"{d['optim']}\"` and `max_grad_norm={d['max_grad_norm']}` "
            "(transformers' `TrainingArguments` defaults: fused AdamW from torch 2.8, gradient clipping). Those are memory "
            "and stability choices, not framework cost; the matched row turns them off to do the plain loop's work. "
            "(TRL also defaults `bf16` on; both TRL rows keep it off, as lkd and the plain loop run in float32.)")
    if not result["notes"]:
        del result["notes"]
    result["data"] = {"seconds": seconds, "trl_settings": trl_settings}
    common.finish(result, "overhead_lm", args)


if __name__ == "__main__":
    main()
