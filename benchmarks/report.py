"""BENCHMARKS.md, rendered from the JSON files under ``benchmarks/results/`` (one per section or subsection), and
the results table of README.md (the block between ``<!-- results -->`` and ``<!-- /results -->``).

    python benchmarks/report.py --render      # rewrite BENCHMARKS.md and README.md's results block, re-running nothing
    python benchmarks/report.py --check       # exit 1 when either is not what the JSON files render

A result file holds what its benchmark measured (see ``BENCHMARKS.md``'s header and :func:`render_section`):

    {
      "section": "Teacher cache", "subsection": "MNIST",      # "## section" / "### subsection" (null: none)
      "script": "benchmarks/teacher_cache.py",
      "source": "measured by benchmarks/teacher_cache.py",     # or "transcribed from BENCHMARKS.md at commit ..."
      "command": "...", "command_note": "...",                 # the note (optional) follows the command verbatim
      "machine": "...", "date": "2026-11-24", "seeds": [0],     # "date_source" (optional): where the date comes from
      "settings": {...},                                       # the script's arguments (optional)
      "intro": ["paragraph", ...],                             # Markdown paragraphs before the tables
      "tables": [{"caption": null, "columns": [COLUMN, ...], "rows": [{KEY: raw value, ...}, ...]}],
      "notes": ["paragraph", ...],                             # Markdown paragraphs after the tables
      "data": {...}                                            # raw numbers outside the tables (optional)
    }

A ``COLUMN`` says how a row's raw value becomes a cell (:func:`column`, :func:`format_cell`): ``header``,
``key`` (or a ``template`` formatted with the whole row), ``format`` (a Python format string, ``"{:.2f}"``;
:data:`RATIO` for ``1.07×``), ``scale`` (100 turns a fraction into %), ``aggregate`` (``"list"``: every
item, joined by ``sep``; ``"mean_std"``: mean ± std of the items; ``"seeds"``: mean ± std of several items,
the item itself when there is one; ``"items"``: a dict as ``name value`` pairs) and ``missing`` (the cell of a
null). ``format`` is for numbers: a string value is written as it
is (a placeholder, or a number known only as printed text); a ``template`` dresses strings (``"`{config}`"``).
This module imports neither torch nor lkd, so rendering needs no training environment.

README.md's results table has one row per track (:data:`SUMMARY`): each row's text is a template whose values
are read from the result files by a declared path (:class:`Value`) and formatted like a table cell, so the README
shows the numbers BENCHMARKS.md shows and cannot drift from them (``tests/test_docs.py`` checks it).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
# the order of the sections in BENCHMARKS.md (result files by stem); files not named here follow, sorted
ORDER = ("mnist_kd", "overhead", "overhead_lm", "continual", "glue", "lm_distill", "cross_tokenizer", "pretrained_students", "on_policy", "on_policy_real", "on_policy_routing", "on_policy_speed", "teacher_cache", "teacher_cache_lm", "memory", "ddp", "export")
RATIO = "{:.2f}×"
PERCENT = {"format": "{:.2f}", "scale": 100}  # a fraction shown in % with two decimals: 0.9889 -> 98.89
HEADER = """\
# lkd benchmarks

Every number below was written by the script named in its section; rerun the command to reproduce it.
Each section is rendered from its JSON file under `benchmarks/results/` (command, machine, date, seeds and the
raw per-seed and per-round numbers): edit those, not this file. `python benchmarks/report.py --render` rewrites
this file from them without re-running anything (`--check`: is it current?). A benchmark script writes its own
JSON file and renders this one; `--no-write` only prints, `--results-dir DIR` puts a trial in `DIR` instead.
Speeds are ratios to a baseline measured in the same process, because the machine is noisy: on 2026-11-23
these runs shared the 2 cores with other benchmark runs. `--reuse` (MNIST) means the checkpoints were
trained by the same command without `--reuse` (same workdir) and only tested and timed again, all models
taking turns, after timing was made interleaved.
"""


# ---- numbers -> text -----------------------------------------------------------------------------------
def ratio(value: float) -> str:
    """A ratio to a baseline as written in the tables: ``ratio(1.0712) == "1.07×"``."""
    return RATIO.format(value)


def mean_std(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """``"mean ± std"`` of ``values`` (sample standard deviation; 0 for a single value), each through ``fmt``."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(std)}"


