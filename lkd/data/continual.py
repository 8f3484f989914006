"""Non-stationary MNIST: class groups presented one after another inside one ``Trainer.fit``."""

from __future__ import annotations

import random
from collections.abc import Sequence
from math import comb

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader
from typing_extensions import override

from lkd.data.mnist import MNISTDataModule, TensorBatches
from lkd.data.transforms import normalize_uint8


def class_pair_orders(
    num_random: int, *, seed: int = 0, digits: Sequence[int] = range(8), num_stages: int = 4, group_size: int = 2
) -> list[list[list[int]]]:
    """Stage lists for a continual run: the original order first, then ``num_random`` seeded random ones.

    Order 0 is ``digits`` as given, cut into consecutive groups: ``[[0, 1], [2, 3], [4, 5], [6, 7]]`` by
    default. Order ``i >= 1`` is a shuffle of ``digits`` (``random.Random(seed)``, drawn one after another)
    whose first ``num_stages * group_size`` digits are cut into ``num_stages`` groups, each group sorted (the
    order inside a group only renames labels). A draw whose groups and stage order repeat an earlier order is
    drawn again, so the ``num_random`` orders are distinct and differ from the original. The draws are
    sequential, so ``class_pair_orders(2)`` is a prefix of ``class_pair_orders(5)``.

    Why digits 0-7 by default, not a shuffle of all ten: the spread over orders should measure the *order*
    (which digits share a stage, which come late), not *which* digits are learnt. With 0-7 every order has
    the same 8-class head and the same test images as the original row and as the joint reference (all 8
    classes at once), so its final accuracy and forgetting compare with them directly. Drawing from all ten
    (``digits=range(10)``) also swaps 8 and 9 in and out, the two hardest MNIST digits, which moves the
    ceiling itself and mixes a task-difficulty spread into the order spread.

    Args:
        num_random: how many random orders follow the original (0: the original alone).
        seed: seeds the shuffles.
        digits: the pool of classes to draw from; at least ``num_stages * group_size``, no repeats.
        num_stages: groups per order.
        group_size: classes per group.

    Returns:
        ``num_random + 1`` orders, each a list of ``num_stages`` groups of ``group_size`` classes, for
        :class:`NonStationaryMNISTDataModule`'s ``stages``.
    """
    digits = list(digits)
    problems = []
    if num_random < 0:
        problems.append(f"num_random must be >= 0, got {num_random}")
    if num_stages < 1 or group_size < 1:
        problems.append(f"num_stages and group_size must be >= 1, got {num_stages} and {group_size}")
    if len(set(digits)) != len(digits):
        problems.append(f"digits must not repeat a class, got {digits}")
    if len(digits) < num_stages * group_size:
        problems.append(f"{num_stages} stages of {group_size} classes need {num_stages * group_size} digits, got {len(digits)}: {digits}")
    if problems:
        raise ValueError("class_pair_orders: " + "; ".join(problems))
    used = num_stages * group_size

    def groups(sequence: list[int]) -> list[list[int]]:
        return [sequence[i : i + group_size] for i in range(0, used, group_size)]

    orders = [groups(digits)]
    seen = {tuple(tuple(sorted(g)) for g in orders[0])}
    if (possible := _count_orders(len(digits), num_stages, group_size)) < num_random + 1:
        raise ValueError(f"class_pair_orders: only {possible - 1} orders differ from the original; asked for {num_random}")
    rng = random.Random(seed)
    while len(orders) < num_random + 1:
        shuffled = digits[:]
        rng.shuffle(shuffled)
        order = [sorted(g) for g in groups(shuffled)]
        if (key := tuple(tuple(g) for g in order)) not in seen:
            seen.add(key)
            orders.append(order)
    return orders


def _count_orders(pool: int, num_stages: int, group_size: int) -> int:
    """How many distinct orders (sequences of unordered groups) ``pool`` classes give."""
    count = 1
    for stage in range(num_stages):
        count *= comb(pool - stage * group_size, group_size)
    return count


