"""The one LightningModule base of every track: the shared step, logging, checks, metrics, optimisation and
the teacher's life cycle.

A track module (``lkd.modules.mnist``, ``lkd.modules.glue``, ``lkd.modules.lm``) holds only its networks and
its losses: it implements :meth:`LKDModule.step` (one batch → :class:`StepOutput`), :attr:`LKDModule.trained_model`
(the network it trains: ``model``, or a distillation module's ``student``) and, for its metrics,
:meth:`LKDModule.make_metrics`; a distillation module also :meth:`LKDModule.cache_targets` (its teacher's targets for
a batch). :class:`LKDModule` then

* runs ``training_step`` / ``validation_step`` / ``test_step`` through one ``_shared_step``: logs
  ``{stage}/loss`` and every loss term as ``{stage}/{term}``, stops on a non-finite training loss
  (:class:`NonFiniteLossError`, naming the newest checkpoint), updates the stage's metric collection and
  logs it at the end of each epoch (``{stage}/acc``, ``{stage}/ppl``, ..., plus what :meth:`epoch_metrics`
  derives, such as GLUE's ``{stage}/score``);
* averages every ``self.log`` value over processes when there are several (``sync_dist``);
* rebuilds every :class:`lkd.models.DiscreteKeyValueBottleneck` it holds with a synced codebook EMA when
  the trainer runs several processes (any track: MNIST, GLUE, ...);
* checks a classifier's labels (:meth:`check_labels`) and reads every track's sample ids (:meth:`sample_ids`);
* for a distillation module (one with a :class:`lkd.teacher.Teacher` as ``self.teacher``): hands the data
  module what it needs from the model (:meth:`connect_data`), loads, freezes and casts the teacher, checks
  it fits on the device, writes its cache when missing and attaches it (``setup``), serves each step the teacher's
  targets from the cache or a live forward (:meth:`teacher_targets`), and parks it at the start of every stage
  (the teacher side is :class:`lkd.modules.teaching.TeacherLifeCycle`, mixed in);
* builds the optimiser from the parameter groups (default: :attr:`trained_model`'s trainable parameters) and the
  learning-rate schedule (:mod:`lkd.schedules`).
"""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.strategies import ParallelStrategy
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import Metric, MetricCollection
from typing_extensions import override

from lkd.losses import UNLABELLED
from lkd.models.dkvb import DiscreteKeyValueBottleneck
from lkd.modules.optimizer_checks import optimizer_problems
from lkd.modules.step import NonFiniteLossError, StepOutput, check_finite_loss  # noqa: F401 - NonFiniteLossError: lkd.modules.base's too
from lkd.modules.teaching import TeacherLifeCycle
from lkd.schedules import ScheduleName, build_scheduler, schedule_problems

STAGES = ("train", "val", "test")


class ScheduleLengthError(ValueError):
    """A resumed run is longer than the learning-rate schedule it restored."""


