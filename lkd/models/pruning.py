"""Students made from a teacher: depth and width pruning of a Llama-family causal LM (Minitron-style).

Minitron (Muralidharan et al., "Compact Language Models via Pruning and Knowledge Distillation", arXiv 2407.14679,
Sec. 2.2) ranks what to keep by *activation importance* on a small calibration set, then retrains the pruned model
with logit distillation from the original:

- an MLP channel ``i`` of layer ``l``: ``F(l, i) = mean over calibration tokens of |a_i|``, ``a`` the input of
  ``down_proj`` (``act(gate(x)) * up(x)``, the channel's activation), averaged over batch and sequence;
- an attention head ``h`` of layer ``l``: ``F(l, h) = mean over calibration tokens of ||o_h||_2``, ``o_h`` the head's
  attention output (its ``head_dim`` slice of the input of ``o_proj``).

Depth pruning keeps a list of layers; width pruning keeps the ``intermediate_size`` most important MLP channels
and the ``num_heads`` most important query heads **per KV group**: every key/value head stays and each group keeps
``num_heads / num_key_value_heads`` of its own query heads, so the grouped-query structure stays valid (equal groups,
each query head still reads the key/value head it was trained with) and the key/value weights are copied whole.
Pruning whole KV groups would also drop keys and values other heads rely on; it is not offered.

The result is an ordinary transformers ``LlamaForCausalLM`` (``num_hidden_layers``, ``intermediate_size``,
``num_attention_heads`` and ``head_dim`` in its config), every tensor copied and shape-checked.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from lkd.models.transfer import WeightTransferError

PRUNABLE = ("llama",)  # config.model_type values this file prunes (SmolLM, SmolLM2, TinyLlama, Llama 2/3)


def _base(model: nn.Module) -> nn.Module:
    """The decoder (``model.model``) of a ``*ForCausalLM``."""
    return model.model


def check_prunable(model: nn.Module) -> None:
    """Refuse a model this file cannot prune, naming its architecture and what is supported."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in PRUNABLE or getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None):
        raise ValueError(
            f"cannot prune {type(model).__name__} (model_type {model_type!r}): pruning supports the dense Llama family "
            f"(model_type {', '.join(repr(t) for t in PRUNABLE)}: SmolLM, SmolLM2, TinyLlama, Llama). HINT: prune a Llama "
            "teacher (e.g. teacher: smollm2), or distil this model into lkd.models.TinyLlamaLM instead"
        )


@dataclass
class Importance:
    """Activation importance of one model on calibration tokens (Minitron, arXiv 2407.14679, Sec. 2.2).

    Attributes:
        channels: ``(layers, intermediate_size)``: mean |activation| of each MLP channel (input of ``down_proj``).
        heads: ``(layers, num_attention_heads)``: mean L2 norm of each head's attention output (input of ``o_proj``).
        tokens: calibration tokens the means are over.
    """

    channels: torch.Tensor
    heads: torch.Tensor
    tokens: int


@torch.no_grad()
def activation_importance(model: nn.Module, batches: Iterable[torch.Tensor]) -> Importance:
    """:class:`Importance` of ``model``'s MLP channels and attention heads over ``batches`` of token ids ``(B, T)``.

    Hooks read the input of every layer's ``down_proj`` and ``o_proj``; the model runs in whatever mode it is in
    (put it in ``eval()`` first for dropout-free activations).
    """
    check_prunable(model)
    config = model.config
    layers = _base(model).layers
    head_dim = _head_dim(config)
    channels = torch.zeros(len(layers), config.intermediate_size, dtype=torch.float64)
    heads = torch.zeros(len(layers), config.num_attention_heads, dtype=torch.float64)
    tokens = 0

    def mlp_hook(index):
        def hook(_module, args):
            act = args[0].detach().double()  # (B, T, I)
            channels[index] += act.abs().sum(dim=(0, 1)).cpu()
        return hook

    def attn_hook(index):
        def hook(_module, args):
            out = args[0].detach().double()  # (B, T, H * hd)
            out = out.reshape(*out.shape[:-1], config.num_attention_heads, head_dim)  # (B, T, H, hd)
            heads[index] += out.norm(dim=-1).sum(dim=(0, 1)).cpu()
        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(mlp_hook(i)))
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(attn_hook(i)))
    try:
        for ids in batches:
            ids = ids.to(next(model.parameters()).device)
            model(input_ids=ids)
            tokens += ids.numel()
    finally:
        for handle in handles:
            handle.remove()
    if tokens == 0:
        raise ValueError("activation_importance needs at least one calibration batch, got none")
    return Importance(channels=(channels / tokens).float(), heads=(heads / tokens).float(), tokens=tokens)


