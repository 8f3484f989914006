"""Text classification (or regression) from any `datasets` source as a LightningDataModule: a hub id or local
mirror (``nyu-mll/glue`` + config ``mrpc``), or local CSV / JSON Lines / parquet files (``data_files``,
:mod:`lkd.data.files`).

What the data is comes from the data, or from YAML where the data cannot say:

* **Columns, labels and problem type** (:mod:`lkd.data.labels`): ``text_columns`` and ``label_column`` named or
  detected; class names, class ids or regression scores read from the label type, or from the GLUE task or
  ``problem_type`` where it says; a value that fits none, or a class the training split does not know, is an
  error naming the value, its split and row.
* **Splits.** ``train_split``, ``validation_split`` and ``test_split`` name them; a validation (or test) split
  the data does not have is carved from train with ``seed`` (``validation_size`` / ``test_size``).
  ``predict_split`` (default ``test``) is what ``lkd predict`` writes: it needs the text columns, not labels.

Every row keeps an ``idx`` (its row in the split it came from; GLUE's own ``idx`` where there is one): the key
of a teacher cache and of a submission file. The tokenizer is bound late, handed over by the model
(:meth:`connect`), so it is named once. :class:`lkd.data.GLUEDataModule` is this module with GLUE's names.
"""

from __future__ import annotations

from functools import cached_property

import datasets
import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader
from typing_extensions import override

from lkd.cache.store import SplitIdentity
from lkd.data.errors import TextDataError
from lkd.data.files import data_file_paths, load_data_files
from lkd.data.labels import GLUE_PROBLEM_TYPES, ProblemType, TextLabels
from lkd.data.samplers import LengthGroupedSampler, SeededRandomSampler
from lkd.data.split_identity import tokenised_split_identity
from lkd.data.splits import carve_splits, check_split
from lkd.data.tokenise import check_max_length, collate, min_max_length, tokenise
from lkd.data.transfer import TRANSFER_WORDS, TransferTexts, TransferWords, data_words, embedding_neighbours, encoder_word_embeddings, texts_from, transfer_set
from lkd.hub import load_hub_dataset
from lkd.losses import UNLABELLED
from lkd.tokenizers import load_tokenizer

__all__ = ["LengthGroupedSampler", "ProblemType", "TextClassificationDataModule", "TextDataError"]


def one_text_column_only(columns: list[str], task: str | None = None) -> str:
    """Why ``transfer_texts`` is refused for a task with ``columns`` (not one text column), and what to do instead."""
    return (f"transfer_texts fills one text column, but {task or 'text_columns'} has {len(columns)}: {columns} (a pair task "
            "needs pairs). HINT: leave transfer_texts out, or use transfer_copies")


