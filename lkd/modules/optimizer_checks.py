"""Optimizer arguments checked when a module is built: torch.optim refuses a negative learning rate, eps or weight
decay, or betas outside [0, 1), only when the optimizer is built (after the data is read); :func:`optimizer_problems`
asks it up front and names the ``init_args`` option to fix."""

from __future__ import annotations

import torch
from lightning.pytorch.cli import OptimizerCallable

_TORCH_ARGUMENT_WORDS = {"learning rate": "lr", "epsilon": "eps", "beta parameter": "betas", "weight_decay": "weight_decay",
                         "momentum": "momentum", "lr_decay": "lr_decay", "alpha": "alpha", "rho": "rho"}
"""How torch.optim's "Invalid ..." messages name an argument, and the argument's name in ``init_args``."""


def optimizer_problems(optimizer: OptimizerCallable) -> list[str]:
    """Arguments the optimizer refuses (torch.optim checks lr, eps, betas, weight_decay, ... when it is built), found
    when the module is built rather than after the data is read: the factory is called once on a dummy parameter.
    Only torch's own argument checks ("Invalid learning rate: -0.1") count; an optimizer that needs more than a list
    of parameters (a device, named groups) is left to :meth:`lkd.modules.LKDModule.configure_optimizers`."""
    try:
        optimizer([torch.nn.Parameter(torch.zeros(1))])
    except ValueError as err:
        if not str(err).startswith("Invalid"):
            return []
        cls = next((a for a in getattr(optimizer, "args", ()) if isinstance(a, type)), getattr(optimizer, "func", optimizer))
        name = repr(cls)
        if isinstance(cls, type):  # as a config writes it: torch.optim.AdamW, not torch.optim.adamw.AdamW
            public = cls.__module__.startswith("torch.optim") and getattr(torch.optim, cls.__qualname__, None) is cls
            name = f"torch.optim.{cls.__qualname__}" if public else f"{cls.__module__}.{cls.__qualname__}"
        key = next((k for words, k in _TORCH_ARGUMENT_WORDS.items() if words in str(err)), None)
        given = getattr(optimizer, "keywords", {}) or {}
        option = (f"model.init_args.optimizer.init_args.{key}={given[key]}" if key in given
                  else "model.init_args.optimizer.init_args")
        return [(f"{option} is refused by {name}: {err}. HINT: a learning rate, eps and weight decay must be >= 0, betas in "
                 "[0, 1)")]
    except Exception:  # noqa: BLE001 - not an argument check: judged when the optimizer is built for training
        return []
    return []
