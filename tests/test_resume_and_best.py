"""Resuming reproduces an uninterrupted run; the final test uses the best checkpoint, published stably."""

from functools import partial

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lkd.callbacks import PublishBestCheckpoint
from lkd.data import MNISTDataModule
from lkd.modules import ClassifierModule
from tests.helpers import tiny_cnn, tiny_trainer


def make(tiny_mnist):
    pl.seed_everything(0)
    data = MNISTDataModule(str(tiny_mnist), train_size=500, val_size=100, batch_size=50, max_shift=2)
    return ClassifierModule(tiny_cnn, optimizer=partial(torch.optim.Adam, lr=1e-2)), data


def test_resume_matches_uninterrupted_run(tmp_path, tiny_mnist):
    module, data = make(tiny_mnist)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "a", save_top_k=-1, filename="{epoch}")
    full = tiny_trainer(tmp_path, max_epochs=4, enable_checkpointing=True, callbacks=[ckpt])
    full.fit(module, datamodule=data)
    full_metrics = {k: v.item() for k, v in full.callback_metrics.items()}

    resumed_module, resumed_data = make(tiny_mnist)
    torch.manual_seed(1234)  # the resumed process has different global randomness
    resumed = tiny_trainer(tmp_path, max_epochs=4)
    resumed.fit(resumed_module, datamodule=resumed_data, ckpt_path=tmp_path / "a" / "epoch=1.ckpt")
    assert resumed_data.augmented_batches == data.augmented_batches == 40
    for k, v in module.state_dict().items():
        torch.testing.assert_close(resumed_module.state_dict()[k], v, msg=f"{k} differs after resume")
    assert {k: v.item() for k, v in resumed.callback_metrics.items()} == full_metrics


class BreakModelAtLastEpoch(Callback):
    """Scrambles the weights before the last epoch's validation, so the last checkpoint is the worst."""

    def on_validation_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == trainer.max_epochs - 1 and not trainer.sanity_checking:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.normal_()


def test_test_runs_on_best_checkpoint_and_best_is_published(tmp_path, tiny_mnist):
    module, data = make(tiny_mnist)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/acc", mode="max")
    latest = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="latest", enable_version_counter=False)
    published = tmp_path / "stable" / "best.ckpt"
    trainer = tiny_trainer(
        tmp_path, max_epochs=3, enable_checkpointing=True,
        callbacks=[BreakModelAtLastEpoch(), ckpt, latest, PublishBestCheckpoint(str(published))],
    )
    trainer.fit(module, datamodule=data)
    assert "epoch=1" in ckpt.best_model_path and latest.best_model_path.endswith("latest.ckpt")
    (best,) = trainer.test(module, datamodule=data, ckpt_path="best", verbose=False)
    (last,) = trainer.test(module, datamodule=data, ckpt_path=latest.best_model_path, verbose=False)
    assert best["test/acc"] > 0.8 > last["test/acc"]
    stable = torch.load(published, weights_only=True)["state_dict"]
    original = torch.load(ckpt.best_model_path, weights_only=True)["state_dict"]
    assert stable.keys() == original.keys() and all(torch.equal(stable[k], original[k]) for k in stable)
