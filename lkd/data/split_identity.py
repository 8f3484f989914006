"""The identity of a tokenised split that keys a teacher cache (:class:`lkd.cache.store.SplitIdentity`): its row ids
(``idx``), a hash of its tokenised content and the tokenizer."""

from __future__ import annotations

import datasets
import numpy as np
import torch

from lkd.cache.store import SplitIdentity, TeacherCacheError, sha256_tensors


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


def tokenised_split_identity(data: datasets.Dataset, *, dataset: str, source: str, split: str,
                             tokenizer: str | None) -> SplitIdentity:
    """Ids (the ``idx`` column, so a seeded subset works), tokenised content and tokenizer of split ``split`` of
    ``source``; ``dataset`` is what the identity calls the data (the data module and its source)."""
    if "idx" not in data.column_names:
        raise TeacherCacheError(f"{source} split {split!r} has no 'idx' column to key a teacher cache by; "
                                f"its columns are {data.column_names}")
    columns = arrow_columns(data)
    ids = columns.pop("idx")
    return SplitIdentity(dataset=dataset, split=split, rows=len(data), sample_ids_sha256=sha256_tensors({"ids": ids}),
                         content_sha256=sha256_tensors(columns), tokenizer=tokenizer)
