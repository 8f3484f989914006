"""Bad teacher input stops before any data is read or anything is written, with the option and the fix on the error's
last line (issue 27): a teacher checkpoint that is a folder or a relative path read from another folder (and
``--ckpt_path`` likewise), negative learning rates, a teacher cache path that cannot be written; and the student's own
tokenizer given as the teacher's is distilled over one vocabulary instead of being refused."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from lkd.cli import LKDCLI
from tests.conftest import CONFIGS
from tests.lm_fixtures import tiny_overrides
from tests.mnist_fixtures import mnist_tiny_args

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False

BAD_TEACHER_INPUTS = [  # (config, overrides, what the error's last line must say); {outside}: a folder beside the project
    # 1. a teacher checkpoint that is a folder: said so, with the .ckpt files under it (newest first)
    ("mnist/student_kd.yaml", ["--model.init_args.teacher.checkpoint={outside}/runs"],
     r"model\.init_args\.teacher\.checkpoint=\S+/outside/runs is a folder, not a checkpoint file; the \.ckpt files under it, "
     r"newest first: \S+/runs/teacher/version_1/checkpoints/latest\.ckpt, \S+/runs/teacher/version_0/checkpoints/latest\.ckpt\. "
     r"HINT: set model\.init_args\.teacher\.checkpoint to one of them, e\.g\. model\.init_args\.teacher\.checkpoint=\S+version_1"),
    ("lm/student_kd.yaml", ["--model.init_args.teacher.checkpoint={outside}/empty"],
     r"model\.init_args\.teacher\.checkpoint=\S+/empty is a folder, not a checkpoint file, and holds no \.ckpt file\. HINT"),
    # 2. a relative path run from another folder: the working directory, the absolute path tried, where it is
    ("lm/student_kd.yaml", ["--model.init_args.teacher.checkpoint=checkpoints/lm/teacher_moe_tiny.ckpt"],
     r"teacher checkpoint not found: checkpoints/lm/teacher_moe_tiny\.ckpt\. A relative path is read from "
     r"the working directory \S+/project/configs: lkd looked for \S+/project/configs/checkpoints/lm/teacher_moe_tiny\.ckpt\. "
     r"checkpoints/lm/teacher_moe_tiny\.ckpt exists under \S+/project: run from there, or give the absolute path "
     r"\S+/project/checkpoints/lm/teacher_moe_tiny\.ckpt\. HINT: check model\.init_args\.teacher\.checkpoint"),
    ("mnist/teacher.yaml", ["--ckpt_path=checkpoints/mnist/teacher.ckpt"],
     r"--ckpt_path checkpoint not found: checkpoints/mnist/teacher\.ckpt\. A relative path is read from the working directory "
     r"\S+/project/configs: .* exists under \S+/project: run from there.*HINT: check --ckpt_path"),
    # 3. negative learning rates: of the router, of the projections, of the optimizer (torch would refuse it only
    # when training starts, and takes a negative rate of a parameter group without a word)
    ("lm/student_sar.yaml", ["--model.init_args.router_lr=-0.1"],
     r"router_lr must be a finite number >= 0 \(0 keeps those weights as they are; a negative rate climbs the loss\), "
     r"got -0\.1\. HINT: model\.init_args\.router_lr=1\.0e-4 \(the default\)$"),
    ("lm/student_multiloss.yaml", ["--model.init_args.projection_lr=-1"], r"projection_lr must be .* got -1\.0\. HINT: drop model\.init_args\.projection_lr \(the optimizer's rate\)$"),
    ("mnist/student_kd.yaml", ["--model.init_args.optimizer.init_args.lr=-0.1"],
     r"model\.init_args\.optimizer\.init_args\.lr=-0\.1 is refused by torch\.optim\.Adam: Invalid learning rate: -0\.1\. HINT"),
    # 5. a teacher cache that would have to be written where it cannot be
    ("mnist/student_kd_cached.yaml", ["--model.init_args.teacher.cache=/proc/lkd/teacher_logits.pt"],
     r"model\.init_args\.teacher\.cache=/proc/lkd/teacher_logits\.pt cannot be written: nothing can be created in /proc \(.*\), "
     r"where the first fit would write the folder /proc/lkd and the cache\. HINT: point model\.init_args\.teacher\.cache at"),
    ("lm/student_kd_cached.yaml", ["--model.init_args.teacher.cache={outside}/a_file/cache/teacher.cache"],
     r"model\.init_args\.teacher\.cache=\S+/a_file/cache/teacher\.cache cannot be written: \S+/outside/a_file is a file, not "
     r"a folder\. HINT"),
    ("mnist/student_kd_cached.yaml", ["--model.init_args.teacher.cache={outside}/runs"],
     r"model\.init_args\.teacher\.cache=\S+/runs is a folder; a teacher cache is one file\. HINT: name a file in it"),
    pytest.param("mnist/student_kd_cached.yaml", ["--model.init_args.teacher.cache={outside}/read_only/teacher_logits.pt"],
                 r"cannot be written: nothing can be created in \S+/read_only \(Permission denied\).*HINT",
                 marks=pytest.mark.skipif(ROOT, reason="root writes into a read-only folder (see the unit test below)")),
]


def _row_id(row) -> str:
    config, overrides = (row.values if hasattr(row, "values") else row)[:2]
    return f"{config}:{overrides[-1].split('=')[0].rsplit('.', 1)[-1]}={overrides[-1].split('=', 1)[1].rsplit('/', 1)[-1][:24]}"


@pytest.fixture()
def project(tmp_path, monkeypatch) -> Path:
    """The working folder: ``project/configs`` of a project whose checkpoints lie in ``project/checkpoints`` (a user
    who ran ``cd configs``), and a folder ``outside`` with two runs' checkpoints, a file and a read-only folder."""
    checkpoints = tmp_path / "project" / "checkpoints"
    for name in ("lm/teacher_moe_tiny.ckpt", "mnist/teacher.ckpt"):
        (checkpoints / name).parent.mkdir(parents=True, exist_ok=True)
        (checkpoints / name).write_bytes(b"not read: the path is refused first")
    outside = tmp_path / "outside"
    for version, mtime in ((0, 1_000_000), (1, 2_000_000)):
        ckpt = outside / "runs" / "teacher" / f"version_{version}" / "checkpoints" / "latest.ckpt"
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(b"")
        os.utime(ckpt, (mtime, mtime))
    (outside / "empty").mkdir()
    (outside / "a_file").write_text("a file, not a folder")
    (outside / "read_only").mkdir(mode=0o555)
    work = tmp_path / "project" / "configs"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path