def column(header: str, key: str | None = None, **spec) -> dict:
    """A table column: ``header``, the row ``key`` it shows and its formatting (see the module docstring);
    options left at ``None`` are not written."""
    return {"header": header, **({"key": key} if key is not None else {}), **{k: v for k, v in spec.items() if v is not None}}


def table(columns: Sequence[dict], rows: Iterable[dict], caption: str | None = None) -> dict:
    """A table of a result file: its columns (:func:`column`), its rows (raw values by key), an optional caption."""
    return {"caption": caption, "columns": list(columns), "rows": list(rows)}


def format_cell(value, spec: dict) -> str:
    """One cell: ``value`` (a row's raw value) formatted as the column ``spec`` says."""
    missing = spec.get("missing", "")
    aggregate = spec.get("aggregate")
    if value is None:
        return missing
    if isinstance(value, str):
        return value
    if aggregate == "items":
        return spec.get("sep", ", ").join(f"{name} {_number(v, spec)}" for name, v in value.items())
    if aggregate in ("list", "mean_std", "seeds"):
        if any(v is None for v in value):
            return missing
        if aggregate == "list":
            return spec.get("sep", ", ").join(_number(v, spec) for v in value)
        if aggregate == "seeds" and len(value) == 1:
            return _number(value[0], spec)
        return mean_std([spec.get("scale", 1) * v for v in value], spec.get("format", "{}"))
    if aggregate is not None:
        raise ValueError(f"unknown aggregate {aggregate!r} in column {spec.get('header')!r}; use list, mean_std, seeds or items")
    return _number(value, spec)


def _number(value, spec: dict) -> str:
    scale = spec.get("scale")
    return spec.get("format", "{}").format(value * scale if scale is not None else value)


def markdown_table(columns: Sequence[dict], rows: Iterable[dict]) -> list[str]:
    """The lines of a Markdown table: the columns' headers, then a line per row."""
    lines = [_table_line(c["header"] for c in columns), "|" + "---|" * len(columns)]
    for row in rows:
        lines.append(_table_line(c["template"].format(**row) if "template" in c else format_cell(row.get(c["key"]), c)
                                 for c in columns))
    return lines


def _table_line(cells: Iterable[str]) -> str:
    return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"


# ---- result files -> Markdown --------------------------------------------------------------------------
def render_section(result: dict) -> str:
    """The body of one (sub)section: the command, the machine, the intro, every table (after its caption),
    the notes; paragraphs separated by blank lines."""
    blocks = [f"Command: `{result['command']}`{result.get('command_note', '')}", f"Machine: {result['machine']}",
              *result.get("intro", [])]
    for table in result.get("tables", []):
        if table.get("caption"):
            blocks.append(table["caption"])
        blocks.append("\n".join(markdown_table(table["columns"], table["rows"])))
    blocks += result.get("notes", [])
    return "\n\n".join(blocks)


def render_document(results: Sequence[dict]) -> str:
    """BENCHMARKS.md: the header, then a ``##`` section per section title (in the order of ``results``), its
    subsections as ``###`` in the same order."""
    sections: dict[str, list[dict]] = {}
    for result in results:
        sections.setdefault(result["section"], []).append(result)
    parts = [HEADER.rstrip()]
    for title, members in sections.items():
        parts.append(f"## {title}")
        for result in members:
            if result.get("subsection"):
                parts.append(f"### {result['subsection']}")
            parts.append(render_section(result))
    return "\n\n".join(parts) + "\n"


