"""Multi-layer perceptron classifier (Hinton et al. 2015's 784-1200-1200-10 teacher, small students)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU -> Dropout] x len(hidden) -> Linear.

    Args:
        num_classes: output logits.
        in_features: flattened input size (784 for MNIST).
        hidden: hidden layer widths, e.g. ``(1200, 1200)``.
        dropout: dropout after each hidden layer.
        input_dropout: dropout on the input pixels (Hinton et al. use 0.2).

    Shapes: x (B, ...) with prod(...) == in_features -> logits (B, num_classes).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_features: int = 784,
        hidden: Sequence[int] = (1200, 1200),
        *,
        dropout: float = 0.0,
        input_dropout: float = 0.0,
    ):
        super().__init__()
        if num_classes <= 0 or in_features <= 0 or any(h <= 0 for h in hidden):
            raise ValueError(f"MLP sizes must be > 0, got num_classes={num_classes}, in_features={in_features}, hidden={list(hidden)}")
        for name, p in (("dropout", dropout), ("input_dropout", input_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"MLP {name} must be in [0, 1), got {p}")
        self.in_features, self.num_classes = in_features, num_classes
        layers: list[nn.Module] = [nn.Dropout(input_dropout)] if input_dropout > 0 else []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(x, "b ... -> b (...)")
        if x.shape[1] != self.in_features:
            raise ValueError(f"MLP expects {self.in_features} input features per example, got {x.shape[1]}")
        return self.net(x)
