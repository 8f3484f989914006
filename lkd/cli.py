"""The ``lkd`` command: a LightningCLI with lkd's defaults.

    lkd fit --config configs/mnist/teacher.yaml
    lkd test --config configs/mnist/teacher.yaml --ckpt_path checkpoints/mnist/teacher.ckpt

Model and data are chosen by ``class_path`` (subclass mode). ``data.num_classes`` is linked into the
model, so it is written once. Every run gets a ``ModelCheckpoint`` (``checkpoint.*``: best on ``val/acc``),
a ``latest.ckpt`` rewritten every epoch (to resume a crashed run from) and, with ``best_checkpoint.path``,
a copy of its best checkpoint at a stable path.
"""

from __future__ import annotations

import os
import sys

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

from lkd.callbacks import LearningRateLogger, PublishBestCheckpoint
from lkd.callbacks.hparams import HParamsConfigCallback


class LKDCLI(LightningCLI):
    """LightningCLI with linked arguments and lkd's checkpoint callbacks."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("save_config_callback", HParamsConfigCallback)  # config.yaml + TensorBoard hparams
        kwargs.setdefault("trainer_defaults", default_trainer_settings())
        kwargs.setdefault("auto_configure_optimizers", False)
        super().__init__(pl.LightningModule, pl.LightningDataModule, *args, **kwargs)

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Each link applies only where the chosen classes have both ends (MNIST has no task, LMs no classes).
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.task", "model.init_args.task", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.filename": "ep{epoch}-acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(PublishBestCheckpoint, "best_checkpoint")

    @override
    def _instantiate_trainer(self, config: dict, callbacks: list):
        # lkd adds a progress bar and checkpoint callbacks by default; a run that switches progress bars or
        # checkpointing off gets them dropped instead of Lightning's "found X in callbacks" error.
        unwanted: tuple[type, ...] = ()
        if config.get("enable_progress_bar") is False:
            unwanted += (RichProgressBar,)
        if config.get("enable_checkpointing") is False:
            unwanted += (ModelCheckpoint,)
        if unwanted:
            callbacks = [c for c in callbacks if not isinstance(c, unwanted)]
            defaults = self.trainer_defaults.get("callbacks", [])
            self.trainer_defaults = {**self.trainer_defaults, "callbacks": [c for c in defaults if not isinstance(c, unwanted)]}
        return super()._instantiate_trainer(config, callbacks)


def default_trainer_settings() -> dict:
    # Lightning 2.6's save_last only writes when a top-k checkpoint was written in the same step, so
    # "the latest state" is a second ModelCheckpoint that keeps one file and rewrites it every epoch.
    latest = ModelCheckpoint(filename="latest", save_top_k=1, enable_version_counter=False)
    callbacks = [LearningRateLogger(logging_interval="step"), latest]
    if sys.stdout.isatty() or os.environ.get("LKD_RICH", "0") == "1":
        callbacks.append(RichProgressBar())
    return {"callbacks": callbacks, "default_root_dir": "runs"}


def main(args: list[str] | None = None) -> None:
    """Console entry point ``lkd``."""
    LKDCLI(args=args)


if __name__ == "__main__":
    main()