def result_paths(results_dir: Path = RESULTS_DIR) -> list[Path]:
    """The result files of ``results_dir`` in BENCHMARKS.md's order (:data:`ORDER`, then the others sorted)."""
    paths = sorted(Path(results_dir).glob("*.json"))
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(paths, key=lambda p: (rank.get(p.stem, len(ORDER)), p.stem))


def load_results(results_dir: Path = RESULTS_DIR) -> list[dict]:
    return [json.loads(p.read_text()) for p in result_paths(results_dir)]


def save_result(result: dict, name: str, results_dir: Path = RESULTS_DIR) -> Path:
    """Write ``result`` as ``results_dir/name.json``; returns its path."""
    path = Path(results_dir) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(result) + "\n")
    return path


def to_json(value, indent: int = 0, width: int = 110) -> str:
    """``value`` as indented JSON, each list or object on one line where it fits in ``width`` (a row, a
    column, the per-seed numbers), so the result files read like the tables they hold."""
    flat = json.dumps(value, ensure_ascii=False)
    if not isinstance(value, (list, dict)) or not value or indent + len(flat) <= width:
        return flat
    pad = " " * (indent + 2)
    if isinstance(value, list):
        items = [pad + to_json(item, indent + 2, width) for item in value]
        return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"
    items = [f"{pad}{json.dumps(key, ensure_ascii=False)}: {to_json(item, indent + 2, width)}" for key, item in value.items()]
    return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"


def write_markdown(results_dir: Path = RESULTS_DIR, path: Path = BENCHMARKS_MD) -> Path:
    """Render every result file of ``results_dir`` into ``path``."""
    Path(path).write_text(render_document(load_results(results_dir)))
    return Path(path)


# ---- README.md's results table -------------------------------------------------------------------------
README_MD = ROOT / "README.md"
RESULTS_BEGIN, RESULTS_END = "<!-- results -->", "<!-- /results -->"


class SummaryError(ValueError):
    """A README summary value is not where :data:`SUMMARY` says it is in its result file."""


class NoMatch(SummaryError):
    """No row of a table matches a :class:`Value`'s selector (yet)."""


class Prefix(str):
    """A :class:`Value` selector value that matches every string starting with it (a long row name)."""


@dataclass(frozen=True)
class Value:
    """One number (or text) of README.md's results table: where it is in a result file and how it is written.

    Attributes:
        file: the result file's stem (``benchmarks/results/<file>.json``).
        path: steps from the file's top: a ``str`` is a key, an ``int`` a list index, a ``dict`` picks the one
            list item whose fields equal its values (a :class:`Prefix` value: start with it).
        spec: how the value is written, as a table column says (:func:`format_cell`): ``format``, ``scale``,
            ``aggregate`` ...; ``pending``: the text written while no row matches yet (a benchmark that fills its
            table run by run), where otherwise that is an error.
    """

    file: str
    path: tuple
    spec: dict = field(default_factory=dict)


def in_row(file: str, key: str, *, table: int = 0, spec: dict | None = None, **match) -> Value:
    """``key`` of the row of the file's ``tables[table]`` whose fields equal ``match`` (``model="student_kd"``)."""
    return Value(file, ("tables", table, "rows", match, key), spec or {})


def in_data(file: str, *keys: str, spec: dict | None = None) -> Value:
    """A value under the file's ``data`` (raw numbers outside the tables)."""
    return Value(file, ("data", *keys), spec or {})


@dataclass(frozen=True)
class SummaryRow:
    """One row of README.md's results table.

    Attributes:
        track: the first cell (linked to ``page`` when there is one).
        page: the track's docs page, relative to README.md, or ``None``.
        section: the BENCHMARKS.md heading that holds the row's numbers with their commands and machine.
        text: the result cell, a template over the names of ``values``.
        values: name -> :class:`Value`.
    """

    track: str
    page: str | None
    section: str
    text: str
    values: dict[str, Value]