def _head_dim(config) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def check_pruning(config, *, keep_layers: list[int] | None, intermediate_size: int | None, num_heads: int | None) -> None:
    """Every problem with the pruning settings for a teacher ``config``, in one ``ValueError``."""
    problems = []
    n = config.num_hidden_layers
    if keep_layers is not None:
        bad = [i for i in keep_layers if not 0 <= i < n]
        if not keep_layers or bad or len(set(keep_layers)) != len(keep_layers) or list(keep_layers) != sorted(keep_layers):
            problems.append(f"keep_layers {list(keep_layers)} must be distinct, increasing layer indices in 0..{n - 1} "
                            f"(the teacher has {n} layers){f'; out of range: {bad}' if bad else ''}")
    if intermediate_size is not None and not 1 <= intermediate_size <= config.intermediate_size:
        problems.append(f"intermediate_size must be in 1..{config.intermediate_size} (the teacher's), got {intermediate_size}")
    if num_heads is not None:
        h, kv = config.num_attention_heads, config.num_key_value_heads
        if not 1 <= num_heads <= h or num_heads % kv:
            problems.append(f"num_heads must be a multiple of num_key_value_heads={kv} in {kv}..{h} (the teacher has {h} "
                            f"query heads in {kv} KV groups; heads are pruned per group), got {num_heads}: e.g. "
                            f"{[m for m in range(kv, h + 1, kv)]}")
    if problems:
        raise ValueError("bad pruning settings:\n- " + "\n- ".join(problems) +
                         "\nHINT: keep_layers lists teacher layers to keep; intermediate_size and num_heads are the student's widths")