class NonStationaryMNISTDataModule(MNISTDataModule):
    """MNIST whose training data switches from one class group to the next every ``epochs_per_stage``.

    Stage ``i`` (epochs ``i*E .. (i+1)*E - 1``) trains only on ``stages[i]``. The model has one output head
    over all classes of all stages (class-incremental): digit ``classes[k]`` gets label ``k`` where
    ``classes`` is the stages flattened in order (default digits 0..7 -> labels 0..7). Validation covers all
    stage classes every epoch; :class:`lkd.callbacks.ContinualEvaluation` measures every group after each
    stage. The switch happens inside one fit: ``setup`` sets the trainer's
    ``reload_dataloaders_every_n_epochs = 1`` and ``train_dataloader`` reads the stage from the epoch, so
    a resumed run continues in the right stage.

    Args:
        stages: class groups in training order, e.g. ``[[0, 1], [2, 3], [4, 5], [6, 7]]`` or any other, such as
            ``[[5, 2], [7, 0], [1, 6], [3, 4]]`` (:func:`class_pair_orders` draws seeded ones).
        epochs_per_stage: epochs of each stage; ``trainer.max_epochs`` must be ``len(stages) * epochs_per_stage``.
        **kwargs: the arguments of :class:`MNISTDataModule` (except ``classes``, which the stages define).
    """

    def __init__(
        self,
        hub_id: str = "ylecun/mnist",
        config: str | None = "mnist",
        *,
        stages: Sequence[Sequence[int]] = ((0, 1), (2, 3), (4, 5), (6, 7)),
        epochs_per_stage: int = 3,
        train_size: int = 55_000,
        val_size: int = 5_000,
        seed: int = 42,
        batch_size: int = 32,
        eval_batch_size: int = 1000,
        max_shift: int = 0,
        num_workers: int = 0,
    ):
        stages = [list(group) for group in stages]
        problems = []
        if not stages:
            problems.append("stages must hold at least one class group")
        problems += [f"stage {i} is an empty class group" for i, g in enumerate(stages) if not g]
        seen: dict[int, int] = {}
        for i, group in enumerate(stages):
            for c in group:
                if c in seen:
                    problems.append(f"class {c} is in stage {seen[c]} and stage {i}; each class belongs to one stage")
                seen.setdefault(c, i)
        if epochs_per_stage <= 0:
            problems.append(f"epochs_per_stage must be > 0, got {epochs_per_stage}")
        if problems:
            raise ValueError("NonStationaryMNISTDataModule: " + "; ".join(problems))
        super().__init__(
            hub_id, config, train_size=train_size, val_size=val_size, seed=seed, classes=[c for g in stages for c in g],
            batch_size=batch_size, eval_batch_size=eval_batch_size, max_shift=max_shift, num_workers=num_workers,
        )
        self.stages, self.epochs_per_stage = stages, epochs_per_stage
        self._stage_train: dict[int, TensorBatches] = {}
        self.save_hyperparameters()

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def total_epochs(self) -> int:
        return self.num_stages * self.epochs_per_stage

    def stage_at_epoch(self, epoch: int) -> int:
        return min(epoch // self.epochs_per_stage, self.num_stages - 1)

    def is_stage_end(self, epoch: int) -> bool:
        return (epoch + 1) % self.epochs_per_stage == 0

    def group_labels(self, group: int) -> torch.Tensor:
        """Model labels of the classes of ``stages[group]``."""
        start = sum(len(g) for g in self.stages[:group])
        return torch.arange(start, start + len(self.stages[group]))

    def group_tensors(self, split: str, group: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images (N, 1, 28, 28) and labels (N,) of one group in ``split`` ('val' or 'test')."""
        ds = self.datasets[split]
        keep = torch.isin(ds.labels, self.group_labels(group))
        return normalize_uint8(ds.images[keep]), ds.labels[keep]

    @override
    def setup(self, stage: str) -> None:
        super().setup(stage)
        trainer = self.trainer
        if trainer is None or stage != "fit":
            return
        if trainer.max_epochs not in (None, -1) and trainer.max_epochs != self.total_epochs and not trainer.fast_dev_run:
            raise ValueError(
                f"trainer.max_epochs is {trainer.max_epochs}, but {self.num_stages} stages x {self.epochs_per_stage} "
                f"epochs_per_stage need {self.total_epochs}; set trainer.max_epochs: {self.total_epochs}"
            )
        if trainer.reload_dataloaders_every_n_epochs != 1:
            trainer.reload_dataloaders_every_n_epochs = 1  # the stage switch needs a fresh loader every epoch
            rank_zero_info("NonStationaryMNISTDataModule: reload_dataloaders_every_n_epochs set to 1 for stage switching")

    def stage_dataset(self, stage: int) -> TensorBatches:
        if stage not in self._stage_train:
            ds = self.datasets["train"]
            keep = torch.isin(ds.labels, self.group_labels(stage))
            self._stage_train[stage] = TensorBatches(ds.images[keep], ds.labels[keep])
        return self._stage_train[stage]

    @override
    def cache_identity(self, stage: str):
        from lkd.cache.store import TeacherCacheError

        raise TeacherCacheError(
            "a teacher cache does not support NonStationaryMNISTDataModule (its training data changes per stage). "
            "HINT: run the teacher live (drop model.init_args.teacher.cache)."
        )

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        stage = self.stage_at_epoch(epoch)
        loader = self._loader("train", shuffle=True, dataset=self.stage_dataset(stage))
        rank_zero_info(f"epoch {epoch}: training stage {stage} on classes {self.stages[stage]}")
        return loader
