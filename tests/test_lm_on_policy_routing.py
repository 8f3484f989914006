"""On-policy distillation through a routing of a Mixture-of-Experts teacher's experts (lkd.modules.on_policy_routing):
every mode on the student's own samples, with the tiny MoE teacher, on a tiny arithmetic task."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lkd.callbacks import RouterExpertUsage, RoutingSchedule
from lkd.models.router import StudentAwareRouter
from lkd.models.routing import AllExperts, KnowledgeAugmentation, NoMoELayersError, StudentAwareGate, TeacherRouting
from lkd.modules.on_policy import OnPolicyDistillModule
from lkd.modules.on_policy_routing import real_text_mask, routed_scores
from lkd.teacher import Teacher
from tests.lm_fixtures import arithmetic_prompts, tiny_student, tiny_teacher

ROUTINGS = {"teacher": TeacherRouting, "all": AllExperts, "ka": lambda: KnowledgeAugmentation(repeats=2), "sar": StudentAwareGate,
            "student_aware": StudentAwareRouter}


def module(router=None, **kw) -> OnPolicyDistillModule:
    torch.manual_seed(0)
    return OnPolicyDistillModule(tiny_student(), Teacher(tiny_teacher()), tokenizer="bytes", router=router,
                                 **{"max_new_tokens": 4, "router_lr": 1e-2, **kw})


def trainer(**kw) -> pl.Trainer:
    return pl.Trainer(**{"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1, "logger": False, "enable_checkpointing": False,
                         "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0, **kw})


def first_batch(arithmetic_task, *models) -> dict:
    """The first training batch, the models connected to the data (its end-of-sequence and pad ids)."""
    dm = arithmetic_prompts(arithmetic_task)
    for model in models:
        model.connect_data(dm)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


@pytest.mark.parametrize("mode", list(ROUTINGS))
def test_every_routing_mode_distils_on_the_students_samples(arithmetic_task, mode):
    model = module(ROUTINGS[mode](), lmbda=1.0)
    teacher_before = [p.detach().clone() for p in model.teacher.parameters()]
    student_before = [p.detach().clone() for p in model.student.parameters()]
    router_before = [p.detach().clone() for p in model.router.parameters()]
    callbacks = [RoutingSchedule(start_top_k=1, end_top_k=4, figure_every_n_steps=None)] if mode == "student_aware" else []
    fit = trainer(callbacks=[*callbacks, RouterExpertUsage(log_every_n_steps=1)])
    fit.fit(model, datamodule=arithmetic_prompts(arithmetic_task))
    metrics = fit.callback_metrics
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, model.teacher.parameters(), strict=True))  # frozen
    assert any(not torch.equal(a, b) for a, b in zip(student_before, model.student.parameters(), strict=True))
    assert float(metrics["train/on_policy_rows"]) == 1.0 and torch.isfinite(metrics["train/divergence"])
    if mode == "teacher":  # the teacher's own gating: plain on-policy distillation, nothing routed to log
        assert "train/teacher_ce_routed" not in metrics
        return
    assert torch.isfinite(metrics["train/teacher_ce_routed"]) and torch.isfinite(metrics["val/teacher_lm_degradation"])
    trained = mode in ("sar", "student_aware")
    assert model.router.trainable == trained and ("train/router_loss" in metrics) == trained
    if trained:  # the routing learned from its objective on the student's samples
        assert any(not torch.equal(a, b) for a, b in zip(router_before, model.router.parameters(), strict=True))
        assert {g["name"] for g in fit.optimizers[0].param_groups} == {"student", "router"}
    else:  # all and ka keep the teacher's gate distribution: no drift
        assert float(metrics["train/gate_kl"]) < 1e-6
    if mode == "student_aware":  # the schedule drove k and τ: at the last step of 2, k = 1 + ⌊(1/2)·4⌋ = 3
        assert "router/top_k" in metrics and model.routed_teacher.top_k == 3


def test_teacher_routing_gives_the_loss_of_no_router(arithmetic_task):
    plain, routed, mixed = module(None), module(TeacherRouting()), module(AllExperts())
    batch = first_batch(arithmetic_task, plain, routed, mixed)
    a, b = plain.step(batch, "train"), routed.step(batch, "train")
    assert torch.equal(a.loss, b.loss) and torch.equal(a.terms["divergence"], b.terms["divergence"])
    assert not torch.equal(mixed.step(batch, "train").loss, a.loss)  # a routing that mixes more experts moves it


def test_the_routed_teacher_scores_padded_rows_like_the_teacher_itself(arithmetic_task):
    """The routed passes get the attention mask and positions of the left-padded prompts: the teacher's own routing
    through them reproduces its plain forward, which differs from a forward that ignores the padding."""
    model = module(TeacherRouting(), lmbda=0.0)
    batch = first_batch(arithmetic_task, model)
    ids, mask = batch["prompt_ids"], batch["prompt_mask"]
    assert (mask == 0).any()  # some rows are padded
    inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
    with torch.no_grad():
        own = model.teacher(**inputs).logits
        unpadded = model.teacher(input_ids=ids).logits
        routed = routed_scores(model.routed_teacher, inputs, "val", 0, None).features[0]["logits"]
    real = mask.bool()
    torch.testing.assert_close(routed[real], own[real], rtol=1e-5, atol=1e-5)
    assert (unpadded[real] - own[real]).abs().max() > 1e-3


def test_knowledge_augmentation_averages_its_passes(arithmetic_task, monkeypatch):
    """With no sampled expert sets every pass is the same: the average of three passes is one pass's loss, and the
    teacher runs three times."""
    plain, single, model = module(), module(KnowledgeAugmentation(sampling_prob=0.0, repeats=1)), module(KnowledgeAugmentation(sampling_prob=0.0, repeats=3))
    batch = first_batch(arithmetic_task, plain, single, model)
    one = single.step(batch, "train")
    calls = []
    forward = model.teacher.model.forward
    monkeypatch.setattr(model.teacher.model, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    three = model.step(batch, "train")
    assert len(calls) == 3 and "router_loss" not in three.terms
    torch.testing.assert_close(three.terms["divergence"], one.terms["divergence"])
    assert not torch.equal(one.loss, plain.step(batch, "train").loss)  # E − 1 experts are not the teacher's top-2


def test_student_aware_router_reads_the_students_hidden_states_and_learns_only_through_the_teacher(arithmetic_task):
    model = module(StudentAwareRouter(), lmbda=1.0, router_balance_weight=0.01)
    batch = first_batch(arithmetic_task, model)
    out = model.step(batch, "train")
    assert model.reads_student and out.terms["router_balance"] > 0
    grads = torch.autograd.grad(out.terms["router_loss"], list(model.router.parameters()), allow_unused=True, retain_graph=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    teacher_grads = torch.autograd.grad(out.loss, [model.router.capacity], retain_graph=True)  # the one backward reaches it
    assert teacher_grads[0].abs().sum() > 0
    assert not any(p.requires_grad for p in model.teacher.parameters())


def test_the_routed_teachers_lm_loss_reads_real_text_only():
    attention = torch.tensor([[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])  # [pad, prompt, prompt | completion, completion, pad]
    completion = torch.tensor([[0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1]])
    got = real_text_mask(attention, completion, reference_rows=torch.tensor([True, False]))
    want = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]]).float()  # row 1 sampled: its completion is left out
    assert torch.equal(got, want)


def test_resume_keeps_the_router_state(arithmetic_task, tmp_path):
    """Two epochs straight, or resumed from the first epoch's checkpoint: the same router and student."""
    def run(ckpt_path=None, callbacks=()):
        model = module(StudentAwareGate(), lmbda=1.0)
        trainer(max_epochs=2, limit_val_batches=0, callbacks=list(callbacks), enable_checkpointing=bool(callbacks)).fit(
            model, datamodule=arithmetic_prompts(arithmetic_task), ckpt_path=ckpt_path)
        return model

    straight = run(callbacks=[ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)])
    first_epoch = tmp_path / "epoch=0-step=2.ckpt"
    state = torch.load(first_epoch, map_location="cpu", weights_only=True)["state_dict"]
    assert not torch.equal(state["router.weight"], module(StudentAwareGate()).routed_teacher.router.weight)  # it had learned
    assert not torch.equal(state["router.weight"], straight.router.weight)  # and learns on in the second epoch
    resumed = run(ckpt_path=first_epoch)
    torch.testing.assert_close(resumed.router.weight, straight.router.weight)
    for a, b in zip(resumed.student.parameters(), straight.student.parameters(), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(("make", "options", "error", "message"), [
    (StudentAwareGate, {"loss": "sampled"}, ValueError, r"loss: sampled stops the gradient.*'sar'.*HINT: use loss: jsd"),
    (StudentAwareRouter, {"loss": "sampled"}, ValueError, r"'student_aware'.*the untrained modes \(teacher, all, ka\)"),
    (AllExperts, {"router_lr": -1.0}, ValueError, "router_lr must be a finite number >= 0"),
    (AllExperts, {"router_temperature": 0.0}, ValueError, "router_temperature must be > 0, got 0.0"),
])
def test_bad_routing_settings_are_refused(make, options, error, message):
    with pytest.raises(error, match=message):
        module(make(), **options)


def test_sampled_loss_works_with_an_untrained_routing_and_a_dense_teacher_is_refused():
    module(KnowledgeAugmentation(), loss="sampled")  # no gradient to route: fine
    from lkd.models import TinyLlamaLM

    dense = Teacher(TinyLlamaLM(vocab_size=257, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=48,
                                max_position_embeddings=64))
    with pytest.raises(NoMoELayersError, match="needs a Mixture-of-Experts teacher.*HINT: drop the router"):
        OnPolicyDistillModule(tiny_student(), dense, tokenizer="bytes", router=AllExperts())
