"""MNIST as a LightningDataModule, read through the shared hub-id resolver."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from typing import Literal

import lightning.pytorch as pl
import torch
from einops import rearrange
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from lkd.cache.store import SplitIdentity, TeacherCacheError, sha256_tensors
from lkd.data.loaders import SplitLoaders
from lkd.data.samplers import SeededRandomSampler
from lkd.data.transforms import normalize_uint8, random_affine, random_shift
from lkd.hub import load_hub_dataset
from lkd.losses import UNLABELLED


class TensorBatches(Dataset):
    """In-memory ``(images, labels, sample_ids)`` tensors fetched a whole batch at a time (``__getitems__``).

    ``sample_ids`` (N,) names each row (for MNIST: its row in the hub split), the key of a teacher cache.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, sample_ids: torch.Tensor | None = None):
        self.images, self.labels = images, labels
        self.sample_ids = sample_ids if sample_ids is not None else torch.arange(len(labels))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return self.images[i], self.labels[i], self.sample_ids[i]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        idx = torch.as_tensor(indices)
        return self.images[idx], self.labels[idx], self.sample_ids[idx]


def _identity(batch):
    return batch


def balanced_labelled_rows(labels: torch.Tensor, size: int, num_classes: int, seed: int) -> torch.Tensor:
    """(N,) bool: ``size`` rows that keep their label, as even across classes as the counts allow.

    Every class gets ``size // num_classes`` rows, the first ``size % num_classes`` classes one more; within a
    class the rows are a seeded random choice, so the same ``(labels, size, seed)`` always picks the same rows.

    Args:
        labels: (N,) class ids in [0, num_classes).
        size: rows to keep labelled, 1..N.
    """
    if not 0 < size <= len(labels):
        raise ValueError(f"labelled_size must be in 1..{len(labels)} (the training rows), got {size}")
    generator = torch.Generator().manual_seed(seed)
    keep = torch.zeros(len(labels), dtype=torch.bool)
    short = []
    for c in range(num_classes):
        quota = size // num_classes + (c < size % num_classes)
        rows = (labels == c).nonzero().squeeze(1)  # (n_c,) rows of class c
        if len(rows) < quota:
            short.append(f"class {c}: {len(rows)} rows for a quota of {quota}")
            continue
        keep[rows[torch.randperm(len(rows), generator=generator)[:quota]]] = True
    if short:
        raise ValueError(f"labelled_size={size} asks for more labelled rows of some classes than the training split has "
                         f"({'; '.join(short)}). HINT: lower labelled_size or raise train_size")
    return keep


