"""Causal language-modelling data from any `datasets` text corpus: tokenise, concatenate, cut into blocks."""

from __future__ import annotations

from typing import Any

import datasets
import lightning.pytorch as pl
import numpy as np
import torch
from einops import rearrange
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from lkd.cache.store import SplitIdentity, sha256_tensors
from lkd.hub import as_tokenizer, load_hub_dataset, tokenizer_source



class TextColumnError(ValueError):
    """The corpus has no (or no unambiguous) text column."""


class BlockSizeError(ValueError):
    """``block_size`` is longer than the model's context."""


class TokenBlocks(Dataset):
    """Fixed-length token blocks; item ``i`` is ``{"input_ids": (block_size,) int64, "sample_id": i}`` (the
    block's row, the key of a teacher cache)."""

    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks  # (N, block_size)

    @property
    def sample_ids(self) -> torch.Tensor:
        return torch.arange(len(self))

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[i], "sample_id": torch.tensor(i)}


def detect_text_column(features: datasets.Features, text_column: str | None = None) -> str:
    """The column that holds the text: ``text_column`` if given, else ``"text"``, else the only string column."""
    strings = [k for k, v in features.items() if isinstance(v, datasets.Value) and v.dtype in ("string", "large_string")]
    described = ", ".join(f"{k} ({v})" for k, v in features.items())
    if text_column is not None:
        if text_column not in features:
            raise TextColumnError(f"text_column {text_column!r} is not in the corpus; its columns: {described}")
        return text_column
    if "text" in strings:
        return "text"
    if len(strings) == 1:
        return strings[0]
    raise TextColumnError(
        f"cannot tell which column holds the text: {'no' if not strings else 'several'} string columns; columns: "
        f"{described}. HINT: set data.init_args.text_column to one of them"
    )


def group_into_blocks(token_lists: list[list[int]] | datasets.Dataset, block_size: int) -> torch.Tensor:
    """Concatenate token lists and cut them into ``block_size`` blocks; the remainder is dropped.

    Returns:
        (N, block_size) int64, N = ⌊total tokens / block_size⌋.
    """
    lists = token_lists["input_ids"] if isinstance(token_lists, datasets.Dataset) else token_lists
    flat = np.fromiter((t for ids in lists for t in ids), dtype=np.int64)
    n = len(flat) // block_size
    return rearrange(torch.from_numpy(flat[: n * block_size]), "(n t) -> n t", t=block_size)  # (N, block_size)


class _Tokenize:
    """Picklable map function (so `datasets` can fingerprint it and cache the result)."""

    def __init__(self, tokenizer, column: str, eos_token_id: int | None):
        self.tokenizer, self.column, self.eos = tokenizer, column, eos_token_id

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        texts = [t for t in batch[self.column]]
        ids = self.tokenizer(texts)["input_ids"]
        if self.eos is not None:  # mark where a document (a non-empty line, in WikiText) ends
            ids = [x + [self.eos] if x else x for x in ids]
        return {"input_ids": ids}


