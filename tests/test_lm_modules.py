"""CausalLMModule and LMDistillModule: bad input, parameter groups, the 0-based layer map, a routed training
step (and where its two objectives send gradient), the DistillationReport callback."""

import json
import math
from functools import partial

import pytest
import torch

from lkd.callbacks import DistillationReport
from lkd.data.text import TextDataModule
from lkd.losses.kd import token_kl
from lkd.losses.lm import combine_losses, lm_cross_entropy, lm_loss_terms
from lkd.losses.routing import router_objective
from lkd.models.router import StudentAwareRouter
from lkd.models.routing import NoMoELayersError
from lkd.models.transfer import LayerMapError
from lkd.modules import CausalLMModule, LMDistillModule, VocabularyMismatchError
from lkd.schedules import lr_factor
from lkd.teacher import Teacher
from tests.helpers import tiny_trainer
from tests.lm_fixtures import VOCAB, WIKITEXT_CONFIG, tiny_student, tiny_teacher

trainer = partial(tiny_trainer, max_epochs=None, max_steps=2, limit_val_batches=1, num_sanity_val_steps=0, deterministic=None)


def data(root, **kw):
    return TextDataModule(str(root), WIKITEXT_CONFIG, block_size=16, batch_size=4, **kw)


def distill(student=None, teacher=None, **kw) -> LMDistillModule:
    student = tiny_student() if student is None else student
    return LMDistillModule(student, Teacher(tiny_teacher() if teacher is None else teacher), tokenizer="bytes", **kw)


def test_vocabulary_mismatch_names_both_sizes():
    with pytest.raises(VocabularyMismatchError, match="teacher vocabulary has 257 tokens, student vocabulary has 300"):
        distill(tiny_student(vocab_size=300))


def test_routing_needs_an_moe_teacher_but_plain_kd_works(tiny_wikitext, tmp_path):
    dense_teacher = tiny_student(seed=5, hidden_size=32)
    with pytest.raises(NoMoELayersError, match="no MoE gates"):
        distill(teacher=dense_teacher, router=StudentAwareRouter())
    module = distill(teacher=dense_teacher)
    trainer(tmp_path).fit(module, data(tiny_wikitext))
    assert torch.isfinite(module.trainer.callback_metrics["train/kl_step"])


def test_layer_map_out_of_range():
    hint = r"one teacher layer \(0..3\) for each of the student's 4 layers.*HINT: e.g. \[0, 1, 2, 3\]"
    with pytest.raises(LayerMapError, match=r"layer_map \[0, 1, 2, 4\] must give " + hint):
        distill(layer_map=[0, 1, 2, 4])
    with pytest.raises(LayerMapError, match=r"layer_map \[-1, 0, 1, 2\]"):
        distill(layer_map=[-1, 0, 1, 2])
    with pytest.raises(LayerMapError, match=r"layer_map \[0, 1\] must give " + hint):  # one entry per student layer
        distill(layer_map=[0, 1])
    assert distill().layer_map == [0, 1, 2, 3]  # default: evenly spread, first onto first, last onto last
    assert distill(tiny_student(num_layers=2)).layer_map == [0, 3]


def test_layer_map_is_zero_based_for_hidden_states_and_attentions():
    """Entry j = the teacher layer (0-based) for student layer j: hidden_states[t + 1] (0 is the embeddings)
    and attentions[t] of the teacher, against the student's hidden_states[j + 1] and attentions[j]."""
    layer_map = [3, 0, 0, 2]
    module = distill(loss_weights={"layer": 1.0, "attention": 1.0}, layer_map=layer_map)
    ids = torch.randint(0, VOCAB, (2, 8))
    with torch.no_grad():
        t_out = module.teacher(input_ids=ids, output_hidden_states=True, output_attentions=True)
        s_out = module.student(input_ids=ids, output_hidden_states=True, output_attentions=True)
        t_feats, s_feats = module.projections.teacher_features(t_out), module.projections.student_features(s_out)
    assert len(t_feats["layer"]) == len(s_feats["layer"]) == len(t_feats["attention"]) == len(s_feats["attention"]) == 4
    for j, t in enumerate(layer_map):
        assert torch.equal(t_feats["layer"][j], t_out.hidden_states[t + 1]), j
        assert torch.equal(t_feats["attention"][j], t_out.attentions[t]), j
        torch.testing.assert_close(s_feats["layer"][j], module.projections.layer[j](s_out.hidden_states[j + 1]))
        assert torch.equal(s_feats["attention"][j], s_out.attentions[j]), j


