"""The one frozen teacher (lkd.teacher.Teacher): eval and no gradients for the whole run, held in its dtype with
fp32 outputs, its checkpoint loaded once and shape-checked, settings and class counts checked up front."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lkd import teacher as teacher_lib
from lkd.checkpoint import CheckpointMismatchError
from lkd.models import MLP, ConvNet
from lkd.modules import DistillModule
from lkd.teacher import Teacher
from tests.helpers import tiny_cnn


def dropout_mlp(num_classes: int = 10, seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(num_classes, hidden=(16,), dropout=0.5)


def save_classifier_checkpoint(path, network: nn.Module, prefix: str = "model.") -> str:
    """A Lightning-style checkpoint holding ``network`` under ``prefix`` (a ClassifierModule's is ``model.``)."""
    torch.save({"state_dict": {prefix + k: v for k, v in network.state_dict().items()}}, path)
    return str(path)


# ---- frozen for the whole run -------------------------------------------------------------------------
def test_teacher_stays_in_eval_mode_after_module_train():
    module = DistillModule(tiny_cnn, Teacher(dropout_mlp()))
    assert not any(m.training for m in module.teacher.modules())  # built in eval, the wrapper too
    module.train()
    assert module.student.training  # the student does switch
    assert not any(m.training for m in module.teacher.modules())
    module.teacher.train(True)  # asked directly: still eval
    assert not any(m.training for m in module.teacher.modules())
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(module.teacher(x), module.teacher(x), rtol=0, atol=0)  # dropout (p=0.5) stays off


def test_teacher_requires_no_gradient_and_gets_none():
    module = DistillModule(tiny_cnn, Teacher(dropout_mlp()))
    assert not any(p.requires_grad for p in module.teacher.parameters())
    module.train()
    batch = (torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,)), torch.arange(6))
    module.step(batch, "train").loss.backward()
    assert all(p.grad is None for p in module.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.student.parameters())


# ---- held in its dtype, fp32 out ------------------------------------------------------------------------
def test_bf16_teacher_takes_fp32_inputs_and_returns_fp32():
    teacher = Teacher(dropout_mlp(), dtype="bfloat16")
    reference = dropout_mlp().eval()  # the same weights, fp32
    teacher.hold()
    assert teacher.weight_dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in teacher.parameters())
    x = torch.rand(5, 784)  # fp32
    with torch.no_grad():
        out = teacher(x)
        expected = reference.to(torch.bfloat16)(x.to(torch.bfloat16)).float()  # run in bf16, handed back in fp32
    assert out.dtype == torch.float32 and out.shape == (5, 10)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


