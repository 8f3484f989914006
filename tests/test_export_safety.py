"""`lkd export` never loses a file that is not lkd's, and its errors say which value is wrong and what to do (issue 27).

One table of bad requests: each row sets a folder up, runs `lkd export` (or `export_student` / `load_student`),
checks the LAST line of the error and that every file that was there before (and the checkpoint) is still there,
byte for byte, with nothing added. Then the good path: exporting twice into one folder with --overwrite replaces
the files the first export wrote and keeps the user's own.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from lkd.cli import LKDCLI
from lkd.export import LEGACY_FILES, MANIFEST, ExportError, export_student, load_student
from tests.conftest import CONFIGS
from tests.mnist_fixtures import mnist_tiny_args
from tests.test_export import Branchy

TEACHER = str(CONFIGS / "mnist" / "teacher.yaml")
STUDENT_KD = str(CONFIGS / "mnist" / "student_kd.yaml")
LINEAR_SPEC = {"class_path": "torch.nn.Linear", "init_args": {"in_features": 4, "out_features": 3}}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_mnist):
    """Tiny checkpoints saved directly (no training): the MNIST teacher config's, a second one with other weights,
    and student_kd.yaml's with a smaller student (hidden 32 instead of the config's 128)."""
    folder = tmp_path_factory.mktemp("ckpts")
    data = mnist_tiny_args(tiny_mnist)
    torch.manual_seed(0)
    teacher = LKDCLI(args=["-c", TEACHER, *data], run=False).model
    torch.save({"state_dict": teacher.state_dict()}, folder / "teacher.ckpt")
    torch.save({"state_dict": {k: v + 1 for k, v in teacher.state_dict().items()}}, folder / "teacher_2.ckpt")
    small = LKDCLI(args=["-c", STUDENT_KD, *data, f"--model.init_args.teacher.checkpoint={folder / 'teacher.ckpt'}",
                         "--model.init_args.student.init_args.hidden=32"], run=False).model
    torch.save({"state_dict": small.state_dict()}, folder / "small_student.ckpt")
    return folder, data


def _linear_holder() -> nn.Module:
    holder = nn.Module()
    holder.student = nn.Linear(4, 3)
    holder.student.in_features = 4
    return holder


def _lkd_export(folder: Path, **kwargs) -> None:
    """An earlier export of a tiny student into ``folder`` (with its manifest)."""
    export_student(_linear_holder(), folder, spec=LINEAR_SPEC, **kwargs)


@dataclass
class Ctx:
    """What a row's setup gets: a scratch folder (the working folder), the checkpoints, the data overrides."""

    tmp: Path
    ckpts: Path
    data: list[str]
    monkeypatch: pytest.MonkeyPatch

    def folder(self, name: str, files: dict[str, str | bytes] | None = None) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        for rel, content in (files or {}).items():
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            (path / rel).write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def lkd_export(self, *args: str, config: str = TEACHER, ckpt: Path | None = None) -> Callable[[], object]:
        ckpt = ckpt or self.ckpts / "teacher.ckpt"
        return lambda: LKDCLI(args=["export", "-c", config, *self.data, f"--ckpt_path={ckpt}", "--test=false", *args])


def _to_is_a_file(c: Ctx):
    (c.tmp / "model.safetensors").write_bytes(b"the user's own file")
    return c.lkd_export("--to=model.safetensors", "--overwrite=true"), [c.tmp]


def _to_is_the_working_folder(c: Ctx):
    c.folder(".", {"notes.txt": "mine", "data/train.csv": "1,2"})
    return c.lkd_export("--to=.", "--overwrite=true"), [c.tmp]


def _to_is_a_parent_of_the_working_folder(c: Ctx):
    c.folder(".", {"notes.txt": "mine"})
    c.monkeypatch.chdir(c.folder("sub"))
    return c.lkd_export("--to=..", "--overwrite=true"), [c.tmp]


def _to_is_the_home_folder(c: Ctx):
    home = c.folder("home", {".bashrc": "export X=1"})
    c.monkeypatch.setenv("HOME", str(home))
    return c.lkd_export("--to=~", "--overwrite=true"), [home]


def _to_is_the_root(c: Ctx):
    return c.lkd_export("--to=/", "--overwrite=true"), [c.tmp]