def test_bad_loss_weights_and_temperature():
    with pytest.raises(ValueError, match="negative"):
        distill(loss_weights={"kl": -1.0})
    with pytest.raises(ValueError, match="all loss weights are zero"):
        distill(loss_weights={"kl": 0.0})
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        distill(temperature=0)
    # several problems are reported together
    with pytest.raises(ValueError, match=r"temperature must be > 0, got 0.*router_temperature must be > 0, got -1.*"
                                         r"router_lm_weight must be >= 0, got -0.5"):
        distill(temperature=0, router_temperature=-1, router_lm_weight=-0.5)


def test_attention_loss_needs_eager_attention():
    with pytest.raises(ValueError, match="attn_implementation='sdpa'.*eager"):
        distill(tiny_student(attn_implementation="sdpa"))


def test_parameter_groups_have_their_learning_rates():
    module = distill(router=StudentAwareRouter(), router_lr=1e-4, optimizer=lambda groups: torch.optim.AdamW(groups, lr=5e-5))
    opt = module.optimizer_factory(module.parameter_groups())
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"student": 5e-5, "projections": 5e-5, "router": 1e-4}
    n_student = sum(p.numel() for p in module.student.parameters())
    assert sum(p.numel() for g in opt.param_groups if g["name"] == "student" for p in g["params"]) == n_student
    assert not any(p.requires_grad for p in module.teacher.parameters())
    assert not any(p is q for g in opt.param_groups for p in g["params"] for q in module.teacher.parameters())


def test_group_learning_rates_of_0_freeze_and_negative_ones_are_refused():
    """router_lr / projection_lr = 0 keep those weights as initialised (documented); a negative rate, which torch takes
    in a parameter group without a word and which would climb the loss, is refused with every bad value named."""
    module = distill(router=StudentAwareRouter(), router_lr=0.0, projection_lr=0.0, loss_weights={"kl": 1.0, "feature": 0.1})
    lrs = {g["name"]: g["lr"] for g in module.optimizer_factory(module.parameter_groups()).param_groups}
    assert lrs["router"] == 0.0 and lrs["projections"] == 0.0
    with pytest.raises(ValueError, match=r"router_lr must be a finite number >= 0 .*got -0\.1\. HINT: model\.init_args\.router_lr="
                                         r"1\.0e-4 \(the default\); projection_lr must be .*got nan\. HINT: drop "):
        distill(router=StudentAwareRouter(), router_lr=-0.1, projection_lr=float("nan"))


def test_routed_step_trains_student_router_and_projections_not_teacher(tiny_wikitext, tmp_path):
    module = distill(router=StudentAwareRouter(), router_top_k=4, router_temperature=0.5)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    assert any(k.startswith("teacher.model.") for k in before)  # the network is module.teacher.model
    trainer(tmp_path, max_steps=2, val_check_interval=2).fit(module, data(tiny_wikitext))
    after = module.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert {"student", "router", "projections"} <= changed
    assert "teacher" not in changed
    m = module.trainer.callback_metrics
    for term in ("kl", "feature", "attention", "layer", "contrastive", "router_loss", "teacher_ce_routed", "teacher_lm_degradation"):
        assert torch.isfinite(m[f"train/{term}_step"]), term
    assert torch.isfinite(m["val/ppl"])