def _copy(target: torch.Tensor, source: torch.Tensor, name: str) -> None:
    if target.shape != source.shape:
        raise WeightTransferError(f"{name}: pruned weight has shape {tuple(source.shape)}, the student expects {tuple(target.shape)}")
    target.copy_(source)


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest ``scores``, in their original order (ties: the lower index)."""
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    return torch.sort(order).values


def kept_heads(scores: torch.Tensor, num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """The query heads to keep, ``num_heads / num_kv_heads`` of the most important in each KV group, in order.

    ``scores``: ``(num_attention_heads,)``; heads ``g * group .. (g + 1) * group - 1`` read KV head ``g``.
    """
    group = scores.numel() // num_kv_heads
    per_group = num_heads // num_kv_heads
    return torch.cat([g * group + _top(scores[g * group:(g + 1) * group], per_group) for g in range(num_kv_heads)])


@torch.no_grad()
def prune_llama(teacher: nn.Module, *, keep_layers: list[int] | None = None, intermediate_size: int | None = None,
                num_heads: int | None = None, importance: Importance | None = None) -> nn.Module:
    """A smaller ``LlamaForCausalLM`` made from ``teacher``: its ``keep_layers`` (all: None), its ``intermediate_size``
    most important MLP channels and ``num_heads`` most important query heads per KV group (None: all), by
    ``importance`` (:func:`activation_importance`; needed only when a width is pruned). The teacher is not changed.

    Raises:
        ValueError: a model that is not a dense Llama, bad settings, or width pruning without ``importance``.
        WeightTransferError: a copied weight whose shape does not fit the student.
    """
    from transformers import LlamaForCausalLM

    check_prunable(teacher)
    source = teacher.config
    check_pruning(source, keep_layers=keep_layers, intermediate_size=intermediate_size, num_heads=num_heads)
    keep_layers = list(range(source.num_hidden_layers)) if keep_layers is None else list(keep_layers)
    intermediate_size = intermediate_size or source.intermediate_size
    num_heads = num_heads or source.num_attention_heads
    width = intermediate_size < source.intermediate_size or num_heads < source.num_attention_heads
    if width and importance is None:
        raise ValueError("width pruning (intermediate_size or num_heads below the teacher's) ranks channels and heads by "
                         "activation importance: pass importance=activation_importance(teacher, batches). HINT: give "
                         "PrunedLM calibration settings")
    head_dim = _head_dim(source)
    config = copy.deepcopy(source)
    config.num_hidden_layers = len(keep_layers)
    config.intermediate_size = intermediate_size
    config.num_attention_heads = num_heads
    config.head_dim = head_dim  # kept: hidden_size / num_heads would change it
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [source.layer_types[i] for i in keep_layers]
    student = LlamaForCausalLM(config).to(dtype=next(teacher.parameters()).dtype)
    student.train(teacher.training)

    t_base, s_base = _base(teacher), _base(student)
    _copy(s_base.embed_tokens.weight, t_base.embed_tokens.weight, "model.embed_tokens.weight")
    _copy(s_base.norm.weight, t_base.norm.weight, "model.norm.weight")
    if not config.tie_word_embeddings:
        _copy(student.lm_head.weight, teacher.lm_head.weight, "lm_head.weight")
    for j, i in enumerate(keep_layers):
        t, s = t_base.layers[i], s_base.layers[j]
        prefix = f"model.layers.{j} (teacher layer {i})"
        channels = (torch.arange(source.intermediate_size) if intermediate_size == source.intermediate_size
                    else _top(importance.channels[i], intermediate_size))
        heads = (torch.arange(source.num_attention_heads) if num_heads == source.num_attention_heads
                 else kept_heads(importance.heads[i], num_heads, source.num_key_value_heads))
        rows = (heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)  # (num_heads * hd,) q rows / o columns
        _copy(s.input_layernorm.weight, t.input_layernorm.weight, f"{prefix}.input_layernorm.weight")
        _copy(s.post_attention_layernorm.weight, t.post_attention_layernorm.weight, f"{prefix}.post_attention_layernorm.weight")
        _copy(s.mlp.gate_proj.weight, t.mlp.gate_proj.weight[channels], f"{prefix}.mlp.gate_proj.weight")
        _copy(s.mlp.up_proj.weight, t.mlp.up_proj.weight[channels], f"{prefix}.mlp.up_proj.weight")
        _copy(s.mlp.down_proj.weight, t.mlp.down_proj.weight[:, channels], f"{prefix}.mlp.down_proj.weight")
        _copy(s.self_attn.q_proj.weight, t.self_attn.q_proj.weight[rows], f"{prefix}.self_attn.q_proj.weight")
        _copy(s.self_attn.k_proj.weight, t.self_attn.k_proj.weight, f"{prefix}.self_attn.k_proj.weight")
        _copy(s.self_attn.v_proj.weight, t.self_attn.v_proj.weight, f"{prefix}.self_attn.v_proj.weight")
        _copy(s.self_attn.o_proj.weight, t.self_attn.o_proj.weight[:, rows], f"{prefix}.self_attn.o_proj.weight")
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):  # attention_bias=True Llamas
            t_bias = getattr(t.self_attn, name).bias
            if t_bias is not None:
                _copy(getattr(s.self_attn, name).bias, t_bias[rows] if name == "q_proj" else t_bias, f"{prefix}.self_attn.{name}.bias")
        for name in ("gate_proj", "up_proj", "down_proj"):  # mlp_bias=True Llamas
            t_bias = getattr(t.mlp, name).bias
            if t_bias is not None:
                _copy(getattr(s.mlp, name).bias, t_bias[channels] if name != "down_proj" else t_bias, f"{prefix}.mlp.{name}.bias")
    return student


# ---- calibration data ---------------------------------------------------------------------------------------
@dataclass
class Calibration:
    """Where the calibration tokens for width pruning come from (read offline through :func:`lkd.hub.load_hub_dataset`).

    Attributes:
        hub_id: data set id or folder (a local mirror is used when there is one).
        config: the data set's config.
        split: the split (slices allowed: ``"validation[:90%]"``).
        n_blocks: number of calibration blocks (Minitron uses 1024 samples; a few dozen rank the same on small models).
        block_size: tokens per block.
        batch_size: blocks per forward.
        text_column: the column holding the text.
    """

    hub_id: str = "Salesforce/wikitext"
    config: str | None = "wikitext-2-raw-v1"
    split: str = "validation[:90%]"
    n_blocks: int = 16
    block_size: int = 128
    batch_size: int = 4
    text_column: str = "text"

    def __post_init__(self):
        for name in ("n_blocks", "block_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"calibration.{name} must be >= 1, got {getattr(self, name)}")


def calibration_batches(calibration: Calibration, tokenizer) -> list[torch.Tensor]:
    """``calibration.n_blocks`` blocks of ``block_size`` token ids from the start of the split, in batches ``(B, T)``."""
    from lkd.hub import load_hub_dataset

    data = load_hub_dataset(calibration.hub_id, calibration.config, split=calibration.split)
    need, ids = calibration.n_blocks * calibration.block_size, []
    for text in data[calibration.text_column]:
        if text.strip():
            ids += tokenizer(text)["input_ids"]
        if len(ids) >= need:
            break
    n = len(ids) // calibration.block_size
    if n == 0:
        raise ValueError(f"calibration split {calibration.split!r} of {calibration.hub_id} holds {len(ids)} tokens, fewer than "
                         f"one block of {calibration.block_size}. HINT: lower calibration.block_size or pick a larger split")
    blocks = torch.tensor(ids[:min(n, calibration.n_blocks) * calibration.block_size]).view(-1, calibration.block_size)  # (N, T)
    return list(blocks.split(calibration.batch_size))
