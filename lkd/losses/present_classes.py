"""Cross-entropy over the classes present in the batch: the "labels trick" for class-incremental learning."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def present_class_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, *, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy whose softmax runs over the classes that occur in the batch only (Zeno, Golan, Hoffer &
    Soudry 2018, "Task Agnostic Continual Learning Using Online Variational Bayes", the "labels trick"):

        L = − 1/B · Σ_b log softmax_{c ∈ P}(z_b)[y_b],   P = {y_1, …, y_B}

    A class absent from the batch gets no gradient, so a stage of new classes does not push down the logits of the
    classes learnt before it (the source of most forgetting in class-incremental learning with one head); with every
    class in every batch it is the ordinary cross-entropy.

    Args:
        logits: (B, C).
        labels: (B,) class ids in [0, C).
        label_smoothing: spread over the present classes only.
    Returns:
        () fp32 mean over the batch.
    """
    present = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)  # (C,)
    present[labels] = True
    masked = logits.float().masked_fill(~present, float("-inf"))  # (B, C): absent classes out of the softmax
    if label_smoothing == 0.0:
        return F.cross_entropy(masked, labels)
    # F.cross_entropy would smooth onto the absent classes (−inf logits: nan); smooth over the present ones instead
    logprobs = F.log_softmax(masked, dim=-1).masked_fill(~present, 0.0)  # (B, C)
    nll = -logprobs.gather(-1, labels[:, None]).squeeze(-1)  # (B,)
    uniform = -logprobs.sum(-1) / present.sum()  # (B,)
    return ((1.0 - label_smoothing) * nll + label_smoothing * uniform).mean()
