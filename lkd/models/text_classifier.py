"""A transformers encoder + optional Discrete Key-Value Bottleneck + classification head (GLUE track)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor, nn

from lkd.models.dkvb import DiscreteKeyValueBottleneck
from lkd.hub import resolve_pretrained
from lkd.models.transfer import copy_transformer_weights


@dataclass
class DKVBSettings:
    """The bottleneck of a :class:`TransformerClassifier` (see :class:`DiscreteKeyValueBottleneck`).

    Args:
        num_codebooks: C codebooks.
        num_keys: K keys per codebook.
        key_dim: Dk, width of a key.
        decoder: ``"mean"`` (values are logits, start at zero) or ``"concat"``.
        ema_decay: EMA decay of the keys.
        threshold_ema_dead_code: re-draw keys used less than this (0 = off).
        projection_seed: seed of the fixed random projection into key space. Teacher and student need the
            same projection (same seed and input width) for carried keys to mean the same thing.
        on: ``"cls"``: one query per sequence from the sequence vector the head reads (the [CLS] state, or
            the masked mean with ``pooling="mean"``); ``"tokens"``: one query per token, the per-token outputs
            averaged over the attention mask.
        input_dim: width of the DKVB input. None: the encoder's hidden size. Otherwise a learned
            ``Linear(hidden, input_dim)`` maps the encoder's states into it, which lets a student of another
            width carry a teacher's keys (set it to the teacher's DKVB input width).
        combine: ``"sum"``: logits = head(CLS) + DKVB(...), the DKVB a discrete memory beside the head (its
            values start at zero, so training starts as plain fine-tuning; the encoder learns through the
            head, since no gradient passes a key lookup); ``"only"``: logits = DKVB(...) alone, the paper's
            setting, where only the values (and ``input_dim``'s projection) learn.
    """

    num_codebooks: int = 32
    num_keys: int = 256
    key_dim: int = 12
    decoder: Literal["mean", "concat"] = "mean"
    ema_decay: float = 0.95
    threshold_ema_dead_code: int = 0
    projection_seed: int = 0
    on: Literal["cls", "tokens"] = "cls"
    input_dim: int | None = None
    combine: Literal["sum", "only"] = "sum"


@dataclass
class TextClassifierOutput:
    """Output of :class:`TransformerClassifier`.

    Attributes:
        logits: (B, num_classes); num_classes = 1 for a regression task.
        hidden_states: (embeddings, layer 1, ..., layer L), each (B, T, H), when asked for; else None.
        dkvb_input: (B, D) or (B·T, D) queries of the DKVB (before its projection) when it has one.
    """

    logits: Tensor
    hidden_states: tuple[Tensor, ...] | None = None
    dkvb_input: Tensor | None = None


class TransformerClassifier(nn.Module):
    """``AutoModel`` encoder → sequence vector ([CLS] or mean) → (head, + DKVB) → logits. Without ``dkvb`` it is
    plain fine-tuning.

    Args:
        num_classes: output width (linked from the data module; 1 = regression).
        encoder: hub id or local folder of the encoder (weights, config and tokenizer come from it; offline
            a packaged copy is used, see :func:`lkd.models.pretrained.resolve_pretrained`).
        pretrained: load the encoder's weights; False builds it at random from its config (tests).
        keep_layers: build a smaller encoder from the pretrained one, keeping these layers (DistilBERT's
            initialisation); None keeps all. With ``pretrained=False`` only the layer count is used.
        config_overrides: changes to the encoder's config (e.g. a tiny random model for tests).
        dropout: dropout before the head (default: the config's ``hidden_dropout_prob`` or 0.1).
        dkvb: the bottleneck, or None.
        freeze_embeddings: keep the token embeddings fixed (half of MiniLM-L6's weights): no gradient and no
            optimizer update for them each step.
        pooling: the sequence vector the head reads: ``"cls"``, the first token's last state (BERT's
            fine-tuning), or ``"mean"``, the mean of the last states over the attention mask (what
            sentence-transformers encoders such as all-MiniLM-L6-v2 were trained to summarise a sentence with).
        trust_remote_code: never implied; only models that need it should turn it on.
    """

    def __init__(
        self,
        num_classes: int = 2,
        encoder: str = "bert-base-uncased",
        *,
        pretrained: bool = True,
        keep_layers: list[int] | None = None,
        config_overrides: dict | None = None,
        dropout: float | None = None,
        dkvb: DKVBSettings | None = None,
        freeze_embeddings: bool = False,
        pooling: Literal["cls", "mean"] = "cls",
        trust_remote_code: bool = False,
    ):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' (the first token's state) or 'mean' (the mean over the attention "
                             f"mask), got {pooling!r}")
        self.pooling = pooling
        from transformers import AutoConfig, AutoModel

        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (1 = regression), got {num_classes}")
        self.num_classes = num_classes
        self.encoder_name = encoder  # the tokenizer comes from here too (one place)
        self.trust_remote_code = trust_remote_code
        path = resolve_pretrained(encoder)
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        for key, value in (config_overrides or {}).items():
            if not hasattr(config, key):
                raise ValueError(f"config_overrides: {type(config).__name__} has no field {key!r}")
            setattr(config, key, value)
        num_layers = config.num_hidden_layers
        if keep_layers is not None:
            bad = [i for i in keep_layers if not 0 <= i < num_layers]
            if not keep_layers or bad:
                raise ValueError(f"keep_layers {keep_layers} must be a non-empty list of layers 0..{num_layers - 1}")
        if pretrained:
            pooler = {"add_pooling_layer": False} if _is_bert_like(config) else {}  # lkd's own head replaces it
            full = AutoModel.from_pretrained(path, config=config, trust_remote_code=trust_remote_code, **pooler)
            if keep_layers is None:
                self.encoder = full
            else:
                small_config = config.__class__.from_dict({**config.to_dict(), "num_hidden_layers": len(keep_layers)})
                self.encoder = _build(small_config, trust_remote_code)
                copy_transformer_weights(full, self.encoder, keep_layers)
        else:
            if keep_layers is not None:
                config.num_hidden_layers = len(keep_layers)
            self.encoder = _build(config, trust_remote_code)
        self.encoder.train()  # from_pretrained returns eval mode: dropout would stay off while fine-tuning
        self.freeze_embeddings = freeze_embeddings
        if freeze_embeddings:
            self.encoder.get_input_embeddings().weight.requires_grad_(False)
        self.config = self.encoder.config
        hidden = self.config.hidden_size
        self._takes_token_types = "token_type_ids" in inspect.signature(self.encoder.forward).parameters

        p = dropout if dropout is not None else getattr(self.config, "hidden_dropout_prob", 0.1)
        self.pre_classifier = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(hidden, num_classes)

        self.dkvb_settings = dkvb
        self.dkvb_in: nn.Module = nn.Identity()
        self.dkvb: DiscreteKeyValueBottleneck | None = None
        if dkvb is not None:
            in_dim = dkvb.input_dim or hidden
            if dkvb.input_dim is not None:
                self.dkvb_in = nn.Linear(hidden, in_dim)
            self.dkvb = DiscreteKeyValueBottleneck(
                num_classes, in_dim, num_codebooks=dkvb.num_codebooks, num_keys=dkvb.num_keys, key_dim=dkvb.key_dim,
                decoder=dkvb.decoder, ema_decay=dkvb.ema_decay, threshold_ema_dead_code=dkvb.threshold_ema_dead_code,
                projection_seed=dkvb.projection_seed,
            )
            if dkvb.combine not in ("sum", "only") or dkvb.on not in ("cls", "tokens"):
                raise ValueError(f"DKVBSettings: combine must be 'sum'|'only' and on 'cls'|'tokens', got {dkvb.combine!r}, {dkvb.on!r}")

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def max_length(self) -> int:
        """Longest input the position embeddings allow."""
        return int(getattr(self.config, "max_position_embeddings", 512))

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        *,
        output_hidden_states: bool = False,
    ) -> TextClassifierOutput:
        """input_ids, attention_mask, token_type_ids: (B, T) → :class:`TextClassifierOutput`."""
        kwargs = {"token_type_ids": token_type_ids} if self._takes_token_types and token_type_ids is not None else {}
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states, **kwargs)
        states = out.last_hidden_state  # (B, T, H)
        pooled = self.pool(states, attention_mask)  # (B, H)
        logits = self.classifier(self.dropout(torch.tanh(self.pre_classifier(pooled))))
        dkvb_input = None
        if self.dkvb is not None:
            dkvb_logits, dkvb_input = self._dkvb_logits(states, attention_mask)
            logits = dkvb_logits if self.dkvb_settings.combine == "only" else logits + dkvb_logits
        return TextClassifierOutput(logits=logits, hidden_states=out.hidden_states if output_hidden_states else None,
                                    dkvb_input=dkvb_input)

    def pool(self, states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """states: (B, T, H), attention_mask: (B, T) or None (every token) → the sequence vector (B, H) the head
        reads (``pooling``)."""
        if self.pooling == "cls":
            return states[:, 0]
        mask = torch.ones(states.shape[:2], device=states.device) if attention_mask is None else attention_mask
        weights = rearrange(mask.to(states.dtype), "b t -> b t 1")
        return (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def _dkvb_logits(self, states: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.dkvb_settings.on == "cls":
            queries = self.dkvb_in(self.pool(states, attention_mask))  # (B, D)
            return self.dkvb(queries), queries
        B = states.shape[0]
        queries = self.dkvb_in(rearrange(states, "b t h -> (b t) h"))  # (B·T, D)
        mask = torch.ones(states.shape[:2], device=states.device) if attention_mask is None else attention_mask
        per_token = rearrange(self.dkvb(queries), "(b t) c -> b t c", b=B)  # (B, T, classes)
        weights = rearrange(mask.to(per_token.dtype), "b t -> b t 1")
        return (per_token * weights).sum(1) / weights.sum(1).clamp_min(1.0), queries

    @torch.no_grad()
    def dkvb_queries(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None) -> Tensor:
        """What the DKVB looks keys up with, in its key space: (N, num_codebooks, key_dim) (N = B, or the
        B·T unmasked tokens with ``on="tokens"``). For key initialisation and key carrying."""
        if self.dkvb is None:
            raise ValueError("this TransformerClassifier has no DKVB (dkvb: null)")
        out = self.forward(input_ids, attention_mask, token_type_ids)
        queries = out.dkvb_input
        if self.dkvb_settings.on == "tokens" and attention_mask is not None:
            queries = queries[rearrange(attention_mask, "b t -> (b t)").bool()]
        return self.dkvb.project(queries)


def _is_bert_like(config) -> bool:
    return "add_pooling_layer" in inspect.signature(_model_class(config).__init__).parameters


def _model_class(config):
    from transformers import AutoModel

    return AutoModel._model_mapping[type(config)]


def _build(config, trust_remote_code: bool) -> nn.Module:
    from transformers import AutoModel

    kwargs = {"add_pooling_layer": False} if _is_bert_like(config) else {}
    return AutoModel.from_config(config, trust_remote_code=trust_remote_code, **kwargs)
