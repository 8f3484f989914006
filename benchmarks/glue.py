"""GLUE distillation benchmark (offline models): MiniLM-L6 teacher → 3-layer student on MRPC, RTE, CoLA and STS-B
(the whole train splits) and SST-2 (a subset, the same for every seed: its data seed stays 0), 3 seeds for the students, with the DKVB variants and the "why did KD
lose" ablations on one seed.

    python benchmarks/glue.py [--tasks mrpc rte cola stsb] [--seeds 0 1 2] [--jobs 2] [--workdir runs/glue_benchmark]
    python benchmarks/glue.py --render-only            # the table from WORKDIR/runs.jsonl, training nothing
    python benchmarks/glue.py --timing-only            # the speed pass alone (on an idle machine), then the table
    python benchmarks/glue.py --rows teacher_mean_pool --tasks rte --jobs 2   # chosen rows only (--jobs counts every
                                                       # driver's runs: beside a running driver, give it the same)

Every run is an ordinary ``lkd fit`` of a YAML under configs/glue/ with the overrides of its row (task, epochs,
paths), run in a subprocess with ``OMP_NUM_THREADS=1``, ``--jobs`` at a time, each kept as one line of
``WORKDIR/runs.jsonl`` with its recipe fingerprint (:func:`recipe`); benchmarks/results/glue.json, rewritten after
every run, keeps them too, so a rerun on any checkout skips every run of the current recipes there is (a teacher
kept without its checkpoint in this work folder trains again, same seed, before the rows that read it), and a run
interrupted mid-way goes on from its ``latest.ckpt``, the state lkd writes every epoch, so its time counts only the
last process (a finished run keeps its weights and events, not that state). A teacher is trained once per task; its logits on train
and validation are cached (``teacher.cache``, written by the first distilled run of the task) and every
distilled row with ``cos_weight: 0`` reads the cache instead of running the teacher. Batches are grouped by length (``group_by_length``) and
the token embeddings frozen (``freeze_embeddings``) in every row, for CPU time. The score is the task's
GLUE dev score (mean of its metrics) of the weights at the end of training. Speed: CPU inference of each
architecture over 512 dev examples padded to their longest, taking turns (ratio = teacher s / model s),
measured alone after training. Writes benchmarks/results/glue.json and the "GLUE" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.report import RATIO, column, table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "glue"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
# per task: training examples (None: the whole train split), teacher epochs, student epochs, batch, max_length.
# Teachers train long enough to plateau (their dev curve is reported; students read the best epoch's checkpoint).
# Teacher epochs: in bf16, MRPC's dev score peaked at epoch 3 of 8 and RTE's at 5 of 10 (a stopped run of this script).
BUDGET = {"mrpc": (None, 5, 4, 32, 128), "rte": (None, 6, 4, 32, 128), "cola": (None, 6, 4, 32, 64),
          "stsb": (None, 4, 4, 32, 128), "sst2": (8000, 4, 4, 32, 64)}
# CPU autocast to bfloat16 (AVX-512 BF16): a MiniLM training step 1.7x faster than fp32 on this EPYC; the DKVB key
# lookups stay fp32 islands, and the speed pass below times fp32 inference
PRECISION = "bf16-mixed"
TEACHER_LR, STUDENT_LR = 1e-4, 2e-4  # the first recipe's 5e-5 left teachers short of their plateau and students under-trained
# torchdistill's GLUE KD temperatures (BERT-Base <- BERT-Large), with its alpha 0.9; STS-B is a regression (MSE, no T)
TEMPERATURE = {"sst2": 3, "rte": 5, "cola": 7, "mrpc": 11, "stsb": 1}
ALPHA = 0.9
CACHE, TRANSFER_CACHE, MEAN_POOL_CACHE = "teacher_cache.pt", "teacher_cache_transfer.pt", "teacher_mean_pool_cache.pt"
UNLABELLED_CACHE = "teacher_mean_pool_cache_unlabelled.pt"  # the mean-pooling teacher on every SST-2 training sentence
SST2_TEXTS_CACHE = "teacher_mean_pool_cache_sst2_texts.pt"  # the mean-pooling teacher on CoLA's rows + SST-2's sentences
SST2_TEXTS = '{"dataset": "nyu-mll/glue", "config": "sst2", "split": "train", "column": "sentence"}'
TASK_T = "T"  # in a row's overrides: the task's TEMPERATURE (job_args writes it)
TEACHER_LR_ARG = f"--model.init_args.optimizer.init_args.lr={TEACHER_LR}"
LR = f"--model.init_args.optimizer.init_args.lr={STUDENT_LR}"
KD = ["--model.init_args.cos_weight=0", LR]
RECIPE_LOSS = [*KD, f"--model.init_args.alpha={ALPHA}", TASK_T]  # the recipe's loss and learning rate
FROM_TEACHER = "--model.init_args.student_init=teacher"
FROM_PRETRAINED = "--model.init_args.student_init=model"
MEAN_POOL_KD = ["--model.init_args.teacher.model.init_args.pooling=mean", "--model.init_args.student.init_args.pooling=mean"]


def copies_overrides(percent: int, words: str) -> list[str]:
    """`kd_mean_pool`'s overrides on the task's rows + 8 changed copies of each without labels (``percent`` % of the words
    replaced, ``transfer_words: words``), 2 epochs."""
    return [*RECIPE_LOSS, FROM_TEACHER, *MEAN_POOL_KD, "--data.init_args.transfer_copies=8",
            f"--data.init_args.transfer_word_prob={percent / 100:g}", f"--data.init_args.transfer_words={words}", "--trainer.max_epochs=2"]


def copies_cache(percent: int, words: str) -> str:
    """The mean-pooling teacher's cache on the rows + their copies: the copies are drawn per data seed, so a file a seed
    (``{seed}``, filled in by :func:`job_args`)."""
    return f"teacher_mean_pool_cache_{words}_{percent}_s{{seed}}.pt"


def copies_text(percent: int, words: str) -> str:
    """What a copies row adds, for its target line."""
    by = "embedding neighbours" if words == "neighbours" else "frequency-drawn words"
    return f"8 changed copies of its rows ({percent} % of the words replaced by {by})"


# name: (config, teacher row it reads, what, extra overrides, teacher cache file or None: a live teacher)
ROWS = {
    "teacher": ("teacher.yaml", None, f"MiniLM-L6 fine-tuned (6 layers), lr {TEACHER_LR:g}, best epoch", [TEACHER_LR_ARG], None),
    "student_alone": ("student_alone.yaml", None, f"3-layer student fine-tuned alone, lr {STUDENT_LR:g}", [LR], None),
    "student_kd": ("student_kd.yaml", "teacher", f"distilled: α·T²·KL + (1−α)·CE, α {ALPHA}, T per task (torchdistill's), "
                   f"student from the teacher's layers 0, 2, 5, lr {STUDENT_LR:g} (cached teacher)", [*RECIPE_LOSS, FROM_TEACHER], CACHE),
    # one-seed ablations of the recipe (every task, the first seed)
    "teacher_mean_pool": ("teacher.yaml", None, ("the teacher with its head on the mean of the last states (`pooling: mean`, how "
                                                 "all-MiniLM-L6-v2 was trained to summarise a sentence) instead of [CLS], best epoch"),
                          [TEACHER_LR_ARG, "--model.init_args.model.init_args.pooling=mean"], None),
    "kd_a05_t2": ("student_kd.yaml", "teacher", "distilled, α 0.5, T 2 (lkd's first recipe), student from the teacher's layers",
                  [*KD, FROM_TEACHER, "--model.init_args.alpha=0.5", "--model.init_args.temperature=2.0"], CACHE),
    "kd_pretrained_init": ("student_kd.yaml", "teacher", "distilled as the recipe, student from the pretrained layers 0, 2, 5",
                           [*RECIPE_LOSS, FROM_PRETRAINED], CACHE),
    # the DKVB students started as the DKVB rows first were: from the pretrained layers (one seed, every task)
    "dkvb_kd_pretrained_init": ("student_dkvb_kd.yaml", "teacher", "distilled + DKVB, EMA keys, student from the pretrained layers",
                                [*RECIPE_LOSS, FROM_PRETRAINED], CACHE),
    "dkvb_keyinit_pretrained_init": ("student_dkvb_keyinit.yaml", "teacher", "distilled + DKVB, keys from teacher embeddings, "
                                     "student from the pretrained layers", [*RECIPE_LOSS, FROM_PRETRAINED], None),
    "dkvb_carry_pretrained_init": ("student_dkvb_carry.yaml", "teacher_dkvb", "distilled + DKVB, keys+values carried, student "
                                   "from the pretrained layers", [*RECIPE_LOSS, FROM_PRETRAINED], None),
    "kd_transfer": ("student_kd.yaml", "teacher", "distilled as the recipe on a transfer set twice the train split (1 changed copy "
                    "per example, 30 % of words replaced, teacher-labelled)",
                    [*RECIPE_LOSS, FROM_TEACHER, "--data.init_args.transfer_copies=1"], TRANSFER_CACHE),
    "dkvb_kd_mean_pool": ("student_dkvb_kd.yaml", "teacher_mean_pool", "distilled + DKVB (EMA keys) from the mean-pooling "
                          "teacher, the student pooling the mean too", [*RECIPE_LOSS, FROM_TEACHER, *MEAN_POOL_KD],
                          MEAN_POOL_CACHE),
    "alone_mean_pool": ("student_alone.yaml", None, "3-layer student fine-tuned alone as `student_alone`, pooling the mean",
                        [LR, "--model.init_args.model.init_args.pooling=mean"], None),
    "kd_mean_pool": ("student_kd.yaml", "teacher_mean_pool", "distilled as the recipe from the mean-pooling teacher "
                     "(`teacher_mean_pool`), the student pooling the mean too", [*RECIPE_LOSS, FROM_TEACHER, *MEAN_POOL_KD],
                     MEAN_POOL_CACHE),
    # configs/glue/student_kd_mean_pool.yaml: kd_mean_pool's settings (student_kd.yaml, both pooling the mean) + L_cos
    "kd_hidden_mean_pool": ("student_kd_mean_pool.yaml", "teacher_mean_pool", "distilled as `kd_mean_pool` + DistilBERT's L_cos "
                            "(weight 1): each student layer's states toward its teacher layer's (0, 2, 5; live teacher)",
                            [LR, f"--model.init_args.alpha={ALPHA}", TASK_T], None),
    "kd_8_epochs": ("student_kd.yaml", "teacher", "distilled as the recipe, 8 epochs instead of 4",
                    [*RECIPE_LOSS, FROM_TEACHER, "--trainer.max_epochs=8"], CACHE),
    "kd_mean_pool_unlabelled": ("student_kd.yaml", "teacher_mean_pool", "distilled as `kd_mean_pool` on all 67,349 SST-2 "
                                "training sentences, 2 epochs: the teacher's 8,000 with their labels, the others without "
                                "(Hinton's transfer set: the teacher's soft targets only)",
                                [*RECIPE_LOSS, FROM_TEACHER, *MEAN_POOL_KD, "--data.init_args.train_size=null",
                                 "--data.init_args.labelled_size=8000", "--trainer.max_epochs=2"], UNLABELLED_CACHE),
    "kd_mean_pool_sst2_texts": ("student_kd.yaml", "teacher_mean_pool", "distilled as `kd_mean_pool` on the task's rows plus SST-2's "
                                "67,349 training sentences without labels (`transfer_texts`: another data set's real text as "
                                "Hinton's transfer set, the teacher's soft targets only), 2 epochs",
                                [*RECIPE_LOSS, FROM_TEACHER, *MEAN_POOL_KD, f"--data.init_args.transfer_texts={SST2_TEXTS}",
                                 "--trainer.max_epochs=2"], SST2_TEXTS_CACHE),
    "kd_mean_pool_sst2_texts_4_epochs": ("student_kd.yaml", "teacher_mean_pool", "distilled as `kd_mean_pool_sst2_texts`, 4 epochs "
                                         "instead of 2", [*RECIPE_LOSS, FROM_TEACHER, *MEAN_POOL_KD,
                                                          f"--data.init_args.transfer_texts={SST2_TEXTS}", "--trainer.max_epochs=4"],
                                         SST2_TEXTS_CACHE),
    **{f"kd_mean_pool_neighbours_{p}": (
        "student_kd.yaml", "teacher_mean_pool", f"distilled as `kd_mean_pool` on the task's rows plus 8 changed copies of each without "
        f"labels (TinyBERT's augmentation: {p} % of the words replaced by one of their 15 nearest words in the encoder's word "
        "embeddings, `transfer_words: neighbours`; the teacher's soft targets only), 2 epochs",
        copies_overrides(p, "neighbours"), copies_cache(p, "neighbours")) for p in (15, 30)},
    "kd_mean_pool_frequency_15": (
        "student_kd.yaml", "teacher_mean_pool", "distilled as `kd_mean_pool_neighbours_15` with each replaced word drawn by its "
        "frequency in the training text instead (`transfer_words: frequency`): the same amount of text, other words",
        copies_overrides(15, "frequency"), copies_cache(15, "frequency")),
    # the DKVB variants (every task and seed), the recipe's loss and learning rate
    "teacher_dkvb": ("teacher_dkvb.yaml", None, "MiniLM-L6 + DKVB (keys from own embeddings, EMA)", [TEACHER_LR_ARG], None),
    "student_dkvb_kd": ("student_dkvb_kd.yaml", "teacher", "distilled + DKVB, EMA keys on own features, student from the teacher's "
                        "layers (its DKVB as built)", [*RECIPE_LOSS, FROM_TEACHER], CACHE),
    "student_dkvb_keyinit": ("student_dkvb_keyinit.yaml", "teacher", "distilled + DKVB, keys init from teacher embeddings, student "
                             "from the teacher's layers", [*RECIPE_LOSS, FROM_TEACHER], None),
    "student_dkvb_carry": ("student_dkvb_carry.yaml", "teacher_dkvb", "distilled + DKVB, student from the DKVB teacher's layers and "
                           "DKVB, keys+values carried from it every 100 steps", [*RECIPE_LOSS, FROM_TEACHER], None),
}
SEEDED = ("student_alone", "student_kd")
ABLATIONS = ("teacher_mean_pool", "kd_a05_t2", "kd_pretrained_init", "dkvb_kd_pretrained_init", "dkvb_keyinit_pretrained_init",
             "dkvb_carry_pretrained_init", "kd_transfer", "kd_mean_pool",
             "alone_mean_pool", "dkvb_kd_mean_pool", "kd_hidden_mean_pool",
             "kd_8_epochs", "kd_mean_pool_unlabelled", "kd_mean_pool_sst2_texts", "kd_mean_pool_sst2_texts_4_epochs",
             "kd_mean_pool_neighbours_15", "kd_mean_pool_neighbours_30", "kd_mean_pool_frequency_15")
# rows that make sense on some tasks only: SST-2 is the one trained on a subset; SST-2's sentences fill a single-text
# task's one column (CoLA's; MRPC and RTE take pairs)
ONLY_ON = {"kd_mean_pool_unlabelled": ("sst2",), "kd_mean_pool_sst2_texts": ("cola",),
           "kd_mean_pool_sst2_texts_4_epochs": ("cola",), "kd_mean_pool_neighbours_30": ("cola",),
           "kd_mean_pool_frequency_15": ("cola",)}
# the recipe's transfer set (kd_mean_pool's student, teacher and loss, more text without labels) per task, and what that
# text is: the task's own unlabelled text where it has some (SST-2's sentences past the 8,000), else changed copies of its
# rows with words replaced by their embedding neighbours (TinyBERT's augmentation)
TRANSFER_SETS = {"sst2": ("kd_mean_pool_unlabelled", "its other 59,349 training sentences"),
                 **{t: ("kd_mean_pool_neighbours_15", copies_text(15, "neighbours")) for t in ("cola", "mrpc", "rte")}}
# the other transfer sets measured (a line each beside the recipe's)
OTHER_TRANSFER_SETS = [("cola", "kd_mean_pool_sst2_texts", "SST-2's 67,349 training sentences"),
                       ("cola", "kd_mean_pool_neighbours_30", copies_text(30, "neighbours")),
                       ("cola", "kd_mean_pool_frequency_15", copies_text(15, "frequency"))]
TASK_NAMES = {"sst2": "SST-2", "cola": "CoLA", "mrpc": "MRPC", "rte": "RTE"}
DKVB_ROWS = ("teacher_dkvb", "student_dkvb_kd", "student_dkvb_keyinit", "student_dkvb_carry")
COLUMNS = [
    column("task", "task"), column("model", "model"), column("seeds", "seeds"),
    column("params", "params", format="{:.1f} M", scale=1e-6),
    column("dev score % (mean ± std)", "scores", aggregate="mean_std", format="{:.2f}"), column("per seed", "scores", aggregate="list", format="{:.2f}"),
    column("metrics % (mean)", "metrics", aggregate="items", format="{:.2f}"),
    column("retained vs its teacher", "retained_pct", format="{:.1f}%", missing="–"),
    column("speed vs teacher", "speedup", format=RATIO, missing="–"), column("train s (mean)", "seconds", format="{:.0f}"),
]


# ---- one run (a subprocess) ------------------------------------------------------------------------------
def job_args(job: dict, workdir: Path) -> list[str]:
    task, name, seed = job["task"], job["row"], job["seed"]
    config, teacher, _, extra, cache = ROWS[name]
    train_size, teacher_epochs, student_epochs, batch, max_length = BUDGET[task]
    role = "model" if "model" in row_config(config)["model"]["init_args"] else "student"
    out = workdir / task / f"{name}_s{seed}"
    args = [
        "fit", "-c", str(CONFIGS / config), f"--seed_everything={seed}", f"--data.init_args.task={task}",
        f"--data.init_args.batch_size={batch}", f"--data.init_args.max_length={max_length}", f"--data.init_args.seed={seed if train_size is None else 0}",
        f"--trainer.max_epochs={teacher_epochs if name.startswith('teacher') else student_epochs}", "--trainer.val_check_interval=1.0",
        "--trainer.enable_progress_bar=false", f"--trainer.precision={PRECISION}", f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={workdir / 'tb'}",
        f"--trainer.logger.init_args.name={task}_{name}_s{seed}", f"--best_checkpoint.path={checkpoint(workdir, task, name, seed)}",
        f"--model.init_args.{role}.init_args.freeze_embeddings=true", "--data.init_args.group_by_length=true",
        *([f"--data.init_args.train_size={train_size}"] if train_size is not None else []),  # before the row's own
        *(f"--model.init_args.temperature={TEMPERATURE[task]}" if e == TASK_T else e for e in extra),
    ]
    if teacher:
        args.append(f"--model.init_args.teacher.checkpoint={checkpoint(workdir, task, teacher)}")
        if cache:
            args.append(f"--model.init_args.teacher.cache={workdir / task / cache.format(seed=seed)}")
    return args


def run_job(job: dict, workdir: Path) -> dict:
    """Train one row in this process; the row's dev metrics, time, parameters and steps. An interrupted run of the
    same recipe (``recipe.txt`` in its log folder) goes on from its ``latest.ckpt``; a log folder of another recipe
    is moved aside (``NAME.stale-TIME``), never resumed."""
    from lkd.cli import LKDCLI
    from lkd.memory import count_parameters
    from lkd.metrics import glue_metric_names

    common.offline_hub()
    common.threads_from_env()
    runs_dir = log_dir(workdir, *key(job))
    stamp, fingerprint = runs_dir / "recipe.txt", recipe(job)
    if runs_dir.is_dir() and not (stamp.is_file() and stamp.read_text().strip() == fingerprint):
        runs_dir.rename(runs_dir.with_name(f"{runs_dir.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}"))  # another recipe's logs
    runs_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint)
    latest = sorted(runs_dir.glob("version_*/checkpoints/latest.ckpt"), key=lambda p: p.stat().st_mtime)
    resume = [f"--ckpt_path={latest[-1]}"] if latest else []  # an interrupted run goes on from its last epoch
    start = time.perf_counter()
    cli = LKDCLI(args=job_args(job, workdir) + resume)
    seconds = time.perf_counter() - start
    m = cli.trainer.callback_metrics
    names = (*glue_metric_names(job["task"], cli.model.num_classes), "score")
    curve = dev_curve(runs_dir, names)
    metrics = {name: round(100 * float(m[f"val/{name}"]), 2) for name in names}
    if job["row"].startswith("teacher") and curve:  # a teacher is the best epoch's checkpoint (what its students read)
        metrics = {name: round(100 * v, 2) for name, v in max(curve, key=lambda e: e["score"]).items() if name in names}
    return {**job, "metrics": metrics, "score": metrics["score"], "seconds": round(seconds), "curve": curve,
            "params": count_parameters(cli.model.trained_model), "steps": cli.trainer.global_step, "budget": BUDGET[job["task"]], "precision": PRECISION,
            "recipe": fingerprint}


def dev_curve(runs_dir: Path, names: tuple[str, ...]) -> list[dict]:
    """The dev metrics at every validation of a run, read back from its TensorBoard events (every version: a resumed
    run logs into a new one, later versions win a step they share): [{"step", "score", ...}]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    by_step: dict[int, dict] = {}
    for version in sorted(runs_dir.glob("version_*"), key=lambda p: int(p.name.split("_")[-1])):
        events = EventAccumulator(str(version), size_guidance={"scalars": 0})
        events.Reload()
        for tag in [f"val/{n}" for n in names if f"val/{n}" in events.Tags()["scalars"]]:
            for e in events.Scalars(tag):
                by_step.setdefault(e.step, {"step": e.step})[tag.removeprefix("val/")] = float(e.value)
    return [by_step[k] for k in sorted(by_step) if "score" in by_step[k]]


