"""Frozen feature extractors for a DKVB: fitted without labels (PCA), or the features of a trained classifier."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn


class PCAEncoder(nn.Module):
    """Principal-component projection, fitted on unlabelled data with :meth:`fit`.

    ``z = (x - mean) @ components.T`` (optionally divided by the component standard deviations). The mean
    and components are buffers, so they ride in checkpoints; nothing here is trained by gradient.

    Args:
        in_features: flattened input size (784 for MNIST).
        out_features: number of principal components kept.
        whiten: scale every component to unit variance.
        deskew: straighten every image first (:func:`lkd.data.transforms.deskew`: centre of mass centred,
            slant sheared away; no labels, no fitting), in ``fit`` and ``forward`` alike. For MNIST-like
            inputs (B, 1, H, H); it lifts the class-incremental DKVB from 94.9 % to about 97 % (BENCHMARKS.md).

    Shapes: x (B, ...) with prod(...) == in_features -> (B, out_features); with ``deskew`` x is (B, 1, H, H).
    """

    def __init__(self, in_features: int = 784, out_features: int = 50, *, whiten: bool = False, deskew: bool = False):
        super().__init__()
        if not 0 < out_features <= in_features:
            raise ValueError(f"PCAEncoder out_features must be in [1, in_features={in_features}], got {out_features}")
        self.in_features, self.out_features, self.whiten, self.deskew = in_features, out_features, whiten, deskew
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("components", torch.zeros(out_features, in_features))
        self.register_buffer("scale", torch.ones(out_features))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, x: torch.Tensor, max_samples: int = 20_000) -> PCAEncoder:
        """Fit on unlabelled inputs x (N, ...): the first ``max_samples`` rows (deterministic)."""
        x = rearrange(self._prepare(x[:max_samples]), "n ... -> n (...)").double()
        if x.shape[0] < self.out_features:
            raise ValueError(f"PCAEncoder.fit needs at least out_features={self.out_features} samples, got {x.shape[0]}")
        mean = x.mean(0)
        _, singular, vh = torch.linalg.svd(x - mean, full_matrices=False)
        self.mean.copy_(mean)
        self.components.copy_(vh[: self.out_features])
        self.scale.copy_(singular[: self.out_features] / x.shape[0] ** 0.5 if self.whiten else torch.ones(self.out_features))
        self.fitted.fill_(True)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.fitted):
            raise RuntimeError(
                "PCAEncoder is not fitted. HINT: EMAKeyUpdate fits it on the data module's unlabelled training "
                "images at the start of training; outside training call encoder.fit(unlabelled_images) first."
            )
        x = rearrange(self._prepare(x), "b ... -> b (...)")
        return ((x.float() - self.mean.float()) @ self.components.float().T) / self.scale.float()

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if not self.deskew:
            return x
        from lkd.data.transforms import deskew

        return deskew(x)


class TrainedEncoder(nn.Module):
    """The feature part of a trained classifier, frozen: ``model`` with its weights from ``checkpoint`` and its last
    ``Linear`` (the class scores) dropped, so a DKVB reads what the classifier learned (the DKVB paper's frozen
    pretrained encoder; here a small distilled student, so the DKVB student stays small and fast).

    Args:
        model: the classifier's architecture, as it was trained (e.g. the distilled ConvNet student).
        checkpoint: an lkd checkpoint of it (a ClassifierModule's ``model.*`` or a DistillModule's ``student.*``),
            read with ``weights_only``; None keeps the weights the model was built with (tests).

    Shapes: x (B, ...) as the model reads it -> (B, F), F = the input width of the model's last ``Linear``.
    """

    def __init__(self, model: nn.Module, checkpoint: str | None = None):
        super().__init__()
        from lkd.checkpoint import load_network_weights

        checkpoint = None if checkpoint == "None" else checkpoint  # jsonargparse's dotted `...checkpoint=null` arrives as "None"
        if checkpoint is not None:
            load_network_weights(model, checkpoint, what="encoder")
        last = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not last:
            raise ValueError(f"TrainedEncoder needs a classifier that ends in an nn.Linear; {type(model).__name__} has none")
        parent_name, _, child = last[-1].rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        self.out_features = parent.get_submodule(child).in_features
        setattr(parent, child, nn.Identity())
        self.model, self.checkpoint = model.requires_grad_(False).eval(), checkpoint

    def train(self, mode: bool = True) -> TrainedEncoder:
        return super().train(False)  # frozen: dropout and batch-norm statistics stay as trained

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
