from functools import partial

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lkd.checkpoint import CheckpointMismatchError
from lkd.data import MNISTDataModule
from lkd.models import MLP
from lkd.modules import ClassifierModule, DistillModule, NonFiniteLossError
from lkd.teacher import Teacher
from tests.helpers import tiny_cnn, tiny_mlp, tiny_trainer

teacher_mlp = partial(MLP, hidden=(32,), dropout=0.5)


@pytest.fixture()
def data(tiny_mnist):
    return MNISTDataModule(str(tiny_mnist), train_size=500, val_size=100, batch_size=50, eval_batch_size=100)


@pytest.fixture()
def teacher_ckpt(tmp_path, data):
    """A trained tiny-MLP teacher checkpoint."""
    pl.seed_everything(0)
    module = ClassifierModule(teacher_mlp, optimizer=partial(torch.optim.Adam, lr=3e-3))
    trainer = tiny_trainer(tmp_path / "teacher", max_epochs=3)
    trainer.fit(module, datamodule=data)
    path = tmp_path / "teacher.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_classifier_learns_tiny_digits(tmp_path, data):
    pl.seed_everything(0)
    module = ClassifierModule(tiny_cnn, optimizer=partial(torch.optim.Adam, lr=1e-2))
    trainer = tiny_trainer(tmp_path, max_epochs=4)
    trainer.fit(module, datamodule=data)
    (result,) = trainer.test(module, datamodule=data, verbose=False)
    assert result["test/acc"] > 0.9


class TeacherWatch(Callback):
    """Records the teacher's mode and gradient flags during every training and validation batch."""

    def __init__(self):
        self.modes, self.grads = [], []

    def _record(self, pl_module):
        self.modes.append(any(m.training for m in pl_module.teacher.modules()))  # the Teacher and every layer
        self.grads.append(any(p.requires_grad or p.grad is not None for p in pl_module.teacher.parameters()))

    def on_train_batch_end(self, trainer, pl_module, *args):
        self._record(pl_module)

    def on_validation_batch_end(self, trainer, pl_module, *args):
        self._record(pl_module)


def test_teacher_stays_frozen_and_in_eval_mode(tmp_path, data, teacher_ckpt):
    pl.seed_everything(0)
    module = DistillModule(tiny_cnn, Teacher(teacher_mlp(10), checkpoint=str(teacher_ckpt)))
    module.setup("fit")
    before = {k: v.clone() for k, v in module.teacher.model.state_dict().items()}
    trained = torch.load(teacher_ckpt, weights_only=True)["state_dict"]
    assert before and all(torch.equal(v, trained[f"model.{k}"]) for k, v in before.items())  # loaded from the checkpoint
    assert set(module.state_dict()) >= {f"teacher.model.{k}" for k in before}  # where the network lives
    watch = TeacherWatch()
    trainer = tiny_trainer(tmp_path, max_epochs=2, callbacks=[watch])
    trainer.fit(module, datamodule=data)
    # 2 epochs x 10 train batches + 1 sanity-check and 2 validation batches
    assert len(watch.modes) == 2 * 10 + 1 + 2 and not any(watch.modes) and not any(watch.grads)
    for k, v in module.teacher.model.state_dict().items():
        assert torch.equal(v, before[k]), f"teacher tensor {k} changed"
    # the teacher's own predictions are logged for reference and it learned the tiny digits
    assert trainer.callback_metrics["val/teacher_acc"] > 0.9


def test_distilled_student_learns_from_teacher(tmp_path, data, teacher_ckpt):
    pl.seed_everything(0)
    module = DistillModule(
        tiny_cnn, Teacher(teacher_mlp(10), checkpoint=str(teacher_ckpt)), alpha=1.0, temperature=2.0,
        optimizer=partial(torch.optim.Adam, lr=1e-2),
    )
    trainer = tiny_trainer(tmp_path, max_epochs=4)
    trainer.fit(module, datamodule=data)
    assert {"train/kd_epoch", "train/ce_epoch", "val/kd", "val/ce", "val/teacher_acc"} <= set(trainer.callback_metrics)
    (result,) = trainer.test(module, datamodule=data, verbose=False)
    assert result["test/acc"] > 0.9  # alpha = 1: no labels used, only the teacher's soft targets


def test_missing_teacher_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*nope\.ckpt.*HINT"):
        DistillModule(tiny_cnn, Teacher(tiny_mlp(10), checkpoint=str(tmp_path / "nope.ckpt"))).setup("fit")


def test_teacher_checkpoint_of_another_architecture(teacher_ckpt):
    with pytest.raises(CheckpointMismatchError, match=r"(?s)does not fit the teacher.*net\.0\.weight: checkpoint \(32, 784\) vs teacher \(64, 784\)"):
        DistillModule(tiny_cnn, Teacher(MLP(10, hidden=(64,), dropout=0.5), checkpoint=str(teacher_ckpt))).setup("fit")