class TextDataModule(pl.LightningDataModule):
    """Tokenised, concatenated, blocked text for causal-LM training and distillation.

    The offline WikiText mirror has no train split (see ``configs/lm``): the offline configs train on
    ``validation[:90%]``, validate on ``validation[90%:]`` and test on ``test``. Configs for machines with
    hub access name the real ``train`` split.

    The tokenizer is the model's, handed over by it (:meth:`connect`, called from the LightningModule's
    ``setup``, which also checks ``block_size`` against the context and the tokenizer against the vocabulary),
    so teacher, student and data share one; pass ``tokenizer`` (a name for :func:`lkd.hub.load_tokenizer` or a
    tokenizer object) to use the module on its own. Batches are ``{"input_ids": (B, block_size), "sample_id": (B,)}``.

    Args:
        hub_id: data set id or folder (resolved to a local mirror by :mod:`lkd.hub`).
        config: data set config name.
        train_split, val_split, test_split: split names, `datasets` slicing allowed (``validation[:90%]``).
        text_column: column with the text; default ``"text"`` or the only string column.
        block_size: tokens per training sequence (at most the model's context).
        batch_size, eval_batch_size: sequences per batch.
        tokenizer: tokenizer name or object; default: the LightningModule's.
        max_blocks: keep at most this many blocks per split (quick runs); None = all.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        hub_id: str = "Salesforce/wikitext",
        config: str | None = "wikitext-2-raw-v1",
        *,
        train_split: str = "validation[:90%]",
        val_split: str = "validation[90%:]",
        test_split: str = "test",
        text_column: str | None = None,
        block_size: int = 128,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        tokenizer: Any = None,
        max_blocks: int | None = None,
        num_workers: int = 0,
    ):
        super().__init__()
        problems = []
        if block_size < 2:
            problems.append(f"block_size must be >= 2 (one input and one target token), got {block_size}")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            problems.append(f"batch sizes must be >= 1, got {batch_size} and {eval_batch_size}")
        if max_blocks is not None and max_blocks < 1:
            problems.append(f"max_blocks must be >= 1 or None, got {max_blocks}")
        if problems:
            raise ValueError("TextDataModule: " + "; ".join(problems))
        self.hub_id, self.config = hub_id, config
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.text_column, self.block_size = text_column, block_size
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.tokenizer_arg, self.max_blocks, self.num_workers = tokenizer, max_blocks, num_workers
        self.tokenizer = None
        self.tokenizer_name: str | None = None
        self.datasets: dict[str, TokenBlocks] = {}

    # ---- tokenizer and context ------------------------------------------------------------------------
    def connect(self, tokenizer: Any, *, context_length: int | None = None, vocab_size: int | None = None) -> None:
        """Bind the model's tokenizer (a ``tokenizer`` given to the constructor wins) and check the blocks fit the
        model: ``block_size`` within ``context_length``, every token id below ``vocab_size``."""
        if context_length is not None and self.block_size > context_length:
            raise BlockSizeError(
                f"block_size={self.block_size} is longer than the model's context ({context_length} positions). "
                f"HINT: set data.init_args.block_size <= {context_length}"
            )
        source = self.tokenizer_arg if self.tokenizer_arg is not None else tokenizer
        if self.tokenizer is None or tokenizer_source(source) != self.tokenizer_name:
            self.tokenizer, self.tokenizer_name = as_tokenizer(source), tokenizer_source(source)  # the name keys the data
            self.datasets = {}
        vocab = len(self.tokenizer)
        if vocab_size is not None and vocab > vocab_size:
            raise ValueError(
                f"the tokenizer {self.tokenizer_name} has {vocab} tokens but the model's vocabulary has {vocab_size}: ids "
                "would be out of range. HINT: build the models with vocab_size >= the tokenizer's"
            )

    # ---- data -----------------------------------------------------------------------------------------
    def blocks(self, split: str) -> torch.Tensor:
        """Token blocks (N, block_size) of one split name (slicing allowed)."""
        ds = load_hub_dataset(self.hub_id, self.config, split=split)
        column = detect_text_column(ds.features, self.text_column)
        eos = getattr(self.tokenizer, "eos_token_id", None)
        ds = ds.filter(lambda b: [bool(t and t.strip()) for t in b[column]], batched=True, desc="drop empty lines")
        tokens = ds.map(_Tokenize(self.tokenizer, column, eos), batched=True, remove_columns=ds.column_names, desc=f"tokenise {split}")
        blocks = group_into_blocks(tokens, self.block_size)
        if self.max_blocks is not None:
            blocks = blocks[: self.max_blocks]
        if len(blocks) == 0:
            raise ValueError(f"split {split!r} of {self.hub_id} gives no block of {self.block_size} tokens; lower block_size")
        return blocks

    @override
    def setup(self, stage: str) -> None:
        if self.tokenizer is None and self.tokenizer_arg is not None:
            self.connect(self.tokenizer_arg)

    def split(self, key: str) -> TokenBlocks:
        """The token blocks of ``train``, ``val`` or ``test``, tokenised on first use (a cached ``datasets.map``)."""
        if self.tokenizer is None:
            raise ValueError(
                "TextDataModule has no tokenizer yet: pass tokenizer=..., or let the model connect it "
                "(trainer.fit(model, datamodule=...) with an lkd LM module does), or call connect(tokenizer)"
            )
        if key not in self.datasets:
            self.datasets[key] = TokenBlocks(self.blocks(self.splits[key]))
            rank_zero_info(f"{key}: {len(self.datasets[key])} blocks of {self.block_size} tokens ({self.splits[key]})")
        return self.datasets[key]

    # ---- the teacher-cache contract (lkd.cache.store.CacheableData): key = the block's row --------------
    def cache_stages(self) -> list[str]:
        return [key for key in ("train", "val") if self.splits.get(key)]

    def cache_identity(self, stage: str) -> SplitIdentity:
        """The blocks themselves (so tokenizer, block size and text) are the content hash."""
        blocks = self.split(stage)
        return SplitIdentity(dataset=f"TextDataModule {self.hub_id}/{self.config} block_size={self.block_size}",
                             split=self.splits[stage], rows=len(blocks), sample_ids_sha256=sha256_tensors({"ids": blocks.sample_ids}),
                             content_sha256=sha256_tensors({"blocks": blocks.blocks}), tokenizer=self.tokenizer_name)

    def cache_sample_ids(self, stage: str) -> torch.Tensor:
        return self.split(stage).sample_ids.long()

    def cache_batches(self, stage: str):
        return self._loader(stage, shuffle=False)

    def _loader(self, key: str, shuffle: bool) -> DataLoader:
        size = self.batch_size if key == "train" else self.eval_batch_size
        return DataLoader(self.split(key), batch_size=size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