SEEDS_PERCENT = {"aggregate": "seeds", **PERCENT}  # per-seed fractions -> "mean ± std" in % (one seed: the value)
TIMES = {"format": RATIO}
GLUE_SCORE = {"aggregate": "seeds", "format": "{:.2f}", "pending": "–"}  # the GLUE table fills run by run
SUMMARY = (
    SummaryRow(
        "MNIST", "docs/mnist.md", "MNIST distillation",
        "with 1,000 labels and the teacher labelling the other 54,000 images (the demo): student alone {few_alone} %, "
        "distilled {few_kd} % (teacher {few_teacher} %); with all labels: teacher {teacher} % ({teacher_params} params), "
        "student ({params} params, {share} of the teacher's) alone {alone} %, distilled {kd} %, {speed} the teacher's CPU "
        "inference speed; a cached-teacher epoch takes {cached} a student-only one (live teacher {live})",
        {"few_alone": in_row("mnist_kd_few_labels", "test_acc", model="student_scratch", spec=SEEDS_PERCENT),
         "few_kd": in_row("mnist_kd_few_labels", "test_acc", model="student_kd", spec=SEEDS_PERCENT),
         "few_teacher": in_row("mnist_kd_few_labels", "test_acc", model="teacher", spec=SEEDS_PERCENT),
         "teacher": in_row("mnist_kd", "test_acc", model="teacher", spec=SEEDS_PERCENT),
         "teacher_params": in_row("mnist_kd", "params", model="teacher", spec={"format": "{:,}"}),
         "params": in_row("mnist_kd", "params", model="student_kd", spec={"format": "{:,}"}),
         "share": in_row("mnist_kd", "params_vs_teacher", model="student_kd", spec={"format": "{:.3f}"}),
         "alone": in_row("mnist_kd", "test_acc", model="student_scratch", spec=SEEDS_PERCENT),
         "kd": in_row("mnist_kd", "test_acc", model="student_kd", spec=SEEDS_PERCENT),
         "speed": in_row("mnist_kd", "speed_vs_teacher", model="student_kd", spec=TIMES),
         "cached": in_row("teacher_cache", "ratio", mode="distillation, cached teacher", spec=TIMES),
         "live": in_row("teacher_cache", "ratio", mode="distillation, live teacher", spec=TIMES)}),
    SummaryRow(
        "DKVB, class-incremental MNIST", "docs/dkvb_continual.md", "Continual class pairs",
        "class pairs one after another, mean over 5 random orders: DKVB + label-free deskew-PCA encoder, values by Adagrad, {pca} % "
        "final, {pca_forget} points forgetting; without deskew {no_deskew} %; an MLP {mlp} %, {mlp_forget} points. DKVB student on the "
        "distilled student's frozen features: {dkvb} % MNIST test, {dkvb_speed} the teacher's speed, {dkvb_size} of "
        "its size with keys counted (DKVB on raw pixels: {pixels} %). Nearest-key lookup, batch 1,000: {lookup} "
        "`VectorQuantize`'s speed, the same keys",
        {"pca": in_row("continual", "final", variant="dkvb_pca_adagrad", spec=SEEDS_PERCENT),
         "pca_forget": in_row("continual", "forgetting", variant="dkvb_pca_adagrad", spec=SEEDS_PERCENT),
         "no_deskew": in_row("continual", "final", variant="dkvb_pca_adagrad_no_deskew", spec=SEEDS_PERCENT),
         "mlp": in_row("continual", "final", variant="mlp_adam", spec=SEEDS_PERCENT),
         "mlp_forget": in_row("continual", "forgetting", variant="mlp_adam", spec=SEEDS_PERCENT),
         "dkvb": in_row("mnist_kd", "test_acc", model="student_dkvb_encoder", spec=SEEDS_PERCENT),
         "dkvb_speed": in_row("mnist_kd", "speed_vs_teacher", model="student_dkvb_encoder", spec=TIMES),
         "dkvb_size": in_row("mnist_kd", "params_vs_teacher", model="student_dkvb_encoder", spec={"format": "{:.3f}"}),
         "pixels": in_row("mnist_kd", "test_acc", model="student_dkvb_kd", spec=SEEDS_PERCENT),
         "lookup": in_row("dkvb_lookup", "speedup", batch=1000, spec=TIMES)}),
    SummaryRow(
        "GLUE, your own CSV", "docs/text_classification.md", "GLUE",
        "dev score %, distilled vs alone (MiniLM-L6 teacher → 3-layer student, mean over seeds; – : not run yet): "
        "MRPC {mrpc_kd} vs {mrpc_alone} (teacher {mrpc_teacher}), RTE {rte_kd} vs {rte_alone} (teacher {rte_teacher}), "
        "CoLA MCC {cola_kd} vs {cola_alone} (teacher {cola_teacher}), SST-2 {sst2_kd} vs {sst2_alone} (teacher "
        "{sst2_teacher}); the student runs at {speed} the teacher's CPU speed (SST-2). Best student (`{best}`, 3 seeds) keeps "
        "{best_pct} % of its teacher's average score (target 97 %) at {best_speed} its speed (slowest task); `kd_mean_pool` with "
        "a transfer set per task (more text the teacher labels) keeps {transfer_pct} %",
        {**{f"{task}_{who}": in_row("glue", "scores", task=task, name=name, spec=GLUE_SCORE)
            for task in ("mrpc", "rte", "cola", "sst2")
            for who, name in (("kd", "student_kd"), ("alone", "student_alone"), ("teacher", "teacher"))},
         "speed": in_row("glue", "speedup", task="sst2", name="student_kd", spec={**TIMES, "pending": "–"}),
         "best": in_data("glue", "best_retention", "row"),
         "best_pct": in_data("glue", "best_retention", "pct", spec={"format": "{:.1f}"}),
         "best_speed": in_data("glue", "best_retention", "speed", spec=TIMES),
         "transfer_pct": in_data("glue", "transfer_retention", "pct", spec={"format": "{:.1f}"})}),
    SummaryRow(
        "Language models, MoE routing", "docs/language_models.md", "Language models",
        "byte-level WikiText-2, test perplexity per byte: MoE teacher {teacher}; students alone {scratch}, plain KD "
        "(T²·KL) {kd}, routed through every expert {all}, Knowledge Augmentation {ka}, SAR gate {sar}, lkd's "
        "student-aware router {sa}, Δ to plain KD {sa_delta}; from a top-{top_k} teacher cache a step takes {cached} "
        "a student-only one (live teacher {live})",
        {"teacher": in_data("lm_distill", "teacher", "ppl", spec={"format": "{:.3f}"}),
         "scratch": in_row("lm_distill", "ppl_ms", row="scratch (CE, no teacher)"),
         "kd": in_row("lm_distill", "ppl_ms", row="teacher: its own routing (plain KD)"),
         "all": in_row("lm_distill", "ppl_ms", row="all: every expert"),
         "ka": in_row("lm_distill", "ppl_ms", row="ka: Knowledge Augmentation"),
         "sar": in_row("lm_distill", "ppl_ms", row="sar: student-aware gate retraining"),
         "sa": in_row("lm_distill", "ppl_ms", row=Prefix("student_aware:")),
         "sa_delta": in_row("lm_distill", "delta", row=Prefix("student_aware:")),
         "top_k": in_data("teacher_cache_lm", "cache", "top_k"),
         "cached": in_row("teacher_cache_lm", "ratio", mode="distillation, cached teacher", spec=TIMES),
         "live": in_row("teacher_cache_lm", "ratio", mode="distillation, live teacher", spec=TIMES)}),
    SummaryRow(
        "Cross-tokenizer", "docs/cross_tokenizer.md", "Cross-tokenizer distillation",
        "pretrained SmolLM2-135M → a {params}-parameter student with its own BPE, test bits per byte: alone {alone}, ALM "
        "{alm}, shared-vocabulary KL {shared_kl}; the teacher {teacher}",
        {"params": in_row("cross_tokenizer", "params", name=Prefix("ALM"), spec={"format": "{:.1f} M", "scale": 1e-6}),
         "alone": in_row("cross_tokenizer", "bpb", name=Prefix("student alone"), spec={"aggregate": "seeds", "format": "{:.3f}"}),
         "alm": in_row("cross_tokenizer", "bpb", name=Prefix("ALM"), spec={"aggregate": "seeds", "format": "{:.3f}"}),
         "shared_kl": in_row("cross_tokenizer", "bpb", name=Prefix("shared-vocabulary KL"),
                             spec={"aggregate": "seeds", "format": "{:.3f}"}),
         "teacher": in_row("cross_tokenizer", "bpb", name=Prefix("teacher"), spec={"aggregate": "seeds", "format": "{:.3f}"})}),
    SummaryRow(
        "Pretrained students", "docs/language_models.md", "Pretrained students",
        "SmolLM2-135M pruned to {params} parameters, 100 steps on WikiText-2, test bits per byte: width-pruned {width_ce} "
        "(CE) vs {width_kd_ce} (KL + CE), depth-pruned {depth_ce} vs {depth_kd_ce}, from {width_untrained} / "
        "{depth_untrained} untrained; the teacher {teacher}",
        {"params": in_row("pretrained_students", "params", name=Prefix("width (MLP 1536 → 640 channels, 9 → 6 heads, by activation importance): untrained"),
                          spec={"format": "{:.1f} M", "scale": 1e-6}),
         **{f"{kind}_{row}": in_row("pretrained_students", "bpb", name=f"{label}: {what}", spec={"aggregate": "seeds", "format": "{:.3f}"})
            for kind, label in (("width", "width (MLP 1536 → 640 channels, 9 → 6 heads, by activation importance)"),
                                ("depth", "depth (15 of 30 layers)"))
            for row, what in (("ce", "cross-entropy only"), ("kd_ce", "distilled + cross-entropy"), ("untrained", "untrained"))},
         "teacher": in_row("pretrained_students", "bpb", name=Prefix("teacher: SmolLM2-135M-Instruct, its own tokenizer (on the pruned"),
                           spec={"aggregate": "seeds", "format": "{:.3f}"})}),
    SummaryRow(
        "On-policy distillation", "docs/on_policy.md", "On-policy distillation",
        "SmolLM2-135M teaching its depth-pruned half on SST-2 prompts ({steps} steps), the teacher's NLL of the student's "
        "samples (lower is better) and ROUGE-L against its completions: sequence-level KD {seq_nll}, {seq_rouge}; on-policy "
        "{op_nll}, {op_rouge}; half the rows sampled (λ = 0.5) {mix_nll}, {mix_rouge} (the teacher's own NLL {teacher_nll}); arithmetic with a "
        "capacity-limited student, exact match: off-policy KD {arith_kd}, on-policy {arith_op}; one on-policy step: lkd "
        "{lkd} TRL's `GKDTrainer` (same work), {replay} with replay 2, TRL's defaults {trl_defaults}",
        {"steps": in_data("on_policy_real", "steps"),
         **{f"{key}_{col}": in_row("on_policy_real", col if col == "nll" else "rouge", name=Prefix(prefix),
                                   spec={"aggregate": "seeds", "format": "{:.2f}" if col == "nll" else "{:.3f}"})
            for key, prefix in (("seq", "sequence-level KD on"), ("op", "on-policy, β = 0.5"), ("mix", "λ = 0.5"))
            for col in ("nll", "rouge")},
         "teacher_nll": in_row("on_policy_real", "nll", name=Prefix("teacher"), spec={"aggregate": "seeds", "format": "{:.2f}"}),
         "arith_kd": in_row("on_policy", "em", name="off-policy KD on the references (forward KL)", spec={"aggregate": "seeds", "format": "{:.3f}"}),
         "arith_op": in_row("on_policy", "em", name="on-policy, β = 0.5 (JSD)", spec={"aggregate": "seeds", "format": "{:.3f}"}),
         "lkd": in_row("on_policy_speed", "ratio", loop=Prefix("lkd (`OnPolicyDistillModule`"), spec=TIMES),
         "replay": in_row("on_policy_speed", "ratio", loop=Prefix("lkd, `replay_steps: 2`"), spec=TIMES),
         "trl_defaults": in_row("on_policy_speed", "ratio", loop=Prefix("TRL `GKDTrainer` with its defaults"), spec=TIMES)}),
    SummaryRow(
        "Export", "docs/export.md", "Export",
        "`lkd export` → onnxruntime int8 vs torch eager fp32, throughput and metric change: MNIST {mnist}, accuracy "
        "{mnist_delta}; GLUE {glue}, SST-2 accuracy {glue_delta}; LM {lm}, perplexity {lm_delta}. The exported LM "
        "scores {lm_eval} bits per byte in lm-evaluation-harness, {lkd_bpb} in `lkd test`",
        {**{name: in_row("export", "thr_ratio", student=Prefix(f"{name}:"), runtime="onnxruntime int8", spec=TIMES)
            for name in ("mnist", "glue", "lm")},
         **{f"{name}_delta": in_row("export", "delta", student=Prefix(f"{name}:"), runtime="onnxruntime int8")
            for name in ("mnist", "glue", "lm")},
         "lm_eval": in_data("export", "lm", "harness", "lm_eval_bits_per_byte", spec={"format": "{:.3f}"}),
         "lkd_bpb": in_data("export", "lm", "harness", "lkd_test_bpb", spec={"format": "{:.3f}"})}),
    SummaryRow(
        "Framework overhead", None, "Framework overhead",
        "lkd (Lightning) vs a plain PyTorch loop: an MNIST distillation epoch {mnist}, an LM distillation step "
        "{lm} (TRL's `GKDTrainer` {trl})",
        {"mnist": in_row("overhead", "ratio", loop=Prefix("Lightning"), spec=TIMES),
         "lm": in_row("overhead_lm", "ratio", loop=Prefix("lkd"), spec=TIMES),
         "trl": in_row("overhead_lm", "ratio", loop=Prefix("TRL"), spec=TIMES)}),
)
"""README.md's results table: one row per track, then the framework's overhead."""


