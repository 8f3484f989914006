"""Losses as pure functions of tensors. Never imports lkd.models."""

from lkd.losses.hidden import hidden_cosine_loss, layerwise_loss
from lkd.losses.kd import UNLABELLED, hard_label_loss, hinton_kd_loss, labelled_rows, kd_kl_div, kd_problems, regression_kd_loss, teacher_topk, token_kl, topk_kd_kl_div

__all__ = ["UNLABELLED", "hard_label_loss", "hidden_cosine_loss", "hinton_kd_loss", "labelled_rows", "kd_kl_div", "kd_problems", "layerwise_loss", "regression_kd_loss",
           "teacher_topk", "token_kl", "topk_kd_kl_div"]
