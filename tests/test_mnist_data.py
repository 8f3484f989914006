from types import SimpleNamespace

import pytest
import torch

from lkd.data import MNISTDataModule
from lkd.data.mnist import balanced_labelled_rows
from lkd.data.transforms import random_affine, random_shift
from lkd.losses import UNLABELLED
from tests.conftest import SHARED_DATA


def test_split_sizes_and_batches(tiny_mnist):
    dm = MNISTDataModule(str(tiny_mnist), train_size=500, val_size=100, batch_size=64)
    dm.setup("fit")
    assert (len(dm.datasets["train"]), len(dm.datasets["val"]), len(dm.datasets["test"])) == (500, 100, 200)
    # train and val are disjoint parts of the hub train split (sample ids: rows of that split)
    train_ids, val_ids = set(dm.datasets["train"].sample_ids.tolist()), set(dm.datasets["val"].sample_ids.tolist())
    assert len(train_ids) == 500 and len(val_ids) == 100 and not train_ids & val_ids and max(train_ids | val_ids) < 600
    images, labels, sample_ids = next(iter(dm.train_dataloader()))
    assert images.shape == (64, 28, 28) and images.dtype == torch.uint8 and labels.shape == (64,)
    assert sample_ids.shape == (64,) and set(sample_ids.tolist()) <= train_ids
    # each id names the row its image and label came from
    rows = {int(i): k for k, i in enumerate(dm.datasets["train"].sample_ids)}
    picked = torch.tensor([rows[int(i)] for i in sample_ids])
    assert torch.equal(images, dm.datasets["train"].images[picked]) and torch.equal(labels, dm.datasets["train"].labels[picked])
    images, labels_after, ids_after = dm.on_after_batch_transfer((images, labels, sample_ids), 0)
    assert images.shape == (64, 1, 28, 28) and images.dtype == torch.float32
    assert torch.equal(labels_after, labels) and torch.equal(ids_after, sample_ids)


def test_class_subset_and_label_mapping(tiny_mnist):
    dm = MNISTDataModule(str(tiny_mnist), train_size=500, val_size=100, classes=[7, 3])
    dm.setup("fit")
    assert dm.num_classes == 2
    full = MNISTDataModule(str(tiny_mnist), train_size=500, val_size=100)
    full.setup("fit")
    # digit 7 -> label 0, digit 3 -> label 1, same images as the full split filtered
    digits = full.datasets["train"].labels
    keep = (digits == 7) | (digits == 3)
    assert torch.equal(dm.datasets["train"].images, full.datasets["train"].images[keep])
    assert torch.equal(dm.datasets["train"].labels, (digits[keep] == 3).long())
    assert set(dm.datasets["test"].labels.tolist()) == {0, 1}


def test_seeded_split_is_reproducible(tiny_mnist):
    a = MNISTDataModule(str(tiny_mnist), train_size=500, val_size=100, seed=1)
    b = MNISTDataModule(str(tiny_mnist), train_size=500, val_size=100, seed=1)
    c = MNISTDataModule(str(tiny_mnist), train_size=500, val_size=100, seed=2)
    for dm in (a, b, c):
        dm.setup("fit")
    assert torch.equal(a.datasets["val"].images, b.datasets["val"].images)
    assert not torch.equal(a.datasets["val"].images, c.datasets["val"].images)


def test_sampler_order_depends_only_on_epoch(tiny_mnist):
    dm = MNISTDataModule(str(tiny_mnist), train_size=500, val_size=100)
    dm.setup("fit")
    sampler = dm.train_dataloader().sampler
    sampler.set_epoch(3)
    first = list(sampler)
    torch.rand(100)  # consuming global randomness must not change the order
    assert list(sampler) == first and sorted(first) == list(range(500))
    sampler.set_epoch(4)
    assert list(sampler) != first


def test_random_shift_moves_pixels_within_bounds():
    image = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    image[0, 0, 4, 4] = 255
    seen = set()
    for seed in range(40):
        out = random_shift(image, 2, torch.Generator().manual_seed(seed))
        (r, c), = (out[0, 0] == 255).nonzero().tolist()
        seen.add((r - 4, c - 4))
        assert out.sum() == 255  # one pixel, moved not copied
    assert seen <= {(dr, dc) for dr in range(-2, 3) for dc in range(-2, 3)} and len(seen) > 5