# ---- the plan ---------------------------------------------------------------------------------------------
def plan(args) -> list[dict]:
    """Every job in the order it should start (what matters most first, so a run stopped for time keeps it):
    the teachers; the first seed's students (alone, distilled, and the DKVB students that read the plain teacher);
    the other seeds of the plain students; the DKVB teachers and the first seed's key-carrying students; the other
    seeds of the DKVB students; the one-seed ablations; the other seeds of ``--late-seed-tasks``."""
    dkvb = "dkvb" in args.parts
    own_teacher = [r for r in DKVB_ROWS[1:] if ROWS[r][1] == "teacher"] if dkvb else []
    carried = [r for r in DKVB_ROWS[1:] if ROWS[r][1] == "teacher_dkvb"] if dkvb else []
    late = [t for t in args.tasks if t in (args.late_seed_tasks or [])]
    first, rest = args.seeds[0], args.seeds[1:]
    jobs = [{"task": t, "row": "teacher", "seed": 0} for t in args.tasks]
    jobs += [{"task": t, "row": r, "seed": first} for t in args.tasks for r in (*SEEDED, *own_teacher)]
    jobs += [{"task": t, "row": r, "seed": seed} for seed in rest for t in args.tasks if t not in late for r in SEEDED]
    if dkvb:
        jobs += [{"task": t, "row": "teacher_dkvb", "seed": 0} for t in args.tasks]
        jobs += [{"task": t, "row": r, "seed": first} for t in args.tasks for r in carried]
        jobs += [{"task": t, "row": r, "seed": seed}
                 for seed in rest for t in args.tasks if t not in late for r in (*own_teacher, *carried)]
    if "ablations" in args.parts:
        jobs += [{"task": t, "row": r, "seed": first} for t in args.tasks if t in args.ablation_tasks for r in ABLATIONS]
    jobs += [{"task": t, "row": r, "seed": seed} for seed in rest for t in late for r in (*SEEDED, *own_teacher, *carried)]
    jobs = [j for j in jobs if j["task"] in ONLY_ON.get(j["row"], (j["task"],))]
    return [j for j in jobs if j["row"] in args.rows] if getattr(args, "rows", None) else jobs


