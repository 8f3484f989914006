"""GLUE (or any GLUE-shaped text-classification set) as a LightningDataModule.

Text columns and label type are read from the data's features: string columns are the inputs (one =
single sentence, two = a sentence pair), a ``ClassLabel`` label is classification with its number of
names, a float label is regression (``num_classes = 1``). The tokenizer is bound late, handed over by the model
(``TransformerClassifier.encoder_name``, through :meth:`GLUEDataModule.connect`), so it is named once.
"""

from __future__ import annotations

from pathlib import Path

from functools import cached_property

import datasets
import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader
from typing_extensions import override

from lkd.cache.store import SplitIdentity, TeacherCacheError, sha256_tensors
from lkd.data.mnist import SeededRandomSampler
from lkd.hub import load_hub_dataset, load_tokenizer, resolve_dataset_path

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class GLUEDataModule(pl.LightningDataModule):
    """Tokenised GLUE splits with dynamic padding.

    Batches are dicts: ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the tokenizer makes
    them), (B, T) padded to the longest example in the batch; ``labels`` (B,) long, or float for regression;
    ``idx`` (B,) the example's GLUE index (for submission files).

    Args:
        task: a config of ``hub_id`` (GLUE: ``sst2``, ``mrpc``, ``rte``, ``cola``, ``stsb``, ...).
        hub_id: data set id, resolved to a local mirror when there is one (:mod:`lkd.hub`).
        tokenizer: hub id or folder of the tokenizer. None (default): the model's, handed over by the model
            (:meth:`connect`, called from the LightningModule's ``setup``).
        max_length: longest tokenised input; longer ones are truncated. Must not exceed the model's limit.
        batch_size: training batch size. ``eval_batch_size``: validation/test/predict batch size.
        train_size: use a seeded random subset of this many training examples (None = all), e.g. to fit a
            CPU time budget; said in the log.
        test_split: split that ``lkd test`` scores. GLUE hides its test labels (they are -1), so the default
            is ``validation`` (the dev score everyone reports); a split without labels is an error.
        predict_split: split that ``lkd predict`` writes a submission for.
        text_columns: input columns, in order (None: every string column of the data, in feature order).
        label_column: name of the label column.
        seed: seed of the subset and of the shuffling (a fresh order every epoch, reproducible on resume).
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        task: str = "sst2",
        hub_id: str = "nyu-mll/glue",
        tokenizer: str | None = None,
        *,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        train_size: int | None = None,
        test_split: str = "validation",
        predict_split: str = "test",
        text_columns: list[str] | None = None,
        label_column: str = "label",
        seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__()
        problems = [f"{n} must be > 0, got {v}" for n, v in (("max_length", max_length), ("batch_size", batch_size),
                    ("eval_batch_size", eval_batch_size)) if v <= 0]
        if train_size is not None and train_size <= 0:
            problems.append(f"train_size must be > 0 or null, got {train_size}")
        if problems:
            raise ValueError("GLUEDataModule: " + "; ".join(problems))
        self.task, self.hub_id, self.tokenizer_arg, self.tokenizer_name = task, hub_id, tokenizer, tokenizer
        self.max_length, self.batch_size, self.eval_batch_size = max_length, batch_size, eval_batch_size
        self.train_size, self.test_split, self.predict_split = train_size, test_split, predict_split
        self.label_column, self.seed, self.num_workers = label_column, seed, num_workers
        self._text_columns = text_columns
        self.tokenizer = None
        self.splits: dict[str, datasets.Dataset] = {}
        self._check_task()

    # ---- what the data is ---------------------------------------------------------------------------
    def _check_task(self) -> None:
        path = resolve_dataset_path(self.hub_id)
        try:
            available = datasets.get_dataset_config_names(path)
        except Exception:  # noqa: BLE001 - offline hub or no config list: load_hub_dataset reports it later
            return
        if available and self.task not in available:
            folder = Path(path)
            parent_configs = _config_names(folder.parent) if folder.is_dir() else []
            if self.task in parent_configs or folder.name == self.task:  # the task's own folder given as the data set
                raise ValueError(
                    f"hub_id {self.hub_id!r} is the folder of one task ({folder.name}), not the data set: its only config is "
                    f"{', '.join(sorted(available))}. HINT: set data.init_args.hub_id to {str(folder.parent)!r} (or the hub id, "
                    f"e.g. nyu-mll/glue) and data.init_args.task to {self.task!r}"
                )
            raise ValueError(
                f"unknown task {self.task!r} for {self.hub_id} ({path}); available configs: {', '.join(sorted(available))}. "
                "HINT: set data.init_args.task to one of them"
            )

    @cached_property
    def raw(self) -> datasets.DatasetDict:
        """The untokenised splits of ``task``."""
        return load_hub_dataset(self.hub_id, self.task)

    @property
    def features(self) -> datasets.Features:
        return next(iter(self.raw.values())).features

    @property
    def text_columns(self) -> list[str]:
        """Input columns: as given, or every string column in feature order (1 = single, 2 = pair)."""
        found = [n for n, f in self.features.items() if isinstance(f, datasets.Value) and f.dtype in ("string", "large_string")]
        if self._text_columns is None:
            if not 1 <= len(found) <= 2:
                raise ValueError(f"{self.hub_id}/{self.task}: expected 1 or 2 text columns, found {found}; set text_columns")
            return found
        missing = [c for c in self._text_columns if c not in self.features]
        if missing or not 1 <= len(self._text_columns) <= 2:
            raise ValueError(
                f"text_columns {self._text_columns}: {'missing ' + str(missing) if missing else 'need 1 or 2 columns'}; "
                f"the data's columns are {list(self.features)} (string columns: {found})"
            )
        return list(self._text_columns)

    @property
    def is_regression(self) -> bool:
        label = self._label_feature()
        return isinstance(label, datasets.Value) and label.dtype.startswith("float")

    @property
    def num_classes(self) -> int:
        """Number of label names, or 1 for a float (regression) label."""
        label = self._label_feature()
        if isinstance(label, datasets.ClassLabel):
            return label.num_classes
        if self.is_regression:
            return 1
        raise ValueError(
            f"{self.hub_id}/{self.task}: label column {self.label_column!r} is {label}; expected a ClassLabel "
            "(classification) or a float Value (regression)"
        )

    @property
    def label_names(self) -> list[str] | None:
        label = self._label_feature()
        return list(label.names) if isinstance(label, datasets.ClassLabel) else None

    def _label_feature(self):
        if self.label_column not in self.features:
            raise ValueError(f"label column {self.label_column!r} not in {self.hub_id}/{self.task}; columns: {list(self.features)}")
        return self.features[self.label_column]

    def has_labels(self, split: str) -> bool:
        """Whether ``split`` carries labels (GLUE's hidden test labels are -1)."""
        labels = self.raw[split][self.label_column]
        return any(label != -1 for label in labels)

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

    @override
    def setup(self, stage: str) -> None:
        wanted = {"fit": ["train", "validation"], "validate": ["validation"], "test": [self.test_split],
                  "predict": [self.predict_split]}[stage]
        for split in wanted:
            if split not in self.raw:
                raise ValueError(f"{self.hub_id}/{self.task} has no split {split!r}; splits: {list(self.raw)}")
            if stage != "predict" and not self.has_labels(split):
                raise ValueError(
                    f"{self.hub_id}/{self.task} split {split!r} has no labels (all -1: GLUE keeps test labels hidden), "
                    f"so it cannot be scored. HINT: score 'validation' (data.init_args.test_split), or write a "
                    "submission file with `lkd predict` (GLUEPredictionWriter)."
                )
        if self.tokenizer_arg is not None and self.tokenizer is None:
            self.connect(self.tokenizer_arg)
        if stage == "fit":
            subset = f" (seeded subset of {len(self.raw['train'])})" if self.train_size else ""
            train = min(self.train_size or len(self.raw["train"]), len(self.raw["train"]))
            rank_zero_info(
                f"GLUE {self.task}: train {train} examples{subset}, validation {len(self.raw['validation'])}; text columns "
                f"{self.text_columns}; {'regression' if self.is_regression else f'{self.num_classes} classes'}"
            )

    def split(self, name: str) -> datasets.Dataset:
        """The tokenised split (``train`` is the seeded ``train_size`` subset), tokenised on first use."""
        if self.tokenizer is None:
            raise ValueError(
                "GLUEDataModule has no tokenizer yet: set data.init_args.tokenizer, or let the model connect it "
                "(trainer.fit(model, datamodule=...) with an lkd GLUE module does), or call connect(tokenizer_name)"
            )
        if name not in self.splits:
            self.splits[name] = self._tokenise(name)
        return self.splits[name]

    def _tokenise(self, split: str) -> datasets.Dataset:
        data = self.raw[split]
        if not len(data):
            raise ValueError(f"{self.hub_id}/{self.task} split {split!r} is empty")
        if split == "train" and self.train_size is not None and self.train_size < len(data):
            data = data.shuffle(seed=self.seed).select(range(self.train_size))
        columns = self.text_columns
        tokenizer, max_length = self.tokenizer, self.max_length

        def encode(batch):
            texts = [batch[c] for c in columns]
            return tokenizer(*texts, truncation=True, max_length=max_length)

        data = data.map(encode, batched=True, desc=f"tokenise {self.task}/{split}")  # cached by fingerprint
        keep = [c for c in MODEL_INPUTS if c in data.column_names] + [self.label_column] + (["idx"] if "idx" in data.column_names else [])
        data = data.select_columns(keep)
        if self.label_column != "labels":
            data = data.rename_column(self.label_column, "labels")
        data.set_format("torch")
        return data

    def _collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        inputs = [{k: e[k] for k in MODEL_INPUTS if k in e} for e in examples]
        batch = dict(self.tokenizer.pad(inputs, return_tensors="pt"))
        batch["labels"] = torch.stack([e["labels"] for e in examples])
        if "idx" in examples[0]:
            batch["idx"] = torch.stack([e["idx"] for e in examples])
        return batch

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        data = self.split(split)
        sampler = SeededRandomSampler(len(data), self.seed) if train else None
        return DataLoader(data, batch_size=self.batch_size if train else self.eval_batch_size, sampler=sampler,
                          collate_fn=self._collate, num_workers=self.num_workers)

    # ---- the teacher-cache contract (lkd.cache.store.CacheableData), keyed by GLUE's ``idx`` ------------------
    _CACHE_SPLITS = {"train": "train", "val": "validation"}

    def cache_stages(self) -> list[str]:
        return [stage for stage, name in self._CACHE_SPLITS.items() if name in self.raw and len(self.raw[name])]

    def cache_identity(self, stage: str) -> SplitIdentity:
        """Ids (the ``idx`` column, so a seeded ``train_size`` subset works), tokenised content, tokenizer."""
        name = self._CACHE_SPLITS[stage]
        data = self.split(name)
        if "idx" not in data.column_names:
            raise TeacherCacheError(
                f"{self.hub_id}/{self.task} split {name!r} has no 'idx' column to key a teacher cache by; "
                f"its columns are {data.column_names}"
            )
        columns = arrow_columns(data)
        ids = columns.pop("idx")
        return SplitIdentity(dataset=f"GLUEDataModule {self.hub_id}/{self.task}", split=name, rows=len(data),
                             sample_ids_sha256=sha256_tensors({"ids": ids}), content_sha256=sha256_tensors(columns),
                             tokenizer=self.tokenizer_name)

    def cache_sample_ids(self, stage: str) -> torch.Tensor:
        data = self.split(self._CACHE_SPLITS[stage])
        return torch.as_tensor(np.asarray(data.with_format("numpy")["idx"]), dtype=torch.long)

    def cache_batches(self, stage: str):
        return self._loader(self._CACHE_SPLITS[stage])  # eval batch size, no shuffling

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader("validation")

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


def _config_names(folder: Path) -> list[str]:
    """Config names of a hub-layout folder (its README's ``configs:``), [] when it is not one."""
    if not (folder / "README.md").is_file():
        return []
    try:
        return list(datasets.get_dataset_config_names(str(folder)))
    except Exception:  # noqa: BLE001 - not a data set folder
        return []
