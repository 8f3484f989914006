from functools import partial

import pytest
import torch

from lkd.callbacks import EMAKeyUpdate
from lkd.data import MNISTDataModule
from lkd.models import DiscreteKeyValueBottleneck, PCAEncoder
from lkd.modules import ClassifierModule
from tests.helpers import tiny_trainer


def test_pca_finds_the_direction_of_largest_variance():
    torch.manual_seed(0)
    t = torch.randn(500, 1)
    x = torch.cat([3 * t, 3 * t, 0.1 * torch.randn(500, 1)], dim=1) + torch.tensor([1.0, 2.0, 3.0])
    enc = PCAEncoder(3, 1).fit(x)
    direction = enc.components[0].abs()
    torch.testing.assert_close(direction, torch.tensor([2**-0.5, 2**-0.5, 0.0]), atol=0.01, rtol=0)
    torch.testing.assert_close(enc.mean, x.mean(0), atol=1e-5, rtol=0)
    z = enc(x)
    assert z.shape == (500, 1) and abs(z.mean().item()) < 1e-4
    assert PCAEncoder(3, 1, whiten=True).fit(x)(x).std().item() == pytest.approx(1.0, rel=0.01)


def test_unfitted_encoder_says_how_to_fit_it():
    with pytest.raises(RuntimeError, match="PCAEncoder is not fitted"):
        PCAEncoder(4, 2)(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"out_features must be in \[1, in_features=4\], got 5"):
        PCAEncoder(4, 5)


def test_key_callback_fits_the_encoder_on_unlabelled_train_images(tmp_path, tiny_mnist):
    data = MNISTDataModule(str(tiny_mnist), train_size=500, val_size=100, batch_size=50, classes=[0, 1, 2])
    net = partial(DiscreteKeyValueBottleneck, in_features=10, num_codebooks=4, num_keys=16, key_dim=4,
                  encoder=PCAEncoder(784, 10))
    module = ClassifierModule(net, num_classes=3, optimizer=partial(torch.optim.Adam, lr=1e-2))
    trainer = tiny_trainer(tmp_path, max_epochs=1, callbacks=[EMAKeyUpdate(init_data="all_train_images")])
    trainer.fit(module, datamodule=data)
    encoder = module.model.encoder
    assert bool(encoder.fitted)
    # fitted on all 500 train images (every digit, not only classes 0-2), never on val/test
    expected_mean = data.unlabelled_train_images().flatten(1).mean(0)
    assert len(data.unlabelled_train_images()) == 500
    torch.testing.assert_close(encoder.mean, expected_mean, atol=1e-5, rtol=0)


def test_trained_encoder_is_the_classifier_without_its_last_layer_frozen(tmp_path):
    from lkd.checkpoint import CheckpointMismatchError
    from lkd.models import ConvNet, DiscreteKeyValueBottleneck, TrainedEncoder

    def student():
        return ConvNet(10, channels=(4, 8), convs_per_block=1, downsample="stride", hidden=16, batch_norm=False)

    trained = student()
    torch.save({"state_dict": {f"student.{k}": v for k, v in trained.state_dict().items()}}, tmp_path / "s.ckpt")
    encoder = TrainedEncoder(student(), str(tmp_path / "s.ckpt"))
    x = torch.randn(5, 1, 28, 28)
    hidden = trained.head[:-2](trained.features(x).flatten(1))  # ..., Linear(flat, 16), ReLU | Dropout, Linear(16, 10)
    assert encoder.out_features == 16 and torch.allclose(encoder(x), trained.head[:-1](trained.features(x).flatten(1)))
    assert torch.allclose(encoder(x), hidden)
    assert not any(p.requires_grad for p in encoder.parameters())
    dkvb = DiscreteKeyValueBottleneck(10, 16, num_codebooks=4, num_keys=8, key_dim=4, encoder=encoder).train()
    assert not encoder.training and dkvb(x).shape == (5, 10)  # frozen: stays in eval mode inside a training DKVB
    wrong = ConvNet(10, channels=(8, 8), convs_per_block=1, downsample="stride", hidden=16, batch_norm=False)
    with pytest.raises(CheckpointMismatchError, match="encoder checkpoint .* does not fit"):
        TrainedEncoder(wrong, str(tmp_path / "s.ckpt"))


def _ink_moments(images):
    ink = images[:, 0] - images.amin(dim=(1, 2, 3))[:, None, None]  # (B, H, W)
    pos = torch.arange(images.shape[-1], dtype=torch.float32)
    total = ink.sum(dim=(1, 2))
    cy, cx = (ink * pos[:, None]).sum(dim=(1, 2)) / total, (ink * pos[None, :]).sum(dim=(1, 2)) / total
    dy, dx = pos[None, :, None] - cy[:, None, None], pos[None, None, :] - cx[:, None, None]
    return cy, cx, (ink * dy * dx).sum(dim=(1, 2)) / (ink * dy * dy).sum(dim=(1, 2))


def test_deskew_straightens_a_slanted_stroke_and_centres_it():
    from lkd.data.transforms import deskew

    images = torch.full((2, 1, 28, 28), -0.42)
    for row in range(6, 22):  # two strokes leaning opposite ways, off centre
        images[0, 0, row, 4 + (row - 6) // 2] = 2.8
        images[1, 0, row, 20 - (row - 6) // 3] = 2.8
    cy, cx, skew = _ink_moments(images)
    assert skew[0] > 0.4 and skew[1] < -0.3 and (cx - 13.5).abs().min() > 3
    out = deskew(images)
    cy, cx, skew = _ink_moments(out)
    assert out.shape == images.shape and skew.abs().max() < 0.05
    torch.testing.assert_close(cx, torch.full((2,), 13.5), atol=0.3, rtol=0)
    torch.testing.assert_close(cy, torch.full((2,), 13.5), atol=0.3, rtol=0)
    assert out.amin().item() == pytest.approx(-0.42, abs=1e-5)  # the background stays the background
    with pytest.raises(ValueError, match=r"deskew expects square one-channel images \(B, 1, H, H\), got shape \(2, 784\)"):
        deskew(images.flatten(1))


def test_pca_encoder_with_deskew_fits_and_encodes_deskewed_images():
    from lkd.data.transforms import deskew

    torch.manual_seed(0)
    images = torch.randn(64, 1, 28, 28).clamp_min(0)
    enc = PCAEncoder(784, 8, deskew=True).fit(images)
    torch.testing.assert_close(enc.mean, deskew(images).flatten(1).mean(0), atol=1e-5, rtol=0)
    plain = PCAEncoder(784, 8).fit(deskew(images))
    torch.testing.assert_close(enc(images), plain(deskew(images)), atol=1e-4, rtol=0)
