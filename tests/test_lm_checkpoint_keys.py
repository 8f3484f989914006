"""Checkpoints written before the LM module was regrouped (issue 28: routing, projections and features moved out
of ``lkd/modules/lm.py``) still load for test, resume and export: a routed :class:`LMDistillModule` built from
``configs/lm/student_routed.yaml`` (and ``student_sar.yaml``) with the tiny overrides has exactly the state_dict keys
and shapes the module had before (recorded below from commit 59bd5b8), and such a state_dict loads strictly."""

from __future__ import annotations

import pytest
import torch

from lkd.cli import LKDCLI
from tests.conftest import CONFIGS
from tests.lm_fixtures import tiny_overrides

# `key shape` of LMDistillModule.state_dict() for configs/lm/student_routed.yaml + tests.lm_fixtures.tiny_overrides,
# as written by the code at 59bd5b8 (lkd/modules/lm.py of 659 lines)
ROUTED_KEYS = """
student.model.model.embed_tokens.weight 257x24
student.model.model.layers.0.self_attn.q_proj.weight 24x24
student.model.model.layers.0.self_attn.k_proj.weight 12x24
student.model.model.layers.0.self_attn.v_proj.weight 12x24
student.model.model.layers.0.self_attn.o_proj.weight 24x24
student.model.model.layers.0.mlp.gate_proj.weight 48x24
student.model.model.layers.0.mlp.up_proj.weight 48x24
student.model.model.layers.0.mlp.down_proj.weight 24x48
student.model.model.layers.0.input_layernorm.weight 24
student.model.model.layers.0.post_attention_layernorm.weight 24
student.model.model.layers.1.self_attn.q_proj.weight 24x24
student.model.model.layers.1.self_attn.k_proj.weight 12x24
student.model.model.layers.1.self_attn.v_proj.weight 12x24
student.model.model.layers.1.self_attn.o_proj.weight 24x24
student.model.model.layers.1.mlp.gate_proj.weight 48x24
student.model.model.layers.1.mlp.up_proj.weight 48x24
student.model.model.layers.1.mlp.down_proj.weight 24x48
student.model.model.layers.1.input_layernorm.weight 24
student.model.model.layers.1.post_attention_layernorm.weight 24
student.model.model.layers.2.self_attn.q_proj.weight 24x24
student.model.model.layers.2.self_attn.k_proj.weight 12x24
student.model.model.layers.2.self_attn.v_proj.weight 12x24
student.model.model.layers.2.self_attn.o_proj.weight 24x24
student.model.model.layers.2.mlp.gate_proj.weight 48x24
student.model.model.layers.2.mlp.up_proj.weight 48x24
student.model.model.layers.2.mlp.down_proj.weight 24x48
student.model.model.layers.2.input_layernorm.weight 24
student.model.model.layers.2.post_attention_layernorm.weight 24
student.model.model.layers.3.self_attn.q_proj.weight 24x24
student.model.model.layers.3.self_attn.k_proj.weight 12x24
student.model.model.layers.3.self_attn.v_proj.weight 12x24
student.model.model.layers.3.self_attn.o_proj.weight 24x24
student.model.model.layers.3.mlp.gate_proj.weight 48x24
student.model.model.layers.3.mlp.up_proj.weight 48x24
student.model.model.layers.3.mlp.down_proj.weight 24x48
student.model.model.layers.3.input_layernorm.weight 24
student.model.model.layers.3.post_attention_layernorm.weight 24
student.model.model.norm.weight 24
student.model.lm_head.weight 257x24
teacher.model.model.model.embed_tokens.weight 257x32
teacher.model.model.model.layers.0.self_attn.q_proj.weight 32x32
teacher.model.model.model.layers.0.self_attn.k_proj.weight 16x32
teacher.model.model.model.layers.0.self_attn.v_proj.weight 16x32
teacher.model.model.model.layers.0.self_attn.o_proj.weight 32x32
teacher.model.model.model.layers.0.self_attn.q_norm.weight 16
teacher.model.model.model.layers.0.self_attn.k_norm.weight 16
teacher.model.model.model.layers.0.mlp.experts.gate_up_proj 8x32x32
teacher.model.model.model.layers.0.mlp.experts.down_proj 8x32x16
teacher.model.model.model.layers.0.mlp.gate.weight 8x32
teacher.model.model.model.layers.0.input_layernorm.weight 32
teacher.model.model.model.layers.0.post_attention_layernorm.weight 32
teacher.model.model.model.layers.1.self_attn.q_proj.weight 32x32
teacher.model.model.model.layers.1.self_attn.k_proj.weight 16x32
teacher.model.model.model.layers.1.self_attn.v_proj.weight 16x32
teacher.model.model.model.layers.1.self_attn.o_proj.weight 32x32
teacher.model.model.model.layers.1.self_attn.q_norm.weight 16
teacher.model.model.model.layers.1.self_attn.k_norm.weight 16
teacher.model.model.model.layers.1.mlp.experts.gate_up_proj 8x32x32
teacher.model.model.model.layers.1.mlp.experts.down_proj 8x32x16
teacher.model.model.model.layers.1.mlp.gate.weight 8x32
teacher.model.model.model.layers.1.input_layernorm.weight 32
teacher.model.model.model.layers.1.post_attention_layernorm.weight 32
teacher.model.model.model.layers.2.self_attn.q_proj.weight 32x32
teacher.model.model.model.layers.2.self_attn.k_proj.weight 16x32
teacher.model.model.model.layers.2.self_attn.v_proj.weight 16x32
teacher.model.model.model.layers.2.self_attn.o_proj.weight 32x32
teacher.model.model.model.layers.2.self_attn.q_norm.weight 16
teacher.model.model.model.layers.2.self_attn.k_norm.weight 16
teacher.model.model.model.layers.2.mlp.experts.gate_up_proj 8x32x32
teacher.model.model.model.layers.2.mlp.experts.down_proj 8x32x16
teacher.model.model.model.layers.2.mlp.gate.weight 8x32
teacher.model.model.model.layers.2.input_layernorm.weight 32
teacher.model.model.model.layers.2.post_attention_layernorm.weight 32
teacher.model.model.model.layers.3.self_attn.q_proj.weight 32x32
teacher.model.model.model.layers.3.self_attn.k_proj.weight 16x32
teacher.model.model.model.layers.3.self_attn.v_proj.weight 16x32
teacher.model.model.model.layers.3.self_attn.o_proj.weight 32x32
teacher.model.model.model.layers.3.self_attn.q_norm.weight 16
teacher.model.model.model.layers.3.self_attn.k_norm.weight 16
teacher.model.model.model.layers.3.mlp.experts.gate_up_proj 8x32x32
teacher.model.model.model.layers.3.mlp.experts.down_proj 8x32x16
teacher.model.model.model.layers.3.mlp.gate.weight 8x32
teacher.model.model.model.layers.3.input_layernorm.weight 32
teacher.model.model.model.layers.3.post_attention_layernorm.weight 32
teacher.model.model.model.norm.weight 32
teacher.model.model.lm_head.weight 257x32
projections.feature.weight 32x24
projections.layer.0.weight 32x24
projections.layer.1.weight 32x24
projections.layer.2.weight 32x24
projections.layer.3.weight 32x24
router.capacity 4x8x24
router.gap 4x8x3
router.importance 4
router.bias 4x8
"""
SAR_ROUTER_KEYS = "router.weight 4x8x32"  # StudentAwareGate's gate copy (L, E, D_t); student_sar.yaml trains kl only: no projections


