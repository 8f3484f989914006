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


def random_affine(images: torch.Tensor, max_rotation: float, max_scale: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Rotate each image by its own random angle in [-max_rotation, max_rotation] degrees and scale it by a
    random factor in [1 - max_scale, 1 + max_scale] about its centre (bilinear, zero fill: the background of
    raw pixels). The classic MNIST "distortions" of Simard et al. 2003 without the elastic part.

    Args:
        images: (B, C, H, W) raw pixels (uint8 or float; zero is the background).
    Returns:
        (B, C, H, W) float32 (bilinear values are not integers).
    """
    x = images.float()
    if max_rotation <= 0 and max_scale <= 0:
        return x
    b = x.shape[0]
    u = torch.rand(2, b, device=x.device, generator=generator) * 2 - 1  # (2, B) in [-1, 1]
    angle = torch.deg2rad(u[0] * max_rotation)  # (B,)
    inverse_scale = 1.0 / (1.0 + u[1] * max_scale)  # the grid reads the input: its scale is the inverse
    cos, sin = torch.cos(angle) * inverse_scale, torch.sin(angle) * inverse_scale
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def normalize_uint8(images: torch.Tensor, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> torch.Tensor:
    """uint8 (B, H, W) or (B, C, H, W) pixels -> normalised float (B, C, H, W)."""
    if images.ndim == 3:
        images = rearrange(images, "b h w -> b 1 h w")
    return (images.float() / 255.0 - mean) / std


def deskew(images: torch.Tensor) -> torch.Tensor:
    """Straighten every image: shear it so that its ink's principal axis is vertical and move its centre of
    mass to the image centre (the classic label-free MNIST preprocessing, e.g. LeCun et al. 1998's deskewed
    rows). Per image, with ink m = image − its minimum, centre of mass (c_x, c_y) and skew
    α = cov(x, y) / var(y), the output at (u, v) reads the input at (u − c + c_x + α (v − c), v − c + c_y),
    c = the image centre (bilinear, background outside).

    Args:
        images: (B, 1, H, W) float, any normalisation (the background is each image's minimum).
    Returns:
        (B, 1, H, W), same dtype.
    """
    if images.ndim != 4 or images.shape[1] != 1 or images.shape[2] != images.shape[3]:
        raise ValueError(f"deskew expects square one-channel images (B, 1, H, H), got shape {tuple(images.shape)}")
    b, _, h, _ = images.shape
    x = images.float()
    background = x.amin(dim=(2, 3), keepdim=True)  # (B, 1, 1, 1)
    ink = rearrange(x - background, "b 1 h w -> b h w")
    pos = torch.arange(h, dtype=x.dtype, device=x.device)
    rows, cols = rearrange(pos, "h -> 1 h 1"), rearrange(pos, "w -> 1 1 w")
    total = ink.sum(dim=(1, 2)).clamp_min(1e-6)  # (B,)
    cy, cx = (ink * rows).sum(dim=(1, 2)) / total, (ink * cols).sum(dim=(1, 2)) / total
    dy, dx = rows - rearrange(cy, "b -> b 1 1"), cols - rearrange(cx, "b -> b 1 1")
    alpha = (ink * dy * dx).sum(dim=(1, 2)) / (ink * dy * dy).sum(dim=(1, 2)).clamp_min(1e-6)  # (B,)
    centre = (h - 1) / 2
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)  # normalised (align_corners) coordinates
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 1] = alpha
    theta[:, 0, 2], theta[:, 1, 2] = (cx - centre) / centre, (cy - centre) / centre
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=True)
    out = torch.nn.functional.grid_sample(x - background, grid, align_corners=True, padding_mode="zeros")
    return (out + background).to(images.dtype)
