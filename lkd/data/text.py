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
from lkd.data.alignment import pack_blocks, token_offsets
from lkd.data.loaders import SplitLoaders
from lkd.hub import PACKAGED_MODELS, check_split, load_hub_dataset
from lkd.tokenizers import as_tokenizer, tokenizer_fingerprint, tokenizer_source, train_bpe_if_missing

BUILTIN_TOKENIZERS = ("bytes", "smollm2", *PACKAGED_MODELS)


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


class AlignedTokenBlocks(Dataset):
    """Blocks of text tokenised by the student and by the teacher, cut at a common token boundary
    (:func:`lkd.data.alignment.pack_blocks`), padded to fixed shapes.

    Item ``i``: ``input_ids`` (S,) and ``teacher_input_ids`` (T,) (right-padded with 0), their lengths
    ``length`` / ``teacher_length``, ``chunks`` (S, 4) int64 ``[s0, s1, t0, t1]`` per aligned chunk (zero
    rows after ``num_chunks``), ``num_bytes`` (UTF-8 bytes of the block's text) and ``sample_id``.
    """

    FIELDS = ("input_ids", "length", "teacher_input_ids", "teacher_length", "chunks", "num_chunks", "num_bytes")

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    @classmethod
    def from_rows(cls, rows: datasets.Dataset, student_block: int, teacher_block: int) -> AlignedTokenBlocks:
        n = len(rows)
        t = {"input_ids": torch.zeros(n, student_block, dtype=torch.long), "length": torch.zeros(n, dtype=torch.long),
             "teacher_input_ids": torch.zeros(n, teacher_block, dtype=torch.long),
             "teacher_length": torch.zeros(n, dtype=torch.long), "chunks": torch.zeros(n, student_block, 4, dtype=torch.long),
             "num_chunks": torch.zeros(n, dtype=torch.long), "num_bytes": torch.tensor(rows["num_bytes"], dtype=torch.long)}
        for i, (s_ids, t_ids, chunks) in enumerate(zip(rows["student_ids"], rows["teacher_ids"], rows["chunks"])):
            t["input_ids"][i, : len(s_ids)] = torch.tensor(s_ids)
            t["teacher_input_ids"][i, : len(t_ids)] = torch.tensor(t_ids)
            t["length"][i], t["teacher_length"][i] = len(s_ids), len(t_ids)
            table = torch.tensor(chunks, dtype=torch.long).view(-1, 4)  # (C, 4)
            t["chunks"][i, : len(table)] = table
            t["num_chunks"][i] = len(table)
        return cls(t)

    @property
    def sample_ids(self) -> torch.Tensor:
        return torch.arange(len(self))

    def __len__(self) -> int:
        return self.tensors["input_ids"].shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {**{k: v[i] for k, v in self.tensors.items()}, "sample_id": torch.tensor(i)}


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


class _AlignedTokenize:
    """Picklable batched map: the rows' text joined (one line per row), tokenised by both tokenizers, aligned and
    packed into blocks (one output row per block)."""

    def __init__(self, student, teacher, column: str, student_block: int, teacher_block: int):
        self.student, self.teacher, self.column = student, teacher, column
        self.student_block, self.teacher_block = student_block, teacher_block

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        text = "".join(t if t.endswith("\n") else t + "\n" for t in batch[self.column] if t)
        blocks = pack_blocks(text, self.teacher, self.student, student_block=self.student_block, teacher_block=self.teacher_block)
        return {"student_ids": [b.student_ids for b in blocks], "teacher_ids": [b.teacher_ids for b in blocks],
                "chunks": [b.chunks.reshape(-1).tolist() for b in blocks], "num_bytes": [b.num_bytes for b in blocks]}


