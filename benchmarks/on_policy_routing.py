"""Routing on-policy (issue 30, benchmark (d)): on-policy distillation of a byte-level Llama student from the tiny
Qwen3-MoE teacher of ``benchmarks/lm_distill.py``, the teacher scoring the student's samples through each routing mode
of its experts, paired per seed with plain on-policy KD (no router), as the off-policy table of lm_distill does.

    OMP_NUM_THREADS=1 python benchmarks/on_policy_routing.py      # everything missing (resumes), then the section
    OMP_NUM_THREADS=1 python benchmarks/on_policy_routing.py --seeds 3 4 --no-write   # a share, in a second process
    OMP_NUM_THREADS=1 python benchmarks/on_policy_routing.py --skip-missing   # the section from every kept run
    OMP_NUM_THREADS=1 python benchmarks/on_policy_routing.py --teacher-steps 20 --warm-steps 10 --steps 4 --seeds 0 1 \
        --n-test 32 --teacher-dir /tmp/opr_work --workdir /tmp/opr_work --results-dir /tmp/opr_trial   # a trial

Two processes share the work by seeds (each seed's warm start is its own; every file is written whole, so a reader never
sees half of one); train the teacher first when it is missing (``python benchmarks/lm_distill.py --teacher-only``), so
that only one process trains it.

Stages (each kept, so a stopped run resumes where it stopped):

1. the teacher: lm_distill's (``--teacher-dir``, by default lm_distill's ``--out`` runs/lm_benchmark, file
   ``teacher_seed{S}_steps{N}.pt``), trained there by either script when missing (about 6 min on one core at the
   default 1200 steps);
2. the prompts: WikiText-2 raw cut into non-overlapping windows of ``--prompt-bytes`` (the prompt) followed by
   ``--completion-bytes`` (the reference continuation), at UTF-8 character boundaries, headings and empty lines left
   out: training from ``validation[:90%]`` (the mirror has no train split, as in lm_distill), ``--n-test`` held-out
   windows spread evenly over ``test``; written once as JSONL (``prompt``, ``completion``) into ``--workdir``;
3. per seed, the warm start: the student (lm_distill's Llama, initial weights from seed + 1 as there) trained
   ``--warm-steps`` steps of next-byte cross-entropy on WikiText blocks, exactly lm_distill's ``scratch`` row (the
   routing paper's students start from SFT too); every row of a seed starts from it;
4. seeds × rows, seed-major, each finished run appended to ``--workdir/runs.jsonl``: ``--steps`` optimizer steps of
   ``--batch`` prompts, λ = 1 (every completion the student's own sample, temperature 1), the generalized JSD with
   β = 1: the reverse KL(p_s ‖ p_t) on the student's samples, as the routing paper's on-policy runs (Kim et al. 2025,
   arXiv 2502.12947, code gmkim-ai/MoEKD ``finetune_gkd.py``: ``get_distil_loss`` is Σ p_s (log p_s − log p_t) on
   student samples at temperature 1, no cross-entropy term). Rows: ``plain`` (no router: plain on-policy KD), then
   the routings of lm_distill with its table's settings: ``all``, ``ka``, ``sar``, ``student_aware`` and last
   ``teacher`` (the teacher's own gating through the routed path: the same loss as ``plain``, a check of the pairing).

Scores on the held-out prompts, every run by the same plain evaluation module (the teacher's own gating): bits per byte
of the reference continuations teacher-forced (the student's; its end-of-text token left out; the primary score:
real text, judged by no routing), the teacher's NLL per byte of the student's samples (temperature 1) and ROUGE-L F1
of the student's greedy continuation against the reference (:class:`lkd.callbacks.CompletionEvaluation`). The table:
mean ± std over seeds per row, and per mode the mean of its per-seed differences to ``plain`` with a 95 % Student-t
interval (:func:`benchmarks.lm_distill.paired_interval`).

Sized for a run of 1 to 2.5 minutes on one core (``--steps 200 --batch 16``): a 20-step trial measured 0.34 s a
step for ``plain`` and ``teacher``, about 0.5 for ``all`` and ``student_aware``, 0.7 for ``ka`` and ``sar`` (one thread
on a 2-core machine that two other benchmarks kept busy); the warm start about 50 s once per seed (lm_distill's
scratch row: 0.1 s a step). 6 rows × 5 seeds ≈ 1 hour, plus the teacher when it is missing (about 6 minutes).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common

common.offline_hub()

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402

from benchmarks import lm_distill  # noqa: E402
from benchmarks.report import column, table  # noqa: E402
from lkd.callbacks import RoutingSchedule  # noqa: E402
from lkd.callbacks.completions import CompletionEvaluation  # noqa: E402
from lkd.data.prompts import PromptDataModule, join_prompt_completion  # noqa: E402
from lkd.hub import load_hub_dataset  # noqa: E402
from lkd.losses.lm import token_logprobs  # noqa: E402
from lkd.models.router import StudentAwareRouter  # noqa: E402
from lkd.models.routing import AllExperts, KnowledgeAugmentation, StudentAwareGate, TeacherRouting  # noqa: E402
from lkd.modules import CausalLMModule, OnPolicyDistillModule  # noqa: E402
from lkd.teacher import Teacher  # noqa: E402

NAME = "on_policy_routing"
ROWS = ("plain", "all", "ka", "sar", "student_aware", "teacher")  # "teacher" last: the check, the first to drop when short
MODES = ROWS[1:]
LABELS = {"plain": "plain on-policy KD (no router)", "all": "all: every expert", "ka": "ka: Knowledge Augmentation",
          "sar": "sar: student-aware gate retraining", "student_aware": "student_aware: lkd's router",
          "teacher": "teacher: its own gating, routed path (≡ plain)"}
WIKITEXT = ("Salesforce/wikitext", "wikitext-2-raw-v1")
SCORES = ("bpb", "teacher_nll", "rougeL")  # per run; lower, lower, higher is better


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_seeds_option(p, [0, 1, 2, 3, 4], help="student initialisation (seed + 1), warm start, prompt order and samples")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    p.add_argument("--teacher-dir", type=Path, default=common.ROOT / "runs" / "lm_benchmark",
                   help="lm_distill's --out: the teacher is read from (or trained into) this folder")
    p.add_argument("--teacher-steps", type=int, default=1200, help="which lm_distill teacher (its --teacher-steps)")
    p.add_argument("--teacher-seed", type=int, default=0, help="which lm_distill teacher (its --teacher-seed)")
    p.add_argument("--workdir", type=Path, default=common.ROOT / "runs" / "on_policy_routing",
                   help="prompts, warm starts, runs.jsonl")
    p.add_argument("--prompt-bytes", type=int, default=64)
    p.add_argument("--completion-bytes", type=int, default=32, help="the reference's length and the most bytes a sample has")
    p.add_argument("--n-train", type=int, default=None, help="training windows (default: every one, about 10,000)")
    p.add_argument("--n-test", type=int, default=256, help="held-out windows, spread evenly over the test split")
    p.add_argument("--warm-steps", type=int, default=500, help="cross-entropy steps of each seed's warm start (0: none)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3, help="the student's AdamW learning rate (warm-up then cosine)")
    p.add_argument("--beta", type=float, default=1.0, help="the JSD's β (1: reverse KL, the routing paper's)")
    p.add_argument("--lmbda", type=float, default=1.0, help="share of rows the student samples")
    p.add_argument("--temperature", type=float, default=1.0, help="the divergence's temperature")
    p.add_argument("--router-lr", type=float, default=4e-3, help="student_aware router (lm_distill's)")
    p.add_argument("--router-lm-weight", type=float, default=1.0, help="λ of the routed teacher's LM loss (student_aware)")
    p.add_argument("--sa-top-k", type=int, nargs=2, default=[1, 4], metavar=("START", "END"))
    p.add_argument("--sa-temperature", type=float, nargs=2, default=[2.0, 0.5], metavar=("START", "END"))
    p.add_argument("--sar-lr", type=float, default=1e-5, help="the sar gate copy's (lm_distill's table: the best of 1e-3, 1e-4, 1e-5)")
    p.add_argument("--sar-balance", type=float, default=0.01, help="load-balance weight of sar (the paper's 0.01)")
    p.add_argument("--sar-lm-weight", type=float, default=0.0, help="λ of the routed teacher's LM loss for sar (the paper: 0)")
    p.add_argument("--skip-missing", action="store_true", help="train nothing: report the runs kept")
    common.add_output_options(p)
    return p.parse_args(argv)


# ---- the teacher, the prompts, the warm start ------------------------------------------------------------------------
def teacher_args(args) -> argparse.Namespace:
    """lm_distill's arguments naming its teacher (its defaults otherwise), so both scripts share one teacher file."""
    return lm_distill.parse_args(["--teacher-steps", str(args.teacher_steps), "--teacher-seed", str(args.teacher_seed),
                                  "--out", str(args.teacher_dir)])