def key(job: dict) -> tuple:
    return job["task"], job["row"], job["seed"]


def depends_on(job: dict) -> list[tuple]:
    """Jobs that must have finished first: the teacher it reads; for a cached row, the task's first cached
    row (which writes the cache)."""
    _, teacher, _, _, cache = ROWS[job["row"]]
    deps = [(job["task"], teacher, 0)] if teacher else []
    if cache == CACHE and (job["row"], job["seed"]) != ("student_kd", 0):
        deps.append((job["task"], "student_kd", 0))
    return deps


RUN_KEY = "glue-v2"  # the protocol: dev score of the final weights (a teacher: its best epoch); recipes fingerprinted per run


def recipe(job: dict) -> str:
    """A fingerprint of what a job trains: :func:`effective_config`, so a changed budget, learning rate or config
    trains again, while a setting moved between the YAML and the command line, or a row renamed, does not."""
    return hashlib.sha256(json.dumps(_plain_numbers(effective_config(job)), sort_keys=True).encode()).hexdigest()[:12]


OWN_PATHS = ("trainer.default_root_dir", "trainer.logger.init_args.save_dir", "trainer.logger.init_args.name", "best_checkpoint.path")


def effective_config(job: dict) -> dict:
    """The row's YAML (parsed: comments do not count) with the job's command-line overrides written in
    (``--a.b=v`` sets ``config["a"]["b"] = yaml(v)``, as LightningCLI reads them), less where the run writes its own
    files (:data:`OWN_PATHS`). The teacher's checkpoint and cache stay: which teacher a row reads is its recipe."""
    import copy

    import yaml

    def parent(config: dict, dotted: str) -> tuple[dict, str]:  # the dict that holds a dotted key, and its last name
        *names, leaf = dotted.split(".")
        for name in names:
            config = config.setdefault(name, {})
        return config, leaf

    config = copy.deepcopy(row_config(ROWS[job["row"]][0]))
    for arg in job_args(job, Path("WORKDIR"))[3:]:  # after `fit -c CONFIG`
        dotted, value = arg.removeprefix("--").split("=", 1)
        node, leaf = parent(config, dotted)
        node[leaf] = yaml.safe_load(value)
    for dotted in OWN_PATHS:
        node, leaf = parent(config, dotted)
        node.pop(leaf, None)
    return config


