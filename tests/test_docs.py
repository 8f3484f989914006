"""README.md is a front door and docs/ holds the rest: every relative link of README.md and docs/*.md reaches a
file (and a heading, for ``#anchor`` links into Markdown), the README stays short, and its results table is what
``benchmarks/report.py`` renders from ``benchmarks/results/*.json``. No training."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks import report

ROOT = report.ROOT
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 150
TRACK_PAGES = ("mnist", "dkvb_continual", "text_classification", "language_models", "cross_tokenizer", "data",
               "memory_multi_device", "export", "troubleshooting", "architecture", "install")

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def links(path: Path) -> list[str]:
    """The link targets of a Markdown file, outside code blocks and inline code."""
    text = INLINE_CODE.sub("", FENCE.sub("", path.read_text()))
    return LINK.findall(text)


def headings(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file (a repeated one gets ``-1``, ``-2``, ...)."""
    seen: dict[str, int] = {}
    anchors = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        if match := re.match(r"#{1,6} +(.+?) *#*$", line):
            base = report.anchor(match.group(1))
            anchors.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    return anchors


def broken_links(path: Path) -> list[str]:
    """Every relative link of ``path`` whose file does not exist, or whose ``#anchor`` names no heading there."""
    broken = []
    for target in links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not checked offline
            continue
        file, _, fragment = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            broken.append(f"{target} (no file {_shown(resolved)})")
        elif fragment and resolved.suffix == ".md" and fragment not in headings(resolved):
            broken.append(f"{target} (no heading #{fragment} in {_shown(resolved)}; there are {sorted(headings(resolved))})")
    return broken


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(path):
    assert links(path), f"{path.name} links nowhere"
    assert not broken_links(path), f"{path.relative_to(ROOT)}: broken links {broken_links(path)}"


def test_the_link_checker_finds_a_broken_file_and_a_broken_anchor(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Two words\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#two-words) [gone](missing.md) [bad](other.md#nothing) [self](#top)\n"
                    "`[code](missing.md)`\n```\n[fenced](missing.md)\n```\n# Top\n![fig](figures/x.png)\n")
    found = broken_links(page)
    assert [b.split(" ")[0] for b in found] == ["missing.md", "other.md#nothing", "figures/x.png"]


def test_anchor_is_githubs():
    assert report.anchor("Teacher cache") == "teacher-cache"
    assert report.anchor("Cross-tokenizer distillation") == "cross-tokenizer-distillation"
    assert report.anchor("GLUE: BERT-style teacher → smaller student") == "glue-bert-style-teacher--smaller-student"
    assert report.anchor("Language models: lkd, a plain loop and TRL") == "language-models-lkd-a-plain-loop-and-trl"


def test_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines (at most {MAX_README_LINES}): move detail to docs/"
    text = "\n".join(lines)
    for marker in ("<!-- demo -->", "<!-- /demo -->", report.RESULTS_BEGIN, report.RESULTS_END):
        assert text.count(marker) == 1, marker
    assert "](BENCHMARKS.md)" in text
    for name in TRACK_PAGES:
        assert (ROOT / "docs" / f"{name}.md").is_file(), name
        assert f"](docs/{name}.md)" in text, f"README.md does not link docs/{name}.md"


def test_every_figure_is_shown_by_a_page():
    shown = {(page.parent / target).resolve() for page in [README, *PAGES] for target in links(page)}
    figures = sorted((ROOT / "docs" / "figures").glob("*.png"))
    assert figures and not [f.name for f in figures if f.resolve() not in shown]


def test_readme_results_block_is_what_report_renders():
    assert README.read_text() == report.rendered_readme(), (
        "README.md's results block differs from what benchmarks/results/*.json render. "
        "HINT: python benchmarks/report.py --render")


