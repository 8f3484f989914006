"""Fitting teacher and student in memory: the estimate and its error, teacher offloading, activation
checkpointing, 16-bit true precision on the MNIST track."""

import lightning.pytorch as pl
import pytest
import torch

from lkd import memory, teacher as teacher_lib
from lkd.data import GLUEDataModule, MNISTDataModule
from lkd.memory import TeacherMemoryError, enable_activation_checkpointing, memory_needed, module_bytes
from lkd.models import MLP
from lkd.modules import ClassifierModule, DistillModule
from lkd.teacher import Teacher, TeacherPlacement
from tests.glue_fixtures import MINILM, TINY_BERT
from tests.helpers import tiny_cnn, tiny_trainer

MiB = 2**20


def test_memory_needed_counts_teacher_weights_grads_and_optimizer_state():
    # teacher 100, student 40 of which 30 trainable, Adam: 2 slots
    assert memory_needed(100, 40, 30, offload=False) == 40 + 2 * 30 + 100 + 30
    # offloaded: the teacher (forward) and the gradients (backward) are never on the device together
    assert memory_needed(100, 40, 30, offload=True) == 40 + 2 * 30 + 100
    assert memory_needed(10, 40, 30, offload=True) == 40 + 2 * 30 + 30


def _distill_module(**teacher_kwargs) -> DistillModule:
    return DistillModule(tiny_cnn, Teacher(MLP(10, hidden=(256,)), **teacher_kwargs))


def test_teacher_that_does_not_fit_is_refused_before_training_with_the_numbers(tmp_path, tiny_mnist, monkeypatch):
    module = _distill_module()
    teacher, student = module_bytes(module.teacher.model), module_bytes(module.student)
    need = memory_needed(teacher, student, student, offload=False)
    monkeypatch.setattr(teacher_lib, "device_budget", lambda device: need - 1)  # one byte short on "this device"
    data = MNISTDataModule(str(tiny_mnist), train_size=100, val_size=50, batch_size=50)
    trainer = tiny_trainer(tmp_path, max_steps=1)
    with pytest.raises(TeacherMemoryError) as err:
        trainer.fit(module, datamodule=data)
    message = str(err.value)
    assert f"need at least {need / 2**30:.2f} GiB" in message and "in float32" in message
    assert "model.init_args.teacher.dtype: bfloat16" in message and "model.init_args.teacher.offload: true" in message
    assert trainer.global_step == 0
    # the ways out it names are real: offloading (or a bf16 teacher) brings the need under the budget
    monkeypatch.setattr(teacher_lib, "device_budget", lambda device: memory_needed(teacher, student, student, offload=True))
    fits = _distill_module(offload=True)
    tiny_trainer(tmp_path / "ok", max_steps=1, limit_val_batches=0).fit(fits, datamodule=data)
    assert fits.global_step == 1


def test_cpu_runs_are_not_checked():
    assert memory.device_budget(torch.device("cpu")) is None
    module = _distill_module()
    assert teacher_lib.check_teacher_fits(module.teacher.model, module.student, torch.device("cpu"), offload=False) is None


class _RecordingTeacher(torch.nn.Linear):
    """A teacher whose moves are recorded instead of done, and whose forward returns its input: inputs on the
    "meta" device stand in for an accelerator's (none here)."""

    def __init__(self):
        super().__init__(2, 2)
        self.moves: list[str] = []

    def to(self, device, *args, **kwargs):
        self.moves.append(str(device))
        return self

    def forward(self, x):
        return x


def test_offloaded_teacher_visits_the_accelerator_only_for_its_forward():
    accelerator_batch = torch.empty(3, 2, device="meta")
    teacher = _RecordingTeacher()
    placement = TeacherPlacement(teacher, offload=True)
    placement.park()  # already in CPU memory: nothing to do
    teacher(accelerator_batch)
    assert teacher.moves == ["meta", "cpu"]  # to the input's device for the forward, parked after it
    placement.hold = True  # routed distillation: the backward still needs the weights
    teacher(x=accelerator_batch)
    assert teacher.moves == ["meta", "cpu", "meta"]
    placement.hold = False
    placement.park()
    assert teacher.moves[-1] == "cpu" and placement.moves == 4
    # without offloading, or computing on the CPU, the teacher never moves
    for offload, batch in ((False, accelerator_batch), (True, torch.zeros(3, 2))):
        still = _RecordingTeacher()
        TeacherPlacement(still, offload=offload)
        still(batch)
        assert still.moves == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_offloaded_teacher_lives_in_cpu_memory_between_steps(tmp_path, tiny_mnist):
    seen = []

    class Where(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.append(next(pl_module.teacher.parameters()).device.type)

    module = _distill_module(offload=True)
    # on the network, after the placement's own hooks: where the weights are when the forward runs
    module.teacher.model.register_forward_pre_hook(lambda m, a: seen.append("forward on " + next(m.parameters()).device.type))
    data = MNISTDataModule(str(tiny_mnist), train_size=100, val_size=50, batch_size=50)
    pl.Trainer(accelerator="cuda", devices=1, max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
               callbacks=[Where()]).fit(module, datamodule=data)
    assert seen == ["forward on cuda", "cpu"] * 2


# ---- activation checkpointing ---------------------------------------------------------------------------
def _tiny_bert_student():
    from lkd.models import TransformerClassifier

    torch.manual_seed(0)
    return TransformerClassifier(2, MINILM, pretrained=False, keep_layers=[0, 2, 5], config_overrides=TINY_BERT)


def test_activation_checkpointing_recomputes_layers_and_keeps_the_gradients():
    plain, checkpointed = _tiny_bert_student(), _tiny_bert_student()
    enable_activation_checkpointing(checkpointed)
    calls = []
    # inside the layer (transformers checkpoints `forward`, so hooks on the layer itself run once)
    checkpointed.encoder.encoder.layer[0].intermediate.register_forward_hook(lambda *a: calls.append(1))
    ids = torch.randint(1000, 2000, (4, 12))
    grads = []
    for model in (plain, checkpointed):
        model.train()
        torch.manual_seed(1)  # same dropout masks
        model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert len(calls) == 2  # the layer ran again in the backward: its activations were not kept
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)


