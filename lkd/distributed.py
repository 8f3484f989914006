"""Multi-process training on Lightning's own strategies: the checks lkd adds and the logging default.

Every track runs with ``trainer.strategy: ddp`` (and the LM track with ``fsdp``) from YAML alone; Lightning
launches the processes, wraps the model and shards the data. What lkd adds:

* :func:`check_trainer_settings` (before the trainer is built): FSDP on anything but CUDA GPUs, and more GPUs
  than the machine has, are refused with the setting to change;
* :func:`check_strategy` (once the trainer is built): a multi-process strategy with a single process is
  refused before anything runs (DDP on one device only adds overhead, and usually means ``devices`` was
  forgotten);
* (in :class:`lkd.modules.LKDModule`) values logged with ``self.log`` are averaged over processes
  (``sync_dist``) whenever there is more than one.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy


class DistributedSetupError(ValueError):
    """A multi-process strategy that cannot run as configured."""


def check_trainer_settings(settings: dict[str, Any]) -> None:
    """Check the trainer arguments (as LightningCLI passes them to ``Trainer``) before anything is built.

    * FSDP needs CUDA GPUs: Lightning 2.6 refuses ``strategy: fsdp`` unless ``accelerator`` is ``gpu``/``cuda``,
      and hands torch's FSDP the device index of its root device, which a CPU does not have (torch then
      stops with "FSDP needs a non-CPU accelerator device").
    * ``accelerator: gpu`` with an integer ``devices`` larger than the number of CUDA GPUs visible.

    Raises:
        DistributedSetupError: every problem found, each with the setting and what would work.
    """
    strategy, accelerator = settings.get("strategy", "auto"), settings.get("accelerator", "auto")
    devices = settings.get("devices", "auto")
    on_cuda = accelerator in ("gpu", "cuda") or isinstance(accelerator, CUDAAccelerator)
    visible = torch.cuda.device_count()
    problems = []
    fsdp = isinstance(strategy, FSDPStrategy) or (isinstance(strategy, str) and strategy in FSDPStrategy.get_registered_strategies())
    if fsdp and not on_cuda:
        problems.append(
            f"trainer.strategy=fsdp runs on CUDA GPUs only (Lightning shards through torch's FSDP with a CUDA device "
            f"index), got trainer.accelerator={accelerator!r} with {visible} CUDA GPU(s) visible. HINT: on GPUs set "
            "trainer.accelerator: gpu and trainer.devices: 2 or more; on CPUs use trainer.strategy: ddp with "
            "trainer.devices: 2 (each process holds the whole model, gradients are all-reduced)"
        )
    if on_cuda and not visible:
        problems.append(
            f"trainer.accelerator={accelerator!r} asks for CUDA GPUs, but torch sees none here (torch {torch.__version__}, "
            f"CUDA {'not built in' if torch.version.cuda is None else torch.version.cuda}). HINT: trainer.accelerator: cpu "
            "(or auto, which takes a GPU where there is one)")
    for name in ("max_epochs", "max_steps"):
        if settings.get(name) == 0:
            problems.append(f"trainer.{name}=0 trains nothing (no step, no validation, no checkpoint). HINT: 1 or more "
                            f"(-1: no limit{', stop by max_epochs' if name == 'max_steps' else ''})")
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():  # the CLI passes "2" as a string
        devices = int(devices)
    wanted = devices if isinstance(devices, int) and devices > 0 else len(devices) if isinstance(devices, (list, tuple)) else None
    if on_cuda and visible and wanted is not None and wanted > visible:
        problems.append(
            f"trainer.devices={devices!r} asks for {wanted} CUDA GPU(s), but this machine has {visible}. HINT: "
            + (f"set trainer.devices to at most {visible} (or -1 for all of them)" if visible else
               "without a GPU use trainer.accelerator: cpu, where trainer.devices: 2 with trainer.strategy: ddp "
               "starts 2 processes")
        )
    if problems:
        raise DistributedSetupError("\n".join(problems))


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