class LKDModule(TeacherLifeCycle, pl.LightningModule):
    """Base of every lkd LightningModule (see the module docstring for what it does).

    Args:
        optimizer: optimiser factory (YAML ``class_path``), given :meth:`parameter_groups` (each group may
            carry its own ``lr``).
        lr_schedule: ``linear``, ``cosine``, ``onecycle`` or ``constant`` (:mod:`lkd.schedules`), stepped every
            optimizer step.
        warmup: warm-up of ``linear`` / ``cosine``: a fraction of all optimizer steps if < 1, else a step count.
        min_lr_ratio: ``linear`` / ``cosine`` end at this fraction of each group's learning rate.
    """

    num_classes: int | None = None
    """Classes of a classification track (its module sets it, linked from the data; 1: regression); None: not a
    classifier."""
    accepts_unlabelled = False
    """Whether training rows may be :data:`lkd.losses.UNLABELLED` (a transfer set: only a module with a teacher can
    label them)."""
    transfer_set_option, unlabelled_hint = "", "distil from a teacher"
    """Where a track's data makes a transfer set, and what to do instead, for :meth:`check_labels`'s message."""

    def __init__(self, optimizer: OptimizerCallable = torch.optim.AdamW, lr_schedule: ScheduleName = "cosine",
                 warmup: float = 0.0, min_lr_ratio: float = 0.0):
        super().__init__()
        if problems := schedule_problems(lr_schedule, warmup, min_lr_ratio) + optimizer_problems(optimizer):
            raise ValueError(f"{type(self).__name__}: " + "; ".join(problems))
        self.optimizer_factory, self.lr_schedule = optimizer, lr_schedule
        self.warmup, self.min_lr_ratio = warmup, min_lr_ratio
        metrics = self.make_metrics()
        # one metric collection per stage (attribute names: `train` would clash with nn.Module.train)
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self._train_sums: dict[str, tuple[torch.Tensor, int]] = {}  # this epoch's training values: name -> (sum * batch, rows)

    # ---- what a track implements ------------------------------------------------------------------------
    def make_metrics(self) -> MetricCollection:
        """The metrics of one stage (cloned per stage with a ``{stage}/`` prefix); updated with
        :attr:`StepOutput.metric_args`, logged at each epoch's end. Called at the start of ``__init__``."""
        return MetricCollection({})

    def step(self, batch, stage: str) -> StepOutput:
        """Loss, terms and metric inputs of one batch."""
        raise NotImplementedError

    @property
    def trained_model(self) -> nn.Module:
        """The network this module trains, evaluates and exports: a distillation module's ``student``, else its
        ``model`` (the attribute names stay: they are the checkpoint keys' prefixes)."""
        raise NotImplementedError(f"{type(self).__name__} does not say which network it trains (trained_model)")

    def parameter_groups(self) -> list[dict]:
        """The optimiser's parameter groups (``{"params": [...], "name": ..., ["lr": ...]}``); default one, ``model``:
        :attr:`trained_model`'s trainable parameters."""
        return [{"params": [p for p in self.trained_model.parameters() if p.requires_grad], "name": "model"}]

    def epoch_metrics(self, stage: str, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Metrics derived from the epoch's computed ones (e.g. GLUE's score); default: none added."""
        return values

    def connect_data(self, datamodule: pl.LightningDataModule) -> None:
        """Hand the data module what it needs from the model (tokenizer, length limits): the one direction
        model → data. Called in ``setup`` (and by ``lkd cache-teacher``); default: nothing to hand."""

    # ---- what every track's batches and labels share ---------------------------------------------------
    def sample_ids(self, batch) -> torch.Tensor | None:
        """The batch's sample ids (B,), the key of a teacher cache: a dict batch's ``sample_id`` (GLUE / text
        classification: the same tensor as its ``idx``; language models: the block's id), an ``(x, y, sample_id)``
        tuple's third item (MNIST); None when the batch has none."""
        if isinstance(batch, dict):
            return batch.get("sample_id")
        return batch[2] if isinstance(batch, (tuple, list)) and len(batch) > 2 else None

    def check_labels(self, labels: torch.Tensor, stage: str) -> None:
        """Refuse a classifier's labels (B,) outside ``0..num_classes-1`` (validation and test rows must all carry one)
        and, unless :attr:`accepts_unlabelled`, training rows without a label (:data:`lkd.losses.UNLABELLED`, NaN for a
        regression target). Nothing to check for a module that is not a classifier."""
        n = self.num_classes
        if n is None or not labels.numel():
            return
        if stage == "train":
            unlabelled = ~labels.isfinite() if labels.is_floating_point() else labels == UNLABELLED
            if unlabelled.any() and not self.accepts_unlabelled:
                raise ValueError(
                    f"{type(self).__name__} got {int(unlabelled.sum())} training rows without labels (a transfer set: "
                    f"{self.transfer_set_option}; label {UNLABELLED}), which only a teacher can label; training alone would "
                    f"have nothing to learn from them. HINT: {self.unlabelled_hint}"
                )
            labels = labels[~unlabelled]
        if n < 2 or labels.is_floating_point() or not labels.numel():  # regression targets: any value
            return
        if labels.min() < 0 or labels.max() >= n:
            bad = labels[(labels < 0) | (labels >= n)].unique().tolist()
            hint = ("-1 marks a row without a label (GLUE's hidden test labels): score a labelled split ('validation') "
                    "instead" if bad == [UNLABELLED] else "the data module's classes and the model's num_classes must agree")
            raise ValueError(f"{stage} labels {bad[:10]} are out of range for num_classes={n} (expected 0..{n - 1}). HINT: {hint}")

    # ---- logging --------------------------------------------------------------------------------------
    @override
    def log(self, name: str, value, *args, sync_dist: bool | None = None, **kwargs) -> None:
        """``LightningModule.log`` with ``sync_dist`` on by default when several processes train
        (torchmetrics objects synchronise themselves and are left alone)."""
        if sync_dist is None:
            trainer = self._trainer
            sync_dist = (trainer is not None and isinstance(trainer.strategy, ParallelStrategy) and trainer.world_size > 1
                         and not isinstance(value, Metric))
        super().log(name, value, *args, sync_dist=sync_dist, **kwargs)

    # ---- steps ----------------------------------------------------------------------------------------
    def _shared_step(self, batch, stage: str) -> StepOutput:
        out = self.step(batch, stage)
        shown = out.loss if out.logged_loss is None else out.logged_loss
        values = {"loss": shown.detach(), **{name: value.detach() for name, value in out.terms.items()}}
        if stage == "train":
            check_finite_loss(self, out.loss, out.terms)
            self._log_train_step(values, out.batch_size)
        else:
            for name, value in values.items():
                self.log(f"{stage}/{name}", value, prog_bar=name == "loss", on_step=False, on_epoch=True, batch_size=out.batch_size)
        if out.metric_args and all(not isinstance(a, torch.Tensor) or a.numel() for a in out.metric_args):  # a batch of
            getattr(self, f"{stage}_metrics").update(*out.metric_args)  # transfer-set rows only has no label to score
        return out

    # Training values the lean way: a `self.log` call costs about a millisecond of Python, so every step only adds
    # each value into a running sum (a tensor op, no device sync); `self.log` runs on the steps the logger
    # writes (`trainer.log_every_n_steps`), an epoch's last batch, the run's last step and the epoch's end. What
    # reaches TensorBoard is what `self.log(on_step=True, on_epoch=True)` gave: `train/{name}_step` every n steps,
    # `train/{name}_epoch` (the batch-size-weighted mean) at each epoch's end; callback_metrics holds those and
    # `train/{name}`, the newest of the two (step values as of the last logged step).
    def _log_train_step(self, values: dict[str, torch.Tensor], batch_size: int) -> None:
        sums = self._train_sums
        for name, value in values.items():
            total, count = sums.get(name, (0.0, 0))
            sums[name] = (value.float() * batch_size + total, count + batch_size)
        if self._step_is_logged():
            for name, value in values.items():
                self.log(f"train/{name}_step", value, prog_bar=name == "loss", on_step=True, on_epoch=False, batch_size=batch_size)
                self.log(f"train/{name}", value, logger=False, on_step=True, on_epoch=False, batch_size=batch_size)

    def _step_is_logged(self) -> bool:
        """Whether this training step's values are logged: the steps the logger writes, an epoch's last batch and
        the run's last step (so a short run ends with its step values in callback_metrics)."""
        trainer = self._trainer
        if trainer is None:
            return True
        last_step = 0 < trainer.max_steps <= trainer.global_step + 1
        return trainer._logger_connector.should_update_logs or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch or last_step

    def _log_train_epoch_values(self) -> None:
        for name, (total, count) in self._train_sums.items():
            mean = total / count
            self.log(f"train/{name}_epoch", mean, prog_bar=name == "loss", on_step=False, on_epoch=True)
            self.log(f"train/{name}", mean, logger=False, on_step=False, on_epoch=True)
        self._train_sums.clear()

    @override
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # a mid-epoch checkpoint (val_check_interval < 1) resumes the epoch's means where they were
        checkpoint["lkd_train_sums"] = {k: (torch.as_tensor(t).detach().cpu(), n) for k, (t, n) in self._train_sums.items()}

    @override
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._train_sums.clear()
        self._train_sums.update({k: (t.to(self.device), n) for k, (t, n) in checkpoint.get("lkd_train_sums", {}).items()})

    @override
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train").loss

    @override
    def validation_step(self, batch, batch_idx: int):
        out = self._shared_step(batch, "val")
        return {"loss": out.loss, **out.outputs}

    @override
    def test_step(self, batch, batch_idx: int):
        out = self._shared_step(batch, "test")
        return {"loss": out.loss, **out.outputs}

    def _log_epoch_metrics(self, stage: str) -> None:
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        if not any(m.update_called for m in metrics.values()):
            return
        values = {k: v.float() for k, v in metrics.compute().items()}
        metrics.reset()
        self.log_dict(self.epoch_metrics(stage, values), prog_bar=stage == "val")

    @override
    def on_train_epoch_end(self) -> None:
        self._log_train_epoch_values()
        self._log_epoch_metrics("train")

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    @override
    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    # ---- set-up: DKVB sync, data, teacher -------------------------------------------------------------
    @override
    def setup(self, stage: str) -> None:
        if stage == "fit":
            self._train_sums.clear()  # a checkpoint being resumed puts its epoch's sums back afterwards (on_load_checkpoint)
        self._sync_dkvb_codebooks()
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if datamodule is not None:
            self.connect_data(datamodule)
            if hasattr(datamodule, "prepare_stage"):  # tokenise now: problems surface before training, and no data
                datamodule.prepare_stage(stage)     # progress bar runs under a live (Rich) training bar
        if self.frozen_teacher is not None:
            self.prepare_teacher(stage)
            if stage == "fit" and self._trainer is not None:
                self.teacher.check_fits(self.trained_model, self.trainer)
                self._attach_teacher_cache(datamodule)

    def _sync_dkvb_codebooks(self) -> None:
        """Every DKVB this module holds gets a codebook EMA synced across processes (multi-process runs).

        LightningCLI builds the model before the processes start, when ``VectorQuantize`` cannot see them, so
        its EMA would drift apart per rank; this rebuilds it once the trainer knows the world size.
        """
        if self._trainer is None or self.trainer.world_size <= 1:
            return
        for name, module in self.named_modules():
            if isinstance(module, DiscreteKeyValueBottleneck) and module.sync_codebook_across_processes():
                rank_zero_info(f"{name}: DKVB codebook EMA synced across {self.trainer.world_size} processes")

    @override
    def configure_callbacks(self) -> list:
        """No callbacks of its own. Lightning calls this first in every trainer run, before its loggers write a run
        folder and before the data is read, so a teacher's files are checked here: a checkpoint that is not there, a
        cache path that cannot be written (:meth:`lkd.teacher.Teacher.check_files`)."""
        if self.frozen_teacher is not None and self._trainer is not None:
            self.frozen_teacher.check_files(str(getattr(self.trainer.state.fn, "value", self.trainer.state.fn)))
        return []

    @override
    def on_fit_start(self) -> None:
        self._park_teacher()
        self._explain_frozen_modules()

    def _explain_frozen_modules(self) -> None:
        """Say which modules stay in eval mode on purpose, and why, instead of Lightning's "Found N module(s) in eval
        mode at the start of training" warning: that warning is silenced only when every module in eval mode is frozen
        (the teacher, a DKVB's fixed encoder: no parameter of theirs trains), so one a user left in eval by mistake
        is still reported."""
        in_eval = [(name, module) for name, module in self.named_modules() if not module.training]
        if not in_eval or any(p.requires_grad for _, module in in_eval for p in module.parameters(recurse=False)):
            return
        names = {name for name, _ in in_eval}
        tops = [name for name in sorted(names) if name.rpartition(".")[0] not in names]  # the roots of frozen subtrees
        warnings.filterwarnings("ignore", message=rf"Found {len(in_eval)} module\(s\) in eval mode at the start of training")
        rank_zero_info(f"{', '.join(tops)}: {len(in_eval)} modules stay in eval mode for the whole run (frozen: no dropout, "
                       "fixed batch-norm statistics, no gradients)")

    @override
    def on_train_start(self) -> None:
        """After a resume restored the schedule: refuse a one-cycle schedule shorter than this run before its first
        step (raising max_epochs on a finished one-cycle run would fail there, deep in torch)."""
        total = self.trainer.estimated_stepping_batches
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            planned = getattr(scheduler, "total_steps", None)
            if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR) and planned is not None and planned < total:
                raise ScheduleLengthError(
                    f"the one-cycle learning-rate schedule restored from the checkpoint plans {planned} optimizer steps, "
                    f"but this run takes {int(total)} (max_epochs or max_steps raised after it finished?): it would fail at "
                    f"step {planned + 1}. HINT: to train longer, start a new run from the weights (e.g. as a teacher or an "
                    "initial checkpoint) or use lr_schedule: cosine / linear; to resume as it was, keep max_epochs"
                )

    @override
    def on_validation_start(self) -> None:
        self._park_teacher()

    @override
    def on_test_start(self) -> None:
        self._park_teacher()

    @override
    def on_predict_start(self) -> None:
        self._park_teacher()

    # ---- optimisation ---------------------------------------------------------------------------------
    @override
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameter_groups())
        scheduler = build_scheduler(optimizer, self.lr_schedule, self.trainer.estimated_stepping_batches,
                                    warmup=self.warmup, min_lr_ratio=self.min_lr_ratio)
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}