def test_routed_step_sends_each_objective_to_its_own_side():
    """L = Σ w_i L_i(student, sg[routed teacher]) + L_router(sg[student], routed teacher). The step computes one loss
    table between the student and the routed teacher (its gradient reaches the student through the student's features
    and the router through the teacher's): the gradient on every parameter equals that of the two objectives computed
    apart, and L_router's own part (the routed teacher's CE) moves only the router."""
    weights = {"kl": 0.7, "feature": 0.1, "layer": 0.1, "attention": 0.05, "contrastive": 0.05}
    module = distill(router=StudentAwareRouter(), router_top_k=3, router_temperature=0.5, loss_weights=weights)
    ids = torch.randint(0, VOCAB, (2, 8))
    out = module.step({"input_ids": ids, "sample_id": torch.arange(2)}, "train")
    student_loss, router_loss = out.logged_loss, out.terms["router_loss"]
    torch.testing.assert_close(out.loss, student_loss + router_loss)
    sides = {"student": list(module.student.parameters()), "projections": list(module.projections.parameters()),
             "router": list(module.router.parameters())}
    params = [p for ps in sides.values() for p in ps]

    def grads(loss) -> list:
        return torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)

    def reached(loss) -> set[str]:
        names = [n for n, ps in sides.items() for _ in ps]
        return {n for n, g in zip(names, grads(loss)) if g is not None and g.abs().sum() > 0}

    # the reference: the same forwards, the two objectives apart (lkd.losses.lm, lkd.losses.routing)
    routed, tau = module.routed_teacher, module.contrastive_temperature
    s_out = module.student(input_ids=ids, output_hidden_states=True, output_attentions=True)
    student = module.projections.student_features(s_out)
    ctx = routed.context(s_out, {"logits": module.teacher_targets({"input_ids": ids}, "train")["logits"]})
    (t_out,), _ = routed.passes(ids, ctx, "train", learns=True, hidden=True, attentions=True)
    teacher = module.projections.teacher_features(t_out)
    sg = lambda feats: {k: [x.detach() for x in v] if isinstance(v, list) else v.detach() for k, v in feats.items()}  # noqa: E731
    student_part, _ = combine_losses(lm_loss_terms(student, sg(teacher), ids, weights, temperature=module.temperature,
                                                   contrastive_temperature=tau), weights)
    router_part = router_objective(lm_loss_terms(sg(student), teacher, ids, weights, temperature=module.temperature,
                                                 contrastive_temperature=tau), weights,
                                   lm_cross_entropy(teacher["logits"], ids), lm_weight=routed.lm_weight)
    for name, got, want in zip([n for n, ps in sides.items() for _ in ps], grads(out.loss), grads(student_part + router_part)):
        torch.testing.assert_close(got, want, msg=name)
    assert reached(student_part) == {"student", "projections"} and reached(router_part) == {"router"}
    assert reached(router_loss) == {"router"}
    assert not any(p.requires_grad for p in module.teacher.parameters())


def test_teacher_weights_come_from_a_causal_lm_checkpoint(tiny_wikitext, tmp_path):
    """Teacher(TinyMoELM(...).model, checkpoint=<CausalLMModule checkpoint>): its "model." weights, loaded in setup,
    frozen through the fit, saved under teacher.model.*."""
    lm = CausalLMModule(tiny_teacher(seed=3), tokenizer="bytes")
    t = trainer(tmp_path / "teacher", max_steps=1, limit_val_batches=0)
    t.fit(lm, data(tiny_wikitext))
    t.save_checkpoint(tmp_path / "teacher.ckpt")
    saved = torch.load(tmp_path / "teacher.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    module = distill(teacher=tiny_teacher(seed=0), loss_weights={"kl": 1.0})
    module.teacher.checkpoint = str(tmp_path / "teacher.ckpt")
    assert not torch.equal(module.teacher.model.lm_head.weight, saved["model.lm_head.weight"])  # other seed
    d = trainer(tmp_path / "student", max_steps=2, limit_val_batches=0)
    d.fit(module, data(tiny_wikitext))
    state = module.state_dict()
    teacher_keys = {k.removeprefix("teacher.model.") for k in state if k.startswith("teacher.model.")}
    assert teacher_keys == {k.removeprefix("model.") for k in saved if k.startswith("model.")}
    for key in teacher_keys:
        torch.testing.assert_close(state[f"teacher.model.{key}"], saved[f"model.{key}"], rtol=0, atol=0, msg=key)
    assert not module.teacher.training and not module.teacher.model.training


def test_routed_step_through_a_bfloat16_teacher():
    """teacher.dtype bfloat16: held in bf16, fp32 targets for the losses, the router still learns through it."""
    module = LMDistillModule(tiny_student(), Teacher(tiny_teacher(), dtype="bfloat16"), tokenizer="bytes",
                             router=StudentAwareRouter(), router_top_k=3, loss_weights={"kl": 1.0, "layer": 0.5})
    module.prepare_teacher()
    assert module.teacher.weight_dtype == torch.bfloat16
    ids = torch.randint(0, VOCAB, (2, 8))
    with torch.no_grad():
        out = module.teacher(input_ids=ids, output_hidden_states=True)
    assert out.logits.dtype == torch.float32 and all(h.dtype == torch.float32 for h in out.hidden_states)
    step = module.step({"input_ids": ids, "sample_id": torch.arange(2)}, "train")
    assert all(torch.isfinite(v) for v in step.terms.values())
    step.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.router.parameters())
    assert all(p.grad is None for p in module.teacher.parameters())


