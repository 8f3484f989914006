"""BENCHMARKS.md is rendered from benchmarks/results/*.json; the formatting helpers; the paired timer. No training."""

from __future__ import annotations

import json
import time
from argparse import Namespace

import pytest

from benchmarks import common, report

REQUIRED = ("section", "subsection", "script", "source", "command", "machine", "date", "seeds", "tables")


def test_committed_benchmarks_md_is_the_rendering_of_the_result_files():
    results = report.load_results()
    assert {p.stem for p in report.result_paths()} >= set(report.ORDER)  # every section has its file
    for result in results:
        missing = [key for key in REQUIRED if key not in result]
        assert not missing, f"{result.get('section')}: result file lacks {missing}"
    rendered = report.render_document(results)
    assert report.BENCHMARKS_MD.read_text() == rendered, (
        "BENCHMARKS.md differs from what benchmarks/results/*.json render. HINT: python benchmarks/report.py --render")


def test_transcribed_numbers_come_out_as_they_went_in():
    """A known row of the teacher-cache table: per-round seconds, the ratio, the accuracy in %."""
    result = json.loads((report.RESULTS_DIR / "teacher_cache.json").read_text())
    lines = report.markdown_table(result["tables"][0]["columns"], result["tables"][0]["rows"])
    assert lines[4] == "| distillation, cached teacher | 1.87 | 1.88, 1.72, 1.87, 2.19, 1.78 | 1.01× | 98.89 |"


def test_ratio_and_mean_std():
    assert report.ratio(1.0712) == "1.07×"
    assert report.ratio(1) == "1.00×"
    assert report.mean_std([98.84, 98.89, 98.94]) == "98.89 ± 0.05"
    assert report.mean_std([99.46]) == "99.46 ± 0.00"  # one seed: no spread
    assert report.mean_std([7.455, 7.443], "{:.3f}") == "7.449 ± 0.008"


@pytest.mark.parametrize(("value", "spec", "cell"), [
    ([0.9884, 0.9889, 0.9894], {"aggregate": "mean_std", **report.PERCENT}, "98.89 ± 0.05"),
    ([0.9923, 0.9932], {"aggregate": "list", **report.PERCENT}, "99.23, 99.32"),
    ([7.455, 7.443], {"aggregate": "list", "format": "{:.3f}", "sep": " / "}, "7.455 / 7.443"),
    ({"acc": 84.63, "f1": 88.0}, {"aggregate": "items", "format": "{:.2f}"}, "acc 84.63, f1 88.00"),
    (22_700_000, {"format": "{:.1f} M", "scale": 1e-6}, "22.7 M"),
    (2435818, {"format": "{:,}"}, "2,435,818"),
    (1.0712, {"format": report.RATIO}, "1.07×"),
    (None, {"format": report.RATIO, "missing": "–"}, "–"),
    ([0.25, None], {"aggregate": "mean_std", **report.PERCENT, "missing": "n/a"}, "n/a"),
    ("not run", {"format": "{:.2f}"}, "not run"),
])
def test_format_cell(value, spec, cell):
    assert report.format_cell(value, spec) == cell


def test_format_cell_refuses_an_unknown_aggregate():
    with pytest.raises(ValueError, match="unknown aggregate 'median'"):
        report.format_cell([1.0], {"header": "x", "aggregate": "median"})


def test_render_section_order_and_table():
    result = {
        "command": "python benchmarks/x.py", "machine": "a CPU", "intro": ["Before."], "notes": ["After."],
        "tables": [{"caption": "The table:", "rows": [{"name": "a", "v": 0.5}, {"name": "b", "v": None}],
                    "columns": [report.column("name", "name"), report.column("v (%)", "v", format="{:.1f}", scale=100),
                                report.column("config", template="`{name}`")]}],
    }
    assert report.render_section(result) == (
        "Command: `python benchmarks/x.py`\n\nMachine: a CPU\n\nBefore.\n\nThe table:\n\n"
        "| name | v (%) | config |\n|---|---|---|\n| a | 50.0 | `a` |\n| b | | `b` |\n\nAfter."
    )


def test_to_json_round_trips_and_keeps_short_rows_on_one_line():
    value = {"rows": [{"a": 1, "b": [0.1, 0.2]}, {"a": 2, "b": None}], "text": "x" * 200, "empty": []}
    text = report.to_json(value, width=40)
    assert json.loads(text) == value
    assert '    {"a": 1, "b": [0.1, 0.2]},' in text.splitlines()


def test_finish_writes_a_trial_folder_and_leaves_the_committed_files_alone(tmp_path, capsys):
    committed = report.BENCHMARKS_MD.read_text()
    result = {"section": "Trial", "subsection": None, "command": "python t.py", "machine": "m", "tables": []}
    body = common.finish(result, "trial", Namespace(no_write=False, results_dir=tmp_path))
    assert json.loads((tmp_path / "trial.json").read_text()) == result
    assert (tmp_path / "BENCHMARKS.md").read_text().endswith("## Trial\n\n" + body + "\n")
    assert report.BENCHMARKS_MD.read_text() == committed
    assert not (report.RESULTS_DIR / "trial.json").exists()
    common.finish(result, "trial2", Namespace(no_write=True, results_dir=tmp_path))
    assert not (tmp_path / "trial2.json").exists()
    assert "Command: `python t.py`" in capsys.readouterr().out


def sleeper(seconds: float, calls: list):
    """A run for the paired timer: sleeps ``seconds``, counts its calls, returns what it measured."""

    def run() -> float:
        calls.append(seconds)
        start = time.perf_counter()
        time.sleep(seconds)
        return time.perf_counter() - start

    return run


def test_paired_timing_ratio_of_runs_with_known_relative_cost():
    calls: list = []
    timing = common.paired_timing({"short": sleeper(0.02, calls), "long": sleeper(0.06, calls)}, baseline="short",
                                  repeats=5, echo=False)
    assert calls[:2] == [0.02, 0.06]  # one burn-in call each, then 5 interleaved rounds
    assert calls[2:] == [0.02, 0.06] * 5
    assert [len(v) for v in timing.seconds.values()] == [5, 5]  # the burn-in is not counted
    assert timing.ratio("short") == 1.0
    assert 2.0 < timing.ratio("long") < 4.0, timing.seconds
    row = timing.row("long")
    assert row["median_s"] == pytest.approx(sorted(timing.seconds["long"])[2])
    assert row["ratio"] == timing.ratio("long")


def test_paired_timing_uses_the_burn_in_runs_and_checks_its_arguments():
    calls: list = []
    timing = common.paired_timing({"a": sleeper(0.001, calls)}, baseline="a", repeats=2, echo=False,
                                  burn_in={"a": sleeper(0.002, calls)})
    assert calls == [0.002, 0.001, 0.001] and len(timing.seconds["a"]) == 2
    with pytest.raises(ValueError, match="baseline 'b'"):
        common.paired_timing({"a": sleeper(0.001, [])}, baseline="b", repeats=1)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        common.paired_timing({"a": sleeper(0.001, [])}, baseline="a", repeats=0)
