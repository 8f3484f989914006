"""LM distillation losses on hand examples: zero where the student equals the teacher, hand-computed values."""

import math

import pytest
import torch

from lkd.losses.hidden import contrastive_loss, feature_loss, hidden_cosine_loss, layerwise_loss
from lkd.losses.kd import kd_kl_div, teacher_topk, topk_kd_kl_div
from lkd.losses.lm import (
    DEFAULT_LOSS_WEIGHTS,
    LOSS_NAMES,
    attention_transfer_loss,
    combine_losses,
    lm_cross_entropy,
    lm_loss_terms,
    validate_loss_weights,
)
from lkd.losses.routing import router_objective


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
    with pytest.raises(ValueError, match=r"\(1, 1, 2\).*\(1, 1, 3\).*project the student"):
        layerwise_loss([s], [torch.zeros(1, 1, 3)])


def test_layerwise_loss_mask_ignores_padding():
    s = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # (1, 2, 2)
    t = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # token 0 aligned (0), token 1 orthogonal (1)
    assert layerwise_loss([s], [t]).item() == pytest.approx(0.5)
    assert layerwise_loss([s], [t], mask=torch.tensor([[1, 0]])).item() == pytest.approx(0.0, abs=1e-6)
    assert layerwise_loss([s], [t], mask=torch.tensor([[0, 1]])).item() == pytest.approx(1.0)
    # two pairs with different masked values: the mean over pairs of hidden_cosine_loss
    expected = (hidden_cosine_loss(s, t, torch.tensor([[0, 1]])) + hidden_cosine_loss(t, t, torch.tensor([[0, 1]]))) / 2
    assert layerwise_loss([s, t], [t, t], mask=torch.tensor([[0, 1]])).item() == pytest.approx(expected.item())


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


# ---- the loss table and the router's objective ------------------------------------------------------------
B, T, V, D, H = 2, 5, 11, 6, 2


def features(seed: int, *, grad: bool = False) -> dict:
    """Random features in the shapes the LM distillation module hands the losses (two mapped layer pairs)."""
    g = torch.Generator().manual_seed(seed)
    feats = {"logits": torch.randn(B, T, V, generator=g) * 2, "feature": torch.randn(B, T, D, generator=g),
             "layer": [torch.randn(B, T, D, generator=g) for _ in range(2)],
             "attention": [torch.softmax(torch.randn(B, H, T, T, generator=g), -1) for _ in range(2)]}
    if grad:
        feats = {k: [x.requires_grad_(True) for x in v] if isinstance(v, list) else v.requires_grad_(True) for k, v in feats.items()}
    return feats


def reference_terms(s: dict, t: dict, ids: torch.Tensor, temperature: float, tau: float) -> dict:
    """Every loss of the table from its own function, outside lm_loss_terms."""
    return {
        "kl": kd_kl_div(s["logits"], t["logits"], temperature),
        "ce": lm_cross_entropy(s["logits"], ids),
        "feature": feature_loss(s["feature"], t["feature"]),
        "layer": layerwise_loss(s["layer"], t["layer"]),
        "attention": attention_transfer_loss(s["attention"], t["attention"]),
        "contrastive": contrastive_loss(s["feature"].mean(1), t["feature"].mean(1), tau),
    }


def test_lm_loss_terms_computes_exactly_the_weighted_losses():
    s, t, ids = features(0), features(1), torch.randint(0, V, (B, T))
    everything = dict.fromkeys(LOSS_NAMES, 1.0)
    terms = lm_loss_terms(s, t, ids, everything, temperature=2.0, contrastive_temperature=0.3)
    expected = reference_terms(s, t, ids, 2.0, 0.3)
    assert set(terms) == set(LOSS_NAMES)
    for name in LOSS_NAMES:
        torch.testing.assert_close(terms[name], expected[name], msg=name)
        assert terms[name] > 0, name  # different features: every term is non-trivial
    # only the losses with a non-zero weight are computed: the others need no features at all
    only = lm_loss_terms({"logits": s["logits"]}, {"logits": t["logits"]}, ids, {"kl": 0.5, "ce": 0.0, "feature": 0.0},
                         temperature=2.0)
    assert set(only) == {"kl"}
    # the student equal to the teacher: every term but CE and InfoNCE is 0
    same = lm_loss_terms(s, s, ids, everything, temperature=2.0)
    for name in ("kl", "feature", "layer", "attention"):
        assert same[name].abs() < 1e-5, name


