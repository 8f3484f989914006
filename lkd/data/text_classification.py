"""Text classification (or regression) from any `datasets` source as a LightningDataModule: a hub id or local
mirror (``nyu-mll/glue`` + config ``mrpc``), or local CSV / JSON Lines / parquet files (``data_files``).

What the data is comes from the data, or from YAML where the data cannot say:

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
* **Splits.** ``train_split``, ``validation_split`` and ``test_split`` name them; a validation (or test) split
  the data does not have is carved from train with ``seed`` (``validation_size`` / ``test_size``).
  ``predict_split`` (default ``test``) is what ``lkd predict`` writes: it needs the text columns, not labels.

Every row keeps an ``idx`` (its row in the split it came from; GLUE's own ``idx`` where there is one): the key
of a teacher cache and of a submission file. The tokenizer is bound late, handed over by the model
(:meth:`connect`), so it is named once. :class:`lkd.data.GLUEDataModule` is this module with GLUE's names.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Literal

import datasets
import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader
from typing_extensions import override

from lkd.cache.store import SplitIdentity, TeacherCacheError, sha256_tensors
from lkd.data.mnist import SeededRandomSampler
from lkd.hub import DataFileError, load_hub_dataset
from lkd.losses import UNLABELLED
from lkd.tokenizers import load_tokenizer

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
ProblemType = Literal["classification", "regression"]
GLUE_PROBLEM_TYPES: dict[str, ProblemType] = {
    **dict.fromkeys(("cola", "sst2", "mrpc", "qqp", "mnli", "mnli_matched", "mnli_mismatched", "qnli", "rte", "wnli", "ax"),
                    "classification"),
    "stsb": "regression",
}
"""The problem type of each GLUE task (Wang et al. 2019, Table 1): STS-B scores similarity, the others classify."""
LABEL_CANDIDATES = ("label", "labels", "target", "class", "category", "score", "y")
FILE_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class TextDataError(ValueError):
    """The text-classification data is not what the module was told (columns, labels, splits)."""


def _near(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _whole(value) -> bool:
    return isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating)) and float(value).is_integer())


class LengthGroupedSampler(SeededRandomSampler):
    """A seeded permutation every epoch in which each batch holds examples of about the same length, so dynamic
    padding pads little (Hugging Face Trainer's ``group_by_length``): the permutation is cut into groups of 50
    batches, each group sorted by length and cut into batches, and the full batches shuffled (the one short
    batch stays last, so the DataLoader's batches are these batches). Resumable as :class:`SeededRandomSampler`.

    Args:
        lengths: (N,) tokens of each example.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, group_batches: int = 50):
        super().__init__(len(lengths), seed)
        self.lengths, self.batch_size, self.group = torch.as_tensor(lengths), batch_size, batch_size * group_batches

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator)
        grouped = [g[torch.argsort(self.lengths[g], descending=True, stable=True)] for g in order.split(self.group)]
        batches = list(torch.cat(grouped).split(self.batch_size))
        short = [batches.pop()] if len(batches[-1]) < self.batch_size else []
        shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return iter(torch.cat(shuffled + short).tolist())


def replace_words(text: str, words: np.ndarray, weights: np.ndarray, prob: float, rng: np.random.Generator) -> str:
    """``text`` with each whitespace-separated word replaced, with probability ``prob``, by a word drawn from
    ``words`` with probabilities ``weights`` (the training text's word frequencies): a transfer-set example
    near the data that a teacher labels (TinyBERT's augmentation, with frequency-drawn instead of
    MLM-predicted replacements)."""
    tokens = text.split()
    if not tokens:
        return text
    swap = rng.random(len(tokens)) < prob
    if swap.any():
        drawn = rng.choice(words, size=int(swap.sum()), p=weights)
        for i, w in zip(np.flatnonzero(swap), drawn):
            tokens[i] = str(w)
    return " ".join(tokens)


def data_file_paths(data_files: str | list[str] | dict[str, str | list[str]]) -> dict[str, list[Path]]:
    """``{split: [files]}`` of a ``data_files`` argument: a dict names the splits; a file or list of files is ``train``."""
    files = data_files if isinstance(data_files, dict) else {"train": data_files}
    return {split: [Path(p).expanduser() for p in ([f] if isinstance(f, (str, Path)) else f)] for split, f in files.items()}