class TextClassificationDataModule(pl.LightningDataModule):
    """Tokenised text-classification splits with dynamic padding.

    Batches are dicts: ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the tokenizer makes
    them), (B, T) padded to the longest example in the batch; ``labels`` (B,) long class ids, or float for
    regression; ``idx`` (B,) each example's row id (submission index), also as ``sample_id`` (teacher cache key).

    Args:
        dataset: hub id or local folder (resolved to a mirror, :mod:`lkd.hub`). Leave None with ``data_files``.
        config: the data set's config (e.g. GLUE's ``mrpc``).
        data_files: local files instead of ``dataset``: a path, a list, or ``{split: path(s)}`` (csv/tsv, json/jsonl,
            parquet; :func:`lkd.data.files.load_data_files`).
        tokenizer: hub id or folder of the tokenizer. None (default): the model's, handed over by the model.
        task: the task's name, which picks its metrics (GLUE names: ``mrpc`` F1 + accuracy, ``cola`` MCC; any
            other: accuracy, or Pearson + Spearman for a float label). Default: ``config``, else ``"classification"``.
        text_columns: input columns, in order (None: every string column but the label's, in feature order).
        label_column: label column (None: the one column named like a label,
            :data:`lkd.data.labels.LABEL_CANDIDATES`).
        label_names: class names, in class-id order. For string labels they fix the ids (default: sorted names of
            the training split); for integer labels they only name them.
        problem_type: ``classification`` or ``regression``. None (default): the GLUE task's
            (:data:`lkd.data.labels.GLUE_PROBLEM_TYPES`),
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
        labelled_size: only this many training rows keep their label, the first of the same seeded shuffle that
            ``train_size`` draws from (so ``labelled_size: 8000`` labels exactly the rows ``train_size: 8000`` keeps);
            the others keep their text and get :data:`lkd.losses.UNLABELLED` (NaN for regression): Hinton et al.'s
            transfer set of real unlabelled text, which a distillation module labels with the teacher's soft
            targets. None (default): every row keeps its label.
        transfer_copies: add this many changed copies of every training example without their labels
            (``transfer_word_prob`` of the words replaced): a larger transfer set that the teacher labels (TinyBERT);
            their ``labels`` are :data:`lkd.losses.UNLABELLED` (NaN for regression), so they need a distillation
            module. 0 (default): none.
        transfer_words: what replaces a word in a changed copy: ``frequency`` (default), a word drawn by its frequency
            in the training text (:func:`lkd.data.transfer.replace_words`); ``neighbours``, one of the word's 15 nearest
            words in the tokenizer's encoder's word embeddings (:func:`lkd.data.transfer.embedding_neighbours`:
            TinyBERT's GloVe candidates; often another form of the same word).
        transfer_texts: real text from another data set added to the training split without labels
            (:class:`lkd.data.transfer.TransferTexts`, e.g. ``{dataset: nyu-mll/glue, config: sst2, column: sentence}``):
            a transfer set that the teacher labels, as with ``labelled_size``; single-text tasks only. None (default): none.
        group_by_length: training batches of examples of about the same length 
            (:class:`lkd.data.samplers.LengthGroupedSampler`):
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
        labelled_size: int | None = None,
        transfer_copies: int = 0,
        transfer_word_prob: float = 0.3,
        transfer_words: TransferWords = "frequency",
        transfer_texts: TransferTexts | None = None,
        group_by_length: bool = False,
        seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__()
        problems = [f"{n} must be > 0, got {v}" for n, v in (("max_length", max_length), ("batch_size", batch_size),
                    ("eval_batch_size", eval_batch_size)) if v <= 0]
        if train_size is not None and train_size <= 0:
            problems.append(f"train_size must be > 0 or null, got {train_size}")
        if labelled_size is not None and not 0 < labelled_size < (train_size or float("inf")):
            problems.append(f"labelled_size must be > 0 and below train_size ({train_size}) or null, got {labelled_size}")
        for name, size in (("validation_size", validation_size), ("test_size", test_size)):
            if size is not None and not (0 < size < 1 or (float(size).is_integer() and size >= 1)):
                problems.append(f"{name} must be a fraction in (0, 1) or a count >= 1, got {size}")
        if transfer_copies < 0 or not 0 < transfer_word_prob <= 1:
            problems.append(f"transfer_copies must be >= 0 and transfer_word_prob in (0, 1], got {transfer_copies}, {transfer_word_prob}")
        if transfer_words not in TRANSFER_WORDS:
            problems.append(f"transfer_words must be one of {list(TRANSFER_WORDS)}, got {transfer_words!r}")
        if text_columns is not None and len(text_columns) != 1 and transfer_texts is not None:
            problems.append(one_text_column_only(text_columns))
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
        self.train_size, self.labelled_size, self.seed, self.num_workers = train_size, labelled_size, seed, num_workers
        self.transfer_copies, self.transfer_word_prob, self.transfer_texts = transfer_copies, transfer_word_prob, transfer_texts
        self.transfer_words = transfer_words
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
        validation/test split carved from train (seeded, :func:`lkd.data.splits.carve_splits`)."""
        return carve_splits(self.load(), source=self.source, train_split=self.train_split, validation_split=self.validation_split,
                            test_split=self._test_split, validation_size=self.validation_size, test_size=self.test_size,
                            seed=self.seed)

    @property
    def features(self) -> datasets.Features:
        return self.raw[self.train_split].features

    # ---- columns and labels: read by :class:`lkd.data.labels.TextLabels` ---------------------------------
    @cached_property
    def text_labels(self) -> TextLabels:
        """The columns and labels of :attr:`raw`, read from the data (or the options) on first use."""
        return TextLabels(self.raw, source=self.source, task=self.task, train_split=self.train_split,
                          text_columns=self._text_columns, label_column=self._label_column, label_names=self._label_names,
                          problem_type=self._problem_type)

    @property
    def label_column(self) -> str:
        """The label column: as given, else the one column named like a label."""
        return self.text_labels.label_column

    @property
    def text_columns(self) -> list[str]:
        """Input columns: as given, or every string column but the label's, in feature order (1 = single, 2 = pair)."""
        return self.text_labels.text_columns

    @property
    def label_decision(self) -> str:
        """What the labels were read as and why, for the log: the problem type, its source and how to override it."""
        return self.text_labels.label_decision

    @property
    def is_regression(self) -> bool:
        return self.text_labels.is_regression

    @property
    def num_classes(self) -> int:
        """Number of classes, or 1 for a float (regression) label."""
        return self.text_labels.num_classes

    @property
    def label_names(self) -> list[str] | None:
        return self.text_labels.label_names

    def label_values(self, split: str) -> list:
        """The label column of ``split`` as a list."""
        return self.text_labels.label_values(split)

    def has_labels(self, split: str) -> bool:
        """Whether ``split`` carries labels (GLUE's hidden test labels are all -1; a file without the column has none)."""
        return self.text_labels.has_labels(split)

    def unlabelled_rows(self, split: str) -> list[int]:
        """Rows of ``split`` without a label: None or NaN, and -1 for class labels (GLUE's mark of a hidden label)."""
        return self.text_labels.unlabelled_rows(split)

    def encode_labels(self, split: str, labels: list) -> list:
        """``labels`` of ``split`` as class ids (or floats), checked against the classes the training split knows."""
        return self.text_labels.encode_labels(split, labels)

    @property
    def test_split(self) -> str:
        """The split ``lkd test`` scores: as given, else ``test`` when it has labels, else the validation split."""
        if self._test_split is not None:
            return self._test_split
        return "test" if "test" in self.raw and self.has_labels("test") else self.validation_split

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
        if "text_labels" in self.__dict__ and self.text_labels.columns_read:  # the model connects after the data's setup
            self.check_max_length()

    def min_max_length(self) -> int:
        """The shortest ``max_length`` that keeps one token of every text column (:func:`lkd.data.tokenise.min_max_length`)."""
        return min_max_length(self.tokenizer, self.text_columns)

    def check_max_length(self) -> None:
        """Refuse a ``max_length`` that leaves no room for text (:func:`lkd.data.tokenise.check_max_length`)."""
        check_max_length(self.max_length, self.tokenizer, self.tokenizer_name, self.text_columns)

    def stage_splits(self, stage: str) -> list[str]:
        return {"fit": [self.train_split, self.validation_split], "validate": [self.validation_split], "test": [self.test_split],
                "predict": [self.predict_split]}[stage]

    def _where(self, split: str) -> str:
        """``split`` and where it comes from (its files, for local files), for messages."""
        if self.data_files is not None and split in (files := data_file_paths(self.data_files)):
            return f"split {split!r} ({', '.join(str(p) for p in files[split])})"
        return f"{self.source} split {split!r}"

    def check_split(self, split: str, stage: str) -> None:
        """Refuse a split ``stage`` cannot use (:func:`lkd.data.splits.check_split`): missing, empty, without a text
        column, or, for any stage but predict, without labels."""
        stage = str(getattr(stage, "value", stage))  # Lightning passes a TrainerFn ("TrainerFn.TESTING" in an f-string)
        check_split(self.text_labels, split, stage, where=self._where(split), validation_split=self.validation_split,
                    files=self.data_files is not None)

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
            labelled = self.text_labels.fully_labelled(split)  # predicting needs no labels: kept only when every row has one
        labels = list(self.encode_labels(split, data[label][:])) if labelled else None  # checked before the (cached) map
        if split == self.train_split and self.labelled_size is not None and labels is not None:
            labels = self.unlabel(data, labels)
        if split == self.train_split and self.transfer_copies:
            data, labels = self.with_unlabelled(data, labels, self.transfer_set(data))
        if split == self.train_split and self.transfer_texts is not None:
            data, labels = self.with_unlabelled(data.select_columns([*columns, "idx"]), labels, self.texts_from_elsewhere(data))
        return tokenise(data, columns, self.tokenizer, self.max_length, labels, regression=labelled and self.is_regression,
                        desc=f"tokenise {self.task}/{split}")

    @property
    def unlabelled_value(self) -> float | int:
        """The label of a row without one: NaN for a regression, :data:`lkd.losses.UNLABELLED` for classes."""
        return float("nan") if self.is_regression else UNLABELLED

    def with_unlabelled(self, data: datasets.Dataset, labels: list, extra: datasets.Dataset) -> tuple[datasets.Dataset, list]:
        """``data`` and its ``labels`` with the ``extra`` rows (a transfer set, same features) after them, unlabelled."""
        return datasets.concatenate_datasets([data, extra]), labels + [self.unlabelled_value] * len(extra)

    def unlabel(self, data: datasets.Dataset, labels: list) -> list:
        """``labels`` with every row but the first ``labelled_size`` of the seeded shuffle set to UNLABELLED (the
        rows keep their text: a transfer set). The shuffle is ``train_size``'s, so the labelled rows are the ones
        a ``train_size: labelled_size`` run trains on, whatever ``train_size`` is here."""
        full = self.raw[self.train_split]
        if self.labelled_size >= len(full):
            raise ValueError(f"labelled_size={self.labelled_size} leaves no row unlabelled: {self.task}'s "
                             f"{self.train_split} split has {len(full)} rows. HINT: lower labelled_size, or leave it out")
        keep = set(full.shuffle(seed=self.seed).select(range(self.labelled_size))["idx"][:])  # raw splits all have idx
        rows = data["idx"][:]
        out = [y if row in keep else self.unlabelled_value for y, row in zip(labels, rows, strict=True)]
        rank_zero_info(f"{self.task}: {sum(row in keep for row in rows)} of {len(data)} training rows keep their label, "
                       "the others are a transfer set the teacher labels")
        return out

    def transfer_set(self, data: datasets.Dataset) -> datasets.Dataset:
        """``transfer_copies`` changed copies of ``data`` (:func:`lkd.data.transfer.transfer_set`), seeded, with new
        ``idx`` values after the split's own."""
        neighbours = None
        if self.transfer_words == "neighbours":
            embeddings = encoder_word_embeddings(self.tokenizer_name)  # first: it names a tokenizer without an encoder
            neighbours = embedding_neighbours(data_words(data, self.text_columns), self.tokenizer.get_vocab(), embeddings)
        extra = transfer_set(data, self.text_columns, copies=self.transfer_copies, word_prob=self.transfer_word_prob, seed=self.seed,
                             neighbours=neighbours)
        by = f"by one of its nearest words in {self.tokenizer_name}'s word embeddings ({len(neighbours):,} words have some)" \
            if neighbours is not None else "by a word drawn by its frequency"
        rank_zero_info(f"{self.task}: transfer set of {self.transfer_copies} x {len(data)} changed training examples without labels "
                       f"({self.transfer_word_prob:.0%} of the words replaced, each {by})")
        return extra

    def texts_from_elsewhere(self, data: datasets.Dataset) -> datasets.Dataset:
        """The texts of ``transfer_texts`` as rows of ``data``'s one text column (:func:`lkd.data.transfer.texts_from`),
        ``idx`` after ``data``'s own."""
        if len(self.text_columns) != 1:
            raise ValueError(one_text_column_only(self.text_columns, self.task))
        source = self.transfer_texts
        if self.dataset is not None and (source.dataset, source.config) == (self.dataset, self.config):
            if source.split != self.train_split:  # the rows the score is measured on, teacher-labelled, in training
                raise ValueError(f"transfer_texts reads {source.source}, this task's own {source.split!r} split: its texts would "
                                 "train the student that is scored on them. HINT: name another data set's texts, or leave transfer_texts out")
            raise ValueError(f"transfer_texts reads {source.source}, this task's own training split: its rows are in training "
                             "already. HINT: labelled_size keeps some of them labelled and the rest as a transfer set")
        extra = texts_from(self.transfer_texts, data, self.text_columns[0], seed=self.seed)
        rank_zero_info(f"{self.task}: transfer set of {len(extra)} texts without labels from {self.transfer_texts.source}")
        return extra

    def _collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        return collate(self.tokenizer, examples)

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
        return tokenised_split_identity(self.split(name), dataset=f"{type(self).__name__} {self.source}", source=self.source,
                                        split=name, tokenizer=self.tokenizer_name)

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