def _plain_numbers(value):
    """Whole floats as ints (``11`` on the command line is ``11.0`` in a YAML), recursively."""
    if isinstance(value, dict):
        return {k: _plain_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_numbers(v) for v in value]
    return int(value) if isinstance(value, float) and value.is_integer() else value


def row_config(name: str) -> dict:
    """A YAML of configs/glue/, parsed (read again only when the file changes: the driver fingerprints every kept
    run on each poll)."""
    path = CONFIGS / name
    return _parsed_yaml(path, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _parsed_yaml(path: Path, mtime_ns: int) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def load_runs(workdir: Path) -> dict[tuple, dict]:
    """Finished runs of the current recipes by ``(task, row, seed)``: those of the committed
    ``benchmarks/results/glue.json`` (earlier sessions, on any checkout) and of ``WORKDIR/runs.jsonl`` (later wins)."""
    kept = common.kept_runs("glue", workdir, RUN_KEY, fields=("task", "row", "seed", "recipe"))
    return {k[:3]: run for k, run in kept.items() if k[0] in BUDGET and k[1] in ROWS and k[3] == recipe(job_of(k[:3]))}


def job_of(k: tuple) -> dict:
    """The job of a ``(task, row, seed)`` key."""
    return dict(zip(("task", "row", "seed"), k, strict=True))


def checkpoint(workdir: Path, task: str, row: str, seed: int = 0) -> Path:
    """Where a run leaves the weights its students read (``--best_checkpoint.path``)."""
    return workdir / task / f"{row}_s{seed}.ckpt"


def log_dir(workdir: Path, task: str, row: str, seed: int) -> Path:
    """A run's TensorBoard folder: its events, ``recipe.txt`` and, while it trains, its resumable state."""
    return workdir / "tb" / f"{task}_{row}_s{seed}"


def drop_training_state(workdir: Path, keys) -> int:
    """Delete the Lightning checkpoints (``latest.ckpt`` and the best epoch's, optimizer state included) of finished
    runs: they exist only to resume an interrupted run; a finished run's weights stay at :func:`checkpoint` and its
    dev curve in the events. Each is 3x the model (weights and Adam moments): kept, 60 runs a task filled the disk.
    The bytes freed."""
    freed = 0
    for k in keys:
        for state in log_dir(workdir, *k).glob("version_*/checkpoints/*.ckpt"):
            freed += state.stat().st_size
            state.unlink()
    return freed


def running_elsewhere(workdir: Path) -> set[tuple]:
    """Jobs with a lock file (``WORKDIR/locks/TASK_ROW_SEED.pid``) whose process is alive: run by another driver."""
    alive = set()
    for lock in (workdir / "locks").glob("*.pid"):
        try:
            os.kill(int(lock.read_text().split()[0]), 0)
        except (OSError, ValueError):
            continue
        task, rest = lock.stem.split("_", 1)
        row, seed = rest.rsplit("_", 1)
        alive.add((task, row, int(seed)))
    return alive


def run_all(args, workdir: Path) -> None:
    """Start the planned jobs ``--jobs`` at a time (each one thread), respecting their dependencies; jobs that
    another driver is running (a live lock file) count against the lanes and are waited for. A teacher whose run is
    kept (committed by an earlier session) but whose checkpoint is not in this work folder trains again (same seed
    and recipe) before the rows that read it. The report is rewritten after every finished run."""
    done = load_runs(workdir)
    if freed := drop_training_state(workdir, done):
        print(f"[glue] deleted {freed / 2**30:.1f} GiB of finished runs' training state", flush=True)
    pending = [j for j in plan(args) if key(j) not in done]
    failed: set[tuple] = set()
    retrain: set[tuple] = set()  # kept teachers training again for their checkpoint, until they finish
    running: dict[tuple, subprocess.Popen] = {}
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", **common.OFFLINE_ENV}

    def weights_missing(dep: tuple) -> bool:
        return dep in retrain or (dep in done and dep[1].startswith("teacher") and not checkpoint(workdir, *dep).is_file())

    def writing_cache(job: dict) -> bool:  # a cached row whose cache is not written yet, while another one may write it
        cache = ROWS[job["row"]][4]
        return bool(cache) and not (workdir / job["task"] / cache).is_file() and any(
            k[0] == job["task"] and ROWS[k[1]][4] == cache for k in running)

    while pending or running or (running_elsewhere(workdir) - set(running)):
        for k, proc in list(running.items()):
            if proc.poll() is not None:
                del running[k]
                retrain.discard(k)
                done = load_runs(workdir)
                if k not in done or proc.returncode != 0:
                    failed.add(k)
                    print(f"[glue] FAILED {k} (see {workdir / 'logs'})", flush=True)
                else:
                    print(f"[glue] {k}: score {done[k]['score']} in {done[k]['seconds']} s", flush=True)
                    write_report(args, workdir, echo=False)
        blocked = [j for j in pending if any(d in failed for d in depends_on(j))]
        for j in blocked:
            print(f"[glue] skipped {key(j)}: a job it needs failed", flush=True)
            pending.remove(j)
        elsewhere = running_elsewhere(workdir) - set(running)
        done = load_runs(workdir) if elsewhere else done
        pending = [j for j in pending if key(j) not in done or (key(j) in retrain and key(j) not in running)]
        for dep in sorted({d for j in pending for d in depends_on(j) if weights_missing(d)} - retrain - set(running)):
            print(f"[glue] {dep}: kept run without its checkpoint here; training it again", flush=True)
            retrain.add(dep)
            pending.insert(0, job_of(dep))
        for j in list(pending):
            if len(running) + len(elsewhere) >= args.jobs:
                break
            if key(j) in elsewhere or writing_cache(j):
                continue
            if all(d in done and not weights_missing(d) for d in depends_on(j)):
                pending.remove(j)
                log = (workdir / "logs" / ("_".join(map(str, key(j))) + ".log")).open("w")
                cmd = [sys.executable, __file__, "--run-job", json.dumps(j), "--workdir", str(workdir)]
                cmd += [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("train_size", "epochs") if getattr(args, k)]
                running[key(j)] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
                (workdir / "locks").mkdir(exist_ok=True)
                (workdir / "locks" / ("_".join(map(str, key(j))) + ".pid")).write_text(str(running[key(j)].pid))
                print(f"[glue] started {key(j)}", flush=True)
        time.sleep(5)


# ---- speed (alone, after training) ------------------------------------------------------------------------
def timing(tasks: list[str], workdir: Path) -> dict:
    """Inference seconds of the teacher, student and DKVB student architectures on each task's dev inputs
    (the speed depends on the architecture, not on the trained weights), the three taking turns."""
    from torch import nn

    from lkd.data import GLUEDataModule
    from lkd.evaluation import interleaved_inference_seconds
    from lkd.models import TransformerClassifier
    from lkd.models.text_classifier import DKVBSettings

    class OnTokenIds(nn.Module):
        def __init__(self, network):
            super().__init__()
            self.network = network

        def forward(self, input_ids):
            return self.network(input_ids, attention_mask=(input_ids != 0).long()).logits

    common.offline_hub()
    out = {}
    dkvb = DKVBSettings(num_codebooks=32, num_keys=256, key_dim=12, ema_decay=0.95)
    for task in tasks:
        _, _, _, _, max_length = BUDGET[task]
        data = GLUEDataModule(task, max_length=max_length)
        data.connect(MINILM)
        dev = data.split("validation")
        inputs = data._collate([dev[i] for i in range(min(512, len(dev)))])["input_ids"]
        n = data.num_classes
        models = {"teacher": TransformerClassifier(n, MINILM), "student": TransformerClassifier(n, MINILM, keep_layers=[0, 2, 5]),
                  "student_dkvb": TransformerClassifier(n, MINILM, keep_layers=[0, 2, 5], dkvb=dkvb)}
        speed = interleaved_inference_seconds({k: OnTokenIds(m) for k, m in models.items()}, inputs, batch_size=64, repeats=5)
        out[task] = {k: round(v, 3) for k, v in speed.items()} | {"examples": len(inputs), "tokens": int(inputs.shape[1])}
        print(f"[glue] timing {task}: {out[task]}", flush=True)
    (workdir / "timing.json").write_text(json.dumps(out, indent=1))
    return out


# ---- what the teacher's soft targets carry (from its cache) --------------------------------------------------
def teacher_signal(task: str, workdir: Path) -> dict | None:
    """From the task's teacher cache: the teacher's accuracy on its own training rows and on dev, and how
    soft its training targets are (mean probability of its top class at T = 1 and T = 2, mean entropy in
    bits): a teacher that fits its training set with near-certain outputs gives the student little beyond
    the labels."""
    import numpy as np
    import torch

    from lkd.cache import TeacherCache
    from lkd.data import GLUEDataModule

    path = workdir / task / CACHE
    if not path.is_file():
        return None
    cache = TeacherCache.load(path)
    raw = GLUEDataModule(task).raw
    out = {}
    for stage, split in (("train", "train"), ("val", "validation")):
        content = cache.content["splits"].get(stage)
        if content is None:
            continue
        ids, logits = content["sample_ids"].long(), content["logits"].float()
        label_of = dict(zip(np.asarray(raw[split]["idx"]).tolist(), np.asarray(raw[split]["label"]).tolist()))
        labels = torch.tensor([label_of[i] for i in ids.tolist()])
        out[f"{stage}_acc"] = 100 * float((logits.argmax(-1) == labels).float().mean())
        if stage == "train":
            for t in (1, 2):
                p = (logits / t).softmax(-1)
                out[f"top_p_T{t}"] = float(p.max(-1).values.mean())
                out[f"entropy_T{t}"] = float(-(p * p.clamp_min(1e-12).log2()).sum(-1).mean())
            out["rows"] = len(ids)
    return out


# ---- the table --------------------------------------------------------------------------------------------
def speed_key(name: str) -> str:
    return "teacher" if name.startswith("teacher") else "student_dkvb" if "dkvb" in name else "student"


def table_rows(runs: dict[tuple, dict], speed: dict, tasks: list[str]) -> list[dict]:
    rows = []
    for task in tasks:
        for name, (_, reads, what, _, _) in ROWS.items():
            teacher = runs.get((task, reads or "teacher", 0), {}).get("score")  # the teacher it was distilled from
            mine = sorted((r for k, r in runs.items() if k[0] == task and k[1] == name), key=lambda r: r["seed"])
            if not mine:
                continue
            scores = [r["score"] for r in mine]
            metric_names = [m for m in mine[0]["metrics"] if m != "score"]
            t = speed.get(task, {})
            rows.append({
                "task": task, "name": name, "model": what, "seeds": len(mine), "params": mine[0]["params"], "scores": scores,
                "score": statistics.mean(scores), "metrics": {m: statistics.mean(r["metrics"][m] for r in mine) for m in metric_names},
                "retained_pct": 100 * statistics.mean(scores) / teacher if teacher and not name.startswith("teacher") else None,
                "speedup": t["teacher"] / t[speed_key(name)] if t and name != "teacher_dkvb" else None,
                "seconds": statistics.mean(r["seconds"] for r in mine),
            })
        size, te, se, batch, max_length = BUDGET[task]
        rows.append({"task": task, "model": "budget", "seeds": "", "params": "", "scores": "", "metrics":
                     f"train {'all' if size is None else size} ex., teacher {te} epochs, students {se}, batch {batch}, max_length {max_length}",
                     "retained_pct": "", "speedup": "", "seconds": ""})
    return rows


TEACHER_TARGETS = {"sst2": ("acc", 88), "mrpc": ("f1", 86), "cola": ("mcc", 35), "rte": ("acc", 60)}  # dev, %


def wins_line(by: dict, tasks: list[str], distilled: str, alone: str) -> str | None:
    """On how many tasks row ``distilled`` beats row ``alone`` (mean of their seeds), each pair beside it;
    ``met`` at 3 or more. None if no task has both rows."""
    both = [t for t in tasks if (t, distilled) in by and (t, alone) in by]
    if not both:
        return None
    wins = [t for t in both if by[(t, distilled)]["score"] > by[(t, alone)]["score"]]
    detail = ", ".join(f"{t} {by[(t, distilled)]['score']:.2f} vs {by[(t, alone)]['score']:.2f} "
                       f"({min(by[(t, distilled)]['seeds'], by[(t, alone)]['seeds'])} seeds)" for t in both)
    return f"{len(wins)} of {len(both)} ({detail}) — **{'met' if len(wins) >= 3 else 'not met'}**."


def teacher_verdict(row: dict, task: str) -> str:
    """``"mrpc f1 85.96 (≥ 86: not met)"``: a teacher row's metric against the task's :data:`TEACHER_TARGETS`."""
    metric, goal = TEACHER_TARGETS[task]
    value = row["metrics"][metric]
    return f"{task} {metric} {value:.2f} (≥ {goal}: {'met' if value >= goal else 'not met'})"


def targets(rows: list[dict], tasks: list[str], seeds: int = 3) -> list[str]:
    """The issue's target lines; the retention target's candidates are the distilled rows run with ``seeds`` seeds
    on every task (a one-seed ablation is no recipe)."""
    by = {(r["task"], r.get("name")): r for r in rows if r.get("name")}
    lines = []
    teachers = [t for t in tasks if (t, "teacher") in by and t in TEACHER_TARGETS]
    if teachers:
        lines.append("Target (teachers, dev, best epoch): " + ", ".join(teacher_verdict(by[(t, "teacher")], t) for t in teachers) + ".")
        if pooled := [t for t in teachers if (t, "teacher_mean_pool") in by]:
            lines.append("The same targets for the mean-pooling teacher (`teacher_mean_pool`, 1 seed, `configs/glue/teacher_mean_pool.yaml`): "
                         + ", ".join(teacher_verdict(by[(t, "teacher_mean_pool")], t) for t in pooled) + ".")
    for distilled, alone, label in (("student_kd", "student_alone", "Target (distilled student beats the student alone, mean "
                                     "of the seeds, on ≥ 3 of the 4 tasks)"),
                                    ("kd_mean_pool", "alone_mean_pool", "The same with mean pooling (`kd_mean_pool` vs "
                                     "`alone_mean_pool`, the students of `configs/glue/teacher_mean_pool.yaml`)")):
        if line := wins_line(by, tasks, distilled, alone):
            lines.append(f"{label}: {line}")
    for t, name, what in [(t, *row) for t, row in TRANSFER_SETS.items()] + OTHER_TRANSFER_SETS:
        if (t, name) in by and (t, "kd_mean_pool") in by:
            u, kd = by[(t, name)], by[(t, "kd_mean_pool")]
            alone = f", alone {by[(t, 'alone_mean_pool')]['score']:.2f}" if (t, "alone_mean_pool") in by else ""
            lines.append(f"{TASK_NAMES.get(t, t)} with {what} as an unlabelled transfer set (`{name}`, {plural(u['seeds'], 'seed')}): "
                         f"{u['score']:.2f} against `kd_mean_pool`'s {kd['score']:.2f}{alone}; it keeps {u['retained_pct']:.1f} % "
                         f"of its teacher (`kd_mean_pool`: {kd['retained_pct']:.1f} %).")
    lines += dkvb_target(by, tasks)
    if best := best_retention(by, tasks, seeds):
        per_task = ", ".join(f"{t} {by[(t, best['row'])]['retained_pct']:.1f} %" for t in best["tasks"])
        lines.append(f"Target (best distilled student run on every task with {seeds} seeds keeps ≥ 97 % of its teacher's "
                     f"average score at ≥ 1.8× its CPU speed): `{best['row']}` averages {best['score']:.2f} over "
                     f"{', '.join(best['tasks'])} against its teacher's (`{best['teacher']}`) {best['teacher_score']:.2f}: keeps "
                     f"{best['pct']:.1f} % (per task: {per_task})" + retention_verdict(best))
    if kept := transfer_set_retention(by, tasks, seeds):
        rows = ", ".join(f"{t} `{kept['rows'][t]}` {by[(t, kept['rows'][t])]['score']:.2f}" for t in kept["tasks"])
        missing = [TASK_NAMES.get(t, t) for t in kept["tasks"] if kept["rows"][t] == "kd_mean_pool"]
        lines.append(f"The same target for `kd_mean_pool` with each task's transfer set (SST-2's own unlabelled sentences, "
                     f"changed copies of the rows elsewhere; per task: {rows}"
                     + (f"; {', '.join(missing)}: `kd_mean_pool`, the transfer-set row not run with {seeds} seeds" if missing else "")
                     + f"): averages {kept['score']:.2f} against `teacher_mean_pool`'s {kept['teacher_score']:.2f}: keeps "
                     f"{kept['pct']:.1f} %" + (f" (seed by seed, every task's seed i averaged: {', '.join(f'{v:.1f}' for v in kept['per_seed'])} %)"
                                               if len(kept["per_seed"]) > 1 else "") + retention_verdict(kept))
    return lines


def retention_verdict(kept: dict) -> str:
    """The end of a retention line: the speed and whether ≥ 97 % at ≥ 1.8× is met."""
    if not kept["speed"]:
        return " (speed not measured)."
    met = kept["pct"] >= 97 and kept["speed"] >= 1.8
    return f" at {kept['speed']:.2f}× (slowest task) — **{'met' if met else 'not met'}**."


def transfer_set_retention(by: dict[tuple, dict], tasks: list[str], seeds: int = 3) -> dict | None:
    """:func:`retention` of `kd_mean_pool` with each task's :data:`TRANSFER_SETS` row in its place where that ran
    with ``seeds`` seeds (the same student, teacher and loss; more text): ``{"rows", "tasks", "pct", "score",
    "teacher_score", "speed"}``; None unless a transfer-set row and every task's `kd_mean_pool` ran."""
    def ran(t: str, row: str) -> bool:
        return (t, row) in by and by[(t, row)]["seeds"] >= seeds

    run_tasks = [t for t in tasks if (t, "teacher") in by]
    rows = {t: name if (name := TRANSFER_SETS.get(t, ("",))[0]) and ran(t, name) else "kd_mean_pool" for t in run_tasks}
    if not run_tasks or set(rows.values()) == {"kd_mean_pool"} or not all(
            ran(t, r) and (t, "teacher_mean_pool") in by for t, r in rows.items()):
        return None
    mine = statistics.mean(by[(t, r)]["score"] for t, r in rows.items())
    theirs = statistics.mean(by[(t, "teacher_mean_pool")]["score"] for t in run_tasks)
    speeds = [by[(t, r)]["speedup"] for t, r in rows.items() if by[(t, r)]["speedup"]]
    per_seed = [round(100 * statistics.mean(by[(t, r)]["scores"][i] for t, r in rows.items()) / theirs, 2)
                for i in range(min(len(by[(t, r)].get("scores", [])) for t, r in rows.items()))]  # seed i of every task
    return {"rows": rows, "tasks": run_tasks, "pct": round(100 * mine / theirs, 2), "score": mine, "teacher_score": theirs,
            "speed": min(speeds) if speeds else None, "per_seed": per_seed}


def best_retention(by: dict[tuple, dict], tasks: list[str], seeds: int = 3) -> dict | None:
    """The distilled row run with ``seeds`` seeds on every task that keeps the most of its teacher's average
    (:func:`retention`): ``{"row", "teacher", "tasks", "pct", "score", "teacher_score", "speed"}`` (speed: the
    slowest task's ratio, None if not measured); None if no row qualifies."""
    students = [n for n in ROWS if n.startswith(("student_kd", "kd_", "student_dkvb", "dkvb_"))]  # distilled rows
    run_tasks = [t for t in tasks if (t, "teacher") in by]
    kept = {n: retention(by, n, run_tasks) for n in students if run_tasks and
            all((t, n) in by and by[(t, n)]["seeds"] >= seeds and (t, ROWS[n][1]) in by for t in run_tasks)}
    if not kept:
        return None
    best = max(kept, key=lambda n: kept[n][0])
    speeds = [by[(t, best)]["speedup"] for t in run_tasks if by[(t, best)]["speedup"]]
    pct, mine, theirs = kept[best]
    return {"row": best, "teacher": ROWS[best][1], "tasks": run_tasks, "pct": round(pct, 2), "score": mine,
            "teacher_score": theirs, "speed": min(speeds) if speeds else None}


def retention(by: dict[tuple, dict], name: str, tasks: list[str]) -> tuple[float, float, float]:
    """``(percent kept, the row's average score, its teacher's)`` over ``tasks``: the ratio of the averages, how
    DistilBERT's "97 % of BERT's performance" is measured (GLUE macro-scores), so a task's share follows its score."""
    mine = statistics.mean(by[(t, name)]["score"] for t in tasks)
    theirs = statistics.mean(by[(t, ROWS[name][1])]["score"] for t in tasks)
    return 100 * mine / theirs, mine, theirs


def dkvb_target(by: dict[tuple, dict], tasks: list[str]) -> list[str]:
    """The DKVB target's line: per task the better DKVB student (mean of its seeds) against the plain distilled one,
    with what the starting weights do beside it (the plain and the DKVB students from the pretrained layers instead
    of the teacher's), where those rows ran."""
    parts, within = [], 0
    for t in [t for t in tasks if (t, "student_kd") in by and any((t, r) in by for r in DKVB_ROWS[1:])]:
        best = max((by[(t, r)] for r in DKVB_ROWS[1:] if (t, r) in by), key=lambda r: r["score"])
        kd = by[(t, "student_kd")]
        gap = kd["score"] - best["score"]
        within += gap <= 1
        start = [f"`{name}` {by[(t, name)]['score']:.2f}" for name in PRETRAINED_START if (t, name) in by]
        parts.append(f"{t} `{best['name']}` {best['score']:.2f} ({plural(best['seeds'], 'seed')}) vs distilled {kd['score']:.2f} "
                     f"({plural(kd['seeds'], 'seed')}): gap {gap:+.2f}" + (f" [from the pretrained layers, 1 seed: {', '.join(start)}]" if start else ""))
    if not parts:
        return []
    met = "met" if within == len(parts) else "not met"
    return [f"Target (the better DKVB student within 1 point of the plain distilled student, or the gap explained): within 1 point "
            f"on {within} of {len(parts)} tasks — **{met}**; " + "; ".join(parts) + "."]


PRETRAINED_START = tuple(name for name, row in ROWS.items() if FROM_PRETRAINED in row[3])  # students from the pretrained layers


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def write_report(args, workdir: Path, echo: bool = True) -> None:
    runs = load_runs(workdir)
    timing_path, committed = workdir / "timing.json", common.report.RESULTS_DIR / "glue.json"
    if timing_path.is_file():
        speed = json.loads(timing_path.read_text())
    else:  # the speed depends on the architectures only: an earlier session's pass stands until this one measures
        speed = json.loads(committed.read_text()).get("data", {}).get("timing", {}) if committed.is_file() else {}
    tasks = [t for t in BUDGET if any(k[0] == t for k in runs)]
    rows = table_rows(runs, speed, tasks)
    result = common.new_result("GLUE", args, seeds=args.seeds)
    result["intro"] = [
        f"Offline models: teacher all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) fine-tuned on the task at lr {TEACHER_LR:g} "
        "until its dev score plateaus (its curve below; its score and its students' teacher are the best epoch's checkpoint); "
        "student = MiniLM-L6's embeddings + 3 layers (0, 2, 5): the student alone starts from the pretrained layers, the "
        "distilled students, DKVB ones too, from the fine-tuned teacher's (DistilBERT-style init; the `*_pretrained_init` "
        f"rows start them from the pretrained ones). Students train at lr {STUDENT_LR:g}; the distilled loss is α·T²·KL + (1−α)·CE with "
        f"torchdistill's GLUE settings (α {ALPHA}, T = " + ", ".join(f"{t} {TEMPERATURE[t]}" for t in tasks) + "). "
        f"Token embeddings frozen in every row (`freeze_embeddings: true`) and training in `{PRECISION}` (CPU autocast), "
        "for CPU time. Distilled rows read the teacher's "
        "cached logits (one teacher per task, seed 0) unless the row says live. Student score = GLUE dev score (mean of the "
        "task's metrics, %) of the final weights; retained = student mean / the teacher it was distilled from (a student "
        "alone: the task's teacher). Speed = teacher CPU inference time / "
        "model time on 512 dev examples (architectures taking turns, batch 64, measured alone after training). Train s: "
        "runs shared the 2 cores, one thread each."
    ]
    result["tables"] = [table(COLUMNS, rows)]
    curves = [{"task": t, "row": name, "curve": [round(100 * e["score"], 2) for e in runs[(t, name, 0)]["curve"]]}
              for t in tasks for name in ("teacher", "teacher_dkvb", "teacher_mean_pool") if runs.get((t, name, 0), {}).get("curve")]
    if curves:
        for c in curves:
            c["best"] = 1 + max(range(len(c["curve"])), key=c["curve"].__getitem__)
            c["scores"] = ", ".join(f"{v:.2f}" for v in c["curve"])
        result["tables"].append(table([column("task", "task"), column("teacher", "row"), column("dev score % after each epoch", "scores"),
                                       column("best epoch", "best")], curves, caption="The teachers' dev curves"))
    # read from the teacher caches here; a task whose cache is not in this work folder keeps the committed figures
    kept_signal = json.loads(committed.read_text()).get("data", {}).get("teacher_signal", {}) if committed.is_file() else {}
    signal = {t: v for t in tasks if (v := teacher_signal(t, workdir) or kept_signal.get(t))}
    if signal:
        signal_columns = [
            column("task", "task"), column("teacher acc on its train rows %", "train_acc", format="{:.2f}"),
            column("teacher dev acc %", "val_acc", format="{:.2f}"), column("mean top-class p, T = 1", "top_p_T1", format="{:.3f}"),
            column("mean top-class p, T = 2", "top_p_T2", format="{:.3f}"), column("entropy T = 2 (bits)", "entropy_T2", format="{:.3f}"),
            column("rows", "rows"),
        ]
        result["tables"].append(table(signal_columns, [{"task": t, **v} for t, v in signal.items()],
                                      caption="What the teacher's soft targets carry (its cached logits on the training rows)"))
    result["notes"] = targets(rows, tasks, len(args.seeds)) + list(args.note or [])
    result["data"] = {"runs": [runs[k] for k in sorted(runs, key=str)], "timing": speed, "teacher_signal": signal}
    result["data"]["run_key"] = RUN_KEY
    by = {(r["task"], r.get("name")): r for r in rows if r.get("name")}
    result["data"]["best_retention"] = best_retention(by, tasks, len(args.seeds))  # README's headline
    result["data"]["transfer_retention"] = transfer_set_retention(by, tasks, len(args.seeds))  # and beside it
    common.finish(result, "glue", args, echo=echo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["mrpc", "rte", "cola", "sst2"], choices=sorted(BUDGET),
                        help="the offline mirror holds cola, mrpc, rte and sst2 (no STS-B)")
    common.add_seeds_option(parser, [0, 1, 2], help="seeds of the student rows")
    parser.add_argument("--parts", nargs="+", default=["ablations", "dkvb"], choices=["ablations", "dkvb"],
                        help="extra rows beside teacher / student alone / distilled")
    parser.add_argument("--ablation-tasks", nargs="*", default=list(BUDGET), help="tasks of the one-seed ablations of the recipe")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=None,
                        help="run only these rows of the plan (the rows they read must be kept or run by another driver)")
    parser.add_argument("--late-seed-tasks", nargs="*", default=[], help="tasks whose seeds after the first run last")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "glue_benchmark")
    parser.add_argument("--render-only", action="store_true", help="render WORKDIR/runs.jsonl (and timing.json); train nothing")
    parser.add_argument("--no-timing", action="store_true", help="skip the speed pass")
    parser.add_argument("--timing-only", action="store_true", help="run the speed pass (on an idle machine), train nothing, render")
    parser.add_argument("--note", action="append", help="a paragraph for the section's notes")
    parser.add_argument("--train-size", type=int, default=None, help="override every task's training examples (quick checks)")
    parser.add_argument("--epochs", type=int, default=None, help="override every run's epochs (quick checks)")
    parser.add_argument("--run-job", help=argparse.SUPPRESS)
    common.add_output_options(parser)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    for task, (size, te, se, batch, length) in BUDGET.items():
        BUDGET[task] = (args.train_size or size, args.epochs or te, args.epochs or se, batch, length)
    if args.run_job:
        row = run_job(json.loads(args.run_job), args.workdir)
        with (args.workdir / "runs.jsonl").open("a") as f:
            f.write(json.dumps({"key": RUN_KEY, **row}) + "\n")  # row["recipe"]: the fingerprint it trained under
        drop_training_state(args.workdir, [key(row)])  # recorded: nothing left to resume
        return
    if not args.render_only:
        if not args.timing_only:
            run_all(args, args.workdir)
        if not args.no_timing:
            timing(args.tasks, args.workdir)
    write_report(args, args.workdir)


if __name__ == "__main__":
    main()