def _checkpoints_folder(c: Ctx) -> Path:
    """The probe of issue 27: checkpoints/mnist holding the teacher, a student and a user's file."""
    folder = c.folder("checkpoints/mnist", {"student_kd.ckpt": b"another checkpoint", "notes.txt": "mine"})
    (folder / "teacher.ckpt").write_bytes((c.ckpts / "teacher.ckpt").read_bytes())
    return folder


def _to_holds_the_exported_checkpoint(c: Ctx):
    folder = _checkpoints_folder(c)
    return c.lkd_export(f"--to={folder}", "--overwrite=true", ckpt=folder / "teacher.ckpt"), [folder]


def _to_is_above_the_exported_checkpoint(c: Ctx):
    folder = _checkpoints_folder(c)
    return c.lkd_export("--to=checkpoints", "--overwrite=true", ckpt=folder / "teacher.ckpt"), [c.tmp / "checkpoints"]


def _to_holds_other_checkpoints(c: Ctx):
    folder = c.folder("exported")
    _lkd_export(folder)  # an lkd export, but someone saved a checkpoint under it since
    c.folder("exported/runs/v0", {"last.ckpt": b"a checkpoint"})
    return c.lkd_export(f"--to={folder}", "--overwrite=true"), [folder]


def _not_an_export_with_overwrite(c: Ctx):
    folder = c.folder("results", {"notes.txt": "mine", "model.safetensors": b"somebody's weights"})
    return c.lkd_export(f"--to={folder}", "--overwrite=true"), [folder]


def _not_an_export_without_overwrite(c: Ctx):
    folder = c.folder("results", {"notes.txt": "mine"})
    return c.lkd_export(f"--to={folder}"), [folder]


def _an_export_without_overwrite(c: Ctx):
    folder = c.folder("exported")
    _lkd_export(folder)
    return c.lkd_export(f"--to={folder}"), [folder]


def _unreadable_manifest(c: Ctx):
    folder = c.folder("exported", {MANIFEST: '{"lkd_export": 1, "fil', "notes.txt": "mine"})
    return c.lkd_export(f"--to={folder}", "--overwrite=true"), [folder]


def _manifest_listing_files_outside(c: Ctx):
    folder = c.folder("exported", {MANIFEST: json.dumps({"lkd_export": 1, "files": ["../notes.txt"]})})
    c.folder(".", {"notes.txt": "mine"})
    return c.lkd_export(f"--to={folder}", "--overwrite=true"), [c.tmp]


def _a_user_file_with_a_name_the_export_writes(c: Ctx):
    folder = c.folder("exported")
    _lkd_export(folder)  # hf only: no model.onnx of lkd's
    (folder / "model.onnx").write_bytes(b"the user's own ONNX file")
    return (lambda: _lkd_export(folder, formats="onnx", overwrite=True)), [folder]


def _a_failed_export_over_an_earlier_one(c: Ctx):
    folder = c.folder("exported")
    _lkd_export(folder)
    (folder / "notes.txt").write_text("mine")
    holder = nn.Module()
    holder.student = Branchy()
    spec = {"class_path": "tests.test_export.Branchy", "init_args": {}}
    return (lambda: export_student(holder, folder, formats="onnx", overwrite=True, spec=spec)), [folder]


def _checkpoint_of_another_student(c: Ctx):
    folder = c.folder("new")
    teacher = f"--model.init_args.teacher.checkpoint={c.ckpts / 'teacher.ckpt'}"
    return c.lkd_export(teacher, f"--to={folder / 'kd'}", config=STUDENT_KD, ckpt=c.ckpts / "small_student.ckpt"), [folder]


def _another_student_and_other_settings(c: Ctx):
    """The student's shapes are what is wrong, whatever settings (here the temperature) also differ."""
    folder = c.folder("new")
    teacher = f"--model.init_args.teacher.checkpoint={c.ckpts / 'teacher.ckpt'}"
    return c.lkd_export(teacher, "--model.init_args.temperature=9.0", f"--to={folder / 'kd'}", config=STUDENT_KD,
                        ckpt=c.ckpts / "small_student.ckpt"), [folder]


def _truncated_weights(c: Ctx):
    folder = c.folder("exported")
    _lkd_export(folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) - 20])  # an interrupted copy
    return (lambda: load_student(folder)), [folder]


def _truncated_student_spec(c: Ctx):
    folder = c.folder("exported")
    _lkd_export(folder)
    (folder / "lkd_student.json").write_text('{"class_path": "torch.nn.Lin')
    return (lambda: load_student(folder)), [folder]


