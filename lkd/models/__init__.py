"""Plain nn.Modules (no Lightning imports)."""

from lkd.models.cnn import ConvNet
from lkd.models.mlp import MLP


def count_parameters(module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


__all__ = ["MLP", "ConvNet", "count_parameters"]
