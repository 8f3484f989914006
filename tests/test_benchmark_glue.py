"""benchmarks/glue.py's plan and resuming (no training): the order jobs start in, and which kept runs count."""

import argparse
import json

import pytest

from benchmarks import glue


def plan_args(**kw) -> argparse.Namespace:
    defaults = {"tasks": ["mrpc", "rte"], "seeds": [0, 1, 2], "parts": ["ablations", "dkvb"], "ablation_tasks": ["mrpc"],
                "late_seed_tasks": []}
    return argparse.Namespace(**{**defaults, **kw})


def test_plan_starts_teachers_then_first_seed_and_every_job_after_what_it_reads():
    jobs = [glue.key(j) for j in glue.plan(plan_args())]
    assert len(jobs) == len(set(jobs))
    assert jobs[:2] == [("mrpc", "teacher", 0), ("rte", "teacher", 0)]
    position = {k: i for i, k in enumerate(jobs)}
    for k in jobs:
        for dep in glue.depends_on(glue.job_of(k)):
            assert position[dep] < position[k], (dep, k)
    # the plain students of every seed come before the DKVB teachers; every DKVB row runs on every seed
    assert max(position[(t, r, s)] for t in ("mrpc", "rte") for r in glue.SEEDED for s in (0, 1, 2)) < position[("mrpc", "teacher_dkvb", 0)]
    assert {(t, r, s) for t in ("mrpc", "rte") for r in glue.DKVB_ROWS[1:] for s in (0, 1, 2)} <= set(jobs)
    assert {k for k in jobs if k[1] in glue.ABLATIONS} == {("mrpc", r, 0) for r in glue.ABLATIONS if r not in glue.ONLY_ON}
    sst2 = plan_args(tasks=["mrpc", "sst2"], ablation_tasks=["mrpc", "sst2"])
    assert {k for k in map(glue.key, glue.plan(sst2)) if k[1] == "kd_mean_pool_unlabelled"} == {("sst2", "kd_mean_pool_unlabelled", 0)}


def test_recipe_ignores_paths_and_follows_the_budget(monkeypatch, tmp_path):
    job = {"task": "mrpc", "row": "student_kd", "seed": 1}
    first = glue.recipe(job)
    assert glue.recipe({**job, "metrics": {}, "score": 1.0}) == first  # a finished record fingerprints as its job
    assert glue.recipe({**job, "seed": 2}) != first
    monkeypatch.setitem(glue.BUDGET, "mrpc", (None, 5, 3, 32, 128))  # one student epoch fewer
    assert glue.recipe(job) != first


def test_load_runs_keeps_current_recipes_only(monkeypatch, tmp_path):
    monkeypatch.setattr(glue.common.report, "RESULTS_DIR", tmp_path / "results")  # no committed runs
    current = {"task": "rte", "row": "teacher", "seed": 0}
    stale = {"task": "rte", "row": "student_alone", "seed": 0}
    lines = [{"key": glue.RUN_KEY, "recipe": glue.recipe(current), **current, "score": 60.0},
             {"key": glue.RUN_KEY, "recipe": "0" * 12, **stale, "score": 55.0},
             {"key": "glue-v1", "recipe": glue.recipe(stale), **stale, "score": 50.0}]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    runs = glue.load_runs(tmp_path)
    assert list(runs) == [("rte", "teacher", 0)]
    assert runs[("rte", "teacher", 0)]["score"] == pytest.approx(60.0)


