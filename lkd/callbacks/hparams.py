"""The run's full configuration as TensorBoard hyperparameters, so runs compare in the HParams tab."""

from __future__ import annotations

import json

import lightning.pytorch as pl
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger
from typing_extensions import override

SKIP = ("config", "trainer.callbacks", "trainer.logger", "ckpt_path", "__path__")


def flatten_config(config: dict, prefix: str = "") -> dict[str, int | float | str | bool]:
    """Dotted keys → scalar values (``model.init_args.temperature: 4.0``); lists become JSON strings, and
    ``class_path`` entries keep only the class name. Parts that are not hyperparameters (callbacks, logger,
    config file paths) are left out."""
    flat: dict[str, int | float | str | bool] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if name.startswith(SKIP) or value is None:
            continue
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value, default=str)
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value.rsplit(".", 1)[-1] if key == "class_path" else value
        else:
            flat[name] = str(value)
    return flat


class HParamsConfigCallback(SaveConfigCallback):
    """LightningCLI's config saver that also writes the flattened config as TensorBoard ``hparams``, with the
    run's checkpoint monitor and ``val/loss`` as the HParams metrics (their values are the scalars the run
    logs anyway, so nothing extra is written to the curves). Lightning itself writes no hparams when
    ``default_hp_metric`` is off, which lkd's configs use to keep a meaningless ``hp_metric`` out."""

    @override
    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from torch.utils.tensorboard.summary import hparams

        config = self.config.as_dict() if hasattr(self.config, "as_dict") else dict(self.config)
        for sub in ("fit", "validate", "test", "predict"):  # a CLI with subcommands nests the config
            if isinstance(config.get(sub), dict):
                config = config[sub]
        params = flatten_config(config)
        monitor = (config.get("checkpoint") or {}).get("monitor") or "val/loss"
        metrics = {tag: 0.0 for tag in dict.fromkeys([monitor, "val/loss"])}
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                exp, ssi, sei = hparams(params, metrics)
                writer = logger.experiment._get_file_writer()
                for summary in (exp, ssi, sei):
                    writer.add_summary(summary)