def _files(root: Path) -> dict[str, float]:
    """Every file under ``root`` and when it was last written (empty folders are not counted: LKDCLI's ``before_fit``
    may make best_checkpoint.path's folder before the trainer starts)."""
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*") if not p.is_dir()}


@pytest.mark.parametrize("config, overrides, last_line", BAD_TEACHER_INPUTS, ids=[_row_id(r) for r in BAD_TEACHER_INPUTS])
def test_bad_teacher_input_table(config, overrides, last_line, project, tiny_mnist, request):
    """`lkd fit` with the bad value stops before any data or training, its reason and the fix on the last line, and
    writes nothing (no run folder, no config.yaml, no probe file left behind)."""
    config = CONFIGS / config
    tiny = (tiny_overrides(config, request.getfixturevalue("tiny_wikitext")) if config.parent.name == "lm"
            else mnist_tiny_args(tiny_mnist))
    overrides = [o.replace("{outside}", str(project / "outside")) for o in overrides]
    before = _files(project)
    with pytest.raises((ValueError, OSError)) as info:
        LKDCLI(args=["fit", "-c", str(config), *tiny, *overrides, "--trainer.max_steps=1"])
    last = str(info.value).strip().splitlines()[-1]
    assert re.search(last_line, last), str(info.value)
    assert "Traceback" not in last and "Namespace(" not in last
    assert _files(project) == before  # nothing written, nothing touched


