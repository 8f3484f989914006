"""The ``lkd`` command: a LightningCLI with lkd's defaults.

    lkd fit --config configs/mnist/teacher.yaml
    lkd test --config configs/mnist/teacher.yaml --ckpt_path checkpoints/mnist/teacher.ckpt
    lkd cache-teacher --config configs/mnist/student_kd_cached.yaml   # then: lkd fit --config (same file)

Model and data are chosen by ``class_path`` (subclass mode). ``data.num_classes`` is linked into the
model, so it is written once. Every run gets a ``ModelCheckpoint`` (``checkpoint.*``: best on ``val/acc``),
a ``latest.ckpt`` rewritten every epoch (to resume a crashed run from) and, with ``best_checkpoint.path``,
a copy of its best checkpoint at a stable path.

``cache-teacher`` takes the same arguments as ``fit`` plus ``--dtype`` and ``--overwrite``: it runs the
config's frozen teacher once over the training and validation splits and writes the logits (language models:
the top-k log-probabilities and token ids of every position) to
``model.init_args.teacher.cache``, the file the same config's ``fit`` then reads (:mod:`lkd.cache`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lkd.callbacks import FitSummary, GLUEPredictionWriter, LearningRateLogger, PublishBestCheckpoint
from lkd.callbacks.hparams import HParamsConfigCallback
from lkd.cli_ckpt import (
    DATA_LINKS,
    as_dict,
    expand_task,
    flat,
    linked_changes,
    linked_message,
    mismatch_message,
    resolve_ckpt_path,
    setting_changes,
)
from lkd.cli_errors import ConfigError, LKDArgumentParser, innermost_reason
from lkd.devices import check_strategy, check_trainer_settings

CACHE_TEACHER = "cache-teacher"
EXPORT = "export"
LIGHTNING_CKPT_ALIASES = ("last", "best", "hpc", "registry")


class ResumeMismatchError(ValueError):
    """``--ckpt_path`` names a checkpoint of another module, or one whose settings differ from the command's."""


