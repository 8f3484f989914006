"""The splits of text-classification data: every row keyed by an ``idx``, a missing validation / test split carved
from train (:func:`carve_splits`), and whether a stage can use a split (:func:`check_split`)."""

from __future__ import annotations

import datasets
import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from lkd.data.errors import TextDataError, near
from lkd.data.labels import TextLabels


def carve_splits(loaded: datasets.DatasetDict, *, source: str, train_split: str, validation_split: str, test_split: str | None,
                 validation_size: float | int | None, test_size: float | int | None, seed: int) -> datasets.DatasetDict:
    """``loaded`` with an ``idx`` column in every split (its row, where the data has none) and a missing validation
    split (``validation_size``, default 10 %) or test split (only with ``test_size``) carved from train, seeded."""
    data = datasets.DatasetDict({name: split if "idx" in split.column_names else split.add_column("idx", np.arange(len(split)))
                                 for name, split in loaded.items()})
    if train_split not in data:
        raise TextDataError(f"{source} has no train split {train_split!r}; its splits: {list(data)}. "
                            "HINT: set data.init_args.train_split")
    carved_test = test_split if test_split not in (None, validation_split) else "test"
    for name, size, default in ((validation_split, validation_size, 0.1), (carved_test, test_size, None)):
        if name is None or (name in data and size is None):
            continue
        if name in data:
            raise TextDataError(f"{source} has a split {name!r}; carve one ({'validation' if name == validation_split else 'test'}_size) "
                                "only when the data lacks it")
        if (size := size if size is not None else default) is None:
            continue
        parts = data[train_split].train_test_split(test_size=size, seed=seed, shuffle=True)
        data[train_split], data[name] = parts["train"], parts["test"]
        rank_zero_info(f"{source}: split {name!r} carved from {train_split!r} ({len(parts['test'])} rows, seed {seed})")
    return data


def split_option(split: str, stage: str, train_split: str) -> str:
    """The option that chose ``split`` for ``stage``, as a user writes it."""
    if stage in ("test", "predict"):
        return f"data.init_args.{stage}_split"
    return "data.init_args.train_split" if split == train_split else "data.init_args.validation_split"


def check_split(labels: TextLabels, split: str, stage: str, *, where: str, validation_split: str, files: bool) -> None:
    """Refuse a split ``stage`` cannot use: missing (listing the splits there are), empty, without a text column,
    or, for any stage but predict, without labels. Each names the split, its file and the option that chose it.

    Args:
        labels: the data's columns and labels (its ``raw`` splits, ``source`` and ``train_split``).
        where: the split and where it comes from (its files), for messages.
        validation_split: the validation split's name (carved from train when missing).
        files: whether the data is local files (``data_files``), which a missing split can be added to.
    """
    raw, source, train_split = labels.raw, labels.source, labels.train_split
    option = split_option(split, stage, train_split)
    if split not in raw:
        carve = ""
        if split == "test":
            carve = (", or carve a test split from train with data.init_args.test_size (e.g. 0.1; give it to `lkd fit` too, "
                     "so training leaves those rows out)")
        elif split == validation_split:
            carve = ", or carve it from train with data.init_args.validation_size"
        add = f", add a file for it (data_files: {{{split}: ...}})" if files else ""
        raise TextDataError(f"{option}={split!r}: {source} has no split {split!r}; its splits: {', '.join(raw)}. "
                            f"HINT: set {option} to one of them{add}{carve}")
    if not len(raw[split]):
        raise TextDataError(f"{where} is empty. HINT: give it rows, or carve it from train "
                            "(validation_size / test_size)")
    columns = [c for c in raw[split].column_names if c != "idx"]
    if missing := [c for c in labels.text_columns if c not in raw[split].column_names]:
        hints = "".join(near(c, columns) for c in missing)
        raise TextDataError(f"{where} lacks the text column(s) {missing}{hints} that {train_split!r} has "
                            f"(text columns {labels.text_columns}); its columns: {columns}. HINT: name the column(s) in that "
                            "split as in train, or set data.init_args.text_columns to columns every split has")
    if stage != "predict" and not labels.has_labels(split):
        scored = {"fit": "trained on" if split == train_split else "validated", "validate": "validated", "test": "scored"}[stage]
        if labels.label_column not in raw[split].column_names:
            why = f"has no label column {labels.label_column!r} (its columns: {columns})"
        else:
            why = f"has no labels (every {labels.label_column!r} is empty or -1: GLUE keeps test labels hidden)"
        hint = (f"score a labelled split ({option}=validation), or write predictions for it with `lkd predict` "
                f"(data.init_args.predict_split={split})" if stage == "test" else f"set {option} to a labelled split")
        raise TextDataError(f"{where} {why}, so it cannot be {scored}. HINT: {hint}")
    if stage != "predict" and (gaps := labels.unlabelled_rows(split)):
        value = labels.label_values(split)[gaps[0]]
        raise TextDataError(f"{where}: label of row {gaps[0]} is {'empty' if value is None or value != value else value!r} "
                            f"(column {labels.label_column!r}; {len(gaps)} rows without a label). HINT: give every row of "
                            f"{option}={split!r} a label, or move the unlabelled rows to a split of their own for `lkd predict`")
