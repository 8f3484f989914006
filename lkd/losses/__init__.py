"""Losses as pure functions of tensors. Never imports lkd.models."""

from lkd.losses.kd import hinton_kd_loss, kd_kl_div

__all__ = ["hinton_kd_loss", "kd_kl_div"]
