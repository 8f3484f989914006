"""Continual-learning metrics: the accuracy matrix and what follows from it."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class ContinualAccuracyMatrix(Metric):
    """``A[i, j]`` = accuracy on class group ``j`` measured after training stage ``i``.

    States are correct / total counts (summed across processes), so the matrix is exact under DDP.
    Entries never measured are NaN.
    """

    full_state_update = False

    def __init__(self, num_stages: int, **kwargs):
        super().__init__(**kwargs)
        if num_stages <= 0:
            raise ValueError(f"num_stages must be > 0, got {num_stages}")
        self.num_stages = num_stages
        self.add_state("correct", torch.zeros(num_stages, num_stages, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(num_stages, num_stages, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, stage: int, group: int, preds: torch.Tensor, target: torch.Tensor) -> None:
        """preds, target: (N,) class indices of group ``group`` evaluated after stage ``stage``."""
        self.correct[stage, group] += (preds == target).sum()
        self.total[stage, group] += target.numel()

    def compute(self) -> torch.Tensor:
        """(S, S) float accuracy matrix, NaN where not measured. (torchmetrics' ``compute()`` wrapper squeezes a
        (1, 1) result to a scalar; :meth:`as_matrix` never does.)"""
        return self.as_matrix()

    def as_matrix(self) -> torch.Tensor:
        """(S, S) float accuracy matrix, NaN where not measured, also for a single stage."""
        matrix = self.correct.double() / self.total.double()
        return torch.where(self.total > 0, matrix, torch.full_like(matrix, float("nan"))).float()


def average_accuracy(matrix: torch.Tensor) -> torch.Tensor:
    """(S,) mean accuracy over the groups seen so far after each stage: ``mean_{j<=i} A[i, j]``."""
    s = matrix.shape[0]
    seen = torch.tril(torch.ones(s, s, dtype=torch.bool))
    return torch.where(seen, matrix, torch.zeros_like(matrix)).sum(1) / seen.sum(1)


def forgetting(matrix: torch.Tensor) -> torch.Tensor:
    """(S-1,) forgetting of each group but the last: best accuracy before the final stage minus final accuracy,
    ``max_{j<=i<S-1} A[i, j] - A[S-1, j]`` (Chaudhry et al. 2018). Empty for one stage."""
    s = matrix.shape[0]
    out = []
    for j in range(s - 1):
        out.append(matrix[j : s - 1, j].max() - matrix[s - 1, j])
    return torch.stack(out) if out else matrix.new_zeros(0)