def test_distillation_report_writes_retention_equal_to_token_kl(tiny_wikitext, tmp_path):
    module = distill(loss_weights={"kl": 1.0})
    report_cb = DistillationReport(report_dir=str(tmp_path / "report"), timing_batch_size=2, repeats=1)
    t = trainer(tmp_path, limit_test_batches=2, callbacks=[report_cb])
    dm = data(tiny_wikitext, eval_batch_size=3)
    t.test(module, dm)
    report = json.loads((tmp_path / "report" / "retention.json").read_text())
    assert report == json.loads(json.dumps(report_cb.report))  # the callback keeps what it wrote
    assert set(report) == {"retention", "compression", "speed", "peak_memory_mb"}
    r = report["retention"]
    assert set(r) == {"kl", "top1_agreement", "top5_agreement", "teacher_ppl", "student_ppl", "ppl_ratio",
                      "teacher_bpb", "student_bpb"}
    # the retention KL is token_kl averaged over every position of the test batches, computed here on its own
    blocks = dm.split("test").blocks[:6]  # 2 batches of 3
    with torch.no_grad():
        kl = token_kl(module.student(input_ids=blocks).logits, module.teacher.model(input_ids=blocks).logits)  # (6, 16)
    assert kl.shape == (6, 16)
    assert r["kl"] == pytest.approx(kl.mean().item(), rel=1e-5)
    assert r["kl"] > 0  # two different random models
    assert 0 <= r["top1_agreement"] <= r["top5_agreement"] <= 1
    assert r["teacher_ppl"] > 1 and r["student_ppl"] > 1
    assert r["ppl_ratio"] == pytest.approx(r["student_ppl"] / r["teacher_ppl"])
    # bits per byte: the same NLLs over the bytes the predicted tokens spell (bytes: 1 per token, 0 for end-of-text)
    targets = blocks[:, 1:]
    nbytes = int((targets < 256).sum())
    assert r["student_bpb"] == pytest.approx(math.log(r["student_ppl"]) * targets.numel() / (math.log(2) * nbytes), rel=1e-5)
    assert r["teacher_bpb"] == pytest.approx(math.log(r["teacher_ppl"]) * targets.numel() / (math.log(2) * nbytes), rel=1e-5)
    c = report["compression"]
    assert set(c) == {"teacher_params", "student_params", "teacher_bytes", "student_bytes", "param_ratio"}
    assert c["teacher_params"] == sum(p.numel() for p in module.teacher.parameters())
    assert c["student_params"] == sum(p.numel() for p in module.student.parameters())
    assert c["param_ratio"] == pytest.approx(c["teacher_params"] / c["student_params"]) and c["param_ratio"] > 1
    assert c["student_bytes"] > 0
    s = report["speed"]
    assert set(s) == {"teacher_tokens_per_s", "student_tokens_per_s", "speed_ratio"}
    assert s["speed_ratio"] > 0 and s["speed_ratio"] == pytest.approx(s["student_tokens_per_s"] / s["teacher_tokens_per_s"])
    assert report["peak_memory_mb"] > 0
    logged = t.callback_metrics
    assert logged["test/kl"].item() == pytest.approx(r["kl"], rel=1e-5)
    assert logged["test/speed_ratio"].item() == pytest.approx(s["speed_ratio"], rel=1e-5)
    md = (tmp_path / "report" / "retention.md").read_text()
    assert md.startswith("# Distillation report")
    assert f"| retention | kl | {r['kl']:.4g} |" in md and "| retention | top1_agreement |" in md
    assert "| speed | speed_ratio |" in md and "| compression | param_ratio |" in md