def _one_line(err: BaseException, limit: int = 400) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def load_data_files(data_files: str | list[str] | dict[str, str | list[str]]) -> datasets.DatasetDict:
    """Local CSV (``.csv``, ``.tsv``), JSON Lines (``.json``, ``.jsonl``) or parquet files as a DatasetDict: a
    dict names the splits (``{train: a.csv, validation: b.csv}``); a file or list of files is the ``train`` split.

    Each split is read on its own, so a split may lack columns the others have (a test file without labels, to
    predict); the module checks every split's columns against what it needs (:meth:`TextClassificationDataModule.setup`).
    """
    paths = data_file_paths(data_files)
    flat = [p for ps in paths.values() for p in ps]
    if missing := [str(p) for p in flat if not p.is_file()]:
        if isinstance(data_files, str) and re.match(r"\s*\{|(train|validation|test)\w*:\S", data_files):
            raise FileNotFoundError(
                f"data.init_args.data_files={data_files!r} was read as one file name, not as splits: YAML reads "
                "`{train: a.csv}` as a mapping only with a space after each colon, and an unquoted {a,b} on a bash "
                "command line becomes two options (the last one wins). HINT: quote it, with spaces: "
                "--data.init_args.data_files='{train: reviews.csv, validation: dev.csv}'")
        raise FileNotFoundError(f"data_files: no such file {', '.join(missing)} (working directory {Path.cwd()}). "
                                "HINT: fix the path in data.init_args.data_files (relative paths start at the working directory)")
    formats = {FILE_FORMATS.get(p.suffix.lower()) for p in flat}
    if None in formats or len(formats) != 1:
        raise TextDataError(
            f"data_files {[str(p) for p in flat]}: one format per data set, named by the file ending; "
            f"known endings: {', '.join(FILE_FORMATS)}"
        )
    kwargs = {"delimiter": "\t"} if all(p.suffix.lower() == ".tsv" for p in flat) else {}
    file_format = formats.pop()
    splits = {}
    for split, files in paths.items():
        shown = ", ".join(str(p) for p in files)
        try:
            splits[split] = datasets.load_dataset(file_format, data_files={split: [str(p.resolve()) for p in files]}, **kwargs)[split]
        except datasets.exceptions.DatasetGenerationError as err:
            cause = err.__cause__ or err.__context__ or err
            if isinstance(err, datasets.exceptions.DatasetGenerationCastError):  # files of one split with other columns
                raise TextDataError(f"data_files of split {split!r} ({shown}) do not all have the same columns: {_one_line(err)}. "
                                    "HINT: give every file of a split the same columns") from err
            raise DataFileError(f"reading data_files {shown} (split {split!r}) failed: {type(cause).__name__}: {_one_line(cause)}. "
                                "HINT: check that the file is complete and in the format its ending says") from err
        except ValueError as err:  # datasets: 'Instruction "validation" corresponds to no data!' for a file without rows
            if re.search(r"Instruction \W?(\w+)\W? corresponds to no data", str(err)) is None:
                raise
            raise TextDataError(f"data_files: split {split!r} is empty ({shown} has no rows). "
                                "HINT: give it rows, or leave it out and carve it from train (validation_size / test_size)") from err
    return datasets.DatasetDict(splits)


