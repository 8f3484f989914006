"""Plain nn.Modules (no Lightning imports)."""

from lkd.models.cnn import ConvNet
from lkd.models.dkvb import DiscreteKeyValueBottleneck, DKVBOutput
from lkd.models.encoders import PCAEncoder
from lkd.models.key_init import discrete_key_init
from lkd.models.mlp import MLP


def count_parameters(module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "MLP", "ConvNet", "DKVBOutput", "DiscreteKeyValueBottleneck", "PCAEncoder", "count_parameters", "discrete_key_init",
]
