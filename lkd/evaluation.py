"""Measurements shared by the demo, the benchmarks and the notebook."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


@torch.inference_mode()
def inference_seconds(model: nn.Module, inputs: torch.Tensor, *, batch_size: int = 1000, repeats: int = 5) -> float:
    """Median wall time of ``repeats`` passes of ``model`` over all ``inputs`` (after one warm-up pass).

    Args:
        model: put in eval mode here (and back to its previous mode afterwards).
        inputs: (N, ...) on the model's device.
    """
    was_training = model.training
    model.eval()
    try:
        def one_pass() -> float:
            start = time.perf_counter()
            for chunk in inputs.split(batch_size):
                model(chunk)
            if inputs.is_cuda:
                torch.cuda.synchronize()
            return time.perf_counter() - start

        one_pass()
        return statistics.median(one_pass() for _ in range(repeats))
    finally:
        model.train(was_training)
