"""Key phases of a Discrete Key-Value Bottleneck: initialise the keys by EMA, then freeze them (or keep the EMA)."""

from __future__ import annotations

import math
from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lkd.models.dkvb import DiscreteKeyValueBottleneck, code_counts, usage_from_counts

PHASES = ("init", "after")


class EMAKeyUpdate(Callback):
    """Drives the two training phases of a DKVB (Träuble et al. 2023, Sec. 3): key initialisation, then values.

    **Init phase** (the first ``init_steps`` optimizer steps, or the first ``init_epochs`` epochs): the keys
    are unfrozen and the library moves them by EMA inside every train-mode forward (once per micro-batch);
    this callback writes no EMA of its own. The values (and a concat decoder's head: every parameter of the
    DKVB) must not learn yet. The training step still runs normally, and in ``on_before_optimizer_step``,
    which Lightning calls after the backward pass and before gradient clipping and ``optimizer.step()``,
    their ``.grad`` is set to ``None``. PyTorch optimisers skip parameters without a gradient (no update,
    no momentum, no weight decay), so the values stay bit-for-bit unchanged. Other ways fail: returning -1
    from ``on_train_batch_start`` skips the *rest of the epoch* in Lightning 2.x, not one batch, and
    ``values.requires_grad_(False)`` leaves a mean-decoder DKVB with no parameter that needs a gradient,
    so ``loss.backward()`` fails. The optimizer and LR scheduler still count these steps, so a OneCycle
    warm-up partly happens during the init phase.

    **After the init phase**: ``after_init="freeze"`` stops the EMA (``vq.freeze_codebook = True``) and only
    the values learn; ``"ema"`` keeps the EMA running, optionally with ``decay_after_init``. With
    ``init_steps = init_epochs = 0`` the run starts in this phase (e.g. keys written by
    :func:`lkd.models.discrete_key_init` and then frozen).

    **Encoder**: a DKVB encoder with a ``fit`` method (:class:`lkd.models.PCAEncoder`) that is not fitted yet
    is fitted in ``setup`` (before the sanity check) on ``datamodule.unlabelled_train_images()`` (every train image, no
    labels), before any key moves.

    Clocks are ``trainer.global_step`` (optimizer steps, right under gradient accumulation) and
    ``trainer.current_epoch``. The phase and the number of init steps taken are saved in the checkpoint, and
    the freeze flag and decay are applied again at the start of training, so ``ckpt_path=`` resumes in the
    right phase (the flag is a Python attribute, not in the model's ``state_dict``).

    Logged every ``log_every_n_steps`` optimizer steps to the LightningModule's logger: ``dkvb/perplexity``
    (mean over codebooks) and ``dkvb/dead_keys`` (fraction of keys never selected), over the training
    batches since the last log, and ``dkvb/phase`` (0 = init, 1 = after).

    Args:
        init_steps: optimizer steps of key initialisation.
        init_epochs: epochs of key initialisation (instead of ``init_steps``; set at most one).
        after_init: ``"freeze"`` or ``"ema"``, what the keys do after the init phase.
        decay_after_init: EMA decay in (0, 1) from the end of the init phase on; only with ``"ema"``.
        module_attr: dotted name of the DKVB inside the LightningModule (e.g. ``"model"``, ``"student"``);
            default: the first submodule that is a :class:`DiscreteKeyValueBottleneck`.
        log_every_n_steps: optimizer steps between two code-usage logs.
        figure_every_n_logs: every this many code-usage logs, also a ``dkvb/key_usage`` figure (keys ranked by
            use, per-key histogram) and a ``dkvb/selections_per_key`` TensorBoard histogram (0 = never).
        init_data: which images the keys are initialised on. ``"batches"``: the training batches of the
            init phase (in a non-stationary run: the first stage's classes only). ``"all_train_images"``:
            before the first step, ``init_epochs`` (at least 1) train-mode passes of the DKVB over every
            image of the data module's train split, all digits, labels unused
            (``datamodule.unlabelled_train_images()``); no optimizer step is taken, then the run starts in
            the phase after initialisation. ``init_steps`` must be 0 with this choice.
    """

    def __init__(
        self,
        init_steps: int = 0,
        init_epochs: int = 0,
        after_init: Literal["freeze", "ema"] = "freeze",
        decay_after_init: float | None = None,
        module_attr: str | None = None,
        log_every_n_steps: int = 50,
        init_data: Literal["batches", "all_train_images"] = "batches",
        figure_every_n_logs: int = 10,
    ):
        problems = []
        if init_steps < 0 or init_epochs < 0:
            problems.append(f"init_steps and init_epochs must be >= 0, got {init_steps} and {init_epochs}")
        if init_steps > 0 and init_epochs > 0:
            problems.append(f"set init_steps or init_epochs, not both (got {init_steps} and {init_epochs})")
        if after_init not in ("freeze", "ema"):
            problems.append(f"after_init must be 'freeze' or 'ema', got {after_init!r}")
        if decay_after_init is not None and not 0.0 < decay_after_init < 1.0:
            problems.append(f"decay_after_init must be in (0, 1), got {decay_after_init}")
        if decay_after_init is not None and after_init != "ema":
            problems.append(f"decay_after_init={decay_after_init} needs after_init='ema' (frozen keys have no decay)")
        if init_data not in ("batches", "all_train_images"):
            problems.append(f"init_data must be 'batches' or 'all_train_images', got {init_data!r}")
        if init_data == "all_train_images" and init_steps:
            problems.append(f"init_data='all_train_images' counts passes over the data in init_epochs; got init_steps={init_steps}")
        if log_every_n_steps < 1:
            problems.append(f"log_every_n_steps must be >= 1, got {log_every_n_steps}")
        if problems:
            raise ValueError("EMAKeyUpdate: " + "; ".join(problems))
        self.init_steps, self.init_epochs = init_steps, init_epochs
        self.after_init, self.decay_after_init = after_init, decay_after_init
        self.module_attr, self.log_every_n_steps = module_attr, log_every_n_steps
        self.init_data = init_data
        self.figure_every_n_logs = figure_every_n_logs
        self._logs_done = 0
        self.phase: str = "init" if init_steps or init_epochs or init_data == "all_train_images" else "after"
        self.init_steps_done = 0
        self._dkvb: DiscreteKeyValueBottleneck | None = None
        self._hook = None
        self._counts: torch.Tensor | None = None  # (C, K) key selections since the last log
        self._last_logged = -1

    @property
    def state_key(self) -> str:
        return self._generate_state_key(module_attr=self.module_attr)

    # ---- policy -------------------------------------------------------------------------------------
    def should_init(self, step_idx: int, epoch_idx: int) -> bool:
        """Whether the optimizer step ``step_idx`` of epoch ``epoch_idx`` belongs to the init phase."""
        return step_idx < self.init_steps or epoch_idx < self.init_epochs

    def find_dkvb(self, pl_module: pl.LightningModule) -> DiscreteKeyValueBottleneck:
        found = {name: m for name, m in pl_module.named_modules() if isinstance(m, DiscreteKeyValueBottleneck)}
        if self.module_attr is None and found:
            return next(iter(found.values()))
        if self.module_attr in found:
            return found[self.module_attr]
        where = f"module_attr={self.module_attr!r} is not a" if self.module_attr else "found no"
        raise ValueError(
            f"EMAKeyUpdate {where} DiscreteKeyValueBottleneck in {type(pl_module).__name__}; DKVBs there: "
            f"{sorted(found) or 'none'}; its children: {[n for n, _ in pl_module.named_children()]}. "
            "HINT: build the network with lkd.models.DiscreteKeyValueBottleneck or set module_attr to its name."
        )

    def _apply_phase(self, dkvb: DiscreteKeyValueBottleneck) -> None:
        if self.phase == "init":
            dkvb.freeze_keys(False)
            return
        dkvb.freeze_keys(self.after_init == "freeze")
        if self.decay_after_init is not None:
            dkvb.set_ema_decay(self.decay_after_init)

    # ---- hooks --------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._dkvb = self.find_dkvb(pl_module)
        self.fit_encoder_if_needed(trainer)  # before the sanity check runs the model
        trainable = [n for n, p in self._dkvb.vq.named_parameters() if p.requires_grad]
        if trainable and self._dkvb.vq.ema_update:
            raise ValueError(
                f"the DKVB keys are trainable by gradient ({trainable}) and updated by EMA; use one: keys "
                "move by EMA only in a DiscreteKeyValueBottleneck"
            )
        if trainer.fast_dev_run:
            return
        if trainer.max_steps != -1 and self.init_steps > trainer.max_steps:
            raise ValueError(
                f"init_steps ({self.init_steps}) is longer than the training, trainer.max_steps ({trainer.max_steps})"
            )
        if self.init_data == "batches" and trainer.max_epochs not in (None, -1) and self.init_epochs > trainer.max_epochs:
            raise ValueError(
                f"init_epochs ({self.init_epochs}) is longer than the training, trainer.max_epochs ({trainer.max_epochs})"
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        planned = trainer.estimated_stepping_batches
        if not trainer.fast_dev_run and math.isfinite(planned) and self.init_steps > planned:
            raise ValueError(
                f"init_steps ({self.init_steps}) is longer than the training, {int(planned)} optimizer steps "
                "(trainer.estimated_stepping_batches)"
            )
        if self.init_data == "all_train_images" and self.phase == "init":
            self.init_on_all_train_images(trainer, pl_module)
        self._apply_phase(self._dkvb)  # again after a restore: the freeze flag is not in the checkpoint
        self._hook = self._dkvb.codes.register_forward_hook(self._count_codes)  # both lookups (library EMA, fast)
        self._last_logged = trainer.global_step

    def fit_encoder_if_needed(self, trainer: pl.Trainer) -> None:
        """Fit the DKVB's encoder (e.g. :class:`lkd.models.PCAEncoder`) on unlabelled training images, once."""
        encoder = self._dkvb.encoder
        if encoder is None or not hasattr(encoder, "fit") or bool(getattr(encoder, "fitted", True)):
            return
        images = self._unlabelled_images(trainer)
        encoder.fit(images.to(next(iter(encoder.buffers())).device))
        rank_zero_info(f"DKVB encoder {type(encoder).__name__} fitted on {len(images)} unlabelled training images")

    @staticmethod
    def _unlabelled_images(trainer: pl.Trainer) -> torch.Tensor:
        data = trainer.datamodule
        if not hasattr(data, "unlabelled_train_images"):
            raise TypeError(
                f"fitting DKVB keys or encoder on all training images needs a data module with "
                f"unlabelled_train_images(), got {type(data).__name__}; use init_data='batches' and a fitted encoder"
            )
        return data.unlabelled_train_images()

    @torch.no_grad()
    def init_on_all_train_images(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch_size: int = 256) -> None:
        """EMA passes of the DKVB over every unlabelled training image; values untouched (no backward)."""
        images = self._unlabelled_images(trainer)  # (N, 1, 28, 28) float
        dkvb = self._dkvb
        was_training = dkvb.training
        dkvb.train()
        dkvb.freeze_keys(False)
        generator = torch.Generator().manual_seed(trainer.current_epoch)
        for _ in range(max(self.init_epochs, 1)):
            for idx in torch.randperm(len(images), generator=generator).split(batch_size):
                dkvb(images[idx].to(pl_module.device))  # train-mode forward: the library's EMA moves the keys
        dkvb.train(was_training)
        self.phase = "after"
        rank_zero_info(f"DKVB keys initialised on {len(images)} unlabelled training images ({max(self.init_epochs, 1)} passes)")

    def _count_codes(self, module, args, output) -> None:
        if self._dkvb.training:
            counts = code_counts(output, self._dkvb.num_keys)  # output: the indices (B, C)
            self._counts = counts if self._counts is None else self._counts + counts

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if self.phase == "init" and not self.should_init(trainer.global_step, trainer.current_epoch):
            self.phase = "after"
            rank_zero_info(
                f"DKVB key initialisation done after {self.init_steps_done} optimizer steps (global step "
                f"{trainer.global_step}); keys now: {self.after_init}"
            )
        self._apply_phase(self._dkvb)

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        if self.phase != "init":
            return
        for p in self._dkvb.parameters():
            p.grad = None  # the optimizer skips it: values (and head) untouched during key initialisation
        self.init_steps_done += 1

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.log_every_n_steps or step == self._last_logged or self._counts is None:
            return
        self._last_logged = step
        usage = usage_from_counts(self._counts)
        self._log_usage_figure(trainer, self._counts)
        self._counts = None
        phase = torch.tensor(float(PHASES.index(self.phase)))
        metrics = {"dkvb/perplexity": usage["perplexity"], "dkvb/dead_keys": usage["dead_keys"], "dkvb/phase": phase}
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)

    def _log_usage_figure(self, trainer: pl.Trainer, counts: torch.Tensor) -> None:
        """``dkvb/key_usage`` figure and ``dkvb/selections_per_key`` histogram, every ``figure_every_n_logs`` logs."""
        self._logs_done += 1
        if self.figure_every_n_logs <= 0 or (self._logs_done - 1) % self.figure_every_n_logs:
            return
        import matplotlib.pyplot as plt
        from lightning.pytorch.loggers import TensorBoardLogger

        from lkd.figures import key_usage_figure

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                fig = key_usage_figure(counts.cpu(), title=f"DKVB key usage ({self.phase} phase)")
                logger.experiment.add_figure("dkvb/key_usage", fig, global_step=trainer.global_step)
                logger.experiment.add_histogram("dkvb/selections_per_key", counts.flatten().float().cpu(), global_step=trainer.global_step)
                plt.close(fig)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook, self._counts = None, None

    # ---- resume -------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict:
        return {"phase": self.phase, "init_steps_done": self.init_steps_done}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        phase = state_dict.get("phase", self.phase)
        if phase not in PHASES:
            raise ValueError(f"EMAKeyUpdate checkpoint state has phase {phase!r}, expected one of {PHASES}")
        self.phase = phase
        self.init_steps_done = state_dict.get("init_steps_done", 0)