def test_dkvb_target_compares_the_better_dkvb_student_with_the_pretrained_start_beside_it():
    def row(name, score, seeds=3):
        return {"name": name, "score": score, "seeds": seeds}

    by = {("mrpc", "student_kd"): row("student_kd", 79.5), ("mrpc", "student_dkvb_kd"): row("student_dkvb_kd", 74.8),
          ("mrpc", "student_dkvb_carry"): row("student_dkvb_carry", 78.9, 1),
          ("mrpc", "kd_pretrained_init"): row("kd_pretrained_init", 74.9, 1),
          ("mrpc", "dkvb_carry_pretrained_init"): row("dkvb_carry_pretrained_init", 77.7, 1),
          ("rte", "student_kd"): row("student_kd", 52.5), ("rte", "student_dkvb_kd"): row("student_dkvb_kd", 50.0)}
    [line] = glue.dkvb_target(by, ["mrpc", "rte", "cola"])
    assert "within 1 point on 1 of 2 tasks — **not met**" in line
    assert "mrpc `student_dkvb_carry` 78.90 (1 seed) vs distilled 79.50 (3 seeds): gap +0.60 [from the pretrained layers, 1 seed: `kd_pretrained_init` 74.90, `dkvb_carry_pretrained_init` 77.70]" in line
    assert line.endswith("rte `student_dkvb_kd` 50.00 (3 seeds) vs distilled 52.50 (3 seeds): gap +2.50.")
    assert glue.dkvb_target({("mrpc", "student_kd"): row("student_kd", 79.5)}, ["mrpc"]) == []


def test_a_log_folder_of_another_recipe_is_moved_aside_not_resumed(monkeypatch, tmp_path):
    job = {"task": "mrpc", "row": "student_kd", "seed": 1}
    runs_dir = tmp_path / "tb" / "mrpc_student_kd_s1"
    (runs_dir / "version_0" / "checkpoints").mkdir(parents=True)
    (runs_dir / "version_0" / "checkpoints" / "latest.ckpt").write_text("an earlier recipe's state")
    (runs_dir / "recipe.txt").write_text("0" * 12)
    seen = {}

    class Stop(Exception):
        pass

    def cli(args):
        seen["args"] = args
        raise Stop

    monkeypatch.setattr("lkd.cli.LKDCLI", cli)
    with pytest.raises(Stop):
        glue.run_job(job, tmp_path)
    assert not any(a.startswith("--ckpt_path") for a in seen["args"])
    [stale] = (tmp_path / "tb").glob("mrpc_student_kd_s1.stale-*")
    assert (stale / "version_0" / "checkpoints" / "latest.ckpt").is_file()
    assert (runs_dir / "recipe.txt").read_text() == glue.recipe(job)
    # the same recipe interrupted: resumed from its latest state
    (runs_dir / "version_0" / "checkpoints").mkdir(parents=True)
    (runs_dir / "version_0" / "checkpoints" / "latest.ckpt").write_text("this recipe's state")
    with pytest.raises(Stop):
        glue.run_job(job, tmp_path)
    assert f"--ckpt_path={runs_dir / 'version_0' / 'checkpoints' / 'latest.ckpt'}" in seen["args"]


def test_a_finished_run_keeps_its_weights_and_events_but_not_its_training_state(tmp_path):
    finished, other = ("mrpc", "student_kd", 1), ("mrpc", "student_kd", 2)
    for k in (finished, other):
        state = glue.log_dir(tmp_path, *k) / "version_0" / "checkpoints"
        state.mkdir(parents=True)
        (state / "latest.ckpt").write_bytes(b"x" * 10)
        (state / "ep1-score0.8.ckpt").write_bytes(b"x" * 5)
        (state.parent / "events.out.tfevents.1").write_text("curve")
    glue.checkpoint(tmp_path, *finished).parent.mkdir(parents=True)
    glue.checkpoint(tmp_path, *finished).write_text("final weights")

    assert glue.drop_training_state(tmp_path, [finished]) == 15
    assert not list(glue.log_dir(tmp_path, *finished).rglob("*.ckpt"))
    assert (glue.log_dir(tmp_path, *finished) / "version_0" / "events.out.tfevents.1").is_file()
    assert glue.checkpoint(tmp_path, *finished).is_file()
    assert len(list(glue.log_dir(tmp_path, *other).rglob("*.ckpt"))) == 2  # not finished: still resumable
    assert glue.drop_training_state(tmp_path, [finished]) == 0


