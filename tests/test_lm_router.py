"""The student-aware router: shapes, top-k masks, temperature, equivalence with the teacher's own gating,
routed targets that differ and pass gradient back to the router."""

import pytest
import torch

from lkd.models.router import StudentAwareRouter, gap_features
from lkd.models.routing import NoMoELayersError, RoutingContext, moe_gates, require_moe_gates, route_teacher, teacher_gate_mass
from tests.lm_fixtures import VOCAB, tiny_student, tiny_teacher

E, L, D = 8, 4, 24


def ctx_for(n: int, top_k: int = 2, temperature: float = 1.0, seed: int = 0) -> RoutingContext:
    g = torch.Generator().manual_seed(seed)
    return RoutingContext(torch.randn(n, D, generator=g), torch.rand(n, 3, generator=g), top_k, temperature)


def trained_router(seed: int = 0) -> StudentAwareRouter:
    router = StudentAwareRouter(D, E, L)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for p in (router.capacity, router.gap, router.bias):
            p.copy_(torch.randn(p.shape, generator=g))
    return router


@pytest.mark.parametrize("k", [1, 2, 4])
def test_router_shapes_and_top_k_mask(k):
    router = trained_router()
    logits = torch.randn(10, E)
    weights, idx, _ = router.choose(0, logits, ctx_for(10, k))
    assert weights.shape == idx.shape == (10, k)
    dense = router.dense_weights(0, logits, ctx_for(10, k))
    assert dense.shape == (10, E)
    assert ((dense > 0).sum(-1) == k).all()  # exactly k experts per token
    z = router.scores(0, logits, ctx_for(10, k))
    assert torch.equal(idx.sort(-1).values, z.topk(k, -1).indices.sort(-1).values)  # the k best scores
    assert (weights.sum(-1) <= 1 + 1e-6).all()
    mass = torch.rand(10)
    w_mass, idx_mass, _ = router.choose(0, logits, ctx_for(10, k), mass=mass)
    torch.testing.assert_close(w_mass.sum(-1), mass)  # the teacher's gate mass, shared among the k experts
    torch.testing.assert_close(w_mass / mass[:, None], weights / weights.sum(-1, keepdim=True))
    assert torch.equal(idx_mass, idx)


def test_router_gets_gradient_even_at_top_1():
    router = StudentAwareRouter(D, E, L)
    logits = torch.randn(6, E)
    weights, _, _ = router.choose(0, logits, ctx_for(6, 1), mass=torch.full((6,), 0.7))
    torch.testing.assert_close(weights, torch.full((6, 1), 0.7))  # forward: all the mass on one expert
    (weights * torch.arange(1.0, 7.0)[:, None]).sum().backward()
    assert router.capacity.grad.abs().sum() > 0 and router.bias.grad.abs().sum() > 0


def test_temperature_flattens_the_weights():
    router = trained_router()
    logits = torch.randn(50, E)
    cold = router.dense_weights(0, logits, ctx_for(50, E, temperature=0.25))
    hot = router.dense_weights(0, logits, ctx_for(50, E, temperature=4.0))
    entropy = lambda p: -(p * p.clamp_min(1e-12).log()).sum(-1).mean()  # noqa: E731
    assert entropy(hot) > entropy(cold) + 0.5
    assert cold.max(-1).values.mean() > hot.max(-1).values.mean()
    with pytest.raises(ValueError, match="temperature must be > 0"):
        router.choose(0, logits, ctx_for(50, 2, temperature=0.0))


def test_top_k_above_expert_count_is_an_error():
    router = trained_router()
    with pytest.raises(ValueError, match=r"top-k must be in \[1, 8\].*got 9"):
        router.choose(0, torch.randn(3, E), ctx_for(3, 9))


def test_untrained_router_reproduces_the_teachers_gating():
    teacher = tiny_teacher()
    ids = torch.randint(0, VOCAB, (2, 12))
    router = StudentAwareRouter().bind(D, E, len(moe_gates(teacher)))
    with torch.no_grad():
        native = teacher(input_ids=ids).logits
        with route_teacher(teacher, router, ctx_for(24, top_k=2)):
            routed = teacher(input_ids=ids).logits
    torch.testing.assert_close(routed, native, rtol=1e-5, atol=1e-5)


def test_router_changes_the_targets_and_receives_gradient():
    teacher = tiny_teacher().requires_grad_(False)
    ids = torch.randint(0, VOCAB, (2, 12))
    router = StudentAwareRouter().bind(D, E, L)
    with torch.no_grad():
        native = teacher(input_ids=ids).logits
    with route_teacher(teacher, router, ctx_for(24, top_k=4, temperature=0.5)):
        routed = teacher(input_ids=ids).logits
    assert (routed - native).abs().max() > 1e-4  # four experts, sharper weights: other targets
    routed.logsumexp(-1).mean().backward()
    for name, p in router.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in teacher.parameters())  # the teacher stays frozen
    # the patch is gone after the block: the gate's class forward is back
    assert all("forward" not in vars(g) for g in moe_gates(teacher))
    with torch.no_grad():
        torch.testing.assert_close(teacher(input_ids=ids).logits, native)


def test_gate_logits_still_reported_under_routing():
    teacher = tiny_teacher()
    ids = torch.randint(0, VOCAB, (1, 8))
    router = StudentAwareRouter().bind(D, E, L)
    with torch.no_grad(), route_teacher(teacher, router, ctx_for(8, top_k=3)):
        out = teacher(input_ids=ids, output_router_logits=True)
    assert len(out.router_logits) == L and out.router_logits[0].shape == (8, E)


def test_dense_teacher_has_no_gates():
    student = tiny_student()
    with pytest.raises(NoMoELayersError, match="no MoE gates.*plain"):
        require_moe_gates(student)


def test_bind_checks_given_sizes():
    with pytest.raises(ValueError, match="num_experts=4 \\(router\\) vs 8"):
        StudentAwareRouter(num_experts=4).bind(D, 8, L)
    with pytest.raises(ValueError, match="student_dim must be >= 1"):
        StudentAwareRouter(student_dim=0)


def test_gap_features():
    t = torch.randn(2, 3, 5)
    f = gap_features(t, t)
    assert f.shape == (6, 3)
    torch.testing.assert_close(f[:, 0], torch.zeros(6), atol=1e-6, rtol=0)  # no gap when equal
    torch.testing.assert_close(f[:, 1], f[:, 2])  # same entropies
    assert (gap_features(t, torch.zeros(2, 3, 5))[:, 0] > 0).all()


def test_teacher_gate_mass():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]))
    torch.testing.assert_close(teacher_gate_mass(logits, 2, normalized=False), torch.tensor([0.8, 0.9]))
    torch.testing.assert_close(teacher_gate_mass(logits, 2, normalized=True), torch.ones(2))