def load_teacher(args) -> tuple[torch.nn.Module, str]:
    """lm_distill's teacher (trained into ``--teacher-dir`` when missing) and its name."""
    largs = teacher_args(args)
    args.teacher_dir.mkdir(parents=True, exist_ok=True)
    name = lm_distill.teacher_name(largs)
    if not (args.teacher_dir / f"{name}.pt").is_file():
        print(f"training the teacher {name} into {args.teacher_dir}", flush=True)
    return lm_distill.train_teacher(largs, args.teacher_dir), name


def char_cut(raw: bytes, at: int) -> int:
    """The last UTF-8 character boundary of ``raw`` at or before byte ``at``."""
    while 0 < at < len(raw) and raw[at] & 0xC0 == 0x80:  # a continuation byte
        at -= 1
    return at


def windows(lines, prompt_bytes: int, completion_bytes: int) -> list[dict]:
    """Non-overlapping (prompt, reference continuation) windows of WikiText lines, cut at character boundaries; empty
    lines and headings (`` = Title = ``) left out."""
    rows = []
    for line in lines:
        text = line.rstrip("\n")
        if not text.strip() or text.strip().startswith("="):
            continue
        raw, start = text.encode(), 0
        while start + prompt_bytes + completion_bytes <= len(raw):
            mid = char_cut(raw, start + prompt_bytes)
            end = char_cut(raw, mid + completion_bytes)
            rows.append({"prompt": raw[start:mid].decode(), "completion": raw[mid:end].decode()})
            start = end
    return rows


