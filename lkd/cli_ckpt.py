"""The checkpoint a command reads: ``--ckpt_path`` aliases and defaults, ``{task}`` in paths, and what a checkpoint's
saved settings would change in the command (LightningCLI puts them over the config).

    lkd test -c C                      # no --ckpt_path: the config's published best checkpoint (best_checkpoint.path)
    lkd test -c C --ckpt_path init     # the model as built (pretrained or random weights), said so
    lkd fit -c C --ckpt_path last      # resume the newest latest.ckpt of the config's runs
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info

EVALUATING = ("test", "validate", "predict")
INIT = "init"
DATA_LINKS = {"data.num_classes": "model.init_args.num_classes", "data.task": "model.init_args.task"}
"""Model settings the command links from the data (:class:`lkd.cli.LKDCLI` links each, at instantiation)."""
LINK_TARGETS = tuple(target.removeprefix("model.") for target in DATA_LINKS.values())
"""The linked settings as keys of the model's config: never a user's change."""
TASK = "{task}"


class CheckpointChoiceError(ValueError):
    """The command names no usable checkpoint (an alias with nothing behind it, nothing to evaluate)."""


def as_dict(value) -> dict:
    if value is None:
        return {}
    return value.as_dict() if hasattr(value, "as_dict") else dict(value)


def flat(tree: dict, prefix: str = "") -> dict:
    """``{"init_args": {"alpha": 0.9}}`` -> ``{"init_args.alpha": 0.9}`` (lists and scalars are leaves)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat(value, name + "."))
        else:
            out[name] = value
    return out


def expand_task(config) -> None:
    """Replace ``{task}`` in the string settings of a subcommand's config by the data's task, so one GLUE config
    keeps each task's checkpoints apart (``checkpoints/glue/{task}/teacher.ckpt``)."""
    keys = [k for k, v in flat(as_dict(config)).items() if isinstance(v, str) and TASK in v]
    if not keys:
        return
    task = (as_dict(config.get("data")).get("init_args") or {}).get("task")
    if not task:
        raise CheckpointChoiceError(f"{keys[0]}={config[keys[0]]!r} names {TASK}, but the data has no task. HINT: write "
                                    "the path out, or use a data module with a task (GLUEDataModule, TextClassificationDataModule)")
    for key in keys:
        config[key] = config[key].replace(TASK, str(task))


def _runs_folders(config) -> list[Path]:
    """Where this config's runs write their checkpoints: ``<save_dir>/<name>/version_*/checkpoints``."""
    trainer = as_dict(config.get("trainer"))
    logger = trainer.get("logger")
    logger = logger[0] if isinstance(logger, list) and logger else logger
    init = (logger or {}).get("init_args", {}) if isinstance(logger, dict) else {}
    root = Path(init.get("save_dir") or trainer.get("default_root_dir") or "runs")
    name = init.get("name") or "lightning_logs"
    return [root / name]


def resolve_ckpt_path(subcommand: str, config, published: str | None) -> str | None:
    """The checkpoint the command reads, with lkd's meaning of Lightning's aliases and of no ``--ckpt_path``:

    * ``last``: the newest ``latest.ckpt`` of the config's runs (lkd's latest state; Lightning's ``last.ckpt`` is not
      written), refused when there is none;
    * ``best`` outside the fitting process, or no ``--ckpt_path`` for test/validate/predict: the published best
      checkpoint (``best_checkpoint.path``), refused when it does not exist (nothing silently scores a random model);
    * ``init``: the model as built (None), said so.
    """
    ckpt_path = config.get("ckpt_path")
    if ckpt_path == INIT:
        rank_zero_info(f"--ckpt_path {INIT}: {subcommand} uses the weights the model is built with (pretrained or random), "
                       "not a trained checkpoint")
        return None
    if ckpt_path == "last":
        folders = _runs_folders(config)
        found = [p for folder in folders for p in folder.glob("version_*/checkpoints/latest.ckpt")]
        if not found:
            raise CheckpointChoiceError(
                f"--ckpt_path last: no latest.ckpt under {', '.join(f'{f}/version_*/checkpoints' for f in folders)} (from "
                f"{Path.cwd()}), so there is no run of this config to resume. HINT: pass the checkpoint's path, or drop "
                "--ckpt_path to start a new run")
        newest = max(found, key=lambda p: p.stat().st_mtime)
        rank_zero_info(f"--ckpt_path last: {newest} (the newest latest.ckpt of this config's runs)")
        return str(newest)
    if (ckpt_path == "best" and subcommand != "fit") or (ckpt_path is None and subcommand in EVALUATING):
        what = "--ckpt_path best" if ckpt_path else f"lkd {subcommand} without --ckpt_path"
        if published and Path(published).is_file():
            rank_zero_info(f"{what}: the published best checkpoint {published} (best_checkpoint.path)")
            return str(published)
        where = f"best_checkpoint.path {published} does not exist" if published else "the config sets no best_checkpoint.path"
        raise CheckpointChoiceError(
            f"{what}: {where}, so there is no trained checkpoint to {subcommand} (it would score the model as built). "
            f"HINT: train it first (`lkd fit` with the same config), pass --ckpt_path PATH, or --ckpt_path {INIT} to "
            f"{subcommand} the weights the model is built with")
    return ckpt_path


def setting_changes(before: dict, after: dict) -> dict[str, tuple]:
    """``{key: (this command's value, the checkpoint's)}`` of the model settings a checkpoint changes, link targets
    left out (the data sets them at instantiation; :func:`linked_changes` compares them then)."""
    return {k: (before[k], after[k]) for k in sorted(set(before) & set(after))
            if before[k] != after[k] and k not in LINK_TARGETS}


def mismatch_message(subcommand: str, ckpt_path: str, changed: dict[str, tuple]) -> str:
    lines = "\n".join(f"  model.{k}: the checkpoint has {old!r}, this command {new!r}" for k, (new, old) in changed.items())
    head = (f"--ckpt_path {ckpt_path} carries the model settings it was trained with, and they differ from this command's:\n"
            f"{lines}\n")
    if subcommand == "fit":
        return head + ("Lightning would resume with the checkpoint's values.\nHINT: to resume exactly, drop those changes; to "
                       "train with new settings, start a new run (`lkd fit` without --ckpt_path) from the weights")
    return head + (f"Lightning would {subcommand} with the checkpoint's values, not this command's.\nHINT: {subcommand} with "
                   "the config and overrides it was trained with (its run folder's config.yaml holds them), or drop those options")


def linked_changes(module, hparams: dict) -> dict[str, tuple]:
    """``{name: (the data's value, the checkpoint's)}`` for the settings linked from the data (task, classes)."""
    out = {}
    for key in LINK_TARGETS:
        name = key.split(".", 1)[1]
        if name in hparams and getattr(module, name, None) is not None and hparams[name] != getattr(module, name):
            out[name] = (getattr(module, name), hparams[name])
    return out


def linked_message(ckpt_path: str, changed: dict[str, tuple]) -> str:
    lines = "\n".join(f"  {k}: the checkpoint was trained with {old!r}, this command's data gives {new!r}" for k, (new, old) in changed.items())
    return (f"--ckpt_path {ckpt_path} was trained on other data than this command reads:\n{lines}\nHINT: pass the same "
            "--data options as the fit that wrote it (e.g. --data.init_args.task), or a checkpoint trained on this data")
