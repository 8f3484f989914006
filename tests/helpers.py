"""Small builders shared by tests: tiny networks and trainers."""

from __future__ import annotations

from functools import partial

import lightning.pytorch as pl

from lkd.models import MLP, ConvNet

tiny_mlp = partial(MLP, hidden=(32,))
tiny_cnn = partial(ConvNet, channels=(4, 8), convs_per_block=1, downsample="stride", hidden=16, batch_norm=False)


def tiny_trainer(tmp_path, **kwargs) -> pl.Trainer:
    """The tests' one Trainer builder: one epoch, nothing logged, shown or checkpointed, deterministic; ``kwargs``
    override (a file with other defaults binds them once: ``trainer = partial(tiny_trainer, max_steps=2)``)."""
    defaults = dict(
        default_root_dir=str(tmp_path),
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        deterministic=True,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)