def write_atomic(path: Path, text: str) -> None:
    """``text`` into ``path`` through a temporary file: whole or absent, for processes sharing ``--workdir``."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def prompt_files(args) -> dict[str, Path]:
    """The train / test JSONL files (written once into ``--workdir``)."""
    folder = args.workdir / f"prompts_p{args.prompt_bytes}_c{args.completion_bytes}_n{args.n_train or 'all'}_t{args.n_test}"
    files = {"train": folder / "train.jsonl", "test": folder / "test.jsonl"}
    if all(f.is_file() for f in files.values()):
        return files
    folder.mkdir(parents=True, exist_ok=True)
    train = windows(load_hub_dataset(*WIKITEXT, split="validation[:90%]")["text"], args.prompt_bytes, args.completion_bytes)
    test = windows(load_hub_dataset(*WIKITEXT, split="test")["text"], args.prompt_bytes, args.completion_bytes)
    if args.n_train is not None:
        train = train[:args.n_train]
    if len(test) < args.n_test:
        raise ValueError(f"--n-test {args.n_test} is more than the {len(test)} windows of the test split at "
                         f"--prompt-bytes {args.prompt_bytes} --completion-bytes {args.completion_bytes}")
    test = [test[i * len(test) // args.n_test] for i in range(args.n_test)]  # spread over the split
    for split, rows in (("train", train), ("test", test)):
        write_atomic(files[split], "".join(json.dumps(r) + "\n" for r in rows))
    print(f"prompts: {len(train)} training windows, {len(test)} held-out, in {folder}", flush=True)
    return files


def prompt_data(args, seed: int) -> PromptDataModule:
    files = prompt_files(args)
    return PromptDataModule(data_files={k: str(v) for k, v in files.items()}, val_split=None, test_split="test",
                            batch_size=args.batch, eval_batch_size=64, seed=seed)


def warm_start(args, seed: int) -> dict:
    """Seed ``seed``'s student after ``--warm-steps`` of cross-entropy on WikiText blocks (lm_distill's ``scratch`` row:
    the same initial weights, batches and optimizer), kept in ``--workdir``; its state dict."""
    student = common.lm_student(seed + 1)  # lm_distill's: the same initial weights for every row of a seed
    path = args.workdir / f"warm_ce{args.warm_steps}_seed{seed}.pt"
    if path.is_file():
        student.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    elif args.warm_steps > 0:
        largs = teacher_args(args)
        print(f"warm start of seed {seed}: {args.warm_steps} cross-entropy steps", flush=True)
        module = CausalLMModule(student, tokenizer="bytes", optimizer=lm_distill.adamw(largs.student_lr))
        pl.seed_everything(seed, verbose=False)
        lm_distill.trainer(args.warm_steps).fit(module, lm_distill.data(largs))
        torch.save(student.state_dict(), path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)  # whole or absent: another process may be reading it
    return student.state_dict()


# ---- the scores -----------------------------------------------------------------------------------------------------
@torch.no_grad()
def bits_per_byte(model: torch.nn.Module, batches: list[dict], eos_token_id: int) -> float:
    """Bits per byte of ``model`` on the batches' reference continuations, teacher-forced after their prompts (byte
    tokens: one token a byte; the end-of-text token that closes each reference left out: it marks the cut, not text)."""
    nats, count = 0.0, 0
    for b in batches:
        ids, attention, loss_mask = join_prompt_completion(b["prompt_ids"], b["prompt_mask"], b["completion_ids"],
                                                           b["completion_mask"])  # (B, P + C) each
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        logprobs = token_logprobs(model(input_ids=ids, attention_mask=attention, position_ids=positions).logits, ids)  # (B, P + C)
        counted = loss_mask.bool() & (ids != eos_token_id)
        nats -= float(logprobs[counted].sum())
        count += int(counted.sum())
    return nats / count / math.log(2)


def held_out(model: torch.nn.Module, teacher: torch.nn.Module, args, seed: int) -> dict[str, float]:
    """``model``'s scores on the held-out prompts (see the module docstring), by a plain evaluation module: the teacher's
    own gating, samples drawn from ``seed``."""
    module = OnPolicyDistillModule(model, Teacher(copy.deepcopy(teacher)), tokenizer="bytes", max_new_tokens=args.completion_bytes,
                                   seed=seed)
    dm = prompt_data(args, seed)
    module.connect_data(dm)
    dm.setup("test")
    batches = list(dm.test_dataloader())
    scorer = CompletionEvaluation(max_batches=None, compare_teacher=False, teacher_nll=True, show=0)
    values, _ = scorer.scores(module, batches)
    return {"bpb": bits_per_byte(model, batches, module.eos_token_id), "teacher_nll": values["teacher_nll"],
            "rougeL": values["rougeL_reference"]}


def kept_json(path: Path, make) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    value = make()
    write_atomic(path, json.dumps(value))
    return value


def teacher_scores(teacher, name: str, args) -> dict:
    """The teacher's own scores on the held-out prompts (its samples, its greedy continuations), kept in ``--workdir``."""
    path = args.workdir / f"{name}_scores_p{args.prompt_bytes}_c{args.completion_bytes}_t{args.n_test}.json"
    return kept_json(path, lambda: held_out(copy.deepcopy(teacher), teacher, args, seed=0))


