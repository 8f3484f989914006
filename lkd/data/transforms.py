"""Batch-level image transforms (run on the device after transfer, so teacher and student see one batch)."""

from __future__ import annotations

import torch
from einops import rearrange

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image by its own random offset in [-max_shift, max_shift] pixels (zero fill).

    Args:
        images: (B, C, H, W).
    Returns:
        (B, C, H, W), same dtype.
    """
    if max_shift <= 0:
        return images
    b, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (max_shift,) * 4)  # (B, C, H+2s, W+2s)
    offsets = torch.randint(0, 2 * max_shift + 1, (2, b), device=images.device, generator=generator)
    rows = offsets[0, :, None] + torch.arange(h, device=images.device)  # (B, H)
    cols = offsets[1, :, None] + torch.arange(w, device=images.device)  # (B, W)
    padded = rearrange(padded, "b c h w -> b h w c")
    batch_idx = torch.arange(b, device=images.device)[:, None, None]
    shifted = padded[batch_idx, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return rearrange(shifted, "b h w c -> b c h w")


def normalize_uint8(images: torch.Tensor, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> torch.Tensor:
    """uint8 (B, H, W) or (B, C, H, W) pixels -> normalised float (B, C, H, W)."""
    if images.ndim == 3:
        images = rearrange(images, "b h w -> b 1 h w")
    return (images.float() / 255.0 - mean) / std
