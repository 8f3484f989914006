"""Losses as pure functions of tensors. Imports nothing of lkd outside ``lkd.losses``."""

from lkd.losses.chunks import ChunkIndex
from lkd.losses.hidden import contrastive_loss, feature_loss, hidden_cosine_loss, layerwise_loss, mean_pool
from lkd.losses.kd import UNLABELLED, hard_label_loss, hinton_kd_loss, labelled_rows, kd_kl_div, kd_problems, regression_kd_loss, teacher_topk, token_kl, topk_kd_kl_div
from lkd.losses.on_policy import generalized_jsd, generalized_jsd_topk, on_policy_problems, reduce_tokens, sampled_token_reverse_kl
from lkd.losses.present_classes import present_class_cross_entropy

__all__ = ["UNLABELLED", "ChunkIndex", "contrastive_loss", "feature_loss", "generalized_jsd", "generalized_jsd_topk", "hard_label_loss",
           "hidden_cosine_loss", "hinton_kd_loss", "kd_kl_div", "kd_problems", "labelled_rows", "layerwise_loss", "mean_pool",
           "on_policy_problems", "present_class_cross_entropy", "reduce_tokens", "regression_kd_loss", "sampled_token_reverse_kl",
           "teacher_topk", "token_kl", "topk_kd_kl_div"]