def warm_scores(teacher, name: str, args, seed: int) -> dict:
    """Seed ``seed``'s warm start's scores, kept in ``--workdir``."""
    path = args.workdir / f"warm_ce{args.warm_steps}_seed{seed}_{name}_p{args.prompt_bytes}_c{args.completion_bytes}_t{args.n_test}.json"

    def make():
        student = common.lm_student(seed + 1)
        student.load_state_dict(warm_start(args, seed))
        return held_out(student, teacher, args, seed)

    return kept_json(path, make)


# ---- one run ---------------------------------------------------------------------------------------------------------
def routing(row: str, args) -> tuple[object, list, dict]:
    """``row``'s router, callbacks and router options (lm_distill's, :func:`benchmarks.lm_distill.make_module`)."""
    if row == "plain":
        return None, [], {}
    if row == "teacher":
        return TeacherRouting(), [], {}
    if row == "all":
        return AllExperts(), [], {}
    if row == "ka":
        return KnowledgeAugmentation(sampling_prob=0.05, repeats=2), [], {}
    if row == "sar":
        return StudentAwareGate(), [], {"router_lr": args.sar_lr, "router_lm_weight": args.sar_lm_weight,
                                        "router_balance_weight": args.sar_balance}
    experts = lm_distill.teacher_sizes(teacher_args(args))["num_experts"]
    start_k, end_k = (min(k, experts) for k in args.sa_top_k)  # bounded by the teacher's experts
    (t0, t1) = args.sa_temperature
    schedule = RoutingSchedule(start_top_k=start_k, end_top_k=end_k, start_temperature=t0, end_temperature=t1, mode="cosine",
                               figure_every_n_steps=None)
    return StudentAwareRouter(), [schedule], {"router_lr": args.router_lr, "router_lm_weight": args.router_lm_weight}


