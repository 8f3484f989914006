"""Tiny MNIST-shaped data in hub layout, and the CLI overrides that point any configs/mnist/*.yaml at it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_hub_dataset


def make_digits(n: int, seed: int, num_classes: int = 10):
    """MNIST-shaped data that a tiny model can learn: class c lights up a 4x4 block at a class-specific spot."""
    import datasets

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        r, col = 2 + 6 * (c // 4), 2 + 6 * (c % 4)
        images[i, r : r + 4, col : col + 4] = 255
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(num_classes)])}
    )
    return datasets.Dataset.from_dict({"image": list(images), "label": labels.tolist()}, features=features)


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory) -> Path:
    """A hub-layout MNIST look-alike: train 600, test 200 images of 10 learnable classes."""
    root = tmp_path_factory.mktemp("data") / "mnist"
    return write_hub_dataset(root, "mnist", {"train": make_digits(600, 0), "test": make_digits(200, 1)})


def mnist_tiny_args(root: Path) -> list[str]:
    """CLI overrides that point any MNIST config at the tiny data set in ``root``."""
    return [
        f"--data.init_args.hub_id={root}",
        "--data.init_args.train_size=500",
        "--data.init_args.val_size=100",
        "--data.init_args.batch_size=50",
        "--data.init_args.eval_batch_size=100",
    ]


@pytest.fixture()
def tiny_data_args(tiny_mnist) -> list[str]:
    """CLI overrides that point any MNIST config at the tiny data set."""
    return mnist_tiny_args(tiny_mnist)
