import math

import pytest
import torch
import torch.nn.functional as F

from lkd.losses import hinton_kd_loss, kd_kl_div, layerwise_loss, token_kl


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


# ---- token_kl: the one per-position KL -----------------------------------------------------------------
def test_token_kl_matches_hand_computation_per_position():
    # position 0: the two-class case of test_kl_matches_hand_computation; position 1: equal logits -> 0
    s = torch.tensor([[1.0, 0.0], [3.0, -1.0]])
    t = torch.tensor([[0.0, 1.0], [3.0, -1.0]])
    q = 1 / (1 + math.e)
    expected = (1 - q) * math.log((1 - q) / q) + q * math.log(q / (1 - q))
    kl = token_kl(s, t)
    assert kl.shape == (2,) and kl.dtype == torch.float32
    assert kl[0].item() == pytest.approx(expected, rel=1e-5) and kl[1].item() == pytest.approx(0.0, abs=1e-7)
    # at T = 2 the logits (2, 0) vs (0, 2) give the same distributions as (1, 0) vs (0, 1) at T = 1
    at_t2 = token_kl(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0]), temperature=2.0)
    assert at_t2.shape == () and at_t2.item() == pytest.approx(expected, rel=1e-5)


def test_token_kl_against_a_float64_reference_and_kd_kl_div():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 7, generator=gen), torch.randn(2, 3, 7, generator=gen)
    temp = 1.5
    p_t = torch.softmax(t.double() / temp, -1)
    reference = (p_t * (p_t.log() - torch.log_softmax(s.double() / temp, -1))).sum(-1)  # (2, 3)
    kl = token_kl(s, t, temp)
    assert kl.shape == (2, 3)
    torch.testing.assert_close(kl.double(), reference, rtol=1e-5, atol=1e-6)
    assert (kl >= 0).all() and not torch.equal(token_kl(t, s, temp), kl)  # KL(p_t || p_s): not symmetric
    assert kd_kl_div(s, t, temp).item() == pytest.approx(temp**2 * reference.mean().item(), rel=1e-5)


def test_token_kl_of_16_bit_logits_is_fp32():
    s, t = torch.randn(4, 9).bfloat16(), torch.randn(4, 9).bfloat16()
    kl = token_kl(s, t)
    assert kl.dtype == torch.float32
    torch.testing.assert_close(kl, token_kl(s.float(), t.float()))


def test_token_kl_shape_mismatch_is_explained():
    with pytest.raises(ValueError, match=r"student logits \(2, 3, 5\) and teacher logits \(2, 3, 6\) differ"):
        token_kl(torch.zeros(2, 3, 5), torch.zeros(2, 3, 6))


# ---- layerwise_loss: L_cos over mapped layers, padding masked ----------------------------------------------
def test_layerwise_loss_with_a_mask_by_hand():
    # one sequence of 3 tokens, the last one padding
    s1 = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
    t1 = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]])  # cos 1, 0, -1 -> 1 - cos = 0, 1, 2
    s2 = torch.tensor([[[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    t2 = torch.tensor([[[-1.0, -1.0], [1.0, 0.0], [5.0, 5.0]]])  # cos -1, 1, 1/sqrt(2) -> 2, 0, 1 - 0.7071
    mask = torch.tensor([[1, 1, 0]])
    # masked: layer 1 (0 + 1) / 2 = 0.5, layer 2 (2 + 0) / 2 = 1.0 -> mean 0.75
    assert layerwise_loss([s1, s2], [t1, t2], mask).item() == pytest.approx(0.75, abs=1e-6)
    # unmasked: layer 1 (0 + 1 + 2) / 3 = 1, layer 2 (2 + 0 + 1 - 1/sqrt(2)) / 3 -> their mean
    unmasked = (1.0 + (3 - 1 / math.sqrt(2)) / 3) / 2
    assert layerwise_loss([s1, s2], [t1, t2]).item() == pytest.approx(unmasked, abs=1e-6)


def test_layerwise_loss_ignores_padding_and_sends_it_no_gradient():
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(2, 4, 8, generator=gen, requires_grad=True)
    t = torch.randn(2, 4, 8, generator=gen)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    loss = layerwise_loss([s], [t], mask)
    changed = t.clone()
    changed[mask == 0] = torch.randn(3, 8, generator=gen)  # what sits at padded positions does not matter
    assert layerwise_loss([s], [changed], mask).item() == pytest.approx(loss.item(), abs=1e-7)
    loss.backward()
    assert (s.grad[mask == 0] == 0).all() and (s.grad[mask == 1].abs().sum(-1) > 0).all()


def test_layerwise_loss_needs_matching_layer_lists():
    x = torch.zeros(1, 2, 4)
    with pytest.raises(ValueError, match="same number .* got 2 and 1"):
        layerwise_loss([x, x], [x])
    with pytest.raises(ValueError, match="got 0 and 0"):
        layerwise_loss([], [])


def test_unlabelled_rows_get_the_soft_term_only():
    import torch.nn.functional as F

    from lkd.losses import UNLABELLED, hard_label_loss, regression_kd_loss

    torch.manual_seed(0)
    s, t = torch.randn(6, 3), torch.randn(6, 3)
    y = torch.tensor([0, 2, UNLABELLED, 1, UNLABELLED, 0])
    keep = y >= 0
    assert torch.allclose(hard_label_loss(s, y), F.cross_entropy(s[keep], y[keep]))
    total, terms = hinton_kd_loss(s, t, y, temperature=2.0, alpha=0.25)
    assert torch.allclose(terms["ce"], F.cross_entropy(s[keep], y[keep])) and torch.allclose(terms["kd"], kd_kl_div(s, t, 2.0))
    assert torch.allclose(total, 0.25 * terms["kd"] + 0.75 * terms["ce"])
    none, _ = hinton_kd_loss(s, t, torch.full((6,), UNLABELLED), temperature=2.0, alpha=0.25)
    assert torch.allclose(none, 0.25 * kd_kl_div(s, t, 2.0))  # no labelled row: no NaN, the soft term alone
    scores, target = torch.randn(4), torch.tensor([1.0, float("nan"), 3.0, float("nan")])
    _, terms = regression_kd_loss(scores, torch.randn(4), target, alpha=0.5)
    assert torch.allclose(terms["mse"], F.mse_loss(scores[[0, 2]], target[[0, 2]]))