def _truncated_causal_lm_weights(c: Ctx):
    from tests.lm_fixtures import tiny_student

    holder = nn.Module()
    holder.student = tiny_student()
    folder = c.folder("exported_lm")
    export_student(holder, folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    return (lambda: load_student(folder)), [folder]


def _hf_folder_of_no_student_architecture(c: Ctx):
    folder = c.folder("encoder_only")
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    return (lambda: load_student(folder)), [folder]


NEW = r"HINT: choose an empty or new folder for --to"
BAD_REQUESTS = [
    # (setup, regex the error's LAST line matches, regex the whole message also matches or None)
    (_to_is_a_file, r"^--to model\.safetensors is a file, not a folder: .*nothing was written\. " + NEW, None),
    (_to_is_the_working_folder, r"^--to \. is the working folder \(.*\); .*never into \(or over\) this one.*" + NEW, None),
    (_to_is_a_parent_of_the_working_folder, r"^--to \.\. is a parent of the working folder .*" + NEW, None),
    (_to_is_the_home_folder, r"^--to ~ is the home folder \(.*home\); .*" + NEW, None),
    (_to_is_the_root, r"^--to / is the filesystem root \(/\); .*" + NEW, None),
    (_to_holds_the_exported_checkpoint, r"^--to .*checkpoints/mnist holds the checkpoint being exported \(.*teacher\.ckpt\).*" + NEW, None),
    (_to_is_above_the_exported_checkpoint, r"^--to checkpoints holds the checkpoint being exported .*" + NEW, None),
    (_to_holds_other_checkpoints, r"^--to .*exported holds checkpoints \(runs/v0/last\.ckpt\); .*" + NEW, None),
    (_not_an_export_with_overwrite,
     r"^--to .*results is not empty and is not an lkd export \(no lkd_export\.json\); lkd will not delete its files even "
     r"with --overwrite .*" + NEW, None),
    (_not_an_export_without_overwrite, r"^--to .*results is not empty and is not an lkd export .*" + NEW, None),
    (_an_export_without_overwrite,
     r"^--to .*exported holds an earlier lkd export; nothing was written\. HINT: pass --overwrite to replace the 3 files "
     r"that export wrote \(other files stay\)", None),
    (_unreadable_manifest, r"^.*exported/lkd_export\.json cannot be read \(JSONDecodeError.*deletes none.*" + NEW, None),
    (_manifest_listing_files_outside, r"^.*lkd_export\.json lists files outside its folder \(\['\.\./notes\.txt'\]\).*" + NEW, None),
    (_a_user_file_with_a_name_the_export_writes,
     r"^--to .*exported holds model\.onnx, which the earlier lkd export did not write .*HINT: move model\.onnx out of", None),
    (_a_failed_export_over_an_earlier_one, r"^Branchy could not be exported to ONNX .*It exports as --format hf", None),
    (_another_student_and_other_settings,
     r"^HINT: export --ckpt_path .*small_student\.ckpt with the config that trained it .*or set the config's student to the "
     r"checkpoint's architecture$", None),
    (_checkpoint_of_another_student,
     r"^HINT: export --ckpt_path .*small_student\.ckpt with the config that trained it .*or set the config's student to the "
     r"checkpoint's architecture$",
     r"does not fit this config's student \(ConvNet\):\n(.*\n)*  student\.head\.1\.weight: checkpoint \(32, 1568\) vs config "
     r"\(128, 1568\)\n"),
    (_truncated_weights,
     r"^.*exported/model\.safetensors cannot be read: it is truncated or corrupt \(its header says .* bytes, the file has .*\)\. "
     r"HINT: export the student again", None),
    (_truncated_student_spec,
     r"^.*exported/lkd_student\.json cannot be read: it is truncated or corrupt \(JSONDecodeError.*HINT: export the student again", None),
    (_truncated_causal_lm_weights, r"^.*exported_lm/model\.safetensors cannot be read: it is truncated or corrupt .*HINT: export", None),
    (_hf_folder_of_no_student_architecture,
     r"^.*encoder_only/config\.json names architectures \['BertModel'\]: lkd students are sequence classifiers .*HINT: pass the "
     r"folder `lkd export --to` wrote$", None),
]


def _snapshot(paths: list[Path]) -> dict[Path, bytes]:
    files = {}
    for path in paths:
        for p in [path] if path.is_file() else (q for q in path.rglob("*") if q.is_file()):
            files[p] = p.read_bytes()
    return files


@pytest.mark.parametrize(("setup", "last_line", "whole"), BAD_REQUESTS, ids=[row[0].__name__.strip("_") for row in BAD_REQUESTS])
def test_a_bad_export_request_says_what_to_do_and_loses_no_file(setup, last_line, whole, tmp_path, monkeypatch, checkpoints):
    ckpts, data = checkpoints
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    call, protected = setup(Ctx(work, ckpts, data, monkeypatch))
    before = _snapshot([*protected, ckpts])
    with pytest.raises(ExportError) as info:
        call()
    message = str(info.value)
    assert re.search(last_line, message.splitlines()[-1]), message
    if whole:
        assert re.search(whole, message), message
    assert _snapshot([*protected, ckpts]) == before  # every file still there, byte for byte, and none added
    assert not list(tmp_path.rglob("*lkd-export-*")), "a staging folder was left behind"


def test_export_twice_with_overwrite_replaces_its_own_files_and_keeps_the_users(tmp_path, monkeypatch, checkpoints):
    ckpts, data = checkpoints
    monkeypatch.chdir(tmp_path)
    umask = os.umask(0o022)
    try:
        LKDCLI(args=["export", "-c", TEACHER, *data, f"--ckpt_path={ckpts / 'teacher.ckpt'}", "--to=exported/mnist",
                     "--format=onnx", "--test=false"])
    finally:
        os.umask(umask)
    to = tmp_path / "exported" / "mnist"
    first = json.loads((to / MANIFEST).read_text())
    assert first["lkd_export"] == 1 and first["checkpoint"].endswith("teacher.ckpt")
    assert set(first["files"]) == {p.name for p in to.iterdir()} - {MANIFEST}
    assert {"model.onnx", "model.onnx.data", "model.safetensors", "lkd_student.json", "README.md"} <= set(first["files"])
    card = (to / "README.md").read_text()
    assert "| model.onnx.data |" in card and f"| {MANIFEST} |" in card  # the external data is listed too
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in to.iterdir()} == {p.name: "0o644" for p in to.iterdir()}

    (to / "notes.txt").write_text("mine")
    (to / "plots").mkdir()
    (to / "plots" / "acc.png").write_bytes(b"\x89PNG")
    LKDCLI(args=["export", "-c", TEACHER, *data, f"--ckpt_path={ckpts / 'teacher_2.ckpt'}", "--to=exported/mnist",
                 "--overwrite=true", "--test=false"])
    second = json.loads((to / MANIFEST).read_text())
    assert (to / "notes.txt").read_text() == "mine" and (to / "plots" / "acc.png").read_bytes() == b"\x89PNG"
    assert not (to / "model.onnx").exists() and not (to / "model.onnx.data").exists()  # the first export's, not written again
    assert set(second["files"]) == {p.name for p in to.iterdir()} - {MANIFEST, "notes.txt", "plots"}
    assert second["checkpoint"].endswith("teacher_2.ckpt")
    state = torch.load(ckpts / "teacher_2.ckpt", weights_only=True)["state_dict"]
    for key, value in load_student(to).state_dict().items():  # the second checkpoint's weights replaced the first's
        torch.testing.assert_close(value, state[f"model.{key}"], rtol=0, atol=0, msg=key)


def test_an_export_written_before_the_manifest_is_replaced_file_by_file(tmp_path):
    """A legacy folder (lkd's card next to model.safetensors, no manifest): --overwrite replaces only LEGACY_FILES."""
    folder = tmp_path / "old"
    _lkd_export(folder, formats="onnx")
    (folder / MANIFEST).unlink()
    (folder / "notes.txt").write_text("mine")
    legacy = sorted(p.name for p in folder.iterdir() if p.name in LEGACY_FILES)
    assert "model.onnx" in legacy and "README.md" in legacy
    holder = _linear_holder()
    result = export_student(holder, folder, spec=LINEAR_SPEC, overwrite=True)
    assert (folder / "notes.txt").read_text() == "mine" and result.kept == [folder / "notes.txt"]
    assert not (folder / "model.onnx").exists()
    assert sorted(json.loads((folder / MANIFEST).read_text())["files"]) == ["README.md", "lkd_student.json", "model.safetensors"]
    torch.testing.assert_close(load_student(folder).weight, holder.student.weight, rtol=0, atol=0)
