"""What the columns and labels of text-classification data are, read from the data or from YAML where the data
cannot say (:class:`TextLabels`):

* **Columns.** ``text_columns`` (one = single sentence, two = a pair) and ``label_column``; when not named,
  the label is the one column called ``label``/``labels``/``target``/... and the texts are the remaining
  string columns. A name that is not there, or an ambiguous guess, is an error that lists the columns.
* **Labels.** A ``ClassLabel`` feature gives the class names; string labels are class names (sorted, or in the
  order of ``label_names``); integer labels are class ids (``label_names`` names them); float labels are a
  regression target (``num_classes = 1``). A value that is none of these, or a class the training split does
  not know, is an error naming the value, its split and row.
* **Problem type.** A GLUE task's is known (``stsb`` regression, the others classification,
  :data:`GLUE_PROBLEM_TYPES`), and ``problem_type`` states one for your own task; labels of the wrong kind for it
  are refused (class names for a regression, fractional numbers for a classification), float labels that are
  all whole numbers are read as class ids for a classification (logged), integers as scores for a regression.
  Otherwise the label type decides, and the log line says so and how to override it.
"""

from __future__ import annotations

from functools import cached_property
from typing import Literal

import datasets
import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from lkd.data.errors import TextDataError, near

ProblemType = Literal["classification", "regression"]
GLUE_PROBLEM_TYPES: dict[str, ProblemType] = {
    **dict.fromkeys(("cola", "sst2", "mrpc", "qqp", "mnli", "mnli_matched", "mnli_mismatched", "qnli", "rte", "wnli", "ax"),
                    "classification"),
    "stsb": "regression",
}
"""The problem type of each GLUE task (Wang et al. 2019, Table 1): STS-B scores similarity, the others classify."""
LABEL_CANDIDATES = ("label", "labels", "target", "class", "category", "score", "y")
"""Column names taken for the label when ``label_column`` is not given (exactly one must be there)."""


def _whole(value) -> bool:
    return isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating)) and float(value).is_integer())


