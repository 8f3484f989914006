"""What the LM distillation losses compare, and the student → teacher projections they need (a plain nn.Module).

The losses (:mod:`lkd.losses.lm`, :mod:`lkd.losses.cross_tokenizer`) read features by name from both models'
transformers outputs; :class:`FeatureProjections` selects them, with the student's hidden states projected to the
teacher's width by a trainable linear map each:

| name        | student                                   | teacher                           | loss                   |
|-------------|-------------------------------------------|-----------------------------------|------------------------|
| ``logits``  | (B, T, V)                                 | (B, T, V)                         | kl, ce, alm, uld, ...  |
| ``feature`` | ``W_f h_s^{(L)}`` (B, T, D_t)              | ``h_t^{(L)}``                      | feature, contrastive   |
| ``layer``   | ``W_j h_s^{(j+1)}`` per student layer j    | ``h_t^{(m(j)+1)}``, m = layer map  | layer                  |
| ``attention`` | ``A_s^{(j)}`` (B, H_s, T, T)             | ``A_t^{(m(j))}`` (B, H_t, T, T)    | attention              |

(``hidden_states[0]`` is the embeddings: layer j's output is ``hidden_states[j + 1]``.) Across two tokenizers the
losses also read token-level targets: ``token_logprobs`` (B, L) of both models' own tokens and the teacher's ``topk``
(log-probabilities and ids (B, T, k) at the distillation temperature), as a teacher cache stores them.
"""

from __future__ import annotations

import torch
from torch import nn

from lkd.losses.kd import teacher_topk
from lkd.losses.lm import token_logprobs
from lkd.models.causal_lm import hidden_size, lm_config, num_layers
from lkd.models.transfer import check_layer_map, default_layer_map


class FeatureProjections(nn.Module):
    """The features the active LM losses compare (table in the module docstring) and the projections ``feature``
    (W_f) and ``layer`` (one W_j per student layer), created only for the losses that need them.

    Args:
        student, teacher: the two causal LMs (widths, layer counts, attention implementation).
        layer_map: teacher layer (0-based) for each student layer (:func:`lkd.models.transfer.check_layer_map`); None:
            :func:`lkd.models.transfer.default_layer_map`.
        feature: the final hidden states are compared (``feature`` or ``contrastive``).
        layer: the mapped layers' hidden states are compared (``layer``).
        attention: the mapped layers' attention maps are compared (``attention``; both models need eager attention).
        token_level: two tokenizers: the token-level targets are selected too, the teacher's top-``top_k`` at
            ``temperature``.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, layer_map: list[int] | None = None, *, feature: bool = False,
                 layer: bool = False, attention: bool = False, token_level: bool = False, top_k: int = 1, temperature: float = 1.0):
        super().__init__()
        self.token_level, self.top_k, self.temperature = token_level, top_k, temperature
        ls, lt = num_layers(student), num_layers(teacher)
        self.layer_map = check_layer_map(default_layer_map(lt, ls) if layer_map is None else layer_map, ls, lt)
        if attention:
            for name, model in (("student", student), ("teacher", teacher)):
                impl = getattr(lm_config(model), "_attn_implementation", None)
                if impl not in ("eager", None):
                    raise ValueError(
                        f"the attention loss needs attention maps, but the {name} uses attn_implementation={impl!r} "
                        "(returns none). HINT: build it with attn_implementation='eager' or set loss_weights.attention: 0"
                    )
        self.attention = attention
        ds, dt = hidden_size(student), hidden_size(teacher)
        # registered (or None) under these names: checkpoint keys projections.feature.weight, projections.layer.{j}.weight
        self.register_module("feature", nn.Linear(ds, dt, bias=False) if feature else None)
        self.register_module("layer", nn.ModuleList(nn.Linear(ds, dt, bias=False) for _ in self.layer_map) if layer else None)

    @property
    def needs_hidden(self) -> bool:
        """The models must return their hidden states (``output_hidden_states``)."""
        return self.feature is not None or self.layer is not None

    def student_features(self, out, ids: torch.Tensor | None = None) -> dict[str, object]:
        """The student's outputs (for its tokens ``ids`` (B, S)) as the losses take them, projected to the teacher's width."""
        feats = {"logits": out.logits}
        if self.token_level:
            feats["token_logprobs"] = token_logprobs(out.logits, ids)  # (B, S)
        if self.feature is not None:
            feats["feature"] = self.feature(out.hidden_states[-1])  # (B, T, D_t)
        if self.layer is not None:
            feats["layer"] = [proj(out.hidden_states[j + 1]) for j, proj in enumerate(self.layer)]
        if self.attention:
            feats["attention"] = list(out.attentions)  # (B, H_s, T, T) per student layer
        return feats

    def teacher_features(self, out, ids: torch.Tensor | None = None) -> dict[str, object]:
        """The teacher's outputs (for its tokens ``ids`` (B, T)) the losses compare with, at the mapped layers."""
        feats = {"logits": out.logits}
        if self.token_level:
            feats |= self.token_targets(out.logits, ids)
        if self.feature is not None:
            feats["feature"] = out.hidden_states[-1]
        if self.layer is not None:
            feats["layer"] = [out.hidden_states[t + 1] for t in self.layer_map]
        if self.attention:
            feats["attention"] = [out.attentions[t] for t in self.layer_map]
        return feats

    def token_targets(self, logits: torch.Tensor, ids: torch.Tensor) -> dict[str, object]:
        """The teacher's token-level targets across two tokenizers: ``token_logprobs`` (B, T) at T = 1 and ``topk``
        ((B, T, k) log-probabilities at the distillation temperature, (B, T, k) token ids)."""
        return {"token_logprobs": token_logprobs(logits, ids), "topk": teacher_topk(logits, self.top_k, self.temperature)}

    def own_targets(self, logits: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the test report and the drift of a routing read from the teacher's own (unrouted) forward: its
        ``logits`` (one tokenizer) or its ``token_logprobs`` (two)."""
        return {"token_logprobs": token_logprobs(logits, ids)} if self.token_level else {"logits": logits}
