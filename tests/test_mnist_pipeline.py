"""The `make demo` pipeline end to end on tiny data: teacher, student alone, distilled student and the DKVB
student on the distilled student's features, the students reading the teacher from a cache; with every label
and with few labels plus a transfer set (the demo's setting)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lkd.checkpoint import load_checkpoint
from lkd.cli import LKDCLI
from lkd.losses import UNLABELLED, kd_kl_div
from lkd.memory import count_parameters
from lkd.modules import DistillModule
from lkd.pipelines.mnist_kd import CONFIG_DIR, distillation_gain, format_table, run
from lkd.teacher import Teacher
from tests.helpers import tiny_mlp


def quiet(tiny_data_args: list[str]) -> list[str]:
    return [*tiny_data_args, "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
            "--trainer.enable_progress_bar=false"]


@pytest.mark.slow  # `make demo`'s runs one after another: 5-8 s
def test_demo_pipeline_with_teacher_cache(tmp_path, tiny_data_args):
    results = run(seed=3, workdir=tmp_path, teacher_epochs=1, student_epochs=1, dkvb_epochs=1, teacher_cache=True,
                  extra=quiet(tiny_data_args), teacher_extra=["--data.init_args.max_rotation=10"])
    by_name = {r.name: r for r in results}
    assert list(by_name) == ["teacher", "student_scratch", "student_kd", "student_dkvb_encoder"]
    rotation = {name: load_checkpoint(tmp_path / "checkpoints" / f"{name}-seed3.ckpt")
                ["datamodule_hyper_parameters"]["max_rotation"] for name in ("teacher", "student_kd")}
    assert rotation == {"teacher": 10, "student_kd": 0}  # teacher_extra: the teacher's own training only
    assert by_name["student_kd"].config == "configs/mnist/student_kd_cached.yaml"
    assert (tmp_path / "checkpoints" / "teacher_logits-seed3.pt").is_file()  # written once, read by both students
    assert all((r.labelled, r.unlabelled) == (500, 0) for r in results)  # every label

    # the DKVB student reads the distilled student's features: same weights, frozen, and its size counts the keys
    dkvb, kd = by_name["student_dkvb_encoder"].network, by_name["student_kd"].network
    encoder = dkvb.encoder.model
    for name, weight in encoder.state_dict().items():
        torch.testing.assert_close(weight, kd.state_dict()[name])
    assert not any(p.requires_grad for p in encoder.parameters())
    keys_and_projection = dkvb.keys.numel() + dkvb.projection.numel()
    assert by_name["student_dkvb_encoder"].params == count_parameters(dkvb) + keys_and_projection

    for r in results:
        r.infer_s = 1.0
    table = format_table(results)
    assert "| student_dkvb_encoder | `configs/mnist/student_dkvb_encoder.yaml` | 500 + 0 |" in table and "1.00×" in table
    gain = 100 * (by_name["student_kd"].test_acc - by_name["student_scratch"].test_acc)
    assert distillation_gain(results).startswith(f"Distilled vs alone: {gain:+.2f} points with 500 labels (")


@pytest.mark.slow  # `make demo`'s runs one after another: 5-8 s
def test_few_labels_demo_pipeline(tmp_path, tiny_data_args):
    """The demo's setting on tiny data: 50 of the 500 training images labelled, the other 450 a transfer set."""
    seen = []
    results = run(seed=3, workdir=tmp_path, teacher_epochs=1, student_epochs=1, labelled_epochs=2, dkvb_epochs=1,
                  teacher_cache=True, labelled_size=50, baselines=True, extra=quiet(tiny_data_args), on_result=seen.append)
    by_name = {r.name: r for r in results}
    assert seen == results  # each result handed over as soon as it was tested
    images = {name: (r.labelled, r.unlabelled) for name, r in by_name.items()}
    assert images == {"teacher": (500, 0), "student_scratch": (50, 0), "student_kd": (50, 450),
                      "student_scratch_shifts": (50, 0), "student_kd_labelled_only": (50, 0),
                      "student_dkvb_encoder": (50, 450)}
    assert by_name["student_kd"].config == "configs/mnist/student_kd_cached.yaml"
    checkpoints = tmp_path / "checkpoints"
    assert {p.name for p in checkpoints.glob("teacher_logits-*")} == {"teacher_logits-seed3-labels50.pt",
                                                                      "teacher_logits-seed3-labels50-drop.pt"}
    assert (checkpoints / "student_kd-labels50-seed3.ckpt").is_file() and (checkpoints / "teacher-seed3.ckpt").is_file()
    runs = tmp_path / "runs" / "mnist_student_scratch"  # a config's two runs (alone, alone with shifts) log apart
    assert {p.name for p in runs.iterdir()} == {"seed3-labels50", "seed3-labels50-student_scratch_shifts"}
    # the DKVB student is built on the distilled student of this setting
    encoder = by_name["student_dkvb_encoder"].network.encoder.model
    for name, weight in encoder.state_dict().items():
        torch.testing.assert_close(weight, by_name["student_kd"].network.state_dict()[name])

    for r in results:
        r.infer_s = 1.0
    assert "| student_kd | `configs/mnist/student_kd_cached.yaml` | 50 + 450 |" in format_table(results)
    gain = 100 * (by_name["student_kd"].test_acc - by_name["student_scratch"].test_acc)
    assert distillation_gain(results).startswith(
        f"Distilled vs alone: {gain:+.2f} points with 50 labels (student_kd {100 * by_name['student_kd'].test_acc:.2f} % on "
        "50 labelled images + 450 unlabelled images labelled by the teacher;")


def test_a_classifier_alone_refuses_the_transfer_set(tmp_path, tiny_data_args):
    args = ["fit", "-c", str(CONFIG_DIR / "student_scratch.yaml"), *tiny_data_args,
            "--data.init_args.labelled_size=50", "--trainer.fast_dev_run=1", f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}", f"--best_checkpoint.path={tmp_path / 'best.ckpt'}"]
    with pytest.raises(ValueError, match=r"ClassifierModule got \d+ training rows without labels .*HINT: set "
                                         r"data.init_args.unlabelled: drop"):
        LKDCLI(args=args)


def test_transfer_rows_get_the_soft_term_only_and_no_accuracy():
    torch.manual_seed(0)
    module = DistillModule(tiny_mlp, Teacher(tiny_mlp(10)), temperature=2.0, alpha=0.7)
    images, ids = torch.randn(6, 1, 28, 28), torch.arange(6)
    labels = torch.tensor([3, UNLABELLED, UNLABELLED, 5, UNLABELLED, UNLABELLED])
    out = module.step((images, labels, ids), "train")
    logits, teacher_logits = module.student(images), module.teacher(images)
    expected = 0.7 * kd_kl_div(logits, teacher_logits, 2.0) + 0.3 * F.cross_entropy(logits[[0, 3]], labels[[0, 3]])
    torch.testing.assert_close(out.loss, expected)
    scored_logits, scored_labels = out.metric_args  # train/acc counts the two labelled rows only
    torch.testing.assert_close(scored_logits, logits[[0, 3]].detach()) and torch.equal(scored_labels, torch.tensor([3, 5]))

    only_transfer = module.step((images, torch.full((6,), UNLABELLED), ids), "train")
    assert only_transfer.metric_args == () and only_transfer.terms["ce"] == 0
    torch.testing.assert_close(only_transfer.loss, 0.7 * kd_kl_div(logits, teacher_logits, 2.0))
    with pytest.raises(ValueError, match=r"val labels \[-1\] are out of range"):  # validation must be labelled
        module.step((images, labels, ids), "val")