def run(row: str, seed: int, teacher, name: str, args) -> dict:
    student = common.lm_student(seed + 1)
    student.load_state_dict(warm_start(args, seed))
    router, callbacks, extra = routing(row, args)
    module = OnPolicyDistillModule(student, Teacher(copy.deepcopy(teacher)), tokenizer="bytes", lmbda=args.lmbda, beta=args.beta,
                                   loss="jsd", temperature=args.temperature, max_new_tokens=args.completion_bytes, sample_temperature=1.0,
                                   seed=seed, optimizer=lm_distill.adamw(args.lr), router=router, **extra)
    timer = common.train_timer()
    pl.seed_everything(seed, verbose=False)  # the same prompts and samples' seeds for every row of a seed
    fit = common.quiet_trainer(max_steps=args.steps, max_epochs=-1, gradient_clip_val=1.0, callbacks=[*callbacks, timer])
    fit.fit(module, datamodule=prompt_data(args, seed))
    last = {k.removeprefix("train/").removesuffix("_step"): float(v) for k, v in fit.callback_metrics.items()
            if k.startswith("train/") and not k.endswith("_epoch") and v.numel() == 1}
    out = {"row": row, "seed": seed, **held_out(student, teacher, args, seed), "train_s": timer.seconds,
           "s_per_step": timer.seconds / args.steps, "last_step": last, "warm": warm_scores(teacher, name, args, seed)}
    print(f"{row} seed {seed}: bits per byte {out['bpb']:.4f}, teacher NLL {out['teacher_nll']:.4f}, ROUGE-L {out['rougeL']:.4f} "
          f"({out['train_s']:.0f} s)", flush=True)
    return out


def run_key(args, teacher: str) -> str:
    keys = ("prompt_bytes", "completion_bytes", "n_train", "n_test", "warm_steps", "steps", "batch", "lr", "beta", "lmbda", "temperature",
            "router_lr", "router_lm_weight", "sa_top_k", "sa_temperature", "sar_lr", "sar_balance", "sar_lm_weight")
    return json.dumps({k: getattr(args, k) for k in keys} | {"teacher": teacher, "student": common.LM_STUDENT}, sort_keys=True)


# ---- the section ----------------------------------------------------------------------------------------------------
def delta(values: dict[int, float], base: dict[int, float], fmt: str, lower_is_better: bool) -> str | None:
    """The paired difference to plain on-policy KD as a cell: mean [95 % interval] (verdict, seeds)."""
    ci = lm_distill.paired_interval(values, base)
    if ci is None:
        return None
    mean, lo, hi, n = ci
    better, worse = (hi < 0, lo > 0) if lower_is_better else (lo > 0, hi < 0)
    verdict = "better" if better else "worse" if worse else "no difference shown"
    return f"{fmt.format(mean)} [{fmt.format(lo)}, {fmt.format(hi)}] ({verdict}, {n} seeds)"


