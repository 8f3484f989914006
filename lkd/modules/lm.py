"""Training any transformers causal LM (dense or MoE): loss and perplexity per stage."""

from __future__ import annotations

import math

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric
from typing_extensions import override

from lkd.distributed import SyncedLogging
from lkd.losses.lm import lm_cross_entropy
from lkd.models import causal_lm
from lkd.modules.base import check_finite_loss


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Learning-rate factor: linear warm-up from 0 over ``warmup_steps``, then cosine down to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class LMModuleBase(SyncedLogging):
    """Shared by the LM modules: per-stage mean token loss → perplexity, warm-up + cosine schedule.

    Args:
        tokenizer: tokenizer name (:func:`lkd.models.causal_lm.load_tokenizer`); the data module uses it.
        optimizer: optimiser factory given parameter groups (each group may carry its own ``lr``).
        warmup_steps: optimizer steps of linear warm-up (an int), or a fraction of all steps if < 1.
        min_lr_ratio: the cosine ends at this fraction of each group's learning rate.
    """

    def __init__(self, tokenizer: str = "smollm2", optimizer: OptimizerCallable = torch.optim.AdamW,
                 warmup_steps: float = 0.05, min_lr_ratio: float = 0.1):
        super().__init__()
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if not 0 <= min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.tokenizer = tokenizer
        self.optimizer_factory = optimizer
        self.warmup_steps, self.min_lr_ratio = warmup_steps, min_lr_ratio
        self.train_nll, self.val_nll, self.test_nll = MeanMetric(), MeanMetric(), MeanMetric()

    # models the data module asks about
    @property
    def trained_model(self) -> nn.Module:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        return causal_lm.vocab_size(self.trained_model)

    @property
    def context_length(self) -> int:
        return causal_lm.context_length(self.trained_model)

    def parameter_groups(self) -> list[dict]:
        raise NotImplementedError

    def _log_nll(self, stage: str, nll: torch.Tensor, tokens: int) -> None:
        metric = getattr(self, f"{stage}_nll")
        metric.update(nll.detach().float(), tokens)
        self.log(f"{stage}/nll", nll.detach(), on_step=stage == "train", on_epoch=True, batch_size=tokens)

    def _log_ppl(self, stage: str) -> None:
        metric = getattr(self, f"{stage}_nll")
        if metric.update_called:
            self.log(f"{stage}/ppl", torch.exp(metric.compute()), prog_bar=stage != "train")
        metric.reset()

    @override
    def on_train_epoch_end(self) -> None:
        self._log_ppl("train")

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_ppl("val")

    @override
    def on_test_epoch_end(self) -> None:
        self._log_ppl("test")

    @override
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameter_groups())
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self.warmup_steps * total) if self.warmup_steps < 1 else int(self.warmup_steps)
        warmup = min(warmup, total)

        def factor(step: int) -> float:
            return warmup_cosine(step, warmup_steps=warmup, total_steps=total, min_ratio=self.min_lr_ratio)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class CausalLMModule(LMModuleBase):
    """Trains one causal LM on next-token prediction (``lkd fit -c configs/lm/teacher_moe_tiny.yaml``).

    Logs ``{stage}/loss`` (cross-entropy, plus the MoE load-balancing loss in training), ``{stage}/nll``
    and ``{stage}/ppl`` = exp(mean token NLL over the epoch). An MoE model (``output_router_logits``)
    adds ``train/aux_loss`` weighted by its config's ``router_aux_loss_coef``.

    Args:
        model: a transformers causal LM (YAML ``class_path``, e.g. :func:`lkd.models.causal_lm.tiny_moe_lm`).
        tokenizer, optimizer, warmup_steps, min_lr_ratio: see :class:`LMModuleBase`.
    """

    def __init__(self, model: nn.Module, tokenizer: str = "smollm2", optimizer: OptimizerCallable = torch.optim.AdamW,
                 warmup_steps: float = 0.05, min_lr_ratio: float = 0.1):
        super().__init__(tokenizer, optimizer, warmup_steps, min_lr_ratio)
        self.model = model
        self.is_moe = hasattr(causal_lm.lm_config(model), "router_aux_loss_coef")
        self.save_hyperparameters(ignore=["model", "optimizer"])

    @property
    def trained_model(self) -> nn.Module:
        return self.model

    def parameter_groups(self) -> list[dict]:
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "name": "model"}]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V)."""
        return self.model(input_ids=input_ids).logits

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        input_ids = batch["input_ids"]  # (B, T)
        want_aux = self.is_moe and stage == "train"
        out = self.model(input_ids=input_ids, output_router_logits=True) if want_aux else self.model(input_ids=input_ids)
        nll = lm_cross_entropy(out.logits, input_ids)
        loss, terms = nll, {}
        if want_aux and getattr(out, "aux_loss", None) is not None:
            coef = float(causal_lm.lm_config(self.model).router_aux_loss_coef)
            terms["aux_loss"] = out.aux_loss
            loss = nll + coef * out.aux_loss
        tokens = input_ids[:, 1:].numel()
        if stage == "train":
            check_finite_loss(self, loss, {"nll": nll, **terms})
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=stage == "train", on_epoch=True, batch_size=tokens)
        for name, value in terms.items():
            self.log(f"{stage}/{name}", value, on_step=True, on_epoch=True, batch_size=tokens)
        self._log_nll(stage, nll, tokens)
        return loss

    @override
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    @override
    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val")

    @override
    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "test")