def test_random_affine_rotates_and_scales_about_the_centre():
    bar = torch.zeros(1, 1, 28, 28)
    bar[0, 0, 13:15, 4:24] = 255.0  # a horizontal bar through the centre
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")

    def centre_and_angle(image):  # (28, 28) -> centre of mass (row, col), the ink's main axis in degrees
        mass = image.sum()
        cy, cx = (image * rows).sum() / mass, (image * cols).sum() / mass
        dy, dx = rows - cy, cols - cx
        return (cy, cx), float(torch.rad2deg(0.5 * torch.atan2(2 * (image * dy * dx).sum(), (image * (dx * dx - dy * dy)).sum())))

    assert torch.equal(random_affine(bar, 0, 0), bar)  # no augmentation: unchanged
    angles = set()
    for seed in range(10):
        out = random_affine(bar, 30, 0.2, torch.Generator().manual_seed(seed))[0, 0]
        (cy, cx), angle = centre_and_angle(out)
        assert abs(cy - 13.5) < 0.6 and abs(cx - 13.5) < 0.6  # about the image centre
        assert 0.6 < out.sum() / bar.sum() < 1.5  # area grows or shrinks with the scale squared (0.8² .. 1.2²)
        assert abs(angle) <= 31
        angles.add(round(angle))
    assert len(angles) > 5  # each seed its own angle


