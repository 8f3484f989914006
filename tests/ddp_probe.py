"""A callback for multi-process tests: every rank saves its DKVB keys and values at the end of fit."""

from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from lkd.models import DiscreteKeyValueBottleneck


class SaveDKVBPerRank(Callback):
    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_fit_end(self, trainer, pl_module):
        dkvb = next(m for m in pl_module.modules() if isinstance(m, DiscreteKeyValueBottleneck))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"keys": dkvb.keys.detach().cpu(), "values": dkvb.values.detach().cpu(), "world_size": trainer.world_size},
            self.out_dir / f"rank{trainer.global_rank}.pt",
        )
