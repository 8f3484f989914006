"""The ``lkd`` command: a LightningCLI with lkd's defaults.

    lkd fit --config configs/mnist/teacher.yaml
    lkd test --config configs/mnist/teacher.yaml --ckpt_path checkpoints/mnist/teacher.ckpt

Model and data are chosen by ``class_path`` (subclass mode). ``data.num_classes`` is linked into the
model, so it is written once. Every run gets a ``ModelCheckpoint`` (``checkpoint.*``: best on ``val/acc``
plus ``last.ckpt``) and, with ``best_checkpoint.path``, a copy of its best checkpoint at a stable path.
"""

from __future__ import annotations

import os
import sys

import lightning.pytorch as pl
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

from lkd.callbacks import PublishBestCheckpoint


class LKDCLI(LightningCLI):
    """LightningCLI with linked arguments and lkd's checkpoint callbacks."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("trainer_defaults", default_trainer_settings())
        kwargs.setdefault("auto_configure_optimizers", False)
        super().__init__(pl.LightningModule, pl.LightningDataModule, *args, **kwargs)

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "ep{epoch}-acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(PublishBestCheckpoint, "best_checkpoint")


def default_trainer_settings() -> dict:
    callbacks = [LearningRateMonitor(logging_interval="step")]
    if sys.stdout.isatty() or os.environ.get("LKD_RICH", "0") == "1":
        callbacks.append(RichProgressBar())
    return {"callbacks": callbacks, "default_root_dir": "runs"}


def main(args: list[str] | None = None) -> None:
    """Console entry point ``lkd``."""
    LKDCLI(args=args)


if __name__ == "__main__":
    main()