def parse(text: str) -> dict[str, tuple[int, ...]]:
    return {key: tuple(int(n) for n in shape.split("x")) for key, shape in (line.split() for line in text.strip().splitlines())}


def expected(config: str) -> dict[str, tuple[int, ...]]:
    routed = parse(ROUTED_KEYS)
    if config == "student_routed":
        return routed
    kept = {k: v for k, v in routed.items() if not k.startswith(("router.", "projections."))}
    return kept | parse(SAR_ROUTER_KEYS)


def build(config: str, data_root):
    path = CONFIGS / "lm" / f"{config}.yaml"
    cli = LKDCLI(args=["-c", str(path), *tiny_overrides(path, data_root), "--model.init_args.teacher.checkpoint=null"], run=False)
    return cli.model


@pytest.mark.parametrize("config", ["student_routed", "student_sar"])
def test_routed_module_keeps_the_checkpoint_keys_of_before_the_regrouping(config, tiny_wikitext):
    module = build(config, tiny_wikitext)
    got = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    want = expected(config)
    assert sorted(set(want) - set(got)) == [] and sorted(set(got) - set(want)) == []  # missing, then unexpected
    assert {k: s for k, s in got.items() if want[k] != s} == {}
    old = {k: torch.full(shape, 0.5) for k, shape in want.items()}  # an old checkpoint's state_dict, as keys and shapes
    module.load_state_dict(old, strict=True)
    router = dict(module.router.named_parameters())
    assert router and all(torch.equal(p, torch.full_like(p, 0.5)) for p in router.values())