def anchor(heading: str) -> str:
    """The link target GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens
    (``anchor("Teacher cache") == "teacher-cache"``)."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def pick(results: Mapping[str, dict], value: Value):
    """The raw value ``value`` points at in ``results`` (result files by stem); :class:`SummaryError` naming the
    step that failed and what is there instead."""
    if value.file not in results:
        raise SummaryError(f"no result file {value.file}.json; there are {sorted(results)}")
    here, walked = results[value.file], value.file
    for step in value.path:
        if isinstance(step, dict):
            items = here if isinstance(here, list) else []
            found = [item for item in items if isinstance(item, dict) and all(_matches(item.get(k), v) for k, v in step.items())]
            if len(found) != 1:
                names = {k: [item.get(k) for item in items if isinstance(item, dict)] for k in step}
                error = NoMatch if not found else SummaryError
                raise error(f"{walked}: {len(found)} items match {step} (need exactly one); there are {names}")
            here, walked = found[0], f"{walked}{step}"
        elif isinstance(here, dict) and isinstance(step, str) and step in here:
            here, walked = here[step], f"{walked}.{step}"
        elif isinstance(here, list) and isinstance(step, int) and -len(here) <= step < len(here):
            here, walked = here[step], f"{walked}[{step}]"
        else:
            if isinstance(here, dict):
                there = f"the keys {sorted(here)}"
            else:
                there = f"a {type(here).__name__}" + (f" of {len(here)} items" if isinstance(here, list) else "")
            raise SummaryError(f"{walked} has no {step!r}; it holds {there}")
    return here


def _matches(field_value, wanted) -> bool:
    if isinstance(wanted, Prefix):
        return isinstance(field_value, str) and field_value.startswith(wanted)
    return field_value == wanted


def summary_row_text(results: Mapping[str, dict], row: SummaryRow) -> str:
    """The result cell of ``row``: its template with every value picked and formatted."""
    cells = {}
    for name, value in row.values.items():
        spec = {k: v for k, v in value.spec.items() if k != "pending"}
        try:
            cells[name] = format_cell(pick(results, value), spec)
        except NoMatch as error:
            if "pending" not in value.spec:
                raise SummaryError(f"README results row {row.track!r}, value {name!r}: {error}. HINT: point SUMMARY in "
                                   "benchmarks/report.py at the result file's current fields") from None
            cells[name] = value.spec["pending"]
        except SummaryError as error:
            raise SummaryError(f"README results row {row.track!r}, value {name!r}: {error}. HINT: point SUMMARY in "
                               "benchmarks/report.py at the result file's current fields") from None
    return row.text.format(**cells)


def render_summary(results: Mapping[str, dict], rows: Sequence[SummaryRow] = SUMMARY) -> str:
    """README.md's results table (the text between its markers): track (linked to its page), what was
    measured, and the BENCHMARKS.md section with every number, its command and its machine."""
    lines = ["| track | measured | all numbers, commands, machines |", "|---|---|---|"]
    for row in rows:
        track = f"[{row.track}]({row.page})" if row.page else row.track
        where = f"[{row.section}](BENCHMARKS.md#{anchor(row.section)})"
        lines.append(_table_line((track, summary_row_text(results, row), where)))
    return "\n".join(lines)


def results_by_name(results_dir: Path = RESULTS_DIR) -> dict[str, dict]:
    """Every result file of ``results_dir`` by its stem."""
    return {p.stem: json.loads(p.read_text()) for p in result_paths(results_dir)}


def replace_results_block(readme: str, table: str, where: str = "README.md") -> str:
    """``readme`` with the text between :data:`RESULTS_BEGIN` and :data:`RESULTS_END` replaced by ``table``."""
    begin, end = readme.find(RESULTS_BEGIN), readme.find(RESULTS_END)
    if readme.count(RESULTS_BEGIN) != 1 or readme.count(RESULTS_END) != 1 or end < begin:
        raise SummaryError(f"{where} needs one {RESULTS_BEGIN} line, then one {RESULTS_END} line (found "
                           f"{readme.count(RESULTS_BEGIN)} and {readme.count(RESULTS_END)}). HINT: put the two markers "
                           "on lines of their own where the results table goes")
    return readme[:begin + len(RESULTS_BEGIN)] + "\n" + table + "\n" + readme[end:]


def rendered_readme(results_dir: Path = RESULTS_DIR, path: Path = README_MD) -> str:
    """``path`` (README.md) as it reads with its results block rendered from ``results_dir``."""
    return replace_results_block(Path(path).read_text(), render_summary(results_by_name(results_dir)), str(path))


def write_readme(results_dir: Path = RESULTS_DIR, path: Path = README_MD) -> Path:
    """Rewrite the results block of ``path`` (README.md) from the result files of ``results_dir``."""
    Path(path).write_text(rendered_readme(results_dir, path))
    return Path(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--render", action="store_true", help="rewrite the Markdown file from the result files")
    action.add_argument("--check", action="store_true", help="exit 1 when the Markdown file differs from the rendering")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--markdown", type=Path, default=BENCHMARKS_MD)
    parser.add_argument("--readme", type=Path, default=README_MD, help="the file whose results block is rendered")
    args = parser.parse_args()
    if args.render:
        print(f"{write_markdown(args.results_dir, args.markdown)} rendered from {len(result_paths(args.results_dir))} files")
        print(f"{write_readme(args.results_dir, args.readme)}: results block rendered ({len(SUMMARY)} rows)")
        return
    stale = [path for path, current in ((args.markdown, render_document(load_results(args.results_dir))),
                                         (args.readme, rendered_readme(args.results_dir, args.readme)))
             if path.read_text() != current]
    if stale:
        sys.exit(f"{' and '.join(map(str, stale))} differ(s) from what {args.results_dir} renders. "
                 "HINT: python benchmarks/report.py --render")


if __name__ == "__main__":
    main()
