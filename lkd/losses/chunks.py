"""Aligned chunks as tensors: where the chunks of two tokenisations of one text sit on each side, and the gathers
and sums that read values per chunk (pure functions; the alignment itself is :mod:`lkd.data.alignment`).

Both models read the same text, tokenised differently; :mod:`lkd.data.alignment` cuts it into *chunks* whose
boundaries are token boundaries on both sides. A batch carries the chunk table ``chunks`` (B, C, 4)
``[s0, s1, t0, t1]`` (student / teacher token ranges) and ``num_chunks`` (B,), read through :class:`ChunkIndex`.
Chunk ``c >= 1`` is predicted by both models from the same text prefix: the student at position ``s0 − 1``, the
teacher at ``t0 − 1``; chunk 0 has no prefix in the block and is skipped.

Used by the cross-tokenizer losses (:mod:`lkd.losses.cross_tokenizer`) and the student-aware router's inputs across
two tokenizers (:func:`lkd.models.router.chunk_gap_features`). Lives with the losses because they need it and
``lkd.losses`` imports nothing outside itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ChunkIndex:
    """Where each aligned chunk sits on both sides, for gathers. All tensors (B, C) int64 / bool.

    Attributes:
        s_prev, t_prev: the position that predicts the chunk's first token (``s0 − 1``, ``t0 − 1``; 0 for chunk 0).
        s_last, t_last: the chunk's last token (``s1 − 1``, ``t1 − 1``).
        s_start, s_end, t_start, t_end: token ranges ``[s0, s1)``, ``[t0, t1)``.
        predicted: chunks 1..num_chunks−1 (both sides predict them from the same prefix).
        valid: chunks 0..num_chunks−1.
        single: predicted chunks of exactly one token on each side.
    """

    s_start: torch.Tensor
    s_end: torch.Tensor
    t_start: torch.Tensor
    t_end: torch.Tensor
    predicted: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def from_table(cls, chunks: torch.Tensor, num_chunks: torch.Tensor) -> ChunkIndex:
        """chunks: (B, C, 4) ``[s0, s1, t0, t1]``; num_chunks: (B,)."""
        c = torch.arange(chunks.shape[1], device=chunks.device)[None, :]  # (1, C)
        valid = c < num_chunks[:, None]  # (B, C)
        return cls(chunks[..., 0].long(), chunks[..., 1].long(), chunks[..., 2].long(), chunks[..., 3].long(),
                   predicted=valid & (c >= 1), valid=valid)

    @property
    def s_prev(self) -> torch.Tensor:
        return (self.s_start - 1).clamp_min(0)

    @property
    def t_prev(self) -> torch.Tensor:
        return (self.t_start - 1).clamp_min(0)

    @property
    def s_last(self) -> torch.Tensor:
        return (self.s_end - 1).clamp_min(0)

    @property
    def t_last(self) -> torch.Tensor:
        return (self.t_end - 1).clamp_min(0)

    @property
    def single(self) -> torch.Tensor:
        return self.predicted & (self.s_end - self.s_start == 1) & (self.t_end - self.t_start == 1)


def gather_positions(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x: (B, L, ...) ; positions: (B, C) → (B, C, ...)."""
    index = positions.long().view(*positions.shape, *([1] * (x.dim() - 2))).expand(*positions.shape, *x.shape[2:])
    return x.gather(1, index)


def select_positions(x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The rows of x (B, L, ...) at ``positions`` (B, C) where ``mask`` (B, C): (N, ...) with N = mask.sum(),
    copied once (the vocabulary-wide rows of logits are large)."""
    batch = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(positions)
    flat = (batch * x.shape[1] + positions)[mask]  # (N,) row index into (B·L, ...)
    return x.reshape(-1, *x.shape[2:]).index_select(0, flat)


def chunk_sums(values: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Σ values[b, start:end] per chunk, from a prefix sum. values: (B, L); start, end: (B, C) → (B, C)."""
    prefix = F.pad(values.float().cumsum(-1), (1, 0))  # (B, L + 1): prefix[i] = Σ values[:i]
    return prefix.gather(1, end.long()) - prefix.gather(1, start.long())


__all__ = ["ChunkIndex", "chunk_sums", "gather_positions", "select_positions"]