def test_teacher_checkpoint_with_other_class_count(teacher_ckpt):
    with pytest.raises(CheckpointMismatchError, match=r"the checkpoint predicts \[10\] classes, this run has 8"):
        DistillModule(tiny_cnn, Teacher(teacher_mlp(8), checkpoint=str(teacher_ckpt)), num_classes=8).setup("fit")


def test_teacher_built_for_other_classes_than_the_data_is_refused_at_build():
    # the teacher's num_classes is not linked from the data: a mismatch is named with the key to set
    with pytest.raises(ValueError, match=r"teacher was built with num_classes=10 but the data has 8 classes\. HINT: set "
                                         r"model\.init_args\.teacher\.model\.init_args\.num_classes: 8"):
        DistillModule(tiny_cnn, Teacher(teacher_mlp(10)), num_classes=8)
    fits = DistillModule(tiny_cnn, Teacher(teacher_mlp(8)), num_classes=8)
    assert fits(torch.zeros(2, 1, 28, 28)).shape == (2, 8)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"temperature": 0.0}, "temperature must be > 0, got 0.0"), ({"alpha": 1.2}, r"alpha must be in \[0, 1\], got 1.2")],
)
def test_bad_distillation_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistillModule(tiny_cnn, Teacher(tiny_mlp(10)), **kwargs)


def test_labels_out_of_range_are_named(tmp_path, tiny_mnist):
    data = MNISTDataModule(str(tiny_mnist), train_size=500, val_size=100, batch_size=50)
    module = ClassifierModule(tiny_mlp, num_classes=5)
    with pytest.raises(ValueError, match=r"labels \[.*\] are out of range for num_classes=5"):
        tiny_trainer(tmp_path).fit(module, datamodule=data)


class PoisonAtStep(Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.model.parameters()).fill_(float("nan"))


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, data):
    module = ClassifierModule(tiny_mlp)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1, save_last=True)
    trainer = tiny_trainer(tmp_path, max_epochs=3, enable_checkpointing=True, callbacks=[ckpt, PoisonAtStep(12)])
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at global step 12 \(epoch 1\).*last good checkpoint is .*last\.ckpt"):
        trainer.fit(module, datamodule=data)
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 10
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())


def test_training_values_are_logged_lean_with_the_same_steps_and_epoch_means(tmp_path, monkeypatch):
    """Each step only adds to running sums; `self.log` runs on the steps the logger writes: TensorBoard gets
    `train/loss_step` every n steps and `train/loss_epoch` = the batch-weighted epoch mean, as before."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from lkd.evaluation import read_scalars
    from lkd.modules.base import LKDModule, StepOutput

    class Tiny(LKDModule):
        def __init__(self):
            super().__init__(lr_schedule="constant")
            self.net = torch.nn.Linear(4, 1)
            self.seen: list[tuple[float, int]] = []

        def step(self, batch, stage):
            (x,) = batch
            loss = self.net(x).pow(2).mean()
            if stage == "train":
                self.seen.append((float(loss), len(x)))
            return StepOutput(loss, len(x), {"half": loss / 2})

        def parameter_groups(self):
            return [{"params": list(self.net.parameters())}]

    calls = []
    original = LKDModule.log
    monkeypatch.setattr(LKDModule, "log", lambda self, name, *a, **k: (calls.append((self.global_step, name)), original(self, name, *a, **k))[1])
    data = DataLoader(TensorDataset(torch.randn(70, 4)), batch_size=8)  # 9 batches, the last of 6
    module = Tiny()
    pl.Trainer(max_epochs=1, log_every_n_steps=4, default_root_dir=tmp_path, enable_progress_bar=False, enable_checkpointing=False,
               logger=pl.loggers.TensorBoardLogger(tmp_path, name="lean"), limit_val_batches=0).fit(module, data)
    scalars = read_scalars(tmp_path / "lean")
    assert [s for s, _ in scalars["train/loss_step"]] == [3, 7]  # Lightning's own schedule: steps 4 and 8 (0-based 3, 7)
    assert scalars["train/loss_step"][0][1] == pytest.approx(module.seen[3][0], rel=1e-5)
    mean = sum(v * n for v, n in module.seen) / sum(n for _, n in module.seen)
    assert scalars["train/loss_epoch"][0][1] == pytest.approx(mean, rel=1e-5)
    assert scalars["train/half_epoch"][0][1] == pytest.approx(mean / 2, rel=1e-5)
    step_calls = [s for s, name in calls if name.startswith("train/") and name.endswith("_step")]
    assert len(set(step_calls)) == 3 < len(module.seen)  # logged on 3 of 9 steps (4, 8 and the last batch), not all


def test_a_mid_epoch_checkpoint_keeps_the_epochs_running_sums(tmp_path):
    from lkd.modules import ClassifierModule

    module = ClassifierModule(lambda n: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, n)), num_classes=10)
    module._train_sums["loss"] = (torch.tensor(6.0), 3)
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    fresh = ClassifierModule(lambda n: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, n)), num_classes=10)
    fresh.on_load_checkpoint(checkpoint)
    total, count = fresh._train_sums["loss"]
    assert float(total) == 6.0 and count == 3