class TextClassificationDataModule(pl.LightningDataModule):
    """Tokenised text-classification splits with dynamic padding.

    Batches are dicts: ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the tokenizer makes
    them), (B, T) padded to the longest example in the batch; ``labels`` (B,) long class ids, or float for
    regression; ``idx`` (B,) each example's row id (teacher cache key, submission index).

    Args:
        dataset: hub id or local folder (resolved to a mirror, :mod:`lkd.hub`). Leave None with ``data_files``.
        config: the data set's config (e.g. GLUE's ``mrpc``).
        data_files: local files instead of ``dataset``: a path, a list, or ``{split: path(s)}`` (csv/tsv, json/jsonl,
            parquet; :func:`load_data_files`).
        tokenizer: hub id or folder of the tokenizer. None (default): the model's, handed over by the model.
        task: the task's name, which picks its metrics (GLUE names: ``mrpc`` F1 + accuracy, ``cola`` MCC; any
            other: accuracy, or Pearson + Spearman for a float label). Default: ``config``, else ``"classification"``.
        text_columns: input columns, in order (None: every string column but the label's, in feature order).
        label_column: label column (None: the one column named like a label, :data:`LABEL_CANDIDATES`).
        label_names: class names, in class-id order. For string labels they fix the ids (default: sorted names of
            the training split); for integer labels they only name them.
        problem_type: ``classification`` or ``regression``. None (default): the GLUE task's (:data:`GLUE_PROBLEM_TYPES`),
            else read from the label type (floats: regression; class names or integers: classification). Given
            for a GLUE task, it must agree with the task's.
        train_split, validation_split: split names. ``test_split`` is what ``lkd test`` scores (None: ``test``
            when it has labels, else the validation split).
        predict_split: what ``lkd predict`` writes (default ``test``: the data's test split, or the one carved from
            train with ``test_size``); it needs the text columns only, labels may be absent. A split the data does
            not have is an error listing the ones it has.
        validation_size, test_size: carve a missing validation / test split from train (a fraction, or a count),
            seeded by ``seed``. A missing validation split with no ``validation_size`` takes 10 % of train; a
            missing test split is carved only with ``test_size`` (give it to ``lkd fit`` too, so training leaves
            those rows out).
        max_length: longest tokenised input; longer ones are truncated. Must not exceed the model's limit, and
            must leave one token per text column after the tokenizer's special tokens (3 for a BERT single text).
        batch_size: training batch size. ``eval_batch_size``: validation/test/predict batch size.
        train_size: a seeded random subset of this many training examples (None = all).
        transfer_copies: add this many changed copies of every training example without their labels
            (:func:`replace_words`, ``transfer_word_prob`` of the words replaced): a larger transfer set that the
            teacher labels (TinyBERT); their ``labels`` are :data:`lkd.losses.UNLABELLED` (NaN for regression), so
            they need a distillation module. 0 (default): none.
        group_by_length: training batches of examples of about the same length (:class:`LengthGroupedSampler`):
            less padding, so faster epochs on short-text data; False (default): a plain seeded shuffle.
        seed: seed of the carving, the subset and the shuffling (a fresh order every epoch, reproducible on resume).
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        dataset: str | None = None,
        config: str | None = None,
        data_files: str | list[str] | dict[str, str | list[str]] | None = None,
        tokenizer: str | None = None,
        *,
        task: str | None = None,
        text_columns: list[str] | None = None,
        label_column: str | None = None,
        label_names: list[str] | None = None,
        problem_type: ProblemType | None = None,
        train_split: str = "train",
        validation_split: str = "validation",
        test_split: str | None = None,
        predict_split: str = "test",
        validation_size: float | int | None = None,
        test_size: float | int | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        train_size: int | None = None,
        transfer_copies: int = 0,
        transfer_word_prob: float = 0.3,
        group_by_length: bool = False,
        seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__()
        problems = [f"{n} must be > 0, got {v}" for n, v in (("max_length", max_length), ("batch_size", batch_size),
                    ("eval_batch_size", eval_batch_size)) if v <= 0]
        if train_size is not None and train_size <= 0:
            problems.append(f"train_size must be > 0 or null, got {train_size}")
        for name, size in (("validation_size", validation_size), ("test_size", test_size)):
            if size is not None and not (0 < size < 1 or (float(size).is_integer() and size >= 1)):
                problems.append(f"{name} must be a fraction in (0, 1) or a count >= 1, got {size}")
        if transfer_copies < 0 or not 0 < transfer_word_prob <= 1:
            problems.append(f"transfer_copies must be >= 0 and transfer_word_prob in (0, 1], got {transfer_copies}, {transfer_word_prob}")
        if (dataset is None) == (data_files is None):
            problems.append("give exactly one of dataset (a hub id or folder) and data_files (local csv/json/parquet files), "
                            f"got dataset={dataset!r}, data_files={data_files!r}")
        if text_columns is not None and not 1 <= len(text_columns) <= 2:
            problems.append(f"text_columns must name 1 or 2 columns, got {text_columns}")
        if label_names is not None and len(set(label_names)) != len(label_names):
            problems.append(f"label_names must be distinct, got {label_names}")
        if text_columns is not None and 0 < max_length < len(text_columns):
            problems.append(f"max_length={max_length} leaves no token for each of the text columns {text_columns}")
        known = GLUE_PROBLEM_TYPES.get(task or config or "")
        if problem_type not in (None, "classification", "regression"):
            problems.append(f"problem_type must be 'classification', 'regression' or null, got {problem_type!r}")
        elif problem_type is not None and known is not None and problem_type != known:
            problems.append(f"problem_type={problem_type!r} contradicts task {task or config!r}, a GLUE {known} task. HINT: leave "
                            f"data.init_args.problem_type out, or, if this is not GLUE's {task or config}, name your task "
                            "(data.init_args.task=<your name>)")
        if problems:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(problems))
        self.dataset, self.config, self.data_files = dataset, config, data_files
        self.task = task or config or "classification"
        self.tokenizer_arg, self.tokenizer_name, self.tokenizer = tokenizer, tokenizer, None
        self._text_columns, self._label_column, self._label_names = text_columns, label_column, label_names
        self._problem_type = problem_type
        self.train_split, self.validation_split, self._test_split, self.predict_split = train_split, validation_split, test_split, predict_split
        self.validation_size, self.test_size = validation_size, test_size
        self.max_length, self.batch_size, self.eval_batch_size = max_length, batch_size, eval_batch_size
        self.train_size, self.seed, self.num_workers = train_size, seed, num_workers
        self.transfer_copies, self.transfer_word_prob = transfer_copies, transfer_word_prob
        self.group_by_length = group_by_length
        self.splits: dict[str, datasets.Dataset] = {}

    @property
    def source(self) -> str:
        """What the data is, for messages: ``dataset/config`` or the files."""
        if self.data_files is not None:
            return f"data_files {self.data_files}"
        return f"{self.dataset}/{self.config}" if self.config else str(self.dataset)

    # ---- what the data is ---------------------------------------------------------------------------
    def load(self) -> datasets.DatasetDict:
        """The data as ``datasets`` reads it (hub, mirror or files), before carving and label encoding."""
        if self.data_files is not None:
            return load_data_files(self.data_files)
        return load_hub_dataset(self.dataset, self.config)

    @cached_property
    def raw(self) -> datasets.DatasetDict:
        """The untokenised splits, by the names the data uses, each with an ``idx`` column; a missing
        validation/test split carved from train (seeded)."""
        loaded = self.load()
        data = datasets.DatasetDict({name: split if "idx" in split.column_names else split.add_column("idx", np.arange(len(split)))
                                     for name, split in loaded.items()})
        if self.train_split not in data:
            raise TextDataError(f"{self.source} has no train split {self.train_split!r}; its splits: {list(data)}. "
                                "HINT: set data.init_args.train_split")
        carved_test = self._test_split if self._test_split not in (None, self.validation_split) else "test"
        for name, size, default in ((self.validation_split, self.validation_size, 0.1), (carved_test, self.test_size, None)):
            if name is None or (name in data and size is None):
                continue
            if name in data:
                raise TextDataError(f"{self.source} has a split {name!r}; carve one ({'validation' if name == self.validation_split else 'test'}_size) "
                                    "only when the data lacks it")
            if (size := size if size is not None else default) is None:
                continue
            parts = data[self.train_split].train_test_split(test_size=size, seed=self.seed, shuffle=True)
            data[self.train_split], data[name] = parts["train"], parts["test"]
            rank_zero_info(f"{self.source}: split {name!r} carved from {self.train_split!r} ({len(parts['test'])} rows, seed {self.seed})")
        return data

    @property
    def features(self) -> datasets.Features:
        return self.raw[self.train_split].features

    @cached_property
    def label_column(self) -> str:
        """The label column: as given, else the one column named like a label."""
        columns = [c for c in self.features if c != "idx"]
        if self._label_column is not None:
            if self._label_column not in self.features:
                raise TextDataError(f"label_column {self._label_column!r} is not a column of {self.source}{_near(self._label_column, columns)}; "
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
            hints = "".join(_near(c, strings) for c in missing)
            raise TextDataError(f"text_columns {self._text_columns}: {missing} not in {self.source}{hints}; its columns: "
                                f"{list(self.features)} (string columns: {strings}). HINT: set data.init_args.text_columns")
        return list(self._text_columns)

    @property
    def _wanted_problem(self) -> tuple[ProblemType | None, str]:
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
    def _labels(self) -> tuple[str, list[str] | None]:
        """(kind, class names): kind ``"class_label"``, ``"names"`` (string labels), ``"ids"`` (integers),
        ``"float_ids"`` (whole-number floats read as class ids) or ``"float"`` (a regression score)."""
        feature = self.features[self.label_column]
        wanted, why = self._wanted_problem
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
        kind, _ = self._labels
        what = "regression (1 output, MSE)" if kind == "float" else f"classification ({self.num_classes} classes)"
        wanted, why = self._wanted_problem
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
        return self._labels[0] == "float"

    @property
    def num_classes(self) -> int:
        """Number of classes, or 1 for a float (regression) label."""
        kind, names = self._labels
        if kind == "float":
            return 1
        if names is not None:
            return len(names)
        values = [v for v in self.label_values(self.train_split) if v is not None]
        return int(max(values)) + 1

    @property
    def label_names(self) -> list[str] | None:
        return self._labels[1]

    @property
    def test_split(self) -> str:
        """The split ``lkd test`` scores: as given, else ``test`` when it has labels, else the validation split."""
        if self._test_split is not None:
            return self._test_split
        return "test" if "test" in self.raw and self.has_labels("test") else self.validation_split

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

    def _fully_labelled(self, split: str) -> bool:
        return self.has_labels(split) and not self.unlabelled_rows(split)

    def encode_labels(self, split: str, labels: list) -> list:
        """``labels`` of ``split`` as class ids (or floats), checked against the classes the training split knows."""
        kind, names = self._labels
        if kind == "names":
            self._check_present(labels, split)
            index = {name: i for i, name in enumerate(names)}
            if unknown := [(row, v) for row, v in enumerate(labels) if v not in index]:
                row, value = unknown[0]
                raise TextDataError(f"{self.source}: label {value!r} (split {split!r}, row {row}) is not one of the known classes "
                                    f"{names}{_near(str(value), names)}. HINT: fix the data, or list every class in data.init_args.label_names")
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

    # ---- tokenisation -------------------------------------------------------------------------------
    def connect(self, tokenizer_name: str, model_max_length: int | None = None) -> None:
        """Bind the tokenizer (the model's; the model calls this in its ``setup``, :meth:`lkd.modules.LKDModule.connect_data`)
        and check ``max_length`` against the model's limit. A ``tokenizer`` given to the constructor wins."""
        if model_max_length is not None and self.max_length > model_max_length:
            raise ValueError(
                f"max_length={self.max_length} is over the model's limit of {model_max_length} positions; "
                f"set data.init_args.max_length <= {model_max_length}"
            )
        name = self.tokenizer_arg or tokenizer_name
        if self.tokenizer is None or self.tokenizer_name != name:
            self.tokenizer_name, self.tokenizer = name, load_tokenizer(name)
            self.splits = {}  # tokenised again with this tokenizer
        if "text_columns" in self.__dict__:  # the data is read (the model connects after the data's setup)
            self.check_max_length()

    def min_max_length(self) -> int:
        """The shortest ``max_length`` that keeps one token of every text column: the tokenizer's special tokens for
        one text or a pair ([CLS] a [SEP] b [SEP]: 3) plus one per text column."""
        pair = len(self.text_columns) == 2
        count = getattr(self.tokenizer, "num_special_tokens_to_add", None)  # ByteTokenizer adds none
        return (count(pair=pair) if count is not None else 0) + len(self.text_columns)

    def check_max_length(self) -> None:
        """Refuse a ``max_length`` that leaves no room for text: under it the tokenizer gives up truncating (a length
        below its special tokens) or cuts every text away ([CLS] [SEP]). Every value this allows is truncated."""
        if self.max_length < (least := self.min_max_length()):
            special = least - len(self.text_columns)
            raise TextDataError(
                f"data.init_args.max_length={self.max_length} leaves no room for text: the tokenizer {self.tokenizer_name} adds "
                f"{special} special tokens to {'a pair of texts' if len(self.text_columns) == 2 else 'a text'} "
                f"{self.text_columns}, and each text needs at least one token. HINT: set data.init_args.max_length >= {least} "
                "(128 is usual)"
            )

    def stage_splits(self, stage: str) -> list[str]:
        return {"fit": [self.train_split, self.validation_split], "validate": [self.validation_split], "test": [self.test_split],
                "predict": [self.predict_split]}[stage]

    def _split_option(self, split: str, stage: str) -> str:
        """The option that chose ``split`` for ``stage``, as a user writes it."""
        if stage in ("test", "predict"):
            return f"data.init_args.{stage}_split"
        return "data.init_args.train_split" if split == self.train_split else "data.init_args.validation_split"

    def _where(self, split: str) -> str:
        """``split`` and where it comes from (its files, for local files), for messages."""
        if self.data_files is not None and split in (files := data_file_paths(self.data_files)):
            return f"split {split!r} ({', '.join(str(p) for p in files[split])})"
        return f"{self.source} split {split!r}"

    def check_split(self, split: str, stage: str) -> None:
        """Refuse a split ``stage`` cannot use: missing (listing the splits there are), empty, without a text column,
        or, for any stage but predict, without labels. Each names the split, its file and the option that chose it."""
        stage = str(getattr(stage, "value", stage))  # Lightning passes a TrainerFn ("TrainerFn.TESTING" in an f-string)
        option = self._split_option(split, stage)
        if split not in self.raw:
            carve = ""
            if split == "test":
                carve = (", or carve a test split from train with data.init_args.test_size (e.g. 0.1; give it to `lkd fit` too, "
                         "so training leaves those rows out)")
            elif split == self.validation_split:
                carve = ", or carve it from train with data.init_args.validation_size"
            files = f", add a file for it (data_files: {{{split}: ...}})" if self.data_files is not None else ""
            raise TextDataError(f"{option}={split!r}: {self.source} has no split {split!r}; its splits: {', '.join(self.raw)}. "
                                f"HINT: set {option} to one of them{files}{carve}")
        if not len(self.raw[split]):
            raise TextDataError(f"{self._where(split)} is empty. HINT: give it rows, or carve it from train "
                                "(validation_size / test_size)")
        columns = [c for c in self.raw[split].column_names if c != "idx"]
        if missing := [c for c in self.text_columns if c not in self.raw[split].column_names]:
            near = "".join(_near(c, columns) for c in missing)
            raise TextDataError(f"{self._where(split)} lacks the text column(s) {missing}{near} that {self.train_split!r} has "
                                f"(text columns {self.text_columns}); its columns: {columns}. HINT: name the column(s) in that "
                                "split as in train, or set data.init_args.text_columns to columns every split has")
        if stage != "predict" and not self.has_labels(split):
            scored = {"fit": "trained on" if split == self.train_split else "validated", "validate": "validated",
                      "test": "scored"}[stage]
            if self.label_column not in self.raw[split].column_names:
                why = f"has no label column {self.label_column!r} (its columns: {columns})"
            else:
                why = f"has no labels (every {self.label_column!r} is empty or -1: GLUE keeps test labels hidden)"
            hint = (f"score a labelled split ({option}=validation), or write predictions for it with `lkd predict` "
                    f"(data.init_args.predict_split={split})" if stage == "test" else f"set {option} to a labelled split")
            raise TextDataError(f"{self._where(split)} {why}, so it cannot be {scored}. HINT: {hint}")
        if stage != "predict" and (gaps := self.unlabelled_rows(split)):
            value = self.label_values(split)[gaps[0]]
            raise TextDataError(f"{self._where(split)}: label of row {gaps[0]} is {'empty' if value is None or value != value else value!r} "
                                f"(column {self.label_column!r}; {len(gaps)} rows without a label). HINT: give every row of "
                                f"{option}={split!r} a label, or move the unlabelled rows to a split of their own for `lkd predict`")

    @override
    def setup(self, stage: str) -> None:
        for split in self.stage_splits(stage):
            self.check_split(split, stage)
        _ = self.text_columns, self.num_classes  # columns and labels checked before any tokenising
        if self.tokenizer_arg is not None and self.tokenizer is None:
            self.connect(self.tokenizer_arg)
        if self.tokenizer is not None:
            self.check_max_length()
        if stage == "fit":
            train = len(self.raw[self.train_split])
            subset = f" (seeded subset of {train})" if self.train_size and self.train_size < train else ""
            rank_zero_info(
                f"{self.task} ({self.source}): train {min(self.train_size or train, train)} examples{subset}, validation "
                f"{len(self.raw[self.validation_split])}; text columns {self.text_columns}, label {self.label_column!r}: "
                f"{self.label_decision}"
            )

    def split(self, name: str) -> datasets.Dataset:
        """The tokenised split (train: the seeded ``train_size`` subset), tokenised on first use."""
        if self.tokenizer is None:
            raise ValueError(
                f"{type(self).__name__} has no tokenizer yet: set data.init_args.tokenizer, or let the model connect it "
                "(trainer.fit(model, datamodule=...) with an lkd GLUE module does), or call connect(tokenizer_name)"
            )
        if name not in self.splits:
            self.check_max_length()
            self.splits[name] = self._tokenise(name)
        return self.splits[name]

    def _tokenise(self, split: str) -> datasets.Dataset:
        data = self.raw[split]
        if not len(data):
            raise TextDataError(f"{self.source} split {split!r} is empty")
        if split == self.train_split and self.train_size is not None and self.train_size < len(data):
            data = data.shuffle(seed=self.seed).select(range(self.train_size))
        columns, label = self.text_columns, self.label_column
        if missing := [c for c in columns if c not in data.column_names]:
            raise TextDataError(f"{self._where(split)} lacks the text column(s) {missing}; its columns: {data.column_names}. "
                                "HINT: name the column(s) in that split as in train")
        labelled = label in data.column_names
        if split == self.predict_split:
            labelled = self._fully_labelled(split)  # predicting needs no labels: kept only when every row has one
        tokenizer, max_length = self.tokenizer, self.max_length
        if labelled:
            labels = list(self.encode_labels(split, data[label][:]))  # checked here, before the (cached) map
        if split == self.train_split and self.transfer_copies:
            extra = self.transfer_set(data)
            data = datasets.concatenate_datasets([data, extra])
            labels = labels + [float("nan") if self.is_regression else UNLABELLED] * len(extra)

        def encode(batch, rows):
            texts = [["" if t is None else str(t) for t in batch[c]] for c in columns]
            out = tokenizer(*texts, truncation=True, max_length=max_length)
            if labelled:
                out["labels"] = [labels[i] for i in rows]
            return out

        data = data.map(encode, batched=True, with_indices=True, desc=f"tokenise {self.task}/{split}")  # cached by fingerprint
        keep = [c for c in MODEL_INPUTS if c in data.column_names] + (["labels"] if labelled else []) + ["idx"]
        data = data.select_columns(keep)
        if self.is_regression and labelled:
            data = data.cast_column("labels", datasets.Value("float32"))
        data.set_format("torch")
        return data

    def transfer_set(self, data: datasets.Dataset) -> datasets.Dataset:
        """``transfer_copies`` changed copies of ``data`` (:func:`replace_words` on every text column), seeded, with
        new ``idx`` values after the split's own."""
        columns, n, offset = self.text_columns, len(data), int(max(data["idx"])) + 1
        counts: dict[str, int] = {}
        for c in columns:
            for text in data[c]:
                for w in (text or "").split():
                    counts[w] = counts.get(w, 0) + 1
        words = np.array(list(counts))
        weights = np.array(list(counts.values()), dtype=float)
        weights /= weights.sum()
        copies = []
        for copy in range(self.transfer_copies):
            rng = np.random.default_rng([self.seed, copy])
            texts = {c: [replace_words(t or "", words, weights, self.transfer_word_prob, rng) for t in data[c]] for c in columns}
            ids = np.arange(n) + offset + copy * n
            copies.append(data.remove_columns([*columns, "idx"]).add_column("idx", ids.tolist())
                          .map(lambda _, i: {c: texts[c][i] for c in columns}, with_indices=True, desc="transfer set")
                          .cast(data.features))
        rank_zero_info(f"{self.task}: transfer set of {self.transfer_copies} x {n} changed training examples without labels "
                       f"({self.transfer_word_prob:.0%} of the words replaced)")
        return datasets.concatenate_datasets(copies)

    def _collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        inputs = [{k: e[k] for k in MODEL_INPUTS if k in e} for e in examples]
        batch = dict(self.tokenizer.pad(inputs, return_tensors="pt"))
        if "labels" in examples[0]:
            batch["labels"] = torch.stack([e["labels"] for e in examples])
        batch["idx"] = torch.stack([e["idx"] for e in examples])
        return batch

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        data = self.split(split)
        sampler = None
        if train and self.group_by_length:
            lengths = [len(ids) for ids in data.with_format(None)["input_ids"]]
            sampler = LengthGroupedSampler(lengths, self.batch_size, self.seed)
        elif train:
            sampler = SeededRandomSampler(len(data), self.seed)
        return DataLoader(data, batch_size=self.batch_size if train else self.eval_batch_size, sampler=sampler,
                          collate_fn=self._collate, num_workers=self.num_workers)

    # ---- the teacher-cache contract (lkd.cache.store.CacheableData), keyed by ``idx`` --------------------------
    @property
    def _cache_splits(self) -> dict[str, str]:
        return {"train": self.train_split, "val": self.validation_split}

    def cache_stages(self) -> list[str]:
        return [stage for stage, name in self._cache_splits.items() if name in self.raw and len(self.raw[name])]

    def cache_identity(self, stage: str) -> SplitIdentity:
        """Ids (the ``idx`` column, so a seeded ``train_size`` subset works), tokenised content, tokenizer."""
        name = self._cache_splits[stage]
        data = self.split(name)
        if "idx" not in data.column_names:
            raise TeacherCacheError(f"{self.source} split {name!r} has no 'idx' column to key a teacher cache by; "
                                    f"its columns are {data.column_names}")
        columns = arrow_columns(data)
        ids = columns.pop("idx")
        return SplitIdentity(dataset=f"{type(self).__name__} {self.source}", split=name, rows=len(data),
                             sample_ids_sha256=sha256_tensors({"ids": ids}), content_sha256=sha256_tensors(columns),
                             tokenizer=self.tokenizer_name)

    def cache_sample_ids(self, stage: str) -> torch.Tensor:
        data = self.split(self._cache_splits[stage])
        return torch.as_tensor(np.asarray(data.with_format("numpy")["idx"]), dtype=torch.long)

    def cache_batches(self, stage: str):
        return self._loader(self._cache_splits[stage])  # eval batch size, no shuffling

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_split, train=True)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader(self.validation_split)

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_split)

    @override
    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_split)


def arrow_columns(data: datasets.Dataset) -> dict[str, torch.Tensor]:
    """Every column of a (possibly shuffled/selected) ``datasets.Dataset`` as flat tensors, in dataset order;
    ragged list columns become their values plus their lengths (a content hash of tokenised text)."""
    import pyarrow.compute as pc

    table = data.with_format("arrow")[:]  # in dataset order (indices mapping applied)
    out = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if str(column.type).startswith(("list", "large_list")):
            out[f"{name}.values"] = torch.from_numpy(np.asarray(pc.list_flatten(column).to_numpy(zero_copy_only=False)).copy())
            out[f"{name}.lengths"] = torch.from_numpy(np.asarray(pc.list_value_length(column).to_numpy(zero_copy_only=False)).copy())
        else:
            out[name] = torch.from_numpy(np.asarray(column.to_numpy(zero_copy_only=False)).copy())
    return out