class TextDataModule(SplitLoaders, pl.LightningDataModule):
    """Tokenised, concatenated, blocked text for causal-LM training and distillation.

    The offline WikiText mirror has no train split (see ``configs/lm``): the offline configs train on
    ``validation[:90%]``, validate on ``validation[90%:]`` and test on ``test``. Configs for machines with
    hub access name the real ``train`` split.

    The tokenizer is the model's, handed over by it (:meth:`connect`, called from the LightningModule's
    ``setup``, which also checks ``block_size`` against the context and the tokenizer against the vocabulary),
    so teacher, student and data share one; pass ``tokenizer`` (a name for :func:`lkd.tokenizers.load_tokenizer` or a
    tokenizer object) to use the module on its own. Batches are ``{"input_ids": (B, block_size), "sample_id": (B,)}``.

    **Two tokenizers** (a teacher of another family; the model connects ``teacher_tokenizer``): the text is
    read as one stream (rows joined by newlines, ``group_rows`` rows at a time), tokenised by both, aligned
    into chunks (:mod:`lkd.data.alignment`) and cut at common boundaries into blocks of at most
    ``block_size`` student and ``teacher_block_size`` teacher tokens (:class:`AlignedTokenBlocks`: padded,
    fixed-shape batches with the chunk table). With one tokenizer nothing of this runs.

    Args:
        hub_id: data set id or folder (resolved to a local mirror by :mod:`lkd.hub`).
        config: data set config name.
        train_split, val_split, test_split: split names, `datasets` slicing allowed (``validation[:90%]``).
        text_column: column with the text; default ``"text"`` or the only string column.
        block_size: tokens per training sequence (at most the model's context).
        batch_size, eval_batch_size: sequences per batch.
        tokenizer: tokenizer name or object; default: the LightningModule's.
        teacher_block_size: teacher tokens per block with two tokenizers (default ``block_size``).
        group_rows: rows tokenised and aligned together with two tokenizers.
        train_tokenizer: vocabulary size of a byte-level BPE to train on the training split when the tokenizer
            is a folder that does not exist yet (saved there, so later runs and the exported student reuse it).
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
        teacher_block_size: int | None = None,
        group_rows: int = 256,
        train_tokenizer: int | None = None,
        max_blocks: int | None = None,
        num_workers: int = 0,
    ):
        super().__init__()
        problems = []
        if block_size < 2:
            problems.append(f"block_size must be >= 2 (one input and one target token), got {block_size}")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            problems.append(f"batch sizes must be >= 1, got {batch_size} and {eval_batch_size}")
        if teacher_block_size is not None and teacher_block_size < 2:
            problems.append(f"teacher_block_size must be >= 2, got {teacher_block_size}")
        if group_rows < 1:
            problems.append(f"group_rows must be >= 1, got {group_rows}")
        if train_tokenizer is not None and train_tokenizer <= 257:
            problems.append(f"train_tokenizer (a BPE vocabulary size) must be > 257, got {train_tokenizer}")
        if max_blocks is not None and max_blocks < 1:
            problems.append(f"max_blocks must be >= 1 or None, got {max_blocks}")
        if problems:
            raise ValueError("TextDataModule: " + "; ".join(problems))
        self.hub_id, self.config = hub_id, config
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.text_column, self.block_size = text_column, block_size
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.tokenizer_arg, self.max_blocks, self.num_workers = tokenizer, max_blocks, num_workers
        self.teacher_block_size, self.group_rows, self.train_tokenizer = teacher_block_size or block_size, group_rows, train_tokenizer
        self.tokenizer = None
        self.tokenizer_name: str | None = None
        self.teacher_tokenizer = None
        self.teacher_tokenizer_name: str | None = None
        self.datasets: dict[str, TokenBlocks | AlignedTokenBlocks] = {}
        self._checked: set[str] = set()

    # ---- tokenizer and context ------------------------------------------------------------------------
    def connect(self, tokenizer: Any, *, context_length: int | None = None, vocab_size: int | None = None,
                teacher_tokenizer: Any = None, teacher_context_length: int | None = None) -> None:
        """Bind the model's tokenizer (a ``tokenizer`` given to the constructor wins) and check the blocks fit the
        model: ``block_size`` within ``context_length``, every token id below ``vocab_size``. A
        ``teacher_tokenizer`` switches to aligned two-tokenizer blocks (:class:`AlignedTokenBlocks`)."""
        if context_length is not None and self.block_size > context_length:
            raise BlockSizeError(
                f"block_size={self.block_size} is longer than the model's context ({context_length} positions). "
                f"HINT: set data.init_args.block_size <= {context_length}"
            )
        if teacher_tokenizer is not None and teacher_context_length is not None and self.teacher_block_size > teacher_context_length:
            raise BlockSizeError(
                f"teacher_block_size={self.teacher_block_size} is longer than the teacher's context ({teacher_context_length} "
                f"positions). HINT: set data.init_args.teacher_block_size <= {teacher_context_length}"
            )
        source = self.tokenizer_arg if self.tokenizer_arg is not None else tokenizer
        self._train_tokenizer_if_missing(source)
        if self.tokenizer is None or tokenizer_source(source) != self.tokenizer_name:
            self.tokenizer, self.tokenizer_name = as_tokenizer(source), tokenizer_source(source)  # the name keys the data
            self.datasets = {}
        teacher_name = None if teacher_tokenizer is None else tokenizer_source(teacher_tokenizer)
        if teacher_name != self.teacher_tokenizer_name:
            self.teacher_tokenizer = None if teacher_tokenizer is None else as_tokenizer(teacher_tokenizer)
            self.teacher_tokenizer_name = teacher_name
            self.datasets = {}
        if self.teacher_tokenizer is not None:  # fail now, not at the first batch, for a tokenizer without offsets
            for side in (self.tokenizer, self.teacher_tokenizer):
                token_offsets(side, "a")
        vocab = len(self.tokenizer)
        if vocab_size is not None and vocab > vocab_size:
            raise ValueError(
                f"the tokenizer {self.tokenizer_name} has {vocab} tokens but the model's vocabulary has {vocab_size}: ids "
                "would be out of range. HINT: build the models with vocab_size >= the tokenizer's"
            )

    def _train_tokenizer_if_missing(self, source: Any) -> None:
        """With ``train_tokenizer``: train a byte-level BPE on the training split into the folder ``source``
        when that folder has no tokenizer yet (:func:`train_bpe_if_missing`)."""
        if self.train_tokenizer is None or not isinstance(source, str) or source in BUILTIN_TOKENIZERS:
            return  # a tokenizer lkd loads by name is never a folder to train into
        def texts():
            ds = load_hub_dataset(self.hub_id, self.config, split=self.splits["train"])
            rank_zero_info(f"training a byte-level BPE of {self.train_tokenizer} tokens on {self.splits['train']} into {source}")
            return (t for t in ds[detect_text_column(ds.features, self.text_column)] if t)

        train_bpe_if_missing(source, self.train_tokenizer, texts)

    @property
    def aligned(self) -> bool:
        """True when blocks are tokenised by two tokenizers (a teacher tokenizer is connected)."""
        return self.teacher_tokenizer is not None

    # ---- data -----------------------------------------------------------------------------------------
    def aligned_blocks(self, split: str) -> AlignedTokenBlocks:
        """Two-tokenizer blocks of one split name (a cached ``datasets.map``)."""
        ds = load_hub_dataset(self.hub_id, self.config, split=split)
        column = detect_text_column(ds.features, self.text_column)
        fn = _AlignedTokenize(self.tokenizer, self.teacher_tokenizer, column, self.block_size, self.teacher_block_size)
        rows = ds.map(fn, batched=True, batch_size=self.group_rows, remove_columns=ds.column_names, desc=f"tokenise and align {split}")
        if self.max_blocks is not None:
            rows = rows.select(range(min(self.max_blocks, len(rows))))
        if len(rows) == 0:
            raise ValueError(f"split {split!r} of {self.hub_id} gives no aligned block; lower block_size or check the text column")
        return AlignedTokenBlocks.from_rows(rows, self.block_size, self.teacher_block_size)

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
        for key, split in self.splits.items():  # a missing split fails now, naming the option, not deep in datasets
            if split and key not in self._checked:
                check_split(self.hub_id, self.config, split, f"data.init_args.{key}_split")
                self._checked.add(key)
        if self.tokenizer is None and self.tokenizer_arg is not None:
            self.connect(self.tokenizer_arg)

    def prepare_stage(self, stage: str) -> None:
        """Tokenise the splits a trainer stage will read (``fit``: train and val; ``validate``: val; ``test``: test)."""
        for key in {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ()):
            if self.splits.get(key):
                self.split(key)

    def split(self, key: str) -> TokenBlocks:
        """The token blocks of ``train``, ``val`` or ``test``, tokenised on first use (a cached ``datasets.map``)."""
        if self.tokenizer is None:
            raise ValueError(
                "TextDataModule has no tokenizer yet: pass tokenizer=..., or let the model connect it "
                "(trainer.fit(model, datamodule=...) with an lkd LM module does), or call connect(tokenizer)"
            )
        if key not in self.datasets:
            if self.aligned:
                self.datasets[key] = self.aligned_blocks(self.splits[key])
                rank_zero_info(f"{key}: {len(self.datasets[key])} aligned blocks of <= {self.block_size} student / "
                               f"{self.teacher_block_size} teacher tokens ({self.splits[key]})")
            else:
                self.datasets[key] = TokenBlocks(self.blocks(self.splits[key]))
                rank_zero_info(f"{key}: {len(self.datasets[key])} blocks of {self.block_size} tokens ({self.splits[key]})")
        return self.datasets[key]

    # ---- the teacher-cache contract (lkd.cache.store.CacheableData): key = the block's row --------------
    def cache_stages(self) -> list[str]:
        return [key for key in ("train", "val") if self.splits.get(key)]

    def cache_identity(self, stage: str) -> SplitIdentity:
        """The blocks themselves (so tokenizer, block size and text) are the content hash."""
        blocks = self.split(stage)
        if isinstance(blocks, AlignedTokenBlocks):  # both tokenizers' fingerprints: a cache for another pair is refused
            return SplitIdentity(
                dataset=f"TextDataModule {self.hub_id}/{self.config} block_size={self.block_size} "
                        f"teacher_block_size={self.teacher_block_size} group_rows={self.group_rows}",
                split=self.splits[stage], rows=len(blocks), sample_ids_sha256=sha256_tensors({"ids": blocks.sample_ids}),
                content_sha256=sha256_tensors(blocks.tensors), tokenizer=tokenizer_fingerprint(self.tokenizer),
                teacher_tokenizer=tokenizer_fingerprint(self.teacher_tokenizer))
        return SplitIdentity(dataset=f"TextDataModule {self.hub_id}/{self.config} block_size={self.block_size}",
                             split=self.splits[stage], rows=len(blocks), sample_ids_sha256=sha256_tensors({"ids": blocks.sample_ids}),
                             content_sha256=sha256_tensors({"blocks": blocks.blocks}), tokenizer=self.tokenizer_name)

    def cache_sample_ids(self, stage: str) -> torch.Tensor:
        return self.split(stage).sample_ids.long()


    def _loader(self, key: str, shuffle: bool) -> DataLoader:
        size = self.batch_size if key == "train" else self.eval_batch_size
        return DataLoader(self.split(key), batch_size=size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)




