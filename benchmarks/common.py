"""What the benchmark scripts share: timing, the run's description, their common options and their ending.

* timing: :func:`paired_timing` (a burn-in, then rounds in which every variant takes its turn; medians and
  ratios to a baseline measured in the same rounds) with :func:`timing_columns` for its table,
  :func:`train_timer` (a Lightning callback) and :func:`quiet_trainer` (a ``Trainer`` without logging,
  checkpoints, progress bar or validation);
* the run: :func:`machine`, :func:`command`, :func:`new_result` (the header fields of a result file);
* the command line: :func:`add_seeds_option`, :func:`add_output_options`, and :func:`finish` (print the
  section, write ``benchmarks/results/NAME.json``, render BENCHMARKS.md from the result files);
* set-up: :func:`offline_hub`, :func:`threads_from_env` and the byte-level LM pair :func:`lm_teacher` /
  :func:`lm_student` of the language-model benchmarks.

How the numbers become Markdown is :mod:`benchmarks.report`'s job. torch, Lightning and lkd are imported
inside the functions that need them, so the renderer and its tests stay light.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import report

ROOT = report.ROOT
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
BYTE_VOCAB = 257  # UTF-8 bytes + end of text
# the language-model benchmarks' pair (benchmarks/lm_distill.py, teacher_cache_lm.py); memory.py scales it up
LM_TEACHER = dict(hidden_size=192, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=48, intermediate_size=384,
                  moe_intermediate_size=192, num_experts=8, top_k=2, max_position_embeddings=512)
LM_STUDENT = dict(hidden_size=96, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=256, max_position_embeddings=512)


# ---- timing --------------------------------------------------------------------------------------------
@dataclass
class PairedTiming:
    """Seconds of every round of every variant (the rounds interleaved) and the baseline of the ratios."""

    seconds: dict[str, list[float]]
    baseline: str

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def ratio(self, name: str) -> float:
        """Median of ``name`` over the median of the baseline, both measured in the same rounds."""
        return self.median(name) / self.median(self.baseline)

    def row(self, name: str) -> dict:
        """``name``'s cells for :func:`timing_columns`: median, every round, ratio."""
        return {"median_s": self.median(name), "rounds_s": self.seconds[name], "ratio": self.ratio(name)}


def paired_timing(runs: Mapping[str, Callable[[], float]], *, baseline: str, repeats: int,
                  burn_in: Mapping[str, Callable[[], object]] | None = None, echo: bool = True) -> PairedTiming:
    """Time ``runs`` (name -> a call that returns the seconds it measured): one burn-in call per
    variant (``burn_in``'s, else the run itself), then ``repeats`` rounds in which the variants take turns, so
    a noisy machine slows them alike and the ratios to ``baseline`` stay meaningful."""
    if baseline not in runs:
        raise ValueError(f"baseline {baseline!r} is not one of the runs {list(runs)}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for name in runs:
        (burn_in or runs)[name]()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(repeats):
        for name, run in runs.items():
            seconds[name].append(run())
            if echo:
                print(f"round {r}: {name}: {seconds[name][-1]:.2f} s", flush=True)
    return PairedTiming(seconds, baseline)


def timing_columns(median_header: str, rounds_header: str, ratio_header: str) -> list[dict]:
    """The three columns of a :meth:`PairedTiming.row`: median, every round, ratio to the baseline."""
    return [report.column(median_header, "median_s", format="{:.2f}"),
            report.column(rounds_header, "rounds_s", format="{:.2f}", aggregate="list"),
            report.column(ratio_header, "ratio", format=report.RATIO)]


def train_timer(on_train_start: Callable[[object], None] | None = None):
    """A Lightning callback that times training: ``step_seconds`` (every step), ``epoch_seconds`` (every epoch)
    and ``seconds`` (first epoch start to train end; set-up and data preparation excluded).
    ``on_train_start(pl_module)`` runs at train start (e.g. to reset a memory high-water mark)."""
    import lightning.pytorch as pl

    class TrainTimer(pl.Callback):
        def __init__(self):
            self.step_seconds: list[float] = []
            self.epoch_seconds: list[float] = []
            self.seconds: float | None = None
            self._first = None

        def on_train_start(self, trainer, pl_module):
            if on_train_start is not None:
                on_train_start(pl_module)

        def on_train_epoch_start(self, trainer, pl_module):
            self._epoch = time.perf_counter()
            self._first = self._first or self._epoch

        def on_train_batch_start(self, *args):
            self._step = time.perf_counter()

        def on_train_batch_end(self, *args):
            self.step_seconds.append(time.perf_counter() - self._step)

        def on_train_epoch_end(self, trainer, pl_module):
            self.epoch_seconds.append(time.perf_counter() - self._epoch)

        def on_train_end(self, trainer, pl_module):
            self.seconds = time.perf_counter() - self._first

    return TrainTimer()


def quiet_trainer(**settings):
    """A ``lightning.pytorch.Trainer`` for timing: no logger, checkpoints, progress bar, model summary, sanity
    check or validation, unless ``settings`` say otherwise (``limit_val_batches=None`` validates)."""
    import lightning.pytorch as pl

    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                 num_sanity_val_steps=0, limit_val_batches=0)
    return pl.Trainer(**{**quiet, **settings})


