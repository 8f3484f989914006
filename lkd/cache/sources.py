"""Which data a teacher cache covers: split identities and ordered, unaugmented batches per data module.

Supported: :class:`lkd.data.MNISTDataModule` (key: the image's row in the hub split),
:class:`lkd.data.GLUEDataModule` (key: the GLUE ``idx`` column, so a seeded ``train_size`` subset works) and
:class:`lkd.data.text.TextDataModule` (key: the block's row in the split's token blocks; the blocks themselves,
so tokenizer, block size and text, are the content hash).
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from lkd.cache.store import SplitIdentity, TeacherCacheError, sha256_tensors
from lkd.data.continual import NonStationaryMNISTDataModule
from lkd.data.glue import GLUEDataModule
from lkd.data.mnist import MNISTDataModule
from lkd.data.text import TextDataModule

CACHED_STAGES = ("train", "val")
"""Training stages a cache holds: the training split, and the validation split when there is one."""


def check_supported(datamodule: pl.LightningDataModule | None) -> None:
    """Refuse data modules whose batches a cache cannot key, or whose inputs change between epochs."""
    if isinstance(datamodule, NonStationaryMNISTDataModule):
        raise TeacherCacheError(
            "a teacher cache does not support NonStationaryMNISTDataModule (its training data changes per stage). "
            "HINT: run the teacher live (drop model.init_args.teacher_cache)."
        )
    if not isinstance(datamodule, (MNISTDataModule, GLUEDataModule, TextDataModule)):
        raise TeacherCacheError(
            f"a teacher cache needs an MNISTDataModule, GLUEDataModule or TextDataModule, got "
            f"{type(datamodule).__name__}. HINT: "
            "pass the data as a data module (trainer.fit(model, datamodule=...)), not as bare dataloaders."
        )
    if isinstance(datamodule, MNISTDataModule) and datamodule.max_shift > 0:
        raise TeacherCacheError(
            f"a teacher cache holds the teacher's logits for unaugmented images, but data.max_shift="
            f"{datamodule.max_shift} shifts every training batch randomly, so cached and live targets would differ "
            "(a student should see the teacher's output on the very view it is trained on; Beyer et al. 2022, "
            "'Knowledge distillation: a good teacher is patient and consistent'). HINT: set "
            "data.init_args.max_shift=0 for cached distillation, or drop model.init_args.teacher_cache to run the "
            "teacher live on the augmented batches."
        )


def split_name(datamodule: pl.LightningDataModule, stage: str) -> str:
    """The data module's name for a training stage's split."""
    if isinstance(datamodule, GLUEDataModule):
        return {"train": "train", "val": "validation"}[stage]
    return stage


def has_split(datamodule: pl.LightningDataModule, stage: str) -> bool:
    name = split_name(datamodule, stage)
    if isinstance(datamodule, GLUEDataModule):
        return name in datamodule.splits and len(datamodule.splits[name]) > 0
    return name in datamodule.datasets and len(datamodule.datasets[name]) > 0


def split_identity(datamodule: pl.LightningDataModule, stage: str) -> SplitIdentity:
    """The identity of a set-up data module's split (hashes of its sample ids and of its content)."""
    check_supported(datamodule)
    name = split_name(datamodule, stage)
    if isinstance(datamodule, GLUEDataModule):
        data = datamodule.splits[name]
        if "idx" not in data.column_names:
            raise TeacherCacheError(
                f"{datamodule.hub_id}/{datamodule.task} split {name!r} has no 'idx' column to key a teacher cache by; "
                f"its columns are {data.column_names}"
            )
        columns = _arrow_columns(data)
        ids = columns.pop("idx")
        return SplitIdentity(
            dataset=f"GLUEDataModule {datamodule.hub_id}/{datamodule.task}",
            split=name,
            rows=len(data),
            sample_ids_sha256=sha256_tensors({"ids": ids}),
            content_sha256=sha256_tensors(columns),
            tokenizer=datamodule.tokenizer_name,
        )
    if isinstance(datamodule, TextDataModule):
        blocks = datamodule.datasets[name]
        return SplitIdentity(
            dataset=f"TextDataModule {datamodule.hub_id}/{datamodule.config} block_size={datamodule.block_size}",
            split=datamodule.splits[name],
            rows=len(blocks),
            sample_ids_sha256=sha256_tensors({"ids": blocks.sample_ids}),
            content_sha256=sha256_tensors({"blocks": blocks.blocks}),  # (N, block_size) token ids
            tokenizer=datamodule.tokenizer_name,
        )
    ds = datamodule.datasets[name]
    return SplitIdentity(
        dataset=f"MNISTDataModule {datamodule.hub_id}/{datamodule.config}",
        split=name,
        rows=len(ds),
        sample_ids_sha256=sha256_tensors({"ids": ds.sample_ids}),
        content_sha256=sha256_tensors({"images": ds.images, "labels": ds.labels}),
    )


def sample_ids(datamodule: pl.LightningDataModule, stage: str) -> torch.Tensor:
    """The split's sample ids (N,) in loader order (unshuffled)."""
    name = split_name(datamodule, stage)
    if isinstance(datamodule, GLUEDataModule):
        return torch.as_tensor(np.asarray(datamodule.splits[name].with_format("numpy")["idx"]), dtype=torch.long)
    return datamodule.datasets[name].sample_ids.long()


def ordered_batches(datamodule: pl.LightningDataModule, stage: str, device: torch.device) -> Iterator:
    """The split's batches in order, unaugmented, on ``device``, as a training step would see them."""
    check_supported(datamodule)
    name = split_name(datamodule, stage)
    if isinstance(datamodule, GLUEDataModule):
        loader = datamodule._loader(name)  # eval batch size, no shuffling
    else:  # MNIST, text: the module's own loader with sample ids, unshuffled
        datamodule.emit_sample_ids = True
        loader = datamodule._loader(name, shuffle=False)
    for batch in loader:
        batch = move_data_to_device(batch, device)
        yield datamodule.on_after_batch_transfer(batch, 0)  # MNIST: reshape + normalise; no trainer, no shifts


def _arrow_columns(data) -> dict[str, torch.Tensor]:
    """Every column of a (possibly shuffled/selected) ``datasets.Dataset`` as flat tensors; ragged list
    columns become their values plus their lengths."""
    import pyarrow.compute as pc

    table = data.with_format("arrow")[:]  # in dataset order (indices mapping applied)
    out = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if hasattr(column, "flatten") and str(column.type).startswith(("list", "large_list")):
            out[f"{name}.values"] = torch.from_numpy(np.asarray(pc.list_flatten(column).to_numpy(zero_copy_only=False)).copy())
            out[f"{name}.lengths"] = torch.from_numpy(np.asarray(pc.list_value_length(column).to_numpy(zero_copy_only=False)).copy())
        else:
            out[name] = torch.from_numpy(np.asarray(column.to_numpy(zero_copy_only=False)).copy())
    return out
