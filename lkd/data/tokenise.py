"""Texts to model inputs: a split's text columns tokenised (one text or a pair, truncated to ``max_length``) with its
labels, the shortest ``max_length`` that keeps some text, and batches padded to their longest example."""

from __future__ import annotations

import datasets
import torch

from lkd.data.errors import TextDataError

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
"""The tokenizer outputs a model takes (``token_type_ids`` only where the tokenizer makes them)."""


def min_max_length(tokenizer, columns: list[str]) -> int:
    """The shortest ``max_length`` that keeps one token of every text column: the tokenizer's special tokens for
    one text or a pair ([CLS] a [SEP] b [SEP]: 3) plus one per text column."""
    count = getattr(tokenizer, "num_special_tokens_to_add", None)  # ByteTokenizer adds none
    return (count(pair=len(columns) == 2) if count is not None else 0) + len(columns)


def check_max_length(max_length: int, tokenizer, tokenizer_name: str | None, columns: list[str]) -> None:
    """Refuse a ``max_length`` that leaves no room for text: under it the tokenizer gives up truncating (a length
    below its special tokens) or cuts every text away ([CLS] [SEP]). Every value this allows is truncated."""
    if max_length < (least := min_max_length(tokenizer, columns)):
        special = least - len(columns)
        raise TextDataError(
            f"data.init_args.max_length={max_length} leaves no room for text: the tokenizer {tokenizer_name} adds "
            f"{special} special tokens to {'a pair of texts' if len(columns) == 2 else 'a text'} "
            f"{columns}, and each text needs at least one token. HINT: set data.init_args.max_length >= {least} "
            "(128 is usual)"
        )


def tokenise(data: datasets.Dataset, columns: list[str], tokenizer, max_length: int, labels: list | None, *,
             regression: bool, desc: str) -> datasets.Dataset:
    """``data``'s text ``columns`` tokenised (truncated to ``max_length``, unpadded), with ``labels`` (one per row:
    class ids, or float32 scores for a ``regression``; None: no ``labels`` column) and ``idx``, as torch tensors.
    ``datasets`` caches the result by fingerprint."""

    def encode(batch, rows):
        texts = [["" if t is None else str(t) for t in batch[c]] for c in columns]
        out = tokenizer(*texts, truncation=True, max_length=max_length)
        if labels is not None:
            out["labels"] = [labels[i] for i in rows]
        return out

    data = data.map(encode, batched=True, with_indices=True, desc=desc)  # cached by fingerprint
    keep = [c for c in MODEL_INPUTS if c in data.column_names] + (["labels"] if labels is not None else []) + ["idx"]
    data = data.select_columns(keep)
    if regression and labels is not None:
        data = data.cast_column("labels", datasets.Value("float32"))
    data.set_format("torch")
    return data


def collate(tokenizer, examples: list[dict]) -> dict[str, torch.Tensor]:
    """One batch: the model inputs (B, T) padded to the longest example, ``labels`` (B,) when the examples have
    them, ``idx`` (B,) and ``sample_id`` (B,), the same tensor under the name every track's batches share (the key
    of a teacher cache)."""
    inputs = [{k: e[k] for k in MODEL_INPUTS if k in e} for e in examples]
    batch = dict(tokenizer.pad(inputs, return_tensors="pt"))
    if "labels" in examples[0]:
        batch["labels"] = torch.stack([e["labels"] for e in examples])
    batch["idx"] = batch["sample_id"] = torch.stack([e["idx"] for e in examples])
    return batch
