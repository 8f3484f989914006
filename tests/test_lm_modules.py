"""CausalLMModule and LMDistillModule: bad input, parameter groups, a routed training step, the test report."""

import json

import lightning.pytorch as pl
import pytest
import torch

from lkd.data.text import TextDataModule
from lkd.models.router import NoMoELayersError, StudentAwareRouter
from lkd.modules.lm import CausalLMModule, warmup_cosine
from lkd.modules.lm_distill import LayerMapError, LMDistillModule, VocabularyMismatchError
from tests.lm_fixtures import VOCAB, WIKITEXT_CONFIG, tiny_student, tiny_teacher, tiny_wikitext, _one_torch_thread  # noqa: F401


def trainer(tmp_path, **kw):
    defaults = dict(default_root_dir=str(tmp_path), logger=False, enable_progress_bar=False, enable_model_summary=False,
                    enable_checkpointing=False, max_steps=2, limit_val_batches=1, num_sanity_val_steps=0)
    return pl.Trainer(**{**defaults, **kw})


def data(root, **kw):
    return TextDataModule(str(root), WIKITEXT_CONFIG, block_size=16, batch_size=4, **kw)


def test_vocabulary_mismatch_names_both_sizes():
    with pytest.raises(VocabularyMismatchError, match="teacher vocabulary has 257 tokens, student vocabulary has 300"):
        LMDistillModule(tiny_student(vocab_size=300), tiny_teacher(), tokenizer="bytes")


def test_routing_needs_an_moe_teacher_but_plain_kd_works(tiny_wikitext, tmp_path):
    dense_teacher = tiny_student(seed=5, hidden_size=32)
    with pytest.raises(NoMoELayersError, match="no MoE gates"):
        LMDistillModule(tiny_student(), dense_teacher, tokenizer="bytes", router=StudentAwareRouter())
    module = LMDistillModule(tiny_student(), dense_teacher, tokenizer="bytes")
    trainer(tmp_path).fit(module, data(tiny_wikitext))
    assert torch.isfinite(module.trainer.callback_metrics["train/kl_step"])


def test_layer_map_out_of_range():
    with pytest.raises(LayerMapError, match=r"5→4.*student layers are 1..4"):
        LMDistillModule(tiny_student(), tiny_teacher(), tokenizer="bytes", layer_map={5: 4})
    with pytest.raises(LayerMapError, match=r"1→0"):
        LMDistillModule(tiny_student(), tiny_teacher(), tokenizer="bytes", layer_map={1: 0})


def test_bad_loss_weights_and_temperature():
    with pytest.raises(ValueError, match="negative"):
        LMDistillModule(tiny_student(), tiny_teacher(), tokenizer="bytes", loss_weights={"kl": -1.0})
    with pytest.raises(ValueError, match="all loss weights are zero"):
        LMDistillModule(tiny_student(), tiny_teacher(), tokenizer="bytes", loss_weights={"kl": 0.0})
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        LMDistillModule(tiny_student(), tiny_teacher(), tokenizer="bytes", temperature=0)


def test_attention_loss_needs_eager_attention():
    with pytest.raises(ValueError, match="attn_implementation='sdpa'.*eager"):
        LMDistillModule(tiny_student(attn_implementation="sdpa"), tiny_teacher(), tokenizer="bytes")


def test_parameter_groups_have_their_learning_rates():
    module = LMDistillModule(tiny_student(), tiny_teacher(), tokenizer="bytes", router=StudentAwareRouter(), router_lr=1e-4,
                             optimizer=lambda groups: torch.optim.AdamW(groups, lr=5e-5))
    opt = module.optimizer_factory(module.parameter_groups())
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"student": 5e-5, "projections": 5e-5, "router": 1e-4}
    n_student = sum(p.numel() for p in module.student.parameters())
    assert sum(p.numel() for g in opt.param_groups if g["name"] == "student" for p in g["params"]) == n_student
    assert not any(p.requires_grad for p in module.teacher.parameters())


def test_routed_step_trains_student_router_and_projections_not_teacher(tiny_wikitext, tmp_path):
    module = LMDistillModule(tiny_student(), tiny_teacher(), tokenizer="bytes", router=StudentAwareRouter(),
                             router_top_k=4, router_temperature=0.5)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer(tmp_path, max_steps=2, val_check_interval=2).fit(module, data(tiny_wikitext))
    after = module.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert {"student", "router", "projections"} <= changed
    assert "teacher" not in changed
    m = module.trainer.callback_metrics
    for term in ("kl", "feature", "attention", "layer", "contrastive", "router_loss", "teacher_ce_routed", "teacher_lm_degradation"):
        assert torch.isfinite(m[f"train/{term}_step"]), term
    assert torch.isfinite(m["val/ppl"])


def test_test_stage_writes_retention_report(tiny_wikitext, tmp_path):
    module = LMDistillModule(tiny_student(), tiny_teacher(), tokenizer="bytes", loss_weights={"kl": 1.0},
                             report_dir=str(tmp_path / "report"))
    trainer(tmp_path, limit_test_batches=2).test(module, data(tiny_wikitext))
    report = json.loads((tmp_path / "report" / "retention.json").read_text())
    r = report["retention"]
    assert 0 <= r["top1_agreement"] <= r["top5_agreement"] <= 1
    assert r["kl"] >= 0 and r["teacher_ppl"] > 1 and r["student_ppl"] > 1
    c = report["compression"]
    assert c["teacher_params"] == sum(p.numel() for p in module.teacher.parameters())
    assert c["param_ratio"] > 1 and c["student_bytes"] > 0
    assert report["speed"]["speed_ratio"] > 0 and report["peak_memory_mb"] > 0
    assert "| retention | top1_agreement |" in (tmp_path / "report" / "retention.md").read_text()


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
    assert warmup_cosine(0, warmup_steps=4, total_steps=10) == pytest.approx(0.25)
    assert warmup_cosine(3, warmup_steps=4, total_steps=10) == pytest.approx(1.0)
    assert warmup_cosine(10, warmup_steps=4, total_steps=10, min_ratio=0.1) == pytest.approx(0.1)


def test_trust_remote_code_is_off_by_default(monkeypatch):
    import transformers

    from lkd.models import causal_lm

    seen = {}

    def fake(name, **kw):
        seen.update(kw)
        return "model"

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake)
    causal_lm.pretrained_lm("some/hub-model")
    assert seen["trust_remote_code"] is False
    seen.clear()
    causal_lm.load_tokenizer.__wrapped__("some/hub-model")
    assert seen["trust_remote_code"] is False
