"""Small convolutional classifiers: a VGG-style teacher and a strided student, one class."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from einops import rearrange
from torch import nn


class ConvNet(nn.Module):
    """Blocks of 3x3 convolutions, each block halving the resolution, then an MLP head.

    ``downsample="pool"``: every block is ``convs_per_block`` stride-1 convs then 2x2 max-pool (the teacher).
    ``downsample="stride"``: the first conv of each block has stride 2 (the cheap student).

    Args:
        num_classes: output logits.
        in_channels: image channels.
        image_size: input height = width.
        channels: output channels of each block, e.g. ``(32, 64)``.
        convs_per_block: convolutions per block.
        downsample: ``"pool"`` or ``"stride"``.
        hidden: width of the hidden layer of the head (0 = linear head).
        batch_norm: BatchNorm after each conv.
        dropout: dropout before each Linear of the head.

    Shapes: x (B, in_channels, image_size, image_size) -> logits (B, num_classes).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        channels: Sequence[int] = (32, 64),
        *,
        convs_per_block: int = 2,
        downsample: Literal["pool", "stride"] = "pool",
        hidden: int = 512,
        batch_norm: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        if downsample not in ("pool", "stride"):
            raise ValueError(f"ConvNet downsample must be 'pool' or 'stride', got {downsample!r}")
        if not channels or any(c <= 0 for c in channels) or convs_per_block <= 0 or hidden < 0:
            raise ValueError(
                f"ConvNet sizes must be > 0, got channels={list(channels)}, convs_per_block={convs_per_block}, hidden={hidden}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"ConvNet dropout must be in [0, 1), got {dropout}")
        self.in_channels, self.image_size = in_channels, image_size
        self.num_classes = num_classes  # read by lkd.teacher.Teacher.check_classes (as MLP's and TransformerClassifier's)
        layers: list[nn.Module] = []
        width, size = in_channels, image_size
        for out in channels:
            for i in range(convs_per_block):
                stride = 2 if downsample == "stride" and i == 0 else 1
                layers.append(nn.Conv2d(width, out, 3, stride=stride, padding=1, bias=not batch_norm))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(out))
                layers.append(nn.ReLU(inplace=True))
                width = out
            if downsample == "pool":
                layers.append(nn.MaxPool2d(2))
            size = (size + 1) // 2 if downsample == "stride" else size // 2
        self.features = nn.Sequential(*layers)
        flat = width * size * size
        head: list[nn.Module] = []
        if hidden > 0:
            head += [nn.Dropout(dropout), nn.Linear(flat, hidden), nn.ReLU(inplace=True)]
            flat = hidden
        head += [nn.Dropout(dropout), nn.Linear(flat, num_classes)]
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-1] != self.image_size:
            raise ValueError(
                f"ConvNet expects images (B, {self.in_channels}, {self.image_size}, {self.image_size}), got {tuple(x.shape)}"
            )
        x = self.features(x)  # (B, C, h, w)
        return self.head(rearrange(x, "b c h w -> b (c h w)"))