def test_the_students_own_tokenizer_as_the_teachers_is_one_vocabulary(project, tiny_wikitext, tmp_path):
    """``--model.init_args.teacher_tokenizer=<the student's>`` on configs/lm/student_kd.yaml (kl): the same name, or
    another name for the same vocabulary, is distilled over one vocabulary (the exact KL), not refused with "tokenise
    differently"; a different tokenizer still is."""
    from lkd.tokenizers import byte_tokenizer_fast, same_tokenizer

    config = CONFIGS / "lm" / "student_kd.yaml"
    base = ["-c", str(config), *tiny_overrides(config, tiny_wikitext), "--model.init_args.teacher.checkpoint=null"]
    folder = tmp_path / "bytes_as_hf"
    byte_tokenizer_fast().save_pretrained(str(folder))  # lkd's byte tokenizer, written as a Hugging Face folder
    for teacher_tokenizer in ("bytes", str(folder)):
        cli = LKDCLI(args=[*base, f"--model.init_args.teacher_tokenizer={teacher_tokenizer}"], run=False)
        assert not cli.model.cross_tokenizer and cli.model.teacher_tokenizer is None
        assert cli.model.hparams.teacher_tokenizer == teacher_tokenizer  # as given: a resume compares the same value
    assert same_tokenizer(str(folder), str(folder) + "/.") and not same_tokenizer("bytes", "smollm2", load=False)
    from lkd.cli import ConfigError

    with pytest.raises(ConfigError, match=r"kl=1\.0 needs one vocabulary.*HINT"):  # a student BPE of 300 tokens: two vocabularies
        LKDCLI(args=[*base, "--model.init_args.teacher_tokenizer=bytes", "--model.init_args.tokenizer=gpt2_like",
                     '--model.init_args.student={"class_path": "lkd.models.causal_lm.TinyLlamaLM", "init_args": '
                     '{"vocab_size": 300, "hidden_size": 24, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1, '
                     '"intermediate_size": 48}}'], run=False)


def test_a_cache_path_is_judged_by_what_the_run_does_with_it(tmp_path, monkeypatch):
    """An existing, readable cache is fine where nothing can be written (a read-only mount); a missing one there is
    refused, naming the folder and why. Simulated by a folder in which creating a file fails, as root ignores modes."""
    import tempfile

    from lkd.cache.store import cache_path_problem

    (tmp_path / "ro").mkdir()
    existing = tmp_path / "ro" / "teacher.cache"
    existing.write_bytes(b"cache")

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert cache_path_problem(existing) is None
    problem = cache_path_problem(tmp_path / "ro" / "other.cache")
    assert re.search(r"model\.init_args\.teacher\.cache=\S+/ro/other\.cache cannot be written: nothing can be created in "
                     r"\S+/ro \(Read-only file system\).*HINT", problem), problem
    assert "cannot be written" in cache_path_problem(existing, rewrite=True)  # `lkd cache-teacher --overwrite` writes it
    monkeypatch.undo()
    assert cache_path_problem(tmp_path / "new" / "deeper" / "teacher.cache") is None  # folders the first fit creates
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["ro", "teacher.cache"]  # the probe left nothing


def test_checkpoint_paths_name_the_working_directory_and_list_candidates(tmp_path, monkeypatch):
    from lkd.checkpoint import load_checkpoint

    (tmp_path / "ckpts" / "a").mkdir(parents=True)
    (tmp_path / "ckpts" / "a" / "best.ckpt").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(IsADirectoryError, match=r"^--ckpt_path=ckpts is a folder \(a relative path, read from "
                                                r"the working directory \S+\), not a checkpoint file; the \.ckpt "
                                                r"files under it, newest first: ckpts/a/best\.ckpt\. HINT: set --ckpt_path "
                                                r"to one of them, e\.g\. --ckpt_path=ckpts/a/best\.ckpt$"):
        load_checkpoint("ckpts", what="--ckpt_path checkpoint")
    with pytest.raises(FileNotFoundError, match=r"not found: ckpts/a/last\.ckpt\. A relative path is read from the working "
                                                r"directory \S+: lkd looked for \S+/ckpts/a/last\.ckpt\. \.ckpt files near it: "
                                                r"ckpts/a/best\.ckpt\. HINT"):
        load_checkpoint("ckpts/a/last.ckpt")