def test_recipe_is_the_effective_config_not_where_a_setting_is_written(monkeypatch):
    job = {"task": "mrpc", "row": "student_kd", "seed": 0}
    pretrained = glue.effective_config({**job, "row": "kd_pretrained_init"})
    distilled = glue.effective_config(job)
    assert distilled["model"]["init_args"].pop("student_init") == "teacher"
    assert pretrained["model"]["init_args"].pop("student_init") == "model"
    assert pretrained == distilled  # the row's own name (in its log and checkpoint paths) is not part of it
    config, teacher, what, extra, cache = glue.ROWS["student_kd"]
    monkeypatch.setitem(glue.ROWS, "explicit", (config, teacher, what, [*extra, "--model.init_args.optimizer.init_args.weight_decay=0.01"], cache))
    assert glue.recipe({**job, "row": "explicit"}) == glue.recipe(job)  # the YAML's value, written again on the line
    monkeypatch.setitem(glue.ROWS, "changed", (config, teacher, what, [*extra, "--model.init_args.optimizer.init_args.weight_decay=0.1"], cache))
    assert glue.recipe({**job, "row": "changed"}) != glue.recipe(job)


def test_retention_is_against_the_teacher_a_row_read_and_counts_rows_run_on_every_seed():
    def run(row, score, seed=0, task="mrpc"):
        return (task, row, seed), {"seed": seed, "score": score, "params": 1, "metrics": {"f1": score, "score": score}, "seconds": 1}

    runs = dict([run("teacher", 80.0), run("teacher_mean_pool", 90.0), run("student_alone", 60.0),
                 *(run("kd_mean_pool", 81.0, s) for s in range(3)), *(run("student_kd", 76.0, s) for s in range(3)),
                 run("kd_transfer", 79.0)])
    speed = {"mrpc": {"teacher": 2.0, "student": 1.0, "student_dkvb": 1.0}}
    rows = {r["name"]: r for r in glue.table_rows(runs, speed, ["mrpc"]) if r.get("name")}
    assert rows["kd_mean_pool"]["retained_pct"] == pytest.approx(90.0)  # 81 / its own teacher's 90
    assert rows["student_kd"]["retained_pct"] == pytest.approx(95.0)  # 76 / the task's teacher's 80
    assert rows["student_alone"]["retained_pct"] == pytest.approx(75.0)  # alone: against the task's teacher
    assert rows["teacher_mean_pool"]["retained_pct"] is None
    [line] = [t for t in glue.targets(list(rows.values()), ["mrpc"], seeds=3) if "keeps ≥ 97 %" in t]
    # kd_transfer keeps 98.75 % but ran one seed: no candidate; student_kd's 95 % is the best with 3 seeds
    assert "`student_kd` averages 76.00 over mrpc against its teacher's (`teacher`) 80.00: keeps 95.0 %" in line
    assert line.endswith("at 2.00× (slowest task) — **not met**.")


def test_retention_over_tasks_is_the_ratio_of_the_average_scores():
    by = {("mrpc", "student_kd"): {"score": 80.0}, ("mrpc", "teacher"): {"score": 80.0},
          ("cola", "student_kd"): {"score": 10.0}, ("cola", "teacher"): {"score": 20.0}}
    pct, mine, theirs = glue.retention(by, "student_kd", ["mrpc", "cola"])
    assert (mine, theirs) == (45.0, 50.0) and pct == pytest.approx(90.0)  # not the mean of 100 % and 50 %


def test_target_lines_for_the_teachers_and_for_distilled_against_alone():
    assert glue.teacher_verdict({"metrics": {"f1": 86.4}}, "mrpc") == "mrpc f1 86.40 (≥ 86: met)"
    assert glue.teacher_verdict({"metrics": {"mcc": 28.77}}, "cola") == "cola mcc 28.77 (≥ 35: not met)"
    by = {("mrpc", "kd"): {"score": 81.0, "seeds": 3}, ("mrpc", "alone"): {"score": 76.0, "seeds": 3},
          ("rte", "kd"): {"score": 52.0, "seeds": 1}, ("rte", "alone"): {"score": 53.0, "seeds": 3},
          ("cola", "kd"): {"score": 1, "seeds": 3}}
    assert glue.wins_line(by, ["mrpc", "rte", "cola"], "kd", "alone") == (
        "1 of 2 (mrpc 81.00 vs 76.00 (3 seeds), rte 52.00 vs 53.00 (1 seeds)) — **not met**.")
    assert glue.wins_line(by, ["cola"], "kd", "alone") is None


