"""Multi-process training on Lightning's own strategies: the checks lkd adds and the logging default.

Every track runs with ``trainer.strategy: ddp`` (and the LM track with ``fsdp``) from YAML alone; Lightning
launches the processes, wraps the model and shards the data. What lkd adds:

* :func:`check_strategy`: a multi-process strategy with a single process is refused before anything is
  built (DDP on one device only adds overhead, and usually means ``devices`` was forgotten);
* :class:`SyncedLogging`: values logged with ``self.log`` are averaged over processes (``sync_dist``) whenever
  there is more than one, so ``val/loss`` and every loss term mean the same thing on every rank and in
  TensorBoard. torchmetrics objects synchronise themselves and are left alone.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ParallelStrategy
from torchmetrics import Metric


class DistributedSetupError(ValueError):
    """A multi-process strategy that cannot run as configured."""


def check_strategy(trainer: pl.Trainer) -> None:
    """Refuse a DDP/FSDP strategy that would run a single process, naming the settings and the fix.

    Raises:
        DistributedSetupError: ``trainer.strategy`` is DDP or FSDP and ``devices × num_nodes`` is 1.
    """
    strategy = trainer.strategy
    if not isinstance(strategy, (DDPStrategy, FSDPStrategy)) or trainer.world_size > 1:
        return
    name = "fsdp" if isinstance(strategy, FSDPStrategy) else "ddp"
    accelerator = type(trainer.accelerator).__name__.removesuffix("Accelerator").lower()
    available = trainer.accelerator.auto_device_count()
    can = (f"this machine has {available} {accelerator} device(s)" if accelerator != "cpu" else
           "on a CPU each process is one device, so trainer.devices: 2 starts two processes")
    raise DistributedSetupError(
        f"trainer.strategy={name!r} asks for several processes, but trainer.devices={trainer.num_devices} and "
        f"trainer.num_nodes={trainer.num_nodes} give one ({accelerator}). HINT: set trainer.devices to 2 or more "
        f"({can}), or drop trainer.strategy (strategy: auto) to train on one device"
    )


class SyncedLogging(pl.LightningModule):
    """Mixin: ``self.log`` defaults to ``sync_dist=True`` when the trainer runs more than one process."""

    def log(self, name: str, value, *args, sync_dist: bool | None = None, **kwargs) -> None:
        if sync_dist is None:
            trainer = self._trainer
            sync_dist = (
                trainer is not None and isinstance(trainer.strategy, ParallelStrategy) and trainer.world_size > 1
                and not isinstance(value, Metric)
            )
        super().log(name, value, *args, sync_dist=sync_dist, **kwargs)