def test_distillation_report_writes_nothing_under_fast_dev_run(tiny_wikitext, tmp_path):
    report_cb = DistillationReport(report_dir=str(tmp_path / "report"), repeats=1)
    trainer(tmp_path, fast_dev_run=True, callbacks=[report_cb]).test(distill(loss_weights={"kl": 1.0}), data(tiny_wikitext))
    assert report_cb.report["retention"]["kl"] > 0  # measured and logged
    assert not (tmp_path / "report").exists()
    restored = DistillationReport()
    restored.load_state_dict(report_cb.state_dict())
    assert restored.report == report_cb.report
    restored.load_state_dict({})  # an older checkpoint without the key
    assert restored.report == {}
    with pytest.raises(ValueError, match="timing_batch_size and repeats must be >= 1, got 0 and 3"):
        DistillationReport(timing_batch_size=0)


def test_retention_of_a_perfect_student_copy():
    from lkd.metrics.retention import RetentionMetrics

    metric = RetentionMetrics()
    logits, ids = torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
    metric.update(logits, logits, ids)
    r = metric.compute()
    assert r["kl"] == pytest.approx(0, abs=1e-6) and r["top1_agreement"] == r["top5_agreement"] == 1.0
    assert r["ppl_ratio"] == pytest.approx(1.0)


def test_causal_lm_module_learns_and_logs_perplexity(tiny_wikitext, tmp_path):
    module = CausalLMModule(tiny_teacher(), tokenizer="bytes", optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))
    t = trainer(tmp_path, max_steps=30, val_check_interval=30, limit_val_batches=2)
    t.fit(module, data(tiny_wikitext))
    m = t.callback_metrics
    assert torch.isfinite(m["train/aux_loss_step"])  # MoE load balancing is on
    assert m["val/ppl"] < 40  # from ~257 (uniform over bytes) in 30 steps
    torch.testing.assert_close(m["val/ppl"], torch.exp(m["val/nll"]), rtol=1e-4, atol=1e-4)


def test_warmup_cosine_schedule():
    # lkd.schedules: warm-up (step + 1) / (warmup + 1), the peak at the first step after it, then a half cosine
    assert lr_factor(0, warmup=4, total=10, shape="cosine") == pytest.approx(0.2)
    assert lr_factor(3, warmup=4, total=10, shape="cosine") == pytest.approx(0.8)
    assert lr_factor(4, warmup=4, total=10, shape="cosine") == pytest.approx(1.0)
    assert lr_factor(7, warmup=4, total=10, shape="cosine", min_ratio=0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(10, warmup=4, total=10, shape="cosine", min_ratio=0.1) == pytest.approx(0.1)


def test_lm_module_steps_its_learning_rate_per_optimizer_step(tiny_wikitext, tmp_path):
    """warmup_steps (a step count here) and min_lr_ratio reach the scheduler, stepped every optimizer step."""
    from lightning.pytorch.callbacks import Callback

    class LRs(Callback):
        def __init__(self):
            self.seen = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    lrs = LRs()
    module = CausalLMModule(tiny_student(), tokenizer="bytes", warmup_steps=2, min_lr_ratio=0.1,
                            optimizer=lambda p: torch.optim.SGD(p, lr=1.0))
    trainer(tmp_path, max_steps=6, limit_val_batches=0, callbacks=[lrs]).fit(module, data(tiny_wikitext))
    expected = [lr_factor(s, warmup=2, total=6, shape="cosine", min_ratio=0.1) for s in range(6)]
    assert lrs.seen == pytest.approx(expected)


def test_trust_remote_code_is_off_by_default(monkeypatch):
    import transformers

    from lkd.models import causal_lm
    from lkd.tokenizers import load_tokenizer

    seen = {}

    def fake(name, **kw):
        seen.update(kw, name=name)
        return "model"

    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # a hub id passes through resolve_pretrained online
        monkeypatch.setenv(variable, "0")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake)
    causal_lm.pretrained_lm("some/hub-model")
    assert seen["trust_remote_code"] is False and seen["name"] == "some/hub-model"
    seen.clear()
    load_tokenizer.__wrapped__("some/hub-model")
    assert seen["trust_remote_code"] is False and seen["name"] == "some/hub-model"
