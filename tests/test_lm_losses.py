"""LM distillation losses on hand examples: zero where the student equals the teacher, hand-computed values."""

import math

import pytest
import torch

from tests.lm_fixtures import _one_torch_thread  # noqa: F401
from lkd.losses.lm import (
    DEFAULT_LOSS_WEIGHTS,
    attention_transfer_loss,
    combine_losses,
    contrastive_loss,
    feature_loss,
    layerwise_loss,
    lm_cross_entropy,
    validate_loss_weights,
)


def test_feature_loss_zero_when_equal_and_hand_value():
    h = torch.randn(2, 3, 4)
    assert feature_loss(h, h) == 0
    s, t = torch.zeros(1, 1, 2), torch.tensor([[[1.0, 3.0]]])
    assert feature_loss(s, t).item() == pytest.approx((1 + 9) / 2)


def test_feature_loss_names_shapes_on_mismatch():
    with pytest.raises(ValueError, match=r"\(1, 1, 2\).*\(1, 1, 3\)"):
        feature_loss(torch.zeros(1, 1, 2), torch.zeros(1, 1, 3))


def test_layerwise_loss_cosine():
    h = torch.randn(2, 3, 4)
    assert layerwise_loss([h, 2 * h], [h, h]).item() == pytest.approx(0.0, abs=1e-6)  # cosine ignores scale
    s, t = torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 1.0]]])  # orthogonal: 1 - 0
    assert layerwise_loss([s, s], [t, s]).item() == pytest.approx(0.5)  # mean of 1 and 0
    with pytest.raises(ValueError, match="same number"):
        layerwise_loss([s], [])


def test_attention_transfer_zero_when_equal_and_hand_value():
    a = torch.softmax(torch.randn(2, 3, 4, 4), dim=-1)
    assert attention_transfer_loss([a], [a]).item() == pytest.approx(0.0, abs=1e-6)
    # head averaging: a 2-head student whose mean equals the 1-head teacher costs nothing
    t = torch.tensor([[[[0.5, 0.5], [0.5, 0.5]]]])  # (1, 1, 2, 2)
    s = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]]])  # (1, 2, 2, 2), mean = 0.5
    assert attention_transfer_loss([s], [t]).item() == pytest.approx(0.0, abs=1e-6)
    # hand value: teacher rows (1, 0), student rows (0.5, 0.5): KL = log 2 per query
    t1 = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    s1 = torch.full((1, 1, 2, 2), 0.5)
    assert attention_transfer_loss([s1], [t1]).item() == pytest.approx(math.log(2), rel=1e-5)


def test_attention_transfer_causal_zeros_are_fine():
    mask = torch.tril(torch.ones(3, 3))
    a = mask / mask.sum(-1, keepdim=True)
    val = attention_transfer_loss([a[None, None]], [a[None, None]])
    assert torch.isfinite(val) and val.abs() < 1e-6


def test_contrastive_loss_hand_value():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tau = 0.5
    # own pair cosine 1, other pair 0: loss = -log(e^{2} / (e^{2} + e^{0}))
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 1))
    assert contrastive_loss(s, s, tau).item() == pytest.approx(expected, rel=1e-5)
    assert contrastive_loss(s, s, 0.01).item() == pytest.approx(0.0, abs=1e-6)  # student = teacher, far apart
    assert contrastive_loss(s, s.flip(0), 0.01).item() > 50  # swapped: every sequence picks the wrong one
    assert contrastive_loss(s[:1], s[:1]).item() == 0  # B = 1
    with pytest.raises(ValueError, match="temperature"):
        contrastive_loss(s, s, 0.0)


def test_lm_cross_entropy_shifts_targets():
    ids = torch.tensor([[0, 1, 2]])
    logits = torch.full((1, 3, 3), -1e4)
    logits[0, 0, 1] = logits[0, 1, 2] = 1e4  # predicts the next token exactly
    assert lm_cross_entropy(logits, ids).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(1, 3, 3)
    assert lm_cross_entropy(uniform, ids).item() == pytest.approx(math.log(3))


def test_combine_losses_weighted_sum_and_terms():
    terms = {"kl": torch.tensor(2.0), "feature": torch.tensor(3.0), "layer": torch.tensor(100.0)}
    total, used = combine_losses(terms, {"kl": 0.5, "feature": 1.0, "layer": 0.0})
    assert total.item() == pytest.approx(0.5 * 2 + 3)
    assert set(used) == {"kl", "feature"}
    with pytest.raises(KeyError, match="attention"):
        combine_losses(terms, {"attention": 1.0})


@pytest.mark.parametrize("weights, match", [
    ({"kl": -0.1, "feature": 1.0}, "negative"),
    ({"kl": 0.0, "feature": 0.0}, "all loss weights are zero"),
    ({}, "all loss weights are zero"),
    ({"kl": 1.0, "klx": 1.0}, r"unknown loss names \['klx'\]"),
])
def test_bad_loss_weights(weights, match):
    with pytest.raises(ValueError, match=match):
        validate_loss_weights(weights)


def test_default_weights_are_the_original_projects():
    assert DEFAULT_LOSS_WEIGHTS == {"kl": 0.7, "feature": 0.1, "attention": 0.1, "layer": 0.05, "contrastive": 0.05}
    assert validate_loss_weights(DEFAULT_LOSS_WEIGHTS) == DEFAULT_LOSS_WEIGHTS


def test_losses_stay_fp32_under_half_inputs():
    h = torch.randn(2, 3, 4).half()
    assert feature_loss(h, h + 1).dtype == torch.float32
    a = torch.softmax(torch.randn(1, 2, 3, 3), -1).bfloat16()
    assert attention_transfer_loss([a], [a]).dtype == torch.float32
