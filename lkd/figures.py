"""Matplotlib figures for TensorBoard (``logger.experiment.add_figure``): one home for every plot lkd logs."""

from __future__ import annotations

import torch


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def accuracy_heatmap(matrix: torch.Tensor, groups: list[list[int]], title: str = "accuracy after each stage"):
    """The (S, S) continual accuracy matrix (row: after stage, column: evaluated group), values in %."""
    plt = _plt()
    s = matrix.shape[0]
    fig, ax = plt.subplots(figsize=(1.1 * s + 2, 1.0 * s + 1.5))
    data = (100 * matrix).numpy()
    ax.imshow(data, vmin=0, vmax=100, cmap="viridis")
    names = [",".join(map(str, g)) for g in groups]
    ax.set_xticks(range(s), names)
    ax.set_yticks(range(s), [f"after {n}" for n in names])
    ax.set_xlabel("evaluated on classes")
    for i in range(s):
        for j in range(s):
            if data[i, j] == data[i, j]:  # not NaN
                ax.text(j, i, f"{data[i, j]:.1f}", ha="center", va="center", color="white" if data[i, j] < 60 else "black")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def confusion_matrix_figure(counts: torch.Tensor, class_names: list[str] | None = None, title: str = "confusion matrix"):
    """A (C, C) confusion matrix (row: true class, column: predicted), coloured by the row-normalised rate
    and annotated with counts when C <= 12."""
    plt = _plt()
    c = counts.shape[0]
    names = class_names or [str(i) for i in range(c)]
    rates = (counts.float() / counts.sum(1, keepdim=True).clamp_min(1)).numpy()
    size = min(1.0 + 0.55 * c, 10)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(rates, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(c), names, rotation=45 if max(map(len, names)) > 3 else 0, ha="right" if max(map(len, names)) > 3 else "center")
    ax.set_yticks(range(c), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if c <= 12:
        for i in range(c):
            for j in range(c):
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", color="white" if rates[i, j] > 0.6 else "black", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def key_usage_figure(counts: torch.Tensor, title: str = "DKVB key usage"):
    """How evenly a DKVB uses its keys. ``counts``: (C, K) selections per codebook and key.

    Left: share of selections per key, keys sorted from most to least used in every codebook, median and
    range over codebooks (a flat line = every key used equally). Right: histogram of per-key counts.
    """
    plt = _plt()
    C, K = counts.shape
    share = counts.float() / counts.sum(1, keepdim=True).clamp_min(1)  # (C, K)
    ranked = share.sort(dim=1, descending=True).values
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    x = torch.arange(1, K + 1).numpy()
    left.fill_between(x, ranked.min(0).values.numpy(), ranked.max(0).values.numpy(), alpha=0.3, label="range over codebooks")
    left.plot(x, ranked.median(0).values.numpy(), label="median")
    left.axhline(1 / K, color="grey", linestyle="--", label="uniform")
    left.set_xlabel("key rank")
    left.set_ylabel("share of selections")
    left.set_yscale("log")
    left.legend(fontsize=8)
    dead = (counts == 0).float().mean().item()
    right.hist(counts.flatten().numpy(), bins=30)
    right.set_xlabel("selections per key")
    right.set_ylabel("keys")
    fig.suptitle(f"{title}: {C} codebooks x {K} keys, {100 * dead:.1f}% never selected")
    fig.tight_layout()
    return fig


def figure_to_array(fig):
    """RGB array (H, W, 3) of a figure, as TensorBoard stores it (for tests and notebooks)."""
    import numpy as np

    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3]


def expert_usage_figure(history: torch.Tensor, steps: list[int], title: str = "router expert usage"):
    """How the router spreads tokens over the teacher's experts during training. ``history``: (S, E) share of
    (token, layer) selections per expert in each logging interval ending at ``steps``; one row per interval."""
    plt = _plt()
    S, E = history.shape
    fig, ax = plt.subplots(figsize=(min(2 + 0.5 * E, 10), min(1.5 + 0.3 * S, 8)))
    image = ax.imshow(history.numpy(), aspect="auto", cmap="magma", vmin=0)
    ax.set_xticks(range(E), [str(e) for e in range(E)])
    ax.set_yticks(range(S), [str(s) for s in steps])
    ax.set_xlabel("expert")
    ax.set_ylabel("optimizer step")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of selections")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def routing_schedule_figure(steps: list[int], top_k: list[int], temperature: list[float], current_step: int | None = None,
                            title: str = "routing schedule"):
    """The router's curriculum: experts per token (top-k, steps, left axis) and routing temperature τ (right
    axis) against the optimizer step, the whole planned schedule, with a line at ``current_step``."""
    plt = _plt()
    fig, ax_k = plt.subplots(figsize=(6, 3))
    ax_k.step(steps, top_k, where="post", color="tab:blue", label="top-k")
    ax_k.set_xlabel("optimizer step")
    ax_k.set_ylabel("top-k (experts per token)", color="tab:blue")
    ax_k.set_yticks(range(min(top_k), max(top_k) + 1))
    ax_t = ax_k.twinx()
    ax_t.plot(steps, temperature, color="tab:orange", label="temperature")
    ax_t.set_ylabel("router temperature τ", color="tab:orange")
    if current_step is not None:
        ax_k.axvline(current_step, color="gray", linestyle="--", linewidth=1)
        late = current_step > (steps[0] + steps[-1]) / 2
        ax_k.text(current_step, max(top_k), f"step {current_step} " if late else f" step {current_step}", color="gray",
                  va="top", ha="right" if late else "left", fontsize=8)
    ax_k.set_title(title)
    fig.tight_layout()
    return fig
