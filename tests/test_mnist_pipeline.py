"""The `make demo` pipeline end to end on tiny data: teacher, student alone, distilled student and the DKVB
student on the distilled student's features, the students reading the teacher from a cache."""

from __future__ import annotations

import torch

from lkd.memory import count_parameters
from lkd.pipelines.mnist_kd import format_table, run


def test_demo_pipeline_with_teacher_cache(tmp_path, tiny_data_args):
    tiny = [*tiny_data_args, "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
            "--trainer.enable_progress_bar=false"]
    results = run(seed=3, workdir=tmp_path, teacher_epochs=1, student_epochs=1, dkvb_epochs=1, teacher_cache=True,
                  extra=tiny)
    by_name = {r.name: r for r in results}
    assert list(by_name) == ["teacher", "student_scratch", "student_kd", "student_dkvb_encoder"]
    assert by_name["student_kd"].config == "configs/mnist/student_kd_cached.yaml"
    assert (tmp_path / "checkpoints" / "teacher_logits-seed3.pt").is_file()  # written once, read by both students

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
    assert "| student_dkvb_encoder | `configs/mnist/student_dkvb_encoder.yaml` |" in table and "1.00×" in table