def test_the_shipped_mean_pool_configs_train_what_their_rows_measured(monkeypatch):
    """configs/glue/student_kd_mean_pool.yaml is row kd_hidden_mean_pool's own config; teacher_mean_pool.yaml trains
    what row teacher_mean_pool (teacher.yaml + pooling: mean) measured, its predictions written to a folder of its own."""
    assert glue.ROWS["kd_hidden_mean_pool"][0] == "student_kd_mean_pool.yaml"
    monkeypatch.setitem(glue.ROWS, "teacher_shipped", ("teacher_mean_pool.yaml", None, "", [glue.TEACHER_LR_ARG], None))
    measured, shipped = (glue.effective_config({"task": "rte", "row": row, "seed": 0}) for row in ("teacher_mean_pool", "teacher_shipped"))
    writers = [c["init_args"]["output_dir"] for c in (measured["trainer"].pop("callbacks")[1], shipped["trainer"].pop("callbacks")[1])]
    assert measured == shipped and writers == ["predictions/glue/teacher", "predictions/glue/teacher_mean_pool"]


def test_the_sst2_transfer_set_line_sets_it_beside_the_rows_on_the_labelled_subset():
    def row(name, score, kept):
        return {"task": "sst2", "name": name, "score": score, "seeds": 3, "retained_pct": kept}

    rows = [row("kd_mean_pool_unlabelled", 86.55, 97.9), row("kd_mean_pool", 85.02, 96.2), row("alone_mean_pool", 84.18, 95.2)]
    [line] = [t for t in glue.targets(rows, ["sst2"]) if t.startswith("SST-2 with")]
    assert "(`kd_mean_pool_unlabelled`, 3 seeds): 86.55 against `kd_mean_pool`'s 85.02, alone 84.18; it keeps 97.9 %" in line


def test_transfer_sets_replace_kd_mean_pool_where_a_task_has_one_in_the_retention_line():
    def row(task, name, score, seeds=3):
        return {"task": task, "name": name, "score": score, "seeds": seeds, "retained_pct": 0.0, "speedup": 2.0,
                "metrics": {"f1": score, "mcc": score}, "scores": [score - 1, score, score + 1][:seeds]}

    copies = glue.TRANSFER_SETS["cola"][0]
    rows = [row(t, "teacher", 60.0) for t in ("mrpc", "cola")] + [row("mrpc", "teacher_mean_pool", 80.0, 1),
                                                                   row("cola", "teacher_mean_pool", 20.0, 1)]
    rows += [row("mrpc", "kd_mean_pool", 78.0), row("cola", "kd_mean_pool", 14.0), row("cola", copies, 18.0),
             row("cola", "kd_mean_pool_sst2_texts", 19.0)]  # another transfer set, better here: a line of its own, not the recipe
    by = {(r["task"], r["name"]): r for r in rows}
    kept = glue.transfer_set_retention(by, ["mrpc", "cola"])
    assert kept["rows"] == {"mrpc": "kd_mean_pool", "cola": copies}  # MRPC's copies did not run: kd_mean_pool stands in
    assert kept["pct"] == 96.0 and kept["score"] == 48.0 and kept["teacher_score"] == 50.0  # (78 + 18) / (80 + 20)
    assert kept["per_seed"] == [94.0, 96.0, 98.0]  # seed 0: (77 + 17) / 2 / 50
    by[("cola", copies)]["seeds"] = 1  # a transfer set with fewer seeds does not stand in
    assert glue.transfer_set_retention(by, ["mrpc", "cola"]) is None
    by[("cola", copies)]["seeds"] = 3
    lines = glue.targets(rows, ["mrpc", "cola"])
    [line] = [t for t in lines if t.startswith("The same target for `kd_mean_pool` with")]
    assert f"cola `{copies}` 18.00" in line and "MRPC: `kd_mean_pool`, the transfer-set row not run with 3 seeds" in line
    assert "keeps 96.0 % (seed by seed, every task's seed i averaged: 94.0, 96.0, 98.0 %) at 2.00× (slowest task) — **not met**." in line
    assert any(t.startswith("CoLA with SST-2's 67,349 training sentences") and "19.00" in t for t in lines)