def test_augmentation_changes_training_batches_only_and_resumes_the_same(tiny_mnist):
    data = MNISTDataModule(str(tiny_mnist), train_size=500, val_size=100, batch_size=50, max_rotation=15, max_scale=0.1)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    plain = MNISTDataModule(str(tiny_mnist), train_size=500, val_size=100, batch_size=50)
    plain.setup("fit")
    data.trainer = plain.trainer = SimpleNamespace(training=True, precision_plugin=SimpleNamespace(convert_input=lambda x: x))
    augmented, reference = data.on_after_batch_transfer(batch, 0)[0], plain.on_after_batch_transfer(batch, 0)[0]
    assert augmented.shape == reference.shape == (50, 1, 28, 28) and not torch.allclose(augmented, reference)
    data.trainer.training = False  # validation, test: as they are
    assert torch.equal(data.on_after_batch_transfer(batch, 0)[0], plain.on_after_batch_transfer(batch, 0)[0])
    data.trainer.training = True
    again = MNISTDataModule(str(tiny_mnist), train_size=500, val_size=100, batch_size=50, max_rotation=15, max_scale=0.1)
    again.setup("fit")
    again.trainer = data.trainer
    again.load_state_dict({"augmented_batches": 0})
    assert torch.equal(again.on_after_batch_transfer(batch, 0)[0], augmented)  # seeded by the batch count


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_rotation": -5}, r"max_rotation must be in 0..180 degrees, got -5"),
        ({"max_scale": 1.0}, r"max_scale must be in \[0, 1\) .*, got 1.0"),
        ({"batch_size": 0}, "batch_size must be > 0, got 0"),
        ({"val_size": -1}, r"val_size must be >= 0, got -1"),
        ({"classes": []}, "at least one class"),
        ({"classes": [1, 1]}, "must not repeat"),
        ({"labelled_size": 0}, r"labelled_size must be in 1..train_size=55000 or null .*, got 0"),
        ({"train_size": 100, "labelled_size": 101}, r"labelled_size must be in 1..train_size=100 .*, got 101"),
        ({"unlabelled": "keep"}, r"unlabelled must be 'transfer' .* or 'drop', got 'keep'"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MNISTDataModule("ylecun/mnist", **kwargs)


def test_few_labels_keep_every_row_and_label_a_balanced_seeded_choice(tiny_mnist):
    full = MNISTDataModule(str(tiny_mnist), train_size=500, val_size=100, seed=4)
    few = MNISTDataModule(str(tiny_mnist), train_size=500, val_size=100, seed=4, labelled_size=53)
    for dm in (full, few):
        dm.setup("fit")
    train, reference = few.datasets["train"], full.datasets["train"]
    # the transfer set: same rows, images and ids as with every label; 53 labels kept, the rest UNLABELLED
    assert torch.equal(train.sample_ids, reference.sample_ids) and torch.equal(train.images, reference.images)
    kept = train.labels != UNLABELLED
    assert int(kept.sum()) == 53 and torch.equal(train.labels[kept], reference.labels[kept])
    assert sorted(torch.bincount(train.labels[kept], minlength=10).tolist()) == [5] * 7 + [6] * 3  # 53 = 10 x 5 + 3
    # val and test keep every label; label-free fitting still sees every training image
    for split in ("val", "test"):
        assert torch.equal(few.datasets[split].labels, full.datasets[split].labels)
    assert torch.equal(few.unlabelled_train_images(), full.unlabelled_train_images())
    # the teacher cache keys the same 500 rows (their labels are part of what it checks)
    assert torch.equal(few.cache_sample_ids("train"), full.cache_sample_ids("train"))
    assert few.cache_identity("train").content_sha256 != full.cache_identity("train").content_sha256
    # seeded: the same seed picks the same rows, another seed others
    again = MNISTDataModule(str(tiny_mnist), train_size=500, val_size=100, seed=4, labelled_size=53)
    other = MNISTDataModule(str(tiny_mnist), train_size=500, val_size=100, seed=5, labelled_size=53)
    for dm in (again, other):
        dm.setup("fit")
    assert torch.equal(again.datasets["train"].labels, train.labels)
    labelled_ids = set(train.sample_ids[kept].tolist())
    assert set(other.datasets["train"].sample_ids[other.datasets["train"].labels != UNLABELLED].tolist()) != labelled_ids


def test_few_labels_drop_keeps_exactly_the_labelled_rows(tiny_mnist):
    transfer = MNISTDataModule(str(tiny_mnist), train_size=500, val_size=100, labelled_size=40, batch_size=16)
    drop = MNISTDataModule(str(tiny_mnist), train_size=500, val_size=100, labelled_size=40, unlabelled="drop", batch_size=16)
    for dm in (transfer, drop):
        dm.setup("fit")
    kept = transfer.datasets["train"].labels != UNLABELLED
    dropped = drop.datasets["train"]
    assert len(dropped) == 40 and torch.equal(dropped.sample_ids, transfer.datasets["train"].sample_ids[kept])
    assert torch.equal(dropped.labels, transfer.datasets["train"].labels[kept]) and (dropped.labels >= 0).all()
    assert sum(len(batch[1]) for batch in drop.train_dataloader()) == 40


def test_balanced_labelled_rows_spreads_the_remainder_and_names_a_short_class():
    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 2)
    keep = balanced_labelled_rows(labels, 7, num_classes=3, seed=0)
    assert torch.bincount(labels[keep], minlength=3).tolist() == [3, 2, 2]
    assert torch.equal(keep, balanced_labelled_rows(labels, 7, num_classes=3, seed=0))
    with pytest.raises(ValueError, match=r"class 2: 2 rows for a quota of 3.*HINT: lower labelled_size"):
        balanced_labelled_rows(labels, 9, num_classes=3, seed=0)


def test_unknown_class_is_named(tiny_mnist):
    dm = MNISTDataModule(str(tiny_mnist), train_size=500, val_size=100, classes=[3, 12])
    with pytest.raises(ValueError, match=r"\[12\] are not classes of .*which has 0..9\. HINT: list classes from 0 to 9"):
        dm.setup("fit")


def test_sizes_over_the_split_are_named(tiny_mnist):
    dm = MNISTDataModule(str(tiny_mnist), train_size=550, val_size=100)
    with pytest.raises(ValueError, match=r"550 \+ 100 exceeds the 600 images"):
        dm.setup("fit")


@pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason="no offline MNIST mirror")
def test_real_mirror_split_sizes_and_subset(monkeypatch):
    monkeypatch.delenv("LKD_DATA_DIR", raising=False)
    dm = MNISTDataModule(classes=[0, 1])
    dm.setup("fit")
    full_train_01 = 5923 + 6742
    n_train, n_val = len(dm.datasets["train"]), len(dm.datasets["val"])
    assert n_train + n_val == full_train_01 and 0.08 < n_val / full_train_01 < 0.09
    assert len(dm.datasets["test"]) == 980 + 1135
    assert dm.class_names == [str(i) for i in range(10)]
