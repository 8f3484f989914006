"""Supervised fine-tuning on prompt data: a causal LM trained on the reference completions of its prompts, the loss on the
completion tokens only (the prompt is context, never a target). Trains the teacher of an on-policy run, and is the
"student trained on the references alone" baseline beside it.

    L = − mean_{n in completion} log p(y_n | x, y_<n)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import nn
from typing_extensions import override

from lkd.data.prompts import join_prompt_completion
from lkd.models.sampling import Completions, sample_completions
from lkd.modules.base import StepOutput
from lkd.modules.lm import PromptLMModule
from lkd.schedules import ScheduleName


class CompletionSFTModule(PromptLMModule):
    """A causal LM trained on reference completions (completion-only cross-entropy), from :class:`lkd.data.PromptDataModule`.

    Args:
        model: the causal LM (YAML ``class_path``).
        tokenizer, optimizer, warmup_steps, min_lr_ratio, lr_schedule: see :class:`lkd.modules.LMModule`.
        max_new_tokens: the most tokens :meth:`sample` writes (evaluation by :class:`lkd.callbacks.CompletionEvaluation`).
    """

    def __init__(self, model: nn.Module, tokenizer: str = "smollm2", optimizer: OptimizerCallable = torch.optim.AdamW,
                 warmup_steps: float = 0.05, min_lr_ratio: float = 0.1, lr_schedule: ScheduleName = "cosine", max_new_tokens: int = 32):
        super().__init__(tokenizer, optimizer, warmup_steps, min_lr_ratio, lr_schedule)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.model, self.max_new_tokens = model, max_new_tokens
        self.save_hyperparameters(ignore=["model", "optimizer"])

    @property
    @override
    def trained_model(self) -> nn.Module:
        return self.model

    def sample(self, model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, temperature: float) -> Completions:
        """Completions of ``model`` for left-padded prompts (greedy at ``temperature`` 0)."""
        return sample_completions(model, prompt_ids, prompt_mask, max_new_tokens=self.max_new_tokens, eos_token_id=self.eos_token_id,
                                  pad_token_id=self.pad_token_id, temperature=temperature)

    @override
    def step(self, batch, stage: str) -> StepOutput:
        input_ids, attention_mask, loss_mask = join_prompt_completion(batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
                                                                      batch["completion_mask"])  # (B, P + C) each
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits[:, :-1]
        mask = loss_mask[:, 1:].float()  # (B, T-1): position n predicts token n + 1
        token_lp = F.log_softmax(logits.float(), dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        tokens = int(mask.sum())
        nll = -(token_lp * mask).sum() / max(tokens, 1)
        return StepOutput(nll, len(input_ids), {"nll": nll.detach()},
                          metric_args=(nll.detach(), tokens, self.predicted_bytes(input_ids, loss_mask)))