class TextLabels:
    """The text and label columns of ``raw`` and its labels read as class ids or scores (see the module docstring).

    Every answer is read from the data on first use and kept; every refusal is a :class:`TextDataError` naming
    the value, its split and row, and the ``data.init_args`` option that fixes it.

    Args:
        raw: the untokenised splits (each with an ``idx`` column).
        source: what the data is, for messages (``nyu-mll/glue/mrpc``, ``data_files ...``).
        task: the task's name; a GLUE name fixes the problem type (:data:`GLUE_PROBLEM_TYPES`).
        train_split: the split whose features and labels define the columns and classes.
        text_columns, label_column, label_names, problem_type: as given to
            :class:`lkd.data.TextClassificationDataModule` (None: read from the data).
    """

    def __init__(self, raw: datasets.DatasetDict, *, source: str, task: str, train_split: str,
                 text_columns: list[str] | None = None, label_column: str | None = None,
                 label_names: list[str] | None = None, problem_type: ProblemType | None = None):
        self.raw, self.source, self.task, self.train_split = raw, source, task, train_split
        self._text_columns, self._label_column, self._label_names = text_columns, label_column, label_names
        self._problem_type = problem_type

    @property
    def features(self) -> datasets.Features:
        return self.raw[self.train_split].features

    # ---- columns ------------------------------------------------------------------------------------
    @cached_property
    def label_column(self) -> str:
        """The label column: as given, else the one column named like a label."""
        columns = [c for c in self.features if c != "idx"]
        if self._label_column is not None:
            if self._label_column not in self.features:
                raise TextDataError(f"label_column {self._label_column!r} is not a column of {self.source}{near(self._label_column, columns)}; "
                                    f"its columns: {columns}. HINT: set data.init_args.label_column")
            return self._label_column
        found = [c for c in columns if c.lower() in LABEL_CANDIDATES]
        if len(found) != 1:
            why = "no column is named like a label" if not found else f"several could be the label: {found}"
            raise TextDataError(f"{self.source}: {why} ({', '.join(LABEL_CANDIDATES)}); its columns: {columns}. "
                                "HINT: set data.init_args.label_column")
        return found[0]

    @cached_property
    def text_columns(self) -> list[str]:
        """Input columns: as given, or every string column but the label's, in feature order (1 = single, 2 = pair)."""
        strings = [n for n, f in self.features.items() if isinstance(f, datasets.Value) and f.dtype in ("string", "large_string")
                   and n not in (self.label_column, "idx")]
        if self._text_columns is None:
            if not 1 <= len(strings) <= 2:
                raise TextDataError(f"{self.source}: expected 1 or 2 text columns, found {strings} (columns: {list(self.features)}). "
                                    "HINT: set data.init_args.text_columns")
            return strings
        if missing := [c for c in self._text_columns if c not in self.features]:
            hints = "".join(near(c, strings) for c in missing)
            raise TextDataError(f"text_columns {self._text_columns}: {missing} not in {self.source}{hints}; its columns: "
                                f"{list(self.features)} (string columns: {strings}). HINT: set data.init_args.text_columns")
        return list(self._text_columns)

    @property
    def columns_read(self) -> bool:
        """Whether :attr:`text_columns` has been read (and so checked) already."""
        return "text_columns" in self.__dict__

    # ---- what the labels are ------------------------------------------------------------------------
    @property
    def wanted_problem(self) -> tuple[ProblemType | None, str]:
        """(the problem type asked for, where it comes from): ``problem_type``, else the GLUE task's, else (None, "")."""
        if self._problem_type is not None:
            return self._problem_type, f"problem_type={self._problem_type!r}"
        if (known := GLUE_PROBLEM_TYPES.get(self.task)) is not None:
            return known, f"task {self.task!r} (a GLUE {known} task)"
        return None, ""

    def _label_examples(self, values) -> str:
        seen = sorted({v.item() if isinstance(v, np.generic) else v for v in values if v is not None})[:3]
        return ", ".join(map(repr, seen))

    def _wrong_label_kind(self, wanted: ProblemType, why: str, holds: str, examples: str) -> TextDataError:
        other = "regression" if wanted == "classification" else "classification"
        cast = ("cast the labels to integer class ids (or give class names)" if wanted == "classification"
                else "give numeric scores (cast the labels to float)")
        escape = (f"set data.init_args.problem_type={other}" if self._problem_type is not None
                  else f"if this is not GLUE's {self.task}, name your task (data.init_args.task=<your name>) to train a {other}")
        return TextDataError(f"{self.source}: {why} needs {'class labels' if wanted == 'classification' else 'numeric scores'}, "
                             f"but label column {self.label_column!r} holds {holds}, e.g. {examples}). HINT: {cast} in "
                             f"{self.label_column!r}, or {escape}")

    @cached_property
    def kind(self) -> tuple[str, list[str] | None]:
        """(kind, class names): kind ``"class_label"``, ``"names"`` (string labels), ``"ids"`` (integers),
        ``"float_ids"`` (whole-number floats read as class ids) or ``"float"`` (a regression score)."""
        feature = self.features[self.label_column]
        wanted, why = self.wanted_problem
        values = self.label_values(self.train_split)
        if isinstance(feature, datasets.ClassLabel):
            if wanted == "regression":
                raise self._wrong_label_kind(wanted, why, f"class names ({feature}", self._label_examples(feature.names))
            return "class_label", list(feature.names)
        dtype = feature.dtype if isinstance(feature, datasets.Value) else None
        if dtype in ("string", "large_string"):
            if wanted == "regression":
                raise self._wrong_label_kind(wanted, why, f"class names ({dtype}", self._label_examples(values))
            self._check_present(values, self.train_split)
            names = self._label_names or sorted(set(values))
            return "names", list(names)
        if dtype is not None and dtype.startswith(("int", "uint", "bool")) and wanted != "regression":
            values = np.asarray(values)
            n = len(self._label_names) if self._label_names else int(values.max()) + 1
            if (bad := (values < 0) | (values >= n)).any():
                row = int(np.flatnonzero(bad)[0])
                raise TextDataError(f"{self.source}: label {int(values[row])} (split {self.train_split!r}, row {row}) is not a class "
                                    f"id in [0, {n}) (label_names {self._label_names}); -1 means unlabelled")
            return "ids", list(self._label_names) if self._label_names else None
        if dtype is not None and dtype.startswith(("float", "int", "uint", "bool")):
            numbers = np.asarray([np.nan if v is None else v for v in values], dtype=float)
            if not np.isfinite(numbers).all():
                row = int(np.flatnonzero(~np.isfinite(numbers))[0])
                raise TextDataError(f"{self.source}: label of row {row} in split {self.train_split!r} is missing or not a number")
            if wanted != "classification":
                if dtype.startswith(("int", "uint", "bool")):  # integers for a regression: scores
                    rank_zero_info(f"{self.task}: {why} is a regression, so the integer labels of {self.label_column!r} are read "
                                   "as scores")
                return "float", None
            if not np.equal(numbers, np.round(numbers)).all():
                raise self._wrong_label_kind(wanted, why, f"fractional numbers ({dtype}",
                                             self._label_examples(numbers[numbers != np.round(numbers)].tolist()))
            ids = sorted({int(v) for v in numbers})
            rank_zero_info(f"{self.task}: {why} is a classification, so the {dtype} labels of {self.label_column!r}, all whole "
                           f"numbers ({', '.join(str(float(i)) for i in ids[:5])}{', ...' if len(ids) > 5 else ''}), are read as "
                           "class ids. HINT: store them as integers to skip this conversion")
            n = len(self._label_names) if self._label_names else max(ids) + 1
            if ids[0] < 0 or ids[-1] >= n:
                bad = next(i for i in ids if not 0 <= i < n)
                raise TextDataError(f"{self.source}: label {float(bad)} (split {self.train_split!r}) is not a class id in [0, {n}) "
                                    f"(label_names {self._label_names}). HINT: fix the labels, or list every class in "
                                    "data.init_args.label_names")
            return "float_ids", list(self._label_names) if self._label_names else None
        raise TextDataError(f"{self.source}: label column {self.label_column!r} is {feature}, neither class names (strings), "
                            "class ids (integers) nor numbers (floats). HINT: set data.init_args.label_column to the label")

    @property
    def label_decision(self) -> str:
        """What the labels were read as and why, for the log: the problem type, its source and how to override it."""
        kind, _ = self.kind
        what = "regression (1 output, MSE)" if kind == "float" else f"classification ({self.num_classes} classes)"
        wanted, why = self.wanted_problem
        if wanted is not None:
            return f"{what}, as {why} says"
        feature = self.features[self.label_column]
        if kind in ("class_label", "names"):
            return f"{what}, read from the label type ({'class names' if kind == 'names' else feature})"
        other = "classification" if kind == "float" else "regression"
        dtype = getattr(feature, "dtype", feature)
        return (f"{what}, read from the label type ({dtype} labels: "
                f"{'scores' if kind == 'float' else 'class ids'}); HINT: data.init_args.problem_type={other} overrides it")

    def _check_present(self, values: list, split: str) -> None:
        if None in values:
            raise TextDataError(f"{self.source}: label of row {values.index(None)} in split {split!r} is empty "
                                f"(column {self.label_column!r})")

    @property
    def is_regression(self) -> bool:
        return self.kind[0] == "float"

    @property
    def num_classes(self) -> int:
        """Number of classes, or 1 for a float (regression) label."""
        kind, names = self.kind
        if kind == "float":
            return 1
        if names is not None:
            return len(names)
        values = [v for v in self.label_values(self.train_split) if v is not None]
        return int(max(values)) + 1

    @property
    def label_names(self) -> list[str] | None:
        return self.kind[1]

    # ---- the labels of a split ----------------------------------------------------------------------
    def label_values(self, split: str) -> list:
        """The label column of ``split`` as a list (one Arrow read: iterating a ``datasets`` column is row by row)."""
        return self.raw[split][self.label_column][:]

    def has_labels(self, split: str) -> bool:
        """Whether ``split`` carries labels (GLUE's hidden test labels are all -1; a file without the column has none)."""
        if self.label_column not in self.raw[split].column_names:
            return False
        values = self.label_values(split)
        return not all(v == -1 for v in values) and len(self.unlabelled_rows(split)) < len(values)

    def unlabelled_rows(self, split: str) -> list[int]:
        """Rows of ``split`` without a label: None or NaN, and -1 for class labels (GLUE's mark of a hidden label)."""
        if self.label_column not in self.raw[split].column_names:
            return list(range(len(self.raw[split])))
        classes = not self.is_regression
        return [row for row, v in enumerate(self.label_values(split))
                if v is None or (isinstance(v, float) and v != v) or (classes and v == -1)]

    def fully_labelled(self, split: str) -> bool:
        """Whether every row of ``split`` has a label."""
        return self.has_labels(split) and not self.unlabelled_rows(split)

    def encode_labels(self, split: str, labels: list) -> list:
        """``labels`` of ``split`` as class ids (or floats), checked against the classes the training split knows."""
        kind, names = self.kind
        if kind == "names":
            self._check_present(labels, split)
            index = {name: i for i, name in enumerate(names)}
            if unknown := [(row, v) for row, v in enumerate(labels) if v not in index]:
                row, value = unknown[0]
                raise TextDataError(f"{self.source}: label {value!r} (split {split!r}, row {row}) is not one of the known classes "
                                    f"{names}{near(str(value), names)}. HINT: fix the data, or list every class in data.init_args.label_names")
            return [index[v] for v in labels]
        if kind == "float":
            if bad := [row for row, v in enumerate(labels) if not isinstance(v, (int, float, np.number)) or not np.isfinite(v)]:
                raise TextDataError(f"{self.source}: label {labels[bad[0]]!r} (split {split!r}, row {bad[0]}) is not a number "
                                    f"(column {self.label_column!r}). HINT: give every row a numeric score")
            return [float(v) for v in labels]
        n = self.num_classes  # class ids: integers, or whole numbers stored as floats
        if bad := [(row, v) for row, v in enumerate(labels) if not _whole(v) or not 0 <= v < n]:
            row, value = bad[0]
            raise TextDataError(f"{self.source}: label {value!r} (split {split!r}, row {row}) is outside the {n} known classes [0, {n}). "
                                "HINT: fix the label, or list every class in data.init_args.label_names")
        return [int(v) for v in labels]
