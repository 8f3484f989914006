"""What a run asks of its devices, checked before anything is built: the precision a device runs (the notebook's
choice), and multi-process training on Lightning's own strategies.

Every track runs with ``trainer.strategy: ddp`` (and the LM track with ``fsdp``) from YAML alone; Lightning
launches the processes, wraps the model and shards the data. What lkd adds:

* :func:`choose_precision` / :func:`check_tracks`: the 16-bit precision a device supports, and which tracks fit it;
* :func:`check_trainer_settings` (before the trainer is built): FSDP on anything but CUDA GPUs, GPUs asked for
  where there are none or fewer, and a run of 0 epochs or steps, are refused with the setting to change;
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


# ---- precision ------------------------------------------------------------------------------------------
def device_summary() -> tuple[str, list[str]]:
    """(a description of the accelerator, the precisions it runs, best first)."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        major, minor = torch.cuda.get_device_capability(0)
        if torch.cuda.is_bf16_supported():  # Ampere (sm_80) and newer
            return f"CUDA {name} (sm_{major}{minor}, bf16 supported)", ["bf16-mixed", "16-mixed", "32-true"]
        return f"CUDA {name} (sm_{major}{minor}, no bf16: e.g. P100, T4)", ["16-mixed", "32-true"]
    return "CPU (no CUDA device)", ["32-true", "bf16-mixed"]


def choose_precision(requested: str = "auto") -> tuple[str, str]:
    """The precision to pass to ``Trainer(precision=...)`` and why.

    ``"auto"``: ``bf16-mixed`` on GPUs with bf16 (no loss scaling needed), ``16-mixed`` (fp16 AMP with a grad
    scaler) on GPUs without it such as Kaggle's P100 and T4, ``32-true`` on CPU (CPU autocast is bf16 only,
    and on few cores it is rarely faster). Anything else is checked against what the device runs.

    Raises:
        ValueError: the device cannot run ``requested``; the message lists what it can.
    """
    device, supported = device_summary()
    if requested == "auto":
        precision = supported[0]
        why = {
            "bf16-mixed": "bf16 autocast: same range as fp32, no loss scaling",
            "16-mixed": "fp16 autocast with a gradient scaler: this GPU has no bf16",
            "32-true": "full fp32: CPU autocast is bf16-only and seldom faster on a few cores",
        }[precision]
        return precision, f"{device}: {precision} ({why})"
    if requested not in supported:
        raise ValueError(
            f"precision {requested!r} cannot run on {device}; it runs {supported} (or 'auto' to pick {supported[0]!r})"
        )
    return requested, f"{device}: {requested} (as requested)"


TRACKS = ("mnist", "continual", "glue", "lm")


def check_tracks(tracks: list[str]) -> list[str]:
    """The tracks a notebook/parameters cell asks for, checked against the ones lkd has."""
    unknown = [t for t in tracks if t not in TRACKS]
    if unknown or not tracks:
        raise ValueError(f"unknown track(s) {unknown or tracks!r}; choose from {list(TRACKS)}")
    return list(tracks)