class _Structured(nn.Module):
    """Returns a dict and a tuple of floating and integer tensors, like a transformers ModelOutput."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 3)

    def forward(self, x, ids):
        h = self.proj(x)
        return {"logits": h, "ids": ids, "pair": (h * 2, ids + 1)}


def test_structured_outputs_come_back_in_fp32_and_integers_untouched():
    teacher = Teacher(_Structured(), dtype="bfloat16")
    teacher.hold()
    ids = torch.tensor([1, 2])
    with torch.no_grad():
        out = teacher(torch.rand(2, 3), ids=ids)
    assert out["logits"].dtype == torch.float32 and out["pair"][0].dtype == torch.float32
    assert out["ids"].dtype == torch.int64 and torch.equal(out["ids"], ids) and torch.equal(out["pair"][1], ids + 1)


# ---- the checkpoint: loaded once, shape-checked ------------------------------------------------------------
def test_checkpoint_is_loaded_once_and_keeps_its_weights(tmp_path, monkeypatch):
    trained = dropout_mlp(seed=1)
    path = save_classifier_checkpoint(tmp_path / "t.ckpt", trained)
    teacher = Teacher(dropout_mlp(seed=2), checkpoint=path)
    calls = []
    real = teacher_lib.load_network_weights
    monkeypatch.setattr(teacher_lib, "load_network_weights", lambda *a, **k: (calls.append(a[1]), real(*a, **k)))
    teacher.load()
    for k, v in trained.state_dict().items():
        assert torch.equal(teacher.model.state_dict()[k], v), k
    teacher.hold()
    teacher.load()  # a second setup (validate after fit, a resumed stage): no second read over held weights
    assert calls == [path]


def test_a_distilled_students_checkpoint_can_be_the_teacher(tmp_path):
    trained = dropout_mlp(seed=1)
    teacher = Teacher(dropout_mlp(seed=2), checkpoint=save_classifier_checkpoint(tmp_path / "s.ckpt", trained, "student."))
    teacher.load()
    assert all(torch.equal(teacher.model.state_dict()[k], v) for k, v in trained.state_dict().items())


def test_checkpoint_of_another_shape_is_refused_naming_the_tensor(tmp_path):
    path = save_classifier_checkpoint(tmp_path / "t.ckpt", dropout_mlp())
    teacher = Teacher(MLP(10, hidden=(32,)), checkpoint=path)
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    mismatch = r"(?s)does not fit the teacher.*net\.0\.weight: checkpoint \(16, 784\) vs teacher \(32, 784\)"
    with pytest.raises(CheckpointMismatchError, match=mismatch):
        teacher.load()
    assert all(torch.equal(teacher.model.state_dict()[k], v) for k, v in before.items())  # nothing half-loaded


def test_no_checkpoint_keeps_the_built_weights():
    built = dropout_mlp(seed=3)
    expected = {k: v.clone() for k, v in built.state_dict().items()}
    teacher = Teacher(built)
    teacher.load()
    assert all(torch.equal(teacher.model.state_dict()[k], v) for k, v in expected.items())


# ---- settings and classes ------------------------------------------------------------------------------
def test_bad_settings_are_collected_into_one_error():
    with pytest.raises(ValueError, match=r"teacher\.dtype must be one of \['float32', 'bfloat16', 'float16'\], got 'int8'; "
                                         r"teacher\.cache_top_k must be >= 1, got 0"):
        Teacher(dropout_mlp(), dtype="int8", cache_top_k=0)


def test_paths_are_checked_before_anything_is_read(tmp_path, monkeypatch):
    """A checkpoint folder and an unwritable cache are refused when the teacher is built; a checkpoint that is not
    (yet) there when a run starts (:meth:`Teacher.check_files`), naming the working directory of a relative path."""
    (tmp_path / "runs" / "v0").mkdir(parents=True)
    (tmp_path / "runs" / "v0" / "last.ckpt").write_bytes(b"")
    (tmp_path / "a_file").write_text("")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"^Teacher: model\.init_args\.teacher\.checkpoint=runs is a folder .*newest first: "
                                         r"runs/v0/last\.ckpt\. HINT: .*checkpoint=runs/v0/last\.ckpt; model\.init_args\.teacher"
                                         r"\.cache=a_file/c\.pt \(read from the working directory \S+\) cannot be written: a_file is a file, "
                                         r"not a folder\. HINT"):
        Teacher(dropout_mlp(), checkpoint="runs", cache="a_file/c.pt")
    teacher = Teacher(dropout_mlp(), checkpoint="teacher.ckpt", cache="caches/teacher.pt")  # built before it is trained
    with pytest.raises(FileNotFoundError, match=rf"teacher checkpoint not found: teacher\.ckpt\. A relative path is read "
                                                rf"from the working directory {tmp_path}: lkd looked for {tmp_path}/teacher\.ckpt"):
        teacher.check_files("test")
    save_classifier_checkpoint(tmp_path / "teacher.ckpt", dropout_mlp())
    teacher.check_files("fit")  # both fine now: the cache's folder is made by the first fit
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "runs", "teacher.ckpt"]


@pytest.mark.parametrize("network", [MLP, ConvNet], ids=["MLP", "ConvNet"])
def test_check_classes_names_both_counts_and_the_key_to_set(network):
    teacher = Teacher(network(10))
    teacher.check_classes(10)  # agrees: nothing raised
    with pytest.raises(ValueError) as err:
        teacher.check_classes(3)
    assert str(err.value) == (
        "the teacher was built with num_classes=10 but the data has 3 classes. HINT: set "
        "model.init_args.teacher.model.init_args.num_classes: 3 (the student gets it from the data)"
    )