COLUMNS = [column("student: training", "name"),
           column("bits per byte, references (mean ± std)", "bpb", format="{:.4f}", aggregate="seeds"),
           column("Δ bits per byte to plain, 95 % interval", "d_bpb", missing=""),
           column("teacher NLL of samples (nats/byte)", "teacher_nll", format="{:.4f}", aggregate="seeds"),
           column("Δ teacher NLL to plain, 95 % interval", "d_teacher_nll", missing=""),
           column("ROUGE-L vs reference", "rougeL", format="{:.4f}", aggregate="seeds"),
           column("Δ ROUGE-L to plain, 95 % interval", "d_rougeL", missing=""),
           column("train s / step", "s_step", format="{:.2f}", missing="")]


def section(results: list[dict], teacher: dict, args) -> dict:
    by: dict[str, dict[int, dict]] = {}
    for r in results:
        by.setdefault(r["row"], {})[r["seed"]] = r
    seeds = sorted({s for rs in by.values() for s in rs})
    rows = [{"name": "teacher (its own samples and greedy continuations)", **{k: [teacher[k]] for k in SCORES}}]
    warm = {r["seed"]: r["warm"] for r in results}
    if warm:
        rows.append({"name": f"every row's start: cross-entropy, {args.warm_steps} steps (lm_distill's scratch row)",
                     **{k: [warm[s][k] for s in sorted(warm)] for k in SCORES}})
    base = {k: {s: r[k] for s, r in by.get("plain", {}).items()} for k in SCORES}
    for row in ROWS:
        if row not in by:
            continue
        runs = [by[row][s] for s in sorted(by[row])]
        cells = {"name": LABELS[row], **{k: [r[k] for r in runs] for k in SCORES},
                 "s_step": statistics.mean(r["s_per_step"] for r in runs)}
        if row != "plain":
            for k, fmt in (("bpb", "{:+.4f}"), ("teacher_nll", "{:+.4f}"), ("rougeL", "{:+.4f}")):
                cells[f"d_{k}"] = delta({s: r[k] for s, r in by[row].items()}, base[k], fmt, lower_is_better=k != "rougeL")
        rows.append(cells)
    result = common.new_result("On-policy distillation", args, subsection="Routing a Mixture-of-Experts teacher on the student's samples",
                               seeds=seeds, threads=True)
    size = common.LM_TEACHER | lm_distill.teacher_sizes(teacher_args(args))
    result["intro"] = [(
        f"The tiny Qwen3-MoE teacher of the language-model section (`{teacher['name']}`: {size['num_layers']} layers, hidden "
        f"{size['hidden_size']}, {size['num_experts']} experts of width {size['moe_intermediate_size']}, top-{size['top_k']}, "
        f"{teacher['params'] / 1e6:.2f} M parameters, trained by lm_distill) scores the "
        f"student's own samples through each routing of its experts. Prompts: WikiText-2 raw cut into windows of "
        f"{args.prompt_bytes} bytes followed by a {args.completion_bytes}-byte reference continuation (training from "
        f"`validation[:90%]`, {args.n_test} held-out windows spread over `test`), byte tokens. Students: lm_distill's Llama "
        f"(initial weights from seed + 1), each seed's warmed up by {args.warm_steps} steps of cross-entropy on WikiText "
        f"blocks (lm_distill's scratch row), then {args.steps} on-policy steps of {args.batch} prompts (AdamW lr {args.lr:g}, "
        f"warm-up then cosine): λ = {args.lmbda:g}, the generalized JSD at β = {args.beta:g}"
        f"{' (the reverse KL on the student samples, as the routing paper, arXiv 2502.12947)' if args.beta == 1 else ''}, "
        f"T = {args.temperature:g}, samples at temperature 1 of up to {args.completion_bytes} bytes. Within a seed every row "
        "has the same start, prompts and sampling seeds: the rows differ in the routing alone."
    )]
    result["tables"] = [table(COLUMNS, rows)]
    result["notes"] = notes(by, base, args)
    result["data"] = {"runs": results, "run_key": run_key(args, teacher["name"]), "teacher": teacher}
    return result