# ---- the run -------------------------------------------------------------------------------------------
def machine() -> str:
    """CPU model, cores, torch version and threads, GPU, Python: the ``Machine:`` line of a section."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"{gpu}, Python {platform.python_version()}"
    )


def command(*, threads: bool = False, without: tuple[str, ...] = ("--note",)) -> str:
    """This process's command line as ``python benchmarks/x.py ...``; ``threads``: prefixed with
    ``OMP_NUM_THREADS=<torch's threads>``; the options in ``without`` (and their values) left out (a ``--note``
    is printed after the command, not inside it)."""
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a in without:
            skip = True
            continue
        if any(a.startswith(f"{w}=") for w in without):
            continue
        argv.append(a)
    line = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + argv)
    if threads:
        import torch

        line = f"OMP_NUM_THREADS={torch.get_num_threads()} {line}"
    return line


def settings(args: argparse.Namespace) -> dict:
    """The parsed arguments as JSON values (paths as strings)."""
    return json.loads(json.dumps(vars(args), default=str))


def new_result(section: str, args: argparse.Namespace, *, subsection: str | None = None, seeds: list[int] | None = None,
               threads: bool = False) -> dict:
    """The header fields of a result file for this run (see :mod:`benchmarks.report`); the script adds
    ``intro``, ``tables``, ``notes`` and ``data``."""
    script = os.path.relpath(sys.argv[0], ROOT)
    return {"section": section, "subsection": subsection, "script": script, "source": f"measured by {script}",
            "command": command(threads=threads), "machine": machine(),
            "date": datetime.now(timezone.utc).date().isoformat(), "seeds": seeds, "settings": settings(args)}


# ---- the command line ----------------------------------------------------------------------------------
def add_seeds_option(parser: argparse.ArgumentParser, default: list[int], help: str = "seeds, one run each") -> None:
    parser.add_argument("--seeds", type=int, nargs="+", default=default, help=help)


def add_output_options(parser: argparse.ArgumentParser,
                       no_write_help: str = "print only: leave the result file and BENCHMARKS.md alone") -> None:
    """``--no-write`` and ``--results-dir`` (read by :func:`finish`)."""
    parser.add_argument("--no-write", action="store_true", help=no_write_help)
    parser.add_argument("--results-dir", type=Path, default=report.RESULTS_DIR,
                        help="write NAME.json here and render the Markdown from this folder's files: BENCHMARKS.md for "
                             "the default folder, FOLDER/BENCHMARKS.md for any other (a trial run)")


def markdown_path(results_dir: Path) -> Path:
    """BENCHMARKS.md for the committed results folder, ``results_dir/BENCHMARKS.md`` for any other."""
    return report.BENCHMARKS_MD if Path(results_dir).resolve() == report.RESULTS_DIR else Path(results_dir) / "BENCHMARKS.md"


def finish(result: dict, name: str, args: argparse.Namespace, *, echo: bool = True) -> str:
    """The end of a benchmark: print the rendered section (``echo``) and, unless ``--no-write``, save
    ``result`` as ``NAME.json`` in ``--results-dir`` and render the Markdown from that folder. Returns the section."""
    body = report.render_section(result)
    if echo:
        print(body, flush=True)
    if not args.no_write:
        path = report.save_result(result, name, args.results_dir)
        markdown = report.write_markdown(args.results_dir, markdown_path(args.results_dir))
        print(f"wrote {path} and {markdown}", flush=True)
    return body


# ---- set-up --------------------------------------------------------------------------------------------
def offline_hub() -> None:
    """Hugging Face libraries offline (the data and models are local mirrors), tokenizers single-threaded."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def threads_from_env() -> int:
    """torch's intra-op threads from ``OMP_NUM_THREADS`` when set (the LM benchmarks run with 1); returns them."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    return torch.get_num_threads()


def lm_teacher(seed: int, **sizes):
    """The byte-level Qwen3-MoE teacher (random weights from ``seed``): :data:`LM_TEACHER` unless ``sizes`` say otherwise."""
    from lkd.models import TinyMoELM

    return TinyMoELM(BYTE_VOCAB, **{**LM_TEACHER, **sizes}, seed=seed).model


def lm_student(seed: int, vocab_size: int = BYTE_VOCAB, **sizes):
    """The Llama student (random weights from ``seed``; bytes unless ``vocab_size``): :data:`LM_STUDENT` unless
    ``sizes`` say otherwise."""
    from lkd.models import TinyLlamaLM

    return TinyLlamaLM(vocab_size, **{**LM_STUDENT, **sizes}, seed=seed).model


# ---- resuming ------------------------------------------------------------------------------------------
def kept_runs(name: str, workdir: Path, key: str, fields: tuple[str, ...] = ("row", "seed")) -> dict[tuple, dict]:
    """Finished runs made with the settings ``key``, by the values of their ``fields`` (``(row, seed)``; a benchmark
    whose runs differ in more names more, e.g. ``("row", "order", "seed")``): those of the committed result file
    ``benchmarks/results/NAME.json`` (its ``data.run_key`` and ``data.runs``: another checkout's sessions) and of
    ``workdir/runs.jsonl`` (this checkout's, one line per run with its ``key``)."""
    kept = {}
    committed = report.RESULTS_DIR / f"{name}.json"
    if committed.is_file() and (data := json.loads(committed.read_text()).get("data", {})).get("run_key") == key:
        kept |= {tuple(r[f] for f in fields): r for r in data["runs"]}
    path = workdir / "runs.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        entry = json.loads(line)
        if entry.pop("key") == key:
            kept[tuple(entry[f] for f in fields)] = entry
    return kept


def seed_major_runs(name: str, workdir: Path, key: str, seeds: list[int], rows: list[str], run, *,
                    skip_missing: bool = False) -> list[dict]:
    """Every ``(row, seed)`` run, seed-major (a stopped benchmark leaves every row with the same seeds): a kept one
    (:func:`kept_runs`) as it is, a missing one from ``run(row, seed)`` appended to ``workdir/runs.jsonl`` with its
    ``key`` as soon as it ends, or, with ``skip_missing``, left out."""
    done, results = kept_runs(name, workdir, key), []
    for seed in seeds:
        for row in rows:
            if (row, seed) in done:
                results.append(done[(row, seed)])
            elif not skip_missing:
                results.append(run(row, seed))
                with (workdir / "runs.jsonl").open("a") as f:
                    f.write(json.dumps({"key": key, **results[-1]}) + "\n")
    return results
