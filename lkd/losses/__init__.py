"""Losses as pure functions of tensors. Imports nothing of lkd outside ``lkd.losses``."""

from lkd.losses.chunks import ChunkIndex
from lkd.losses.hidden import contrastive_loss, feature_loss, hidden_cosine_loss, layerwise_loss, mean_pool
from lkd.losses.kd import UNLABELLED, hard_label_loss, hinton_kd_loss, labelled_rows, kd_kl_div, kd_problems, regression_kd_loss, teacher_topk, token_kl, topk_kd_kl_div

__all__ = ["UNLABELLED", "ChunkIndex", "contrastive_loss", "feature_loss", "hard_label_loss", "hidden_cosine_loss", "hinton_kd_loss", "labelled_rows", "kd_kl_div", "kd_problems", "layerwise_loss", "mean_pool", "regression_kd_loss",
           "teacher_topk", "token_kl", "topk_kd_kl_div"]