@functools.lru_cache(maxsize=2)
def decoded_splits(hub_id: str, config: str | None) -> tuple[tuple[str, ...], tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Class names and the decoded ``(images uint8 (N, 28, 28), labels long (N,))`` of the train and test splits.

    Decoding 70,000 PNGs takes about 10 s, and a pipeline (the demo, a benchmark) sets up one data module per
    model, so the tensors are kept for the process (read-only: every data module indexes them into copies)."""
    hub = load_hub_dataset(hub_id, config)
    for split in ("train", "test"):
        if split not in hub:
            raise ValueError(f"{hub_id} has no '{split}' split; it has {list(hub)}")

    def tensors(split) -> tuple[torch.Tensor, torch.Tensor]:
        arrays = split.with_format("numpy")[:]
        return torch.from_numpy(arrays["image"]), torch.from_numpy(arrays["label"]).long()

    return tuple(hub["train"].features["label"].names), tensors(hub["train"]), tensors(hub["test"])


class MNISTDataModule(SplitLoaders, pl.LightningDataModule):
    """MNIST (hub id ``ylecun/mnist``) split into train / val / test, optionally restricted to some classes.

    Train and val come from the hub's train split: a seeded permutation, the first ``train_size`` indices
    train, the next ``val_size`` validate. Test is the hub's test split. With ``classes`` the split is made
    first and then filtered, so val images are the same whatever subset is chosen.

    Label mapping with ``classes``: the digit ``classes[i]`` gets label ``i`` (order as given), so a model
    has ``len(classes)`` outputs. Without ``classes`` labels are the digits.

    Few labels (``labelled_size``): only that many training rows keep their label (a seeded choice, balanced
    per class: :func:`balanced_labelled_rows`); the other training rows are either kept with the label
    :data:`lkd.losses.UNLABELLED` (``unlabelled="transfer"``: Hinton et al.'s transfer set, which a
    distillation module labels with the teacher's soft targets) or dropped (``unlabelled="drop"``: the
    student trained alone on the labelled rows only). The choice of labelled rows does not depend on
    ``unlabelled``, so a ``"drop"`` run trains on exactly the labelled rows of the ``"transfer"`` run with the
    same seed. Validation and test keep every label.

    Batches are ``(images, labels, sample_ids)``: images normalised float (B, 1, 28, 28), labels long (B,),
    ``sample_ids`` (B,) long: each image's row in the hub split it came from (train/val: the hub train
    split, test: the hub test split), the key of :mod:`lkd.cache`. Training batches are augmented on the
    device (random shifts of up to ``max_shift`` pixels, then random rotations and scalings with
    ``max_rotation`` / ``max_scale``) after transfer, so a teacher and a student see the same augmented batch.
    The teacher-cache contract (:class:`lkd.cache.store.CacheableData`): the ``cache_*`` methods.

    Args:
        hub_id: hub id or local folder in hub layout (resolved to ``$LKD_DATA_DIR`` mirrors).
        config: ``datasets`` config name.
        train_size: images for training, from the hub train split.
        val_size: images for validation, from the rest of the hub train split.
        seed: seed of the train / val permutation and of the choice of labelled rows.
        classes: digits to keep (None keeps all).
        batch_size: training batch size.
        eval_batch_size: batch size for val / test / predict.
        max_shift: random translation in pixels for training batches (0 = no augmentation).
        max_rotation: random rotation of training images, up to this many degrees either way (0 = none).
        max_scale: random scaling of training images by a factor in [1 - max_scale, 1 + max_scale] (0 = none).
        num_workers: DataLoader workers (the data is in memory, 0 is usually fastest).
        labelled_size: training rows that keep their label (None: all of them).
        unlabelled: what becomes of the other training rows with ``labelled_size``: ``"transfer"`` keeps them
            labelled :data:`~lkd.losses.UNLABELLED` (for distillation), ``"drop"`` removes them (for a
            classifier trained alone, which refuses unlabelled rows).
    """

    def __init__(
        self,
        hub_id: str = "ylecun/mnist",
        config: str | None = "mnist",
        *,
        train_size: int = 55_000,
        val_size: int = 5_000,
        seed: int = 42,
        classes: Sequence[int] | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        max_shift: int = 0,
        max_rotation: float = 0.0,
        max_scale: float = 0.0,
        num_workers: int = 0,
        labelled_size: int | None = None,
        unlabelled: Literal["transfer", "drop"] = "transfer",
    ):
        super().__init__()
        problems = []
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size), ("train_size", train_size)):
            if value <= 0:
                problems.append(f"{name} must be > 0, got {value}")
        if val_size < 0:
            problems.append(f"val_size must be >= 0, got {val_size}")
        if max_shift < 0:
            problems.append(f"max_shift must be >= 0 pixels, got {max_shift}")
        if not 0 <= max_rotation <= 180:
            problems.append(f"max_rotation must be in 0..180 degrees, got {max_rotation}")
        if not 0 <= max_scale < 1:
            problems.append(f"max_scale must be in [0, 1) (a factor in [1 - max_scale, 1 + max_scale]), got {max_scale}")
        if labelled_size is not None and not 0 < labelled_size <= train_size:
            problems.append(f"labelled_size must be in 1..train_size={train_size} or null (every row labelled), got {labelled_size}")
        if unlabelled not in ("transfer", "drop"):
            problems.append(f"unlabelled must be 'transfer' (rows kept with label {UNLABELLED}, for distillation) or 'drop', "
                            f"got {unlabelled!r}")
        if classes is not None:
            if len(classes) == 0:
                problems.append("classes must name at least one class, got an empty list")
            if len(set(classes)) != len(classes):
                problems.append(f"classes must not repeat a class, got {list(classes)}")
        if problems:
            raise ValueError("MNISTDataModule: " + "; ".join(problems))
        self.hub_id, self.config = hub_id, config
        self.train_size, self.val_size, self.seed = train_size, val_size, seed
        self.classes = list(classes) if classes is not None else None
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.max_shift, self.max_rotation, self.max_scale = max_shift, max_rotation, max_scale
        self.num_workers = num_workers
        self.labelled_size, self.unlabelled = labelled_size, unlabelled
        self.class_names: list[str] = []
        self.datasets: dict[str, TensorBatches] = {}
        self.augmented_batches = 0  # drives the augmentation seed; saved in checkpoints for exact resume
        self.save_hyperparameters()

    @property
    def augments(self) -> bool:
        """Whether training batches are changed randomly (shift, rotation or scale)."""
        return self.max_shift > 0 or self.max_rotation > 0 or self.max_scale > 0

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes is not None else 10

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, 28, 28)

    @override
    def prepare_data(self) -> None:
        load_hub_dataset(self.hub_id, self.config)  # fills the datasets cache once, fails early if missing

    @override
    def setup(self, stage: str) -> None:
        if self.datasets:
            return
        class_names, (train_images, train_labels), (test_images, test_labels) = decoded_splits(self.hub_id, self.config)
        self.class_names = list(class_names)
        self._check_classes(len(self.class_names))
        if self.train_size + self.val_size > len(train_labels):
            raise ValueError(
                f"train_size + val_size = {self.train_size} + {self.val_size} exceeds the {len(train_labels)} "
                f"images of {self.hub_id}'s train split; lower one of them"
            )
        perm = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(self.seed))
        parts = {
            "train": perm[: self.train_size],
            "val": perm[self.train_size : self.train_size + self.val_size],
        }
        self._unlabelled = train_images[parts["train"]]  # every digit of the train part, for label-free fitting
        for name, idx in parts.items():
            self.datasets[name] = self._subset(train_images[idx], train_labels[idx], name, sample_ids=idx)
        self.datasets["test"] = self._subset(test_images, test_labels, "test", sample_ids=torch.arange(len(test_labels)))
        if self.labelled_size is not None:
            self.datasets["train"] = self._few_labels(self.datasets["train"])
        counts = {name: dict(sorted(Counter(ds.labels.tolist()).items())) for name, ds in self.datasets.items()}
        rank_zero_info(f"MNISTDataModule per-class counts (label: count): {counts}")

    def _few_labels(self, train: TensorBatches) -> TensorBatches:
        """The train split with only ``labelled_size`` rows labelled; the rest UNLABELLED or dropped."""
        keep = balanced_labelled_rows(train.labels, self.labelled_size, self.num_classes, self.seed)  # (N,) bool
        if self.unlabelled == "drop":
            return TensorBatches(train.images[keep], train.labels[keep], train.sample_ids[keep])
        return TensorBatches(train.images, train.labels.masked_fill(~keep, UNLABELLED), train.sample_ids)

    def unlabelled_train_images(self) -> torch.Tensor:
        """Every image of the train part (all digits, whatever ``classes`` says), normalised (N, 1, 28, 28).

        For fitting things without labels (DKVB keys, encoders); never contains val or test images."""
        if not self.datasets:
            raise RuntimeError("MNISTDataModule.setup() must run before unlabelled_train_images()")
        return normalize_uint8(self._unlabelled)

    def _check_classes(self, available: int) -> None:
        if self.classes is None:
            return
        unknown = [c for c in self.classes if not 0 <= c < available]
        if unknown:
            raise ValueError(f"data.init_args.classes={self.classes}: {unknown} are not classes of {self.hub_id}, which has 0..{available - 1}. "
                             f"HINT: list classes from 0 to {available - 1}, or leave classes out for all of them")

    def _subset(self, images: torch.Tensor, labels: torch.Tensor, name: str, sample_ids: torch.Tensor) -> TensorBatches:
        if self.classes is not None:
            keep = torch.isin(labels, torch.tensor(self.classes))
            images, labels, sample_ids = images[keep], labels[keep], sample_ids[keep]
            remap = torch.full((len(self.class_names),), -1, dtype=torch.long)
            remap[torch.tensor(self.classes)] = torch.arange(len(self.classes))
            labels = remap[labels]
        if len(labels) == 0 and (name != "val" or self.val_size > 0):
            raise ValueError(f"the {name} split of {self.hub_id} has no images of classes {self.classes}")
        return TensorBatches(images, labels, sample_ids)

    def _loader(self, name: str, shuffle: bool, dataset: TensorBatches | None = None) -> DataLoader:
        if not self.datasets:
            raise RuntimeError("MNISTDataModule.setup() must run before asking for a DataLoader")
        dataset = dataset if dataset is not None else self.datasets[name]
        return DataLoader(
            dataset,
            batch_size=self.batch_size if name == "train" else self.eval_batch_size,
            sampler=SeededRandomSampler(len(dataset), self.seed) if shuffle else None,
            num_workers=self.num_workers,
            collate_fn=_identity,
            persistent_workers=self.num_workers > 0,
        )

    # ---- the teacher-cache contract (lkd.cache.store.CacheableData) -----------------------------------
    def cache_stages(self) -> list[str]:
        """The training stages a teacher cache can hold: ``train`` and (when there is one) ``val``."""
        return [s for s in ("train", "val") if s in self.datasets and len(self.datasets[s])]

    def cache_identity(self, stage: str) -> SplitIdentity:
        """What identifies a split's cached rows: ids, content (images and labels), data set."""
        if self.augments:
            raise TeacherCacheError(
                f"a teacher cache holds the teacher's logits for unaugmented images, but data.max_shift="
                f"{self.max_shift}, max_rotation={self.max_rotation}, max_scale={self.max_scale} change every "
                "training batch randomly, so cached and live targets would differ "
                "(a student should see the teacher's output on the very view it is trained on; Beyer et al. 2022, "
                "'Knowledge distillation: a good teacher is patient and consistent'). HINT: set "
                "data.init_args.max_shift=0 (and max_rotation, max_scale 0) for cached distillation, or drop "
                "model.init_args.teacher.cache to run the teacher live on the augmented batches."
            )
        ds = self.datasets[stage]
        return SplitIdentity(dataset=f"MNISTDataModule {self.hub_id}/{self.config}", split=stage, rows=len(ds),
                             sample_ids_sha256=sha256_tensors({"ids": ds.sample_ids}),
                             content_sha256=sha256_tensors({"images": ds.images, "labels": ds.labels}))

    def cache_sample_ids(self, stage: str) -> torch.Tensor:
        """The split's sample ids (N,) in the order :meth:`cache_batches` yields them."""
        return self.datasets[stage].sample_ids.long()






    @override
    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels, *sample_ids = batch  # (B, 28, 28) uint8, (B,), (B,)
        images = rearrange(images, "b h w -> b 1 h w")
        if self.trainer is not None and self.trainer.training and self.augments:
            generator = torch.Generator(images.device).manual_seed(self.seed * 1_000_003 + self.augmented_batches)
            images = random_shift(images, self.max_shift, generator)  # on raw pixels: the fill is background
            images = random_affine(images, self.max_rotation, self.max_scale, generator)  # as float; none at 0, 0
            self.augmented_batches += 1
        images = normalize_uint8(images)  # (B, 1, 28, 28) float32
        if self.trainer is not None:
            # Lightning converts a batch for "bf16-true"/"16-true" before this hook, while the pixels are still
            # uint8; the float images made here get the same conversion (a no-op for 32-bit and mixed precision)
            images = self.trainer.precision_plugin.convert_input(images)
        return (images, labels, *sample_ids)

    @override
    def state_dict(self) -> dict:
        return {"augmented_batches": self.augmented_batches}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self.augmented_batches = state_dict.get("augmented_batches", 0)
