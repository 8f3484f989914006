"""A callback for multi-process tests: every rank saves its DKVB keys and values at the end of fit."""

from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from lkd.models import DiscreteKeyValueBottleneck


class SaveDKVBPerRank(Callback):
    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_fit_end(self, trainer, pl_module):
        dkvb = next(m for m in pl_module.modules() if isinstance(m, DiscreteKeyValueBottleneck))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"keys": dkvb.keys.detach().cpu(), "values": dkvb.values.detach().cpu(), "world_size": trainer.world_size},
            self.out_dir / f"rank{trainer.global_rank}.pt",
        )


class SaveRankState(Callback):
    """Every rank writes what a multi-process test compares: the module's final state, the callbacks' states,
    the logged metrics, its own validation loss sum (to check the logged value is the global one), how many
    checkpoints it saved, its share of the training batches, the training rows it drew in each epoch, a
    fingerprint of its first training batch, the DKVB codebook buffers (``..._codebook.*``) as they were
    when training started (to check that the EMA moved them) and the optimizer steps after which it validated."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def setup(self, trainer, pl_module, stage):
        self.saves, self.val_sum, self.val_rows, self.first_batch = 0, 0.0, 0, None
        self.epoch_rows: dict[int, list[int]] = {}
        io = trainer.strategy.checkpoint_io
        save = io.save_checkpoint

        def counting_save(*args, **kwargs):
            self.saves += 1
            return save(*args, **kwargs)

        io.save_checkpoint = counting_save
        self.codebooks_at_start: dict[str, torch.Tensor] = {}
        self.val_at_steps: list[int] = []

    def on_train_start(self, trainer, pl_module):
        self.codebooks_at_start = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()
                                   if "._codebook." in k}

    def on_train_epoch_start(self, trainer, pl_module):
        # the rows this rank draws this epoch: indices into the training set, from the loader's sampler (under
        # DDP, Lightning's DistributedSamplerWrapper around lkd's seeded sampler)
        self.epoch_rows[trainer.current_epoch] = [int(i) for i in trainer.train_dataloader.sampler]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first_batch is None:
            tensor = batch[0] if isinstance(batch, (tuple, list)) else batch.get("input_ids", batch.get("prompt_ids"))
            self.first_batch = float(tensor.float().sum())

    def on_validation_epoch_start(self, trainer, pl_module):
        self.val_sum, self.val_rows = 0.0, 0
        if not trainer.sanity_checking:
            self.val_at_steps.append(trainer.global_step)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.sanity_checking or not isinstance(outputs, dict) or "labels" not in outputs:
            return
        rows = len(outputs["labels"])
        self.val_sum += float(outputs["loss"]) * rows
        self.val_rows += rows

    def on_fit_end(self, trainer, pl_module):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "world_size": trainer.world_size,
                "state": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
                "callbacks": {type(cb).__name__: cb.state_dict() for cb in trainer.callbacks if cb.state_dict()},
                "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
                "val_sum": self.val_sum, "val_rows": self.val_rows, "saves": self.saves,
                "train_batches": trainer.num_training_batches, "first_batch": self.first_batch,
                "epoch_rows": self.epoch_rows, "codebooks_at_start": self.codebooks_at_start,
                "val_at_steps": self.val_at_steps, "global_step": trainer.global_step,
            },
            self.out_dir / f"rank{trainer.global_rank}.pt",
        )