def test_lm_loss_terms_from_a_top_k_teacher():
    s, t, ids = features(0), features(1), torch.randint(0, V, (B, T))
    topk = teacher_topk(t["logits"], 4, 2.0)
    terms = lm_loss_terms(s, {"topk": topk}, ids, {"kl": 1.0, "ce": 0.5}, temperature=2.0)
    torch.testing.assert_close(terms["kl"], topk_kd_kl_div(s["logits"], *topk, temperature=2.0))
    torch.testing.assert_close(terms["ce"], lm_cross_entropy(s["logits"], ids))
    # the whole vocabulary as "top-k" is the full KL
    full = lm_loss_terms(s, {"topk": teacher_topk(t["logits"], V, 2.0)}, ids, {"kl": 1.0}, temperature=2.0)
    torch.testing.assert_close(full["kl"], kd_kl_div(s["logits"], t["logits"], 2.0))


def detached(feats: dict) -> dict:
    return {k: [x.detach() for x in v] if isinstance(v, list) else v.detach() for k, v in feats.items()}


@pytest.mark.parametrize("lm_weight", [0.0, 0.7])
def test_router_objective_is_the_distillation_table_without_ce_plus_the_routed_teachers_ce(lm_weight):
    """L_router = Σ_{i≠ce} w_i L_i(sg[student], routed teacher) + λ·CE(routed teacher) (+ β·L_bal): from a loss table
    of the detached student, the gradient reaches every routed-teacher feature and none of the student's."""
    weights = {"kl": 0.7, "feature": 0.1, "attention": 0.1, "layer": 0.05, "contrastive": 0.05, "ce": 0.2}
    s, t, ids = features(0, grad=True), features(1, grad=True), torch.randint(0, V, (B, T))
    terms = lm_loss_terms(detached(s), t, ids, weights, temperature=3.0, contrastive_temperature=0.2)
    teacher_ce = lm_cross_entropy(t["logits"], ids)
    loss = router_objective(terms, weights, teacher_ce, lm_weight=lm_weight)
    ref = reference_terms(s, t, ids, 3.0, 0.2)
    distill = sum(w * ref[k] for k, w in weights.items() if k != "ce")  # the student's own CE says nothing about routing
    torch.testing.assert_close(loss, distill + lm_weight * teacher_ce)
    balance = torch.tensor(1.5)
    torch.testing.assert_close(router_objective(terms, weights, teacher_ce, lm_weight=lm_weight, balance=balance, balance_weight=0.01),
                               loss + 0.01 * balance)
    loss.backward()
    for name, value in t.items():
        for x in value if isinstance(value, list) else [value]:
            assert x.grad is not None and x.grad.abs().sum() > 0, name
    for name, value in s.items():
        for x in value if isinstance(value, list) else [value]:
            assert x.grad is None, name
    with pytest.raises(KeyError, match=r"\['layer'\] have a weight but were not computed"):
        router_objective({k: v for k, v in terms.items() if k != "layer"}, weights, teacher_ce, lm_weight=1.0)


def test_router_objective_gradient_on_the_teacher_logits_by_hand():
    """KL + λ·CE through the routed teacher's logits only: d/dz_t of T²·KL(p_t ‖ p_s) is T·(p_t ⊙ (log p_t −
    log p_s − KL)) / N and of the CE softmax(z_t) − onehot(next token) over the predicted tokens."""
    torch.manual_seed(0)
    s_logits, t_logits = torch.randn(1, 3, V), torch.randn(1, 3, V, requires_grad=True)
    ids = torch.randint(0, V, (1, 3))
    temperature, lm_weight = 2.0, 0.5
    terms = lm_loss_terms({"logits": s_logits}, {"logits": t_logits}, ids, {"kl": 1.0}, temperature=temperature)
    loss = router_objective(terms, {"kl": 1.0}, lm_cross_entropy(t_logits, ids), lm_weight=lm_weight)
    loss.backward()
    with torch.no_grad():
        lt, ls = torch.log_softmax(t_logits / temperature, -1), torch.log_softmax(s_logits / temperature, -1)
        kl = (lt.exp() * (lt - ls)).sum(-1, keepdim=True)
        grad_kl = temperature * lt.exp() * (lt - ls - kl) / 3  # mean over 3 positions, T² / T
        grad_ce = torch.zeros_like(t_logits)
        grad_ce[:, :-1] = (torch.softmax(t_logits[:, :-1], -1) - torch.nn.functional.one_hot(ids[:, 1:], V)) / 2
    torch.testing.assert_close(t_logits.grad, grad_kl + lm_weight * grad_ce)
