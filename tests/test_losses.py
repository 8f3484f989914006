import math

import pytest
import torch
import torch.nn.functional as F

from lkd.losses import hinton_kd_loss, kd_kl_div


def test_kl_is_zero_for_equal_logits():
    logits = torch.randn(5, 7)
    assert kd_kl_div(logits, logits.clone(), temperature=3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_matches_hand_computation():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0]])
    # T = 1: p_t = (1-q, q), p_s = (q, 1-q) with q = sigmoid(-1); KL = sum p_t log(p_t / p_s)
    q = 1 / (1 + math.e)
    expected = (1 - q) * math.log((1 - q) / q) + q * math.log(q / (1 - q))
    assert kd_kl_div(s, t, temperature=1.0).item() == pytest.approx(expected, rel=1e-5)


def test_kl_is_scaled_by_t_squared():
    s, t, temp = torch.randn(4, 10), torch.randn(4, 10), 4.0
    raw = F.kl_div(F.log_softmax(s / temp, -1), F.softmax(t / temp, -1), reduction="batchmean")
    assert kd_kl_div(s, t, temperature=temp).item() == pytest.approx(temp**2 * raw.item(), rel=1e-5)


def test_kl_averages_over_token_positions():
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    flat = kd_kl_div(s.reshape(6, 5), t.reshape(6, 5), 2.0)
    assert kd_kl_div(s, t, 2.0).item() == pytest.approx(flat.item(), rel=1e-6)


def test_kl_gradient_reaches_student_only():
    s = torch.randn(3, 4, requires_grad=True)
    t = torch.randn(3, 4)
    kd_kl_div(s, t, 2.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_hinton_loss_mixes_terms():
    s, t, y = torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,))
    total, terms = hinton_kd_loss(s, t, y, temperature=2.0, alpha=0.25)
    assert set(terms) == {"kd", "ce"}
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)
    assert total.item() == pytest.approx(0.25 * terms["kd"].item() + 0.75 * terms["ce"].item(), rel=1e-6)
    only_ce, _ = hinton_kd_loss(s, t, y, temperature=2.0, alpha=0.0)
    assert only_ce.item() == pytest.approx(terms["ce"].item(), rel=1e-6)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_bad_temperature_is_named(temperature):
    with pytest.raises(ValueError, match=f"temperature must be > 0, got {temperature}"):
        kd_kl_div(torch.zeros(1, 2), torch.zeros(1, 2), temperature)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_bad_alpha_is_named(alpha):
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        hinton_kd_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), alpha=alpha)


def test_shape_mismatch_is_explained():
    with pytest.raises(ValueError, match=r"student logits \(2, 8\) and teacher logits \(2, 10\) differ"):
        kd_kl_div(torch.zeros(2, 8), torch.zeros(2, 10))
