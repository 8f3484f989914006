"""The routing modes of issue 16 (teacher, all, ka, sar, student_aware) over one patching mechanism, the
drift they log, the load-balance term, and the student-aware router across two tokenizers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lkd.callbacks import RoutingSchedule
from lkd.losses.chunks import ChunkIndex
from lkd.losses.routing import load_balance_loss
from lkd.models.router import StudentAwareRouter, chunk_gap_features, chunk_owner
from lkd.models.routing import (
    AllExperts,
    KnowledgeAugmentation,
    RankedExperts,
    StudentAwareGate,
    TeacherRouting,
    moe_gates,
    route_teacher,
)
from lkd.modules import LMDistillModule
from lkd.teacher import Teacher
from tests.lm_fixtures import VOCAB, tiny_student, tiny_teacher

E, L = 8, 4


def bound(routing, teacher, student_dim=24):
    return routing.bind_teacher(moe_gates(teacher), student_dim)


def test_teacher_mode_reproduces_the_unpatched_forward_and_all_experts_changes_it():
    teacher = tiny_teacher()
    ids = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        native = teacher(input_ids=ids).logits
        with route_teacher(teacher, bound(TeacherRouting(), teacher)) as record:
            same = teacher(input_ids=ids).logits
        with route_teacher(teacher, bound(AllExperts(), teacher)) as all_record:
            everything = teacher(input_ids=ids).logits
    torch.testing.assert_close(same, native, rtol=1e-5, atol=1e-5)
    assert (everything - native).abs().max() > 1e-4
    for r in (record, all_record):  # both keep the teacher's gate distribution: no drift
        assert len(r.gate_kl()) == L and all(float(k) < 1e-6 for k in r.gate_kl())


def test_all_experts_share_the_teachers_gate_mass_over_every_expert():
    teacher = tiny_teacher()
    gate = moe_gates(teacher)[0]
    h = torch.randn(6, gate.weight.shape[1])
    logits = F.linear(h, gate.weight)
    route = bound(AllExperts(), teacher)(0, gate, h, logits, None)
    probs = logits.softmax(-1)
    assert route.indices.shape == (6, E)
    torch.testing.assert_close(route.weights.sum(-1), probs.topk(2, -1).values.sum(-1))  # the teacher's top-2 mass
    torch.testing.assert_close(route.weights / route.weights.sum(-1, keepdim=True), probs)  # in the gate's proportions


def test_knowledge_augmentation_uses_e_minus_one_experts_and_samples_some_tokens():
    teacher = tiny_teacher()
    gate = moe_gates(teacher)[0]
    h = torch.randn(400, gate.weight.shape[1])
    logits = F.linear(h, gate.weight) * 20  # confident gate: sampled sets differ from the best ones
    best = bound(KnowledgeAugmentation(sampling_prob=0.0), teacher)(0, gate, h, logits, None)
    assert best.indices.shape == (400, E - 1)
    worst = logits.argmin(-1)
    assert not (best.indices == worst[:, None]).any()  # the E − 1 best: all but the worst expert
    torch.manual_seed(0)
    sampled = bound(KnowledgeAugmentation(sampling_prob=1.0), teacher)(0, gate, h, logits, None)
    assert (sampled.indices == worst[:, None]).any(-1).float().mean() > 0.01  # samples sometimes keep the worst one
    for bad, match in (({"sampling_prob": 1.5}, r"sampling_prob must be in \[0, 1\], got 1.5"),
                       ({"repeats": 0}, "repeats must be >= 1, got 0")):
        with pytest.raises(ValueError, match=match):
            KnowledgeAugmentation(**bad)
    with pytest.raises(ValueError, match=r"active_experts must be in \[1, 8\].*got 9"):
        bound(KnowledgeAugmentation(active_experts=9), teacher)


def test_load_balance_loss_by_hand():
    uniform = torch.full((12, 4), 0.25)
    torch.testing.assert_close(load_balance_loss([uniform], top_k=1), torch.tensor(1.0))  # k at its minimum
    collapsed = F.one_hot(torch.zeros(12, dtype=torch.long), 4).float()
    torch.testing.assert_close(load_balance_loss([collapsed, uniform], top_k=1), torch.tensor((4.0 + 1.0) / 2))


def module(routing, **kw):
    torch.manual_seed(0)
    return LMDistillModule(tiny_student(), Teacher(tiny_teacher()), tokenizer="bytes", router=routing,
                           loss_weights=kw.pop("loss_weights", {"kl": 1.0}), temperature=1.0, **kw)


def batch():
    return {"input_ids": torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(1)), "sample_id": torch.arange(2)}


def test_sar_gate_starts_as_the_teachers_and_only_it_learns_from_the_router_objective():
    m = module(StudentAwareGate(), router_lm_weight=0.0, router_balance_weight=0.01)
    for layer, gate in enumerate(moe_gates(m.teacher.model)):
        torch.testing.assert_close(m.router.weight[layer], gate.weight.float())
    out = m.step(batch(), "train")
    assert float(out.terms["gate_kl"]) < 1e-6 and out.terms["router_balance"] > 0
    gate_grad, = torch.autograd.grad(out.terms["router_loss"], [m.router.weight], retain_graph=True)
    assert gate_grad.abs().sum() > 0
    student_grads = torch.autograd.grad(out.terms["router_loss"], list(m.student.parameters()), allow_unused=True)
    assert all(g is None or g.abs().sum() == 0 for g in student_grads)  # the student is held fixed there
    with torch.no_grad():
        m.router.weight.add_(torch.randn_like(m.router.weight))  # a moved gate: drift shows
    val = m.step(batch(), "val")
    assert val.terms["gate_kl"] > 0.01 and {f"gate_kl/layer{i}" for i in range(L)} <= set(val.terms)
    assert "teacher_lm_degradation" in val.terms and "router_loss" not in val.terms


def test_knowledge_augmentation_runs_the_teacher_repeats_times_and_averages(monkeypatch):
    m = module(KnowledgeAugmentation(sampling_prob=0.5, repeats=3))
    calls = []
    forward = m.teacher.model.forward
    monkeypatch.setattr(m.teacher.model, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    out = m.step(batch(), "train")
    assert len(calls) == 3 and not m.router.trainable and "router_loss" not in out.terms
    calls.clear()
    m.step(batch(), "val")
    assert len(calls) == 2  # the teacher's own routing (drift, report) and one routed pass


def test_routing_schedule_only_drives_the_student_aware_router():
    m = module(AllExperts())
    with pytest.raises(ValueError, match="mode is 'all', which has neither.*HINT: drop the callback"):
        RoutingSchedule(end_top_k=4).setup(None, m, "fit")


def test_teacher_mode_is_plain_kd():
    plain, routed = module(None), module(TeacherRouting())
    a, b = plain.step(batch(), "train"), routed.step(batch(), "train")
    torch.testing.assert_close(a.loss, b.loss)


# ---- across two tokenizers ---------------------------------------------------------------------------
def hand_index() -> ChunkIndex:
    # one block: student tokens [0,1) [1,3) [3,4) [4,6); teacher tokens [0,2) [2,3) [3,5) [5,6), teacher token 6 in no chunk
    chunks = torch.tensor([[[0, 1, 0, 2], [1, 3, 2, 3], [3, 4, 3, 5], [4, 6, 5, 6]]])
    return ChunkIndex.from_table(chunks, torch.tensor([4]))


def test_chunk_owner_and_gap_features_read_only_the_previous_chunk():
    index = hand_index()
    chunk, inside = chunk_owner(index, 7)
    assert chunk[0, :6].tolist() == [0, 0, 1, 2, 2, 3] and inside[0].tolist() == [True] * 6 + [False]
    s_hidden = torch.arange(6.0)[None, :, None].expand(1, 6, 2)  # the student's state at position i is i
    s_lp, t_lp = -torch.rand(1, 6), -torch.rand(1, 7)
    s_bytes = torch.tensor([[1, 2, 1, 3, 1, 1]])
    hidden, gap = chunk_gap_features(s_hidden, s_lp, t_lp, index, s_bytes)
    hidden, gap = hidden.view(7, 2), gap.view(7, 3)
    # teacher tokens 3, 4 (chunk 2) read chunk 1: the student's state at its last token (2), its bytes 2 + 1
    assert hidden[3].tolist() == [2.0, 2.0] and hidden[4].tolist() == [2.0, 2.0] and hidden[5].tolist() == [3.0, 3.0]
    l_t, l_s = t_lp[0, 2:3].sum(), s_lp[0, 1:3].sum()
    want = torch.stack([l_t - l_s, -l_t, -l_s]) / (3 * torch.log(torch.tensor(256.0)))
    torch.testing.assert_close(gap[3], want)
    assert (hidden[:3] == 0).all() and (gap[:3] == 0).all() and (gap[6] == 0).all()  # chunks 0, 1 and outside: zeros


def test_student_aware_router_across_two_tokenizers_trains_and_keeps_the_teacher_frozen():
    torch.manual_seed(0)
    m = LMDistillModule(tiny_student(vocab_size=300), Teacher(tiny_teacher()), tokenizer="unused", teacher_tokenizer="bytes",
                        router=StudentAwareRouter(), router_top_k=4, router_temperature=0.5,
                        loss_weights={"alm": 0.7, "feature": 0.1, "layer": 0.05, "contrastive": 0.05}, temperature=1.0)
    B, S, T = 2, 6, 7
    chunks = hand_index().s_start.new_tensor([[[0, 1, 0, 2], [1, 3, 2, 3], [3, 4, 3, 5], [4, 6, 5, 6]]]).expand(B, -1, -1)
    b = {"input_ids": torch.randint(0, 300, (B, S)), "length": torch.full((B,), S), "teacher_input_ids": torch.randint(0, VOCAB, (B, T)),
         "teacher_length": torch.full((B,), T), "chunks": chunks, "num_chunks": torch.full((B,), 4), "sample_id": torch.arange(B)}
    out = m.step(b, "train")
    for key in ("alm", "feature", "layer", "contrastive", "router_loss", "teacher_ce_routed", "teacher_lm_degradation", "gate_kl"):
        assert torch.isfinite(out.terms[key]), key
    grads = torch.autograd.grad(out.terms["router_loss"], [m.router.capacity, m.router.gap, m.router.bias])
    assert all(g.abs().sum() > 0 for g in grads)
    assert not any(p.requires_grad for p in m.teacher.parameters())


def test_expert_specialisation_of_a_teacher_whose_experts_differ():
    from lkd.evaluation import expert_specialisation

    teacher = tiny_teacher()
    with torch.no_grad():  # make the experts very different: routing elsewhere must hurt
        for block in teacher.model.layers:
            block.mlp.experts.gate_up_proj.mul_(20.0)
            block.mlp.experts.down_proj.mul_(torch.linspace(1.0, 200.0, E)[:, None, None])
    batches = [{"input_ids": torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(i))} for i in range(2)]
    torch.manual_seed(0)  # RandomExperts draws from the global generator: the same draw whatever ran before
    spec = expert_specialisation(teacher, batches)
    assert spec["nll_next_best"] > spec["nll_own"] + 0.01 and abs(spec["nll_random"] - spec["nll_own"]) > 0.01
    assert 0 < spec["usage_entropy"] <= 1 and 0 < spec["gate_entropy"] <= 1 and (spec["num_experts"], spec["top_k"]) == (E, 2)
    ids = batches[0]["input_ids"]
    with torch.no_grad():
        native = teacher(input_ids=ids).logits
        with route_teacher(teacher, RankedExperts(first_rank=0)):  # ranks 0..k-1 are the teacher's own top-k
            torch.testing.assert_close(teacher(input_ids=ids).logits, native, rtol=1e-5, atol=1e-5)


def test_a_trained_routing_learns_every_n_steps_only(tiny_wikitext):
    import lightning.pytorch as pl

    from lkd.data.text import TextDataModule
    from tests.lm_fixtures import WIKITEXT_CONFIG

    m = module(StudentAwareGate(), router_every_n_steps=2, router_lr=1e-2)
    moved = []

    class Watch(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.before = pl_module.router.weight.detach().clone()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            moved.append(not torch.equal(self.before, pl_module.router.weight))

    dm = TextDataModule(str(tiny_wikitext), WIKITEXT_CONFIG, block_size=16, batch_size=2, tokenizer="bytes")
    pl.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
               limit_val_batches=0, callbacks=[Watch()]).fit(m, dm)
    assert moved == [True, False, True, False]
    with pytest.raises(ValueError, match="router_every_n_steps must be >= 1, got 0"):
        module(StudentAwareGate(), router_every_n_steps=0)
