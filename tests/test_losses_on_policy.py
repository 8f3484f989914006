"""On-policy distillation losses: generalized JSD (full vocabulary and teacher top-k), the sampled-token reverse-KL
surrogate, the token/sequence reductions and the settings check."""

import math

import pytest
import torch
from torch.testing import assert_close

from lkd.losses import (
    generalized_jsd,
    generalized_jsd_topk,
    on_policy_problems,
    reduce_tokens,
    sampled_token_reverse_kl,
    teacher_topk,
    token_kl,
    topk_kd_kl_div,
)


def reference_jsd(p_s: torch.Tensor, p_t: torch.Tensor, beta: float) -> torch.Tensor:
    """The GKD divergence from probabilities, in float64, written out (TRL's mixture m = β·p_t + (1 − β)·p_s)."""
    kl = lambda p, q: (p * (p.log() - q.log())).sum(-1)
    if beta == 0:
        return kl(p_t, p_s)
    if beta == 1:
        return kl(p_s, p_t)
    m = beta * p_t + (1 - beta) * p_s
    return beta * kl(p_t, m) + (1 - beta) * kl(p_s, m)


def logits_pair(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * 2, torch.randn(*shape, generator=g) * 2


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_jsd_matches_the_written_out_formula(beta, temperature):
    s, t = logits_pair(2, 3, 11)
    expected = reference_jsd((s.double() / temperature).softmax(-1), (t.double() / temperature).softmax(-1), beta)
    got = generalized_jsd(s, t, beta=beta, temperature=temperature)
    assert got.shape == (2, 3) and got.dtype == torch.float32
    assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


def test_jsd_endpoints_are_exactly_forward_and_reverse_kl():
    s, t = logits_pair(4, 9)
    assert_close(generalized_jsd(s, t, beta=0.0, temperature=2.0), token_kl(s, t, 2.0), rtol=0, atol=0)
    assert_close(generalized_jsd(s, t, beta=1.0, temperature=2.0), token_kl(t, s, 2.0), rtol=0, atol=0)


def test_jsd_is_symmetric_under_swapping_roles_and_beta():
    s, t = logits_pair(5, 8)
    assert_close(generalized_jsd(s, t, beta=0.5), generalized_jsd(t, s, beta=0.5))
    assert_close(generalized_jsd(s, t, beta=0.3), generalized_jsd(t, s, beta=0.7))


@pytest.mark.parametrize("beta", [0.2, 0.5, 0.8])
def test_jsd_of_disjoint_distributions_is_the_binary_entropy_of_beta(beta):
    # p_t and p_s one-hot on different tokens: m puts β on the teacher's token and 1 − β on the student's
    s, t = torch.tensor([[-50.0, 50.0, -50.0]]), torch.tensor([[50.0, -50.0, -50.0]])
    expected = -beta * math.log(beta) - (1 - beta) * math.log(1 - beta)  # ln 2 at β = 0.5
    assert generalized_jsd(s, t, beta=beta).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
def test_jsd_is_zero_for_equal_distributions(beta):
    s, _ = logits_pair(3, 7)
    assert_close(generalized_jsd(s, s.clone(), beta=beta, temperature=1.5), torch.zeros(3), atol=1e-6, rtol=0)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_jsd_gradient_is_finite_and_reaches_the_student(beta):
    s = torch.tensor([[30.0, -30.0, 0.0, 5.0], [0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    t = torch.tensor([[-30.0, 30.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    generalized_jsd(s, t, beta=beta).sum().backward()
    assert s.grad.isfinite().all() and s.grad.abs().sum() > 0


def test_jsd_of_bf16_logits_is_computed_in_fp32():
    s, t = (x.bfloat16() for x in logits_pair(2, 6))
    got = generalized_jsd(s, t, beta=0.5)
    assert got.dtype == torch.float32
    assert_close(got, generalized_jsd(s.float(), t.float(), beta=0.5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert generalized_jsd(s, t, beta=0.5).dtype == torch.float32


@pytest.mark.parametrize("beta", [0.0, 0.25, 0.5, 1.0])
def test_topk_jsd_with_the_whole_vocabulary_is_the_full_jsd(beta):
    s, t = logits_pair(2, 3, 10)
    logprobs, ids = teacher_topk(t, 10, 2.0)
    assert_close(generalized_jsd_topk(s, logprobs, ids, beta=beta, temperature=2.0),
                 generalized_jsd(s, t, beta=beta, temperature=2.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.4, 1.0])
def test_topk_jsd_is_the_jsd_between_k_plus_tail_buckets(beta):
    s, t = logits_pair(6, 12)
    k, T = 3, 1.5
    logprobs, ids = teacher_topk(t, k, T)
    p_s, p_t = (s.double() / T).softmax(-1), (t.double() / T).softmax(-1)
    top_s, top_t = p_s.gather(-1, ids), p_t.gather(-1, ids)  # (6, k)
    buckets_s = torch.cat([top_s, 1 - top_s.sum(-1, keepdim=True)], -1)  # (6, k + 1)
    buckets_t = torch.cat([top_t, 1 - top_t.sum(-1, keepdim=True)], -1)
    got = generalized_jsd_topk(s, logprobs, ids, beta=beta, temperature=T)
    assert_close(got.double(), reference_jsd(buckets_s, buckets_t, beta), rtol=1e-4, atol=1e-6)


def test_topk_jsd_forward_kl_is_topk_kd_kl_div_per_position():
    s, t = logits_pair(2, 5, 16)
    logprobs, ids = teacher_topk(t, 4, 2.0)
    per_position = generalized_jsd_topk(s, logprobs, ids, beta=0.0, temperature=2.0)
    assert per_position.shape == (2, 5)
    assert_close(per_position.mean() * 4.0, topk_kd_kl_div(s, logprobs, ids, 2.0))
    for b, n in [(0, 0), (1, 3)]:  # one position alone: the top-k KL of that position
        assert_close(per_position[b, n] * 4.0, topk_kd_kl_div(s[b, n], logprobs[b, n], ids[b, n], 2.0))


def test_topk_jsd_takes_a_bf16_student_and_an_fp16_cache_and_gives_finite_gradients():
    s, t = logits_pair(3, 20)
    logprobs, ids = teacher_topk(t, 5)
    student = s.bfloat16().requires_grad_()
    got = generalized_jsd_topk(student, logprobs.half(), ids.short(), beta=0.5)
    assert got.dtype == torch.float32
    assert_close(got, generalized_jsd_topk(student.float(), logprobs.half().float(), ids, beta=0.5))
    got.sum().backward()
    assert student.grad.isfinite().all() and student.grad.abs().sum() > 0


def reverse_kl_gradient(logits: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
    logits = logits.detach().clone().requires_grad_()
    s = logits.log_softmax(-1)
    (s.exp() * (s - teacher_logprobs)).sum().backward()
    return logits.grad


def test_sampled_reverse_kl_gradient_in_exact_expectation_is_the_reverse_kl_gradient():
    logits, t = logits_pair(7, seed=3)
    teacher = t.log_softmax(-1)
    student_logits = logits.clone().requires_grad_()
    s = student_logits.log_softmax(-1)  # (V,) every token as a sample
    expected_loss = (s.exp().detach() * sampled_token_reverse_kl(s, teacher)).sum()  # Σ_x p_s(x) L(x)
    expected_loss.backward()
    assert_close(student_logits.grad, reverse_kl_gradient(logits, teacher), rtol=1e-5, atol=1e-6)


def test_sampled_reverse_kl_gradient_over_student_samples_estimates_the_reverse_kl_gradient():
    logits, t = logits_pair(6, seed=4)
    teacher = t.log_softmax(-1)
    student_logits = logits.clone().requires_grad_()
    s = student_logits.log_softmax(-1)  # (V,)
    samples = torch.multinomial(s.exp().detach(), 200_000, replacement=True,
                                generator=torch.Generator().manual_seed(0))  # (N,) drawn from the student
    sampled_token_reverse_kl(s[samples], teacher[samples]).mean().backward()
    expected = reverse_kl_gradient(logits, teacher)
    assert_close(student_logits.grad, expected, rtol=0, atol=0.03 * expected.abs().max().item())


def test_sampled_reverse_kl_value_and_no_gradient_through_the_advantage():
    student = torch.tensor([-0.5, -2.0, -1.0], requires_grad=True)
    teacher = torch.tensor([-1.0, -0.5, -1.0], requires_grad=True)
    loss = sampled_token_reverse_kl(student, teacher)
    assert_close(loss, (student - teacher).detach() * student.detach())  # −A · log p_s
    loss.sum().backward()
    assert_close(student.grad, (student - teacher).detach())  # −A, not 2·log p_s − log p_t
    assert teacher.grad is None


def test_sampled_reverse_kl_of_bf16_logprobs_is_fp32_and_checks_shapes():
    student, teacher = torch.tensor([-0.3, -1.2]).bfloat16(), torch.tensor([-0.7, -0.9]).bfloat16()
    got = sampled_token_reverse_kl(student, teacher)
    assert got.dtype == torch.float32
    assert_close(got, sampled_token_reverse_kl(student.float(), teacher.float()))
    with pytest.raises(ValueError, match="must score the same sampled tokens"):
        sampled_token_reverse_kl(torch.zeros(2, 3), torch.zeros(2, 4))


def test_reduce_tokens_by_token_and_by_sequence():
    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])  # the last row has no completion token
    assert reduce_tokens(losses, mask).item() == pytest.approx(7 / 3)  # (1 + 2 + 4) / 3
    assert reduce_tokens(losses, mask, reduction="sequence").item() == pytest.approx(2.75)  # (1.5 + 4) / 2
    assert_close(reduce_tokens(losses, mask.bool()), reduce_tokens(losses, mask.float()))


def test_reduce_tokens_ignores_whatever_padding_holds():
    losses = torch.tensor([[1.0, float("inf")], [float("nan"), 3.0]], requires_grad=True)
    mask = torch.tensor([[True, False], [False, True]])
    for reduction in ("token", "sequence"):
        value = reduce_tokens(losses, mask, reduction=reduction)
        assert value.item() == pytest.approx(2.0)
        (grad,) = torch.autograd.grad(value, losses)
        assert_close(grad, torch.tensor([[0.5, 0.0], [0.0, 0.5]]))


@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_reduce_tokens_with_no_completion_token_is_zero_with_a_gradient(reduction):
    losses = torch.randn(2, 4, requires_grad=True)
    value = reduce_tokens(losses, torch.zeros(2, 4, dtype=torch.bool), reduction=reduction)
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert_close(losses.grad, torch.zeros(2, 4))


def test_reduce_tokens_of_bf16_losses_is_fp32():
    assert reduce_tokens(torch.ones(2, 3, dtype=torch.bfloat16), torch.ones(2, 3)).dtype == torch.float32


def test_reduce_tokens_rejects_an_unknown_reduction_and_mismatched_shapes():
    with pytest.raises(ValueError, match=r"reduction must be one of \['token', 'sequence'\], got 'mean'"):
        reduce_tokens(torch.zeros(2, 3), torch.ones(2, 3), reduction="mean")
    with pytest.raises(ValueError, match=r"\(2, 3\) and mask \(2, 4\)"):
        reduce_tokens(torch.zeros(2, 3), torch.ones(2, 4))


def test_on_policy_problems_collects_every_bad_setting():
    assert on_policy_problems(beta=0.5, lmbda=1.0, temperature=0.9, reduction="sequence") == []
    assert on_policy_problems() == []
    problems = on_policy_problems(beta=1.5, lmbda=-0.1, temperature=0.0, reduction="mean")
    assert problems == [
        "beta must be in [0, 1] (0 = forward KL, 1 = reverse KL), got 1.5",
        "lmbda must be in [0, 1] (the fraction of batches the student samples), got -0.1",
        "temperature must be > 0, got 0.0",
        "reduction must be one of ['token', 'sequence'], got 'mean'",
    ]
    assert on_policy_problems(beta=float("nan"))  # NaN is not in [0, 1]


def test_divergences_reject_bad_settings_and_shapes():
    s, t = logits_pair(2, 5)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\].*got -0.5"):
        generalized_jsd(s, t, beta=-0.5)
    with pytest.raises(ValueError, match="temperature must be > 0, got -1"):
        generalized_jsd_topk(s, *teacher_topk(t, 2), beta=0.5, temperature=-1)
    with pytest.raises(ValueError, match="must share the vocabulary"):
        generalized_jsd(s, t[:, :4], beta=0.5)
    with pytest.raises(ValueError, match="do not match student logits"):
        generalized_jsd_topk(s, *teacher_topk(t[:1], 2), beta=0.5)