def test_results_table_has_one_row_per_track_and_the_overhead():
    block = README.read_text().split(report.RESULTS_BEGIN)[1].split(report.RESULTS_END)[0]
    rows = [line for line in block.strip().splitlines()[2:]]
    assert [row.track for row in report.SUMMARY] == ["MNIST", "DKVB, class-incremental MNIST", "GLUE, your own CSV",
                                                      "Language models, MoE routing", "Cross-tokenizer", "Pretrained students", "On-policy distillation", "Export",
                                                      "Framework overhead"]
    assert len(rows) == len(report.SUMMARY)
    assert "distilled 98.90 ± 0.12 %" in rows[0] and "distilled 99.29 ± 0.03 %" in rows[0]  # 3 seeds each: mnist_kd_few_labels.json, mnist_kd.json
    assert "](BENCHMARKS.md#mnist-distillation)" in rows[0]


def test_summary_values_are_picked_and_formatted():
    results = {"r": {"tables": [{"rows": [{"name": "student alone (BPE)", "acc": [0.9901, 0.9899]},
                                          {"name": "teacher", "acc": [0.9937]}]}], "data": {"ppl": 5.4902}}}
    row = report.SummaryRow("T", None, "Teacher cache", "alone {alone} %, teacher {teacher} %, ppl {ppl}", {
        "alone": report.in_row("r", "acc", name=report.Prefix("student alone"), spec=report.SEEDS_PERCENT),
        "teacher": report.in_row("r", "acc", name="teacher", spec=report.SEEDS_PERCENT),
        "ppl": report.in_data("r", "ppl", spec={"format": "{:.2f}"})})
    assert report.summary_row_text(results, row) == "alone 99.00 ± 0.01 %, teacher 99.37 %, ppl 5.49"
    assert report.render_summary(results, [row]).splitlines()[2] == (
        "| T | alone 99.00 ± 0.01 %, teacher 99.37 %, ppl 5.49 | [Teacher cache](BENCHMARKS.md#teacher-cache) |")


@pytest.mark.parametrize(("value", "message"), [
    (report.in_row("r", "acc", name="student_kd"), r"0 items match \{'name': 'student_kd'\} .* \{'name': \['teacher'\]\}"),
    (report.in_row("r", "f1", name="teacher"), r"has no 'f1'; it holds the keys \['acc', 'name'\]"),
    (report.in_data("missing", "x"), r"no result file missing.json; there are \['r'\]"),
])
def test_a_summary_value_that_moved_is_named_with_what_is_there(value, message):
    results = {"r": {"tables": [{"rows": [{"name": "teacher", "acc": [0.99]}]}]}}
    row = report.SummaryRow("T", None, "S", "{v}", {"v": value})
    with pytest.raises(report.SummaryError, match=message) as info:
        report.summary_row_text(results, row)
    assert "README results row 'T', value 'v'" in str(info.value) and "HINT: point SUMMARY" in str(info.value)


def test_a_pending_value_is_written_only_while_no_row_matches():
    results = {"r": {"tables": [{"rows": [{"name": "teacher", "acc": [0.99]}, {"name": "twice", "acc": [0.5]},
                                          {"name": "twice", "acc": [0.6]}]}]}}
    pending = {**report.SEEDS_PERCENT, "pending": "–"}
    row = report.SummaryRow("T", None, "S", "kd {kd}, teacher {teacher}", {
        "kd": report.in_row("r", "acc", name="student_kd", spec=pending), "teacher": report.in_row("r", "acc", name="teacher", spec=pending)})
    assert report.summary_row_text(results, row) == "kd –, teacher 99.00"
    ambiguous = report.SummaryRow("T", None, "S", "{v}", {"v": report.in_row("r", "acc", name="twice", spec=pending)})
    with pytest.raises(report.SummaryError, match="2 items match"):  # only a row not there yet is pending
        report.summary_row_text(results, ambiguous)


def test_a_stale_or_missing_results_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{report.RESULTS_BEGIN}\nold table\n{report.RESULTS_END}\n\nafter\n")
    rendered = report.rendered_readme(path=readme)
    assert rendered.startswith(f"# x\n\n{report.RESULTS_BEGIN}\n| track | measured |")
    assert rendered.endswith(f"|\n{report.RESULTS_END}\n\nafter\n") and "old table" not in rendered
    report.write_readme(path=readme)
    assert readme.read_text() == rendered == report.rendered_readme(path=readme)  # rendering twice changes nothing
    readme.write_text("# x\n")
    with pytest.raises(report.SummaryError, match="needs one <!-- results --> line"):
        report.rendered_readme(path=readme)