class LKDCLI(LightningCLI):
    """LightningCLI with linked arguments and lkd's checkpoint callbacks."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("save_config_callback", HParamsConfigCallback)  # config.yaml + TensorBoard hparams
        kwargs.setdefault("trainer_defaults", default_trainer_settings())
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_class", LKDArgumentParser)
        given = kwargs.get("args")
        self._argv = [str(a) for a in (sys.argv[1:] if given is None else given)] if not isinstance(given, dict) else []
        self._ckpt_hparams, self._ckpt_read = {}, ""
        super().__init__(pl.LightningModule, pl.LightningDataModule, *args, **kwargs)

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Each link applies only where the chosen classes have both ends (MNIST has no task, LMs no classes).
        for source, target in DATA_LINKS.items():
            parser.link_arguments(source, target, apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.filename": "ep{epoch}-acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(PublishBestCheckpoint, "best_checkpoint")

    @override
    def instantiate_classes(self) -> None:
        """Build the classes; a check that fails inside a module's or data module's ``__init__`` is re-raised with
        its own message last (jsonargparse would end it with a dump of the whole namespace). Then the settings the
        data sets in the model (task, classes) are held against the checkpoint the command reads."""
        try:
            super().instantiate_classes()
        except ValueError as err:
            reason = innermost_reason(str(err))
            if reason is None:
                raise
            raise ConfigError(reason) from None
        if self._ckpt_hparams and (changed := linked_changes(self.model, self._ckpt_hparams)):
            raise ResumeMismatchError(linked_message(self._ckpt_read, changed))

    # ---- --ckpt_path: checked first, and never silently overriding the command line ---------------------
    @override
    def _parse_ckpt_path(self) -> None:
        """Before any data or model is built: ``{task}`` in paths filled in; ``--ckpt_path`` aliases and its default
        resolved (:func:`lkd.cli_ckpt.resolve_ckpt_path`); the checkpoint exists and is readable, was written by the
        module class this config builds, and its saved hyperparameters (which LightningCLI puts over the config)
        change nothing the command line or config says; otherwise stop, listing each value."""
        self._ckpt_hparams, self._ckpt_read = {}, ""
        subcommand = self.config.get("subcommand")
        if not subcommand or subcommand == CACHE_TEACHER:
            return super()._parse_ckpt_path()
        config = self.config[subcommand]
        expand_task(config)
        published = (as_dict(config.get("best_checkpoint")) or {}).get("path")
        if "ckpt_path" in config and subcommand != EXPORT:
            config["ckpt_path"] = resolve_ckpt_path(subcommand, config, published)
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path or ckpt_path in LIGHTNING_CKPT_ALIASES:
            return super()._parse_ckpt_path()
        from lkd.checkpoint import load_checkpoint

        ckpt = load_checkpoint(ckpt_path, what="--ckpt_path checkpoint")
        hparams = dict(ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {})
        saved_class = hparams.get("_class_path")
        model = config.get("model")
        current_class = getattr(model, "class_path", None) if model is not None else None
        if saved_class and current_class and saved_class != current_class:
            raise ResumeMismatchError(
                f"--ckpt_path {ckpt_path} was written by {saved_class}, but the config builds {current_class}. HINT: "
                f"pass the config that trained it (runs/<name>/version_N/config.yaml), or a checkpoint of {current_class}"
            )
        self._ckpt_hparams, self._ckpt_read = hparams, str(ckpt_path)
        before = flat(as_dict(model))
        super()._parse_ckpt_path()
        if changed := setting_changes(before, flat(as_dict(self.config[subcommand].get("model")))):
            if subcommand == EXPORT:  # the student's weights are checked against the config's by shape (LKDCLI.export)
                rank_zero_info("the model card states the settings the checkpoint was trained with: " + ", ".join(
                    f"model.{k} {old!r} (this command: {new!r})" for k, (new, old) in changed.items()))
                return
            raise ResumeMismatchError(mismatch_message(subcommand, ckpt_path, changed))

    @override
    def before_fit(self) -> None:
        """Before anything is trained: the best checkpoint's stable path cannot lose a file
        (:meth:`PublishBestCheckpoint.check_target`), and the end-of-fit summary knows the command's options."""
        config = self.config["fit"]
        reads = {f"model.{k}": v for k, v in flat(as_dict(config.get("model"))).items()
                 if isinstance(v, str) and Path(v).suffix in (".ckpt", ".pt", ".pth", ".safetensors")}
        if config.get("ckpt_path"):
            reads["--ckpt_path"] = str(config["ckpt_path"])
        options = self._argv[self._argv.index("fit") + 1:] if "fit" in self._argv else []
        for callback in self.trainer.callbacks:
            if isinstance(callback, PublishBestCheckpoint) and self.trainer.is_global_zero:
                run = self.trainer.log_dir if self.trainer.logger is not None else ""
                callback.check_target(self.model, self.datamodule, reads=reads, configs=[str(c) for c in config.get("config") or []],
                                      run=str(run or ""))
            if isinstance(callback, FitSummary) and not callback.command:
                callback.command = options

    # ---- the `cache-teacher` subcommand ----------------------------------------------------------------
    # LightningCLI makes one subcommand per Trainer method (`subcommands()`); a command that is not a Trainer
    # method needs its own parser and runner, so these two overrides add it next to Lightning's.
    @override
    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs) -> None:
        super()._add_subcommands(parser, **kwargs)
        description = "Run the distillation config's frozen teacher once and store its logits in model.init_args.teacher.cache."
        sub = self.init_parser(description=description)
        self._add_arguments(sub)
        sub.add_argument("--dtype", type=Literal["float16", "bfloat16", "float32"], default="float16",
                         help="storage dtype of the cached logits (float16: relative error <= 2^-11; float32: exact)")
        sub.add_argument("--overwrite", type=bool, default=False, help="replace an existing cache file")
        self._subcommand_parsers[CACHE_TEACHER] = sub
        self._subcommand_method_arguments[CACHE_TEACHER] = []
        parser._subcommands_action.add_subcommand(CACHE_TEACHER, sub, help=description)

        description = "Export the config's student from a checkpoint: a Hugging Face / safetensors folder, ONNX, int8, a model card."
        sub = self.init_parser(description=description)
        self._add_arguments(sub)
        sub.add_argument("--ckpt_path", type=str, required=True, help="the checkpoint whose student to export")
        sub.add_argument("--to", type=str, required=True,
                         help="the folder to write: new or empty (or an earlier lkd export, with --overwrite); never the "
                              "working, home or a checkpoint's folder")
        sub.add_argument("--format", type=Literal["hf", "onnx", "all"], default="hf",
                         help="hf: the folder (safetensors + config + tokenizer); onnx / all: also model.onnx")
        sub.add_argument("--quantize", type=Literal["int8"] | None, default=None, help="int8: also model.int8.onnx")
        sub.add_argument("--overwrite", type=bool, default=False,
                         help="replace an earlier lkd export in --to: only the files its lkd_export.json lists; other files stay")
        sub.add_argument("--test", type=bool, default=True, help="run the test split on the checkpoint for the card's metrics")
        self._subcommand_parsers[EXPORT] = sub
        self._subcommand_method_arguments[EXPORT] = []
        parser._subcommands_action.add_subcommand(EXPORT, sub, help=description)

    @override
    def _run_subcommand(self, subcommand: str) -> None:
        if subcommand == EXPORT:
            return self.export(**{k: self.config_init[subcommand][k] for k in ("ckpt_path", "to", "format", "quantize", "overwrite", "test")})
        if subcommand != CACHE_TEACHER:
            return super()._run_subcommand(subcommand)
        self.cache_teacher(**{k: self.config_init[subcommand][k] for k in ("dtype", "overwrite")})

    def export(self, ckpt_path: str, to: str, format: str = "hf", quantize: str | None = None, overwrite: bool = False,
               test: bool = True):
        """``lkd export``: the student of ``ckpt_path`` (this config's module) into ``to`` (:mod:`lkd.export`)."""
        from lkd.checkpoint import load_checkpoint
        from lkd.export import ExportError, check_request, check_student_state, export_student, student_network
        from lkd.export.card import card_info, student_spec

        # before the checkpoint, the test pass or any write: --to may not be the checkpoint's folder, the working
        # folder, or a folder that is not an earlier lkd export (lkd.export.check_request)
        check_request(to, format, quantize, overwrite, ckpt_path)
        state = load_checkpoint(ckpt_path)["state_dict"]
        network, kind, role = student_network(self.model)
        prefix = f"{role}."
        check_student_state(self.model.state_dict(), state, role, ckpt_path, type(network).__name__)
        try:
            self.model.load_state_dict({k: v for k, v in state.items() if k.startswith(prefix)}, strict=False)
        except RuntimeError as err:
            raise ExportError(f"{ckpt_path} does not fit this config's {role}: {str(err).splitlines()[-1].strip()}. HINT: export "
                              "with the config the checkpoint was trained with") from None
        metrics = {}
        if test:
            # the student's weights are loaded above: the test scores them without reading the checkpoint again
            (metrics,) = self.trainer.test(self.model, datamodule=self.datamodule, verbose=False)
            metrics = {k: float(v) for k, v in metrics.items() if k.startswith("test/")}
        config = self.config[EXPORT]
        spec = student_spec(as_dict(config["model"]), role, self.model)
        configs = [str(c) for c in (config.get("config") or [])]
        card = card_info(self.model, self.datamodule, role, configs=configs, ckpt_path=ckpt_path, to=to, format=format,
                         quantize=quantize, metrics=metrics)
        try:
            label_names = getattr(self.datamodule, "label_names", None)
        except Exception:  # noqa: BLE001 - data not read (--test false): the card and folder use LABEL_i
            label_names = None
        result = export_student(self.model, to, formats=format, quantize=quantize, overwrite=overwrite, spec=spec, card=card,
                                label_names=label_names, ckpt_path=ckpt_path)
        kept = f"; kept {len(result.kept)} files that are not lkd's: {', '.join(p.name for p in result.kept[:5])}" if result.kept else ""
        rank_zero_info(f"exported the {role} ({result.kind}) to {result.folder}: "
                       + ", ".join(p.name for p in result.files.values()) + kept)
        return result

    def cache_teacher(self, dtype: str = "float16", overwrite: bool = False) -> None:
        """Write ``model.teacher.cache`` from the model's teacher and the data's training/validation splits
        (:meth:`lkd.modules.LKDModule.write_teacher_cache`, which hands the cache builder its targets function)."""
        from lkd.cache import TeacherCacheError

        teacher = getattr(self.model, "frozen_teacher", None)
        if teacher is None:
            raise TeacherCacheError(
                "cache-teacher needs a distillation module (DistillModule, GLUEDistillModule, LMDistillModule, or "
                f"OnPolicyDistillModule with lmbda 0 and off_policy teacher), got {type(self.model).__name__}"
            )
        path = teacher.cache_path
        if path is None:
            raise TeacherCacheError(
                "cache-teacher writes to model.init_args.teacher.cache, which is not set. HINT: add "
                "--model.init_args.teacher.cache=PATH (and keep it in the config, so fit reads the same file)"
            )
        self.model.write_teacher_cache(self.datamodule, path, dtype=dtype, overwrite=overwrite, device=self.trainer.strategy.root_device,
                                       forward_context=self.trainer.precision_plugin.forward_context)

    @override
    def _instantiate_trainer(self, config: dict, callbacks: list):
        # lkd adds a progress bar and checkpoint callbacks by default; a run that switches progress bars or
        # checkpointing off gets them dropped instead of Lightning's "found X in callbacks" error.
        unwanted: tuple[type, ...] = ()
        if config.get("enable_progress_bar") is False:
            unwanted += (RichProgressBar,)
        if config.get("enable_checkpointing") is False:
            unwanted += (ModelCheckpoint,)
        if unwanted:
            callbacks = [c for c in callbacks if not isinstance(c, unwanted)]
            defaults = self.trainer_defaults.get("callbacks", [])
            self.trainer_defaults = {**self.trainer_defaults, "callbacks": [c for c in defaults if not isinstance(c, unwanted)]}
        if self.subcommand == "predict" and type(self.model).__module__ == "lkd.modules.glue":
            from lightning.pytorch.callbacks import BasePredictionWriter

            given = [*callbacks, *(config.get("callbacks") or []), *self.trainer_defaults.get("callbacks", [])]
            if not any(isinstance(c, BasePredictionWriter) for c in given):  # a prediction run that writes its predictions
                callbacks = [*callbacks, GLUEPredictionWriter()]
        check_trainer_settings(config)  # FSDP off CUDA, more GPUs than exist: before Lightning builds anything
        trainer = super()._instantiate_trainer(config, callbacks)
        check_strategy(trainer)  # DDP/FSDP asked for with a single process: say so before anything runs
        return trainer


def default_trainer_settings() -> dict:
    # Lightning 2.6's save_last only writes when a top-k checkpoint was written in the same step, so
    # "the latest state" is a second ModelCheckpoint that keeps one file and rewrites it every epoch.
    latest = ModelCheckpoint(filename="latest", save_top_k=1, enable_version_counter=False)
    callbacks = [LearningRateLogger(logging_interval="step"), latest, FitSummary()]
    if sys.stdout.isatty() or os.environ.get("LKD_RICH", "0") == "1":
        callbacks.append(RichProgressBar())
    return {"callbacks": callbacks, "default_root_dir": "runs"}


def main(args: list[str] | None = None) -> None:
    """Console entry point ``lkd``."""
    LKDCLI(args=args)


if __name__ == "__main__":
    main()