def test_activation_checkpointing_from_yaml_trains_the_glue_student(tmp_path, tiny_glue):
    from lkd.modules import GLUEDistillModule

    module = GLUEDistillModule(lambda n: _tiny_bert_student(), Teacher(_tiny_bert_student()), task="sst2",
                               activation_checkpointing=True)
    assert not module.teacher.model.encoder.encoder.layer[0].gradient_checkpointing  # the student only
    assert module.student.encoder.encoder.layer[0].gradient_checkpointing
    trainer = tiny_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(module, datamodule=GLUEDataModule("sst2", hub_id=str(tiny_glue), batch_size=8))
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss"])


def test_activation_checkpointing_needs_a_transformers_student():
    with pytest.raises(ValueError, match="MLP has none.*activation_checkpointing: false"):
        enable_activation_checkpointing(MLP(10))


# ---- 16-bit true precision --------------------------------------------------------------------------------
def test_bf16_true_trains_the_mnist_student(tmp_path, tiny_mnist):
    """Lightning casts a batch for "bf16-true" before the data module turns uint8 pixels into floats: the
    data module must cast its float images too, or the bf16 student gets fp32 inputs."""
    module = ClassifierModule(tiny_cnn)
    data = MNISTDataModule(str(tiny_mnist), train_size=100, val_size=50, batch_size=50)
    trainer = tiny_trainer(tmp_path, max_steps=2, precision="bf16-true")
    trainer.fit(module, datamodule=data)
    assert next(module.parameters()).dtype == torch.bfloat16
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["val/loss"])


# ---- the language-model track ------------------------------------------------------------------------------
def test_routed_lm_distillation_with_a_bf16_teacher_and_checkpointed_student(tiny_wikitext, tmp_path):
    from lkd.data.text import TextDataModule
    from lkd.models.router import StudentAwareRouter
    from lkd.modules import LMDistillModule
    from tests.lm_fixtures import WIKITEXT_CONFIG, tiny_student, tiny_teacher

    module = LMDistillModule(tiny_student(), Teacher(tiny_teacher(), dtype="bfloat16"), tokenizer="bytes",
                             router=StudentAwareRouter(), router_top_k=2, activation_checkpointing=True)
    recomputed = []
    module.student.model.layers[0].self_attn.register_forward_hook(lambda *a: recomputed.append(module.student.training))
    teacher_fp32 = module_bytes(module.teacher)
    before = {k: v.clone() for k, v in module.router.state_dict().items()}
    data = TextDataModule(str(tiny_wikitext), WIKITEXT_CONFIG, block_size=16, batch_size=4)
    trainer = tiny_trainer(tmp_path, max_steps=2, limit_val_batches=1, num_sanity_val_steps=0, deterministic=False)
    trainer.fit(module, data)
    assert all(p.dtype == torch.bfloat16 for p in module.teacher.parameters())
    assert module_bytes(module.teacher) == teacher_fp32 // 2  # held in bf16: half the memory
    assert recomputed.count(True) == 2 * 2  # 2 training steps, layer 0 run again in each backward
    metrics = trainer.callback_metrics
    assert all(torch.isfinite(metrics[f"train/{t}_step"]) for t in ("kl", "router_loss", "teacher_lm_degradation"))
    assert any(not torch.equal(before[k], v) for k, v in module.router.state_dict().items())  # gradient reached it


def test_teacher_offload_is_refused_under_fsdp():
    from lightning.pytorch.strategies import FSDPStrategy

    module = _distill_module(offload=True)

    class FakeTrainer:  # the strategy is all the check reads; FSDP itself needs CUDA GPUs
        strategy = FSDPStrategy()

    with pytest.raises(ValueError, match="teacher.offload moves the whole teacher.*cpu_offload"):
        module.teacher.check_fits(module.student, FakeTrainer())