def notes(by: dict, base: dict, args) -> list[str]:
    wins, others = [], []
    for mode in MODES:
        if mode == "teacher" or mode not in by:
            continue
        ci = lm_distill.paired_interval({s: r["bpb"] for s, r in by[mode].items()}, base["bpb"])
        if ci is not None and ci[2] < 0:
            wins.append(f"{mode} ({ci[0]:+.4f} [{ci[1]:+.4f}, {ci[2]:+.4f}] over {ci[3]} seeds)")
        nll = lm_distill.paired_interval({s: r["teacher_nll"] for s, r in by[mode].items()}, base["teacher_nll"])
        if nll is not None and nll[2] < 0:
            others.append(f"{mode} on the teacher's NLL of the samples ({nll[0]:+.4f} [{nll[1]:+.4f}, {nll[2]:+.4f}])")
    n = min((len(by[m]) for m in MODES if m in by), default=0)
    if not wins:
        verdict = ("**not met**: no mode's interval of the paired difference in bits per byte lies below zero"
                   + (f" ({n} seeds)." if n else "."))
        verdict += (" What would be tried next: the settings each routing's off-policy search favoured (student_aware with "
                    "--router-lm-weight 4 --router-lr 4e-4 --sa-top-k 2 2 --sa-temperature 1 1, the closest to a win in "
                    "lm_distill's search), β = 0.5 (JSD, lkd's on-policy default), more steps, and a teacher with more "
                    "specialised experts (lm_distill's --teacher-aux), where routing has more to add.")
    else:
        verdict = f"**met** by {', '.join(wins)}."
    lines = [("Target (routing on-policy: a mode beats plain on-policy KD, the 95 % interval of the paired difference in "
              f"held-out bits per byte below zero): {verdict}")]
    if others:
        lines.append("Below zero on the secondary score: " + "; ".join(others) + ".")
    lines.append(
        "Scores: bits per byte of the held-out references, teacher-forced after their prompts (lower is better; the "
        "primary score: real text that no routing judges); the teacher's NLL per byte of the student's samples at "
        "temperature 1, by its own gating (lower: text it finds likely; its own gating is plain KD's target, so it "
        "leans towards `plain`); ROUGE-L F1 of the greedy continuation against the reference (higher is better). The Δ "
        "columns pair each seed with plain on-policy KD of the same seed: mean of the differences and its 95 % Student-t "
        "interval. `teacher` runs the teacher's own gating through the routed path: the loss of `plain` (tested), so its "
        "Δ shows the pairing's own noise.")
    lines.append(
        f"Routings as in lm_distill's table: `all` = every expert, weighted by the teacher's gate; `ka` = the E − 1 best "
        f"experts, per token with probability 0.05 a set sampled from the gate, 2 teacher passes averaged; `sar` = a "
        f"trainable copy of the gates, all experts, lr {args.sar_lr:g}, load balance {args.sar_balance:g}, λ = "
        f"{args.sar_lm_weight:g}; `student_aware` = lkd's router, top-k {args.sa_top_k[0]} → {args.sa_top_k[1]}, τ "
        f"{args.sa_temperature[0]:g} → {args.sa_temperature[1]:g} (cosine), lr {args.router_lr:g}, λ = {args.router_lm_weight:g}. "
        "A trained routing learns from the divergence on the student's samples and its LM loss on real text only (the "
        "prompts), lkd.modules.on_policy_routing.")
    return lines


def main(argv=None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    common.threads_from_env()
    args.workdir.mkdir(parents=True, exist_ok=True)
    teacher, name = load_teacher(args)
    reference = {"name": name, "params": sum(p.numel() for p in teacher.parameters()), **teacher_scores(teacher, name, args)}
    print(f"teacher {name}: {json.dumps(reference)}", flush=True)
    key = run_key(args, name)
    results = common.seed_major_runs(NAME, args.workdir, key, args.seeds, args.rows,
                                     lambda row, seed: run(row, seed, teacher, name, args), skip_missing=args.skip_missing)
    common.finish(section(results, reference, args), NAME, args)


if __name__ == "__main__":
    main()
