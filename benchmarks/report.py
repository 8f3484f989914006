"""BENCHMARKS.md, rendered from the JSON files under ``benchmarks/results/`` (one per section or subsection).

    python benchmarks/report.py --render      # rewrite BENCHMARKS.md from benchmarks/results/*.json, re-running nothing
    python benchmarks/report.py --check       # exit 1 when BENCHMARKS.md is not what the JSON files render

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
item, joined by ``sep``; ``"mean_std"``: mean ± std of the items; ``"items"``: a dict as ``name value``
pairs) and ``missing`` (the cell of a null). ``format`` is for numbers: a string value is written as it
is (a placeholder, or a number known only as printed text); a ``template`` dresses strings (``"`{config}`"``).
This module imports neither torch nor lkd, so rendering needs no training environment.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
# the order of the sections in BENCHMARKS.md (result files by stem); files not named here follow, sorted
ORDER = ("mnist_kd", "overhead", "overhead_lm", "continual", "glue", "lm_distill", "cross_tokenizer", "teacher_cache", "teacher_cache_lm", "memory", "ddp", "export")
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
    if aggregate in ("list", "mean_std"):
        if any(v is None for v in value):
            return missing
        if aggregate == "list":
            return spec.get("sep", ", ").join(_number(v, spec) for v in value)
        return mean_std([spec.get("scale", 1) * v for v in value], spec.get("format", "{}"))
    if aggregate is not None:
        raise ValueError(f"unknown aggregate {aggregate!r} in column {spec.get('header')!r}; use list, mean_std or items")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--render", action="store_true", help="rewrite the Markdown file from the result files")
    action.add_argument("--check", action="store_true", help="exit 1 when the Markdown file differs from the rendering")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--markdown", type=Path, default=BENCHMARKS_MD)
    args = parser.parse_args()
    if args.render:
        print(f"{write_markdown(args.results_dir, args.markdown)} rendered from {len(result_paths(args.results_dir))} files")
    elif args.markdown.read_text() != render_document(load_results(args.results_dir)):
        sys.exit(f"{args.markdown} differs from what {args.results_dir} renders. HINT: python benchmarks/report.py --render")


if __name__ == "__main__":
    main()
