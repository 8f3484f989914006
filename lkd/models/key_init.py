"""Initialise a Discrete Key-Value Bottleneck's keys from a teacher's embeddings."""

from __future__ import annotations

import torch
from einops import einsum, rearrange
from torch import Tensor

from lkd.models.dkvb import DiscreteKeyValueBottleneck


@torch.no_grad()
def discrete_key_init(
    dkvb: DiscreteKeyValueBottleneck,
    teacher_embeddings: Tensor,
    *,
    neighbours: int = 8,
    temperature: float = 1.0,
) -> Tensor:
    """Move every key to a soft average of the teacher embeddings nearest to it, and write it.

    Embeddings: the teacher's embeddings of N examples **in the student's key space**, i.e. what the DKVB
    matches against its keys: (N, C, Dk), or (N, C·Dk) which is split into C consecutive chunks of Dk
    exactly as the DKVB splits its projected input. Get them with ``dkvb.project(x)`` when the DKVB's
    encoder is the teacher's feature extractor, or pass teacher features of width C·Dk directly to a DKVB
    built with ``projection="none"``. Raw features of width ``in_features`` are *not* projected here.

    For codebook c and key k (current value e_ck, so the result depends on the keys before the call):

        d_n   = ||e_ck - t_nc||²                                (squared Euclidean distance)
        M     = the ``neighbours`` embeddings n with smallest d_n
        w_n   = softmax_{n in M}(-d_n / temperature)
        e_ck <- sum_{n in M} w_n · t_nc

    A small temperature approaches the nearest embedding, a large one the plain mean of the M nearest.
    The keys are written with :meth:`DiscreteKeyValueBottleneck.write_keys`, so a later train-mode
    forward continues the EMA from them instead of undoing them. Memory: one (K, N) distance matrix at a
    time (codebooks are processed one by one).

    Returns:
        the new keys, (C, K, Dk) fp32.
    """
    C, K, Dk = dkvb.num_codebooks, dkvb.num_keys, dkvb.key_dim
    emb = teacher_embeddings
    if emb.ndim == 2 and emb.shape[1] == C * Dk:
        emb = rearrange(emb, "n (c d) -> n c d", c=C)
    elif not (emb.ndim == 3 and tuple(emb.shape[1:]) == (C, Dk)):
        raise ValueError(
            f"teacher_embeddings must be (N, num_codebooks, key_dim) = (N, {C}, {Dk}) or (N, {C * Dk}), got "
            f"{tuple(emb.shape)}. HINT: project raw features into the key space first, e.g. dkvb.project(x)."
        )
    problems = []
    if not 1 <= neighbours <= emb.shape[0]:
        problems.append(f"neighbours must be in [1, N={emb.shape[0]}], got {neighbours}")
    if not temperature > 0:
        problems.append(f"temperature must be > 0, got {temperature}")
    if problems:
        raise ValueError("discrete_key_init: " + "; ".join(problems))

    keys = dkvb.keys.float()  # (C, K, Dk)
    emb = rearrange(emb.float().to(keys.device), "n c d -> c n d")
    new_keys = torch.empty_like(keys)
    for c in range(C):
        dist = torch.cdist(keys[c], emb[c]).pow(2)  # (K, N)
        near, idx = dist.topk(neighbours, dim=-1, largest=False)  # (K, M)
        weights = (-near / temperature).softmax(dim=-1)  # (K, M)
        new_keys[c] = einsum(weights, emb[c][idx], "k m, k m d -> k d")
    dkvb.write_keys(new_keys)
    return new_keys


@torch.no_grad()
def init_keys_from_embeddings(
    dkvb: DiscreteKeyValueBottleneck,
    embeddings: Tensor,
    *,
    neighbours: int = 8,
    temperature: float = 1.0,
    seed: int = 0,
) -> Tensor:
    """Start every key at a distinct embedding drawn at random (seeded), then :func:`discrete_key_init`.

    ``embeddings``: (N, C, Dk) in key space, N >= num_keys (with fewer, draws repeat). Starting from the
    data, not from the quantiser's random init, keeps keys from collapsing onto the same few neighbours.
    """
    C, K = dkvb.num_codebooks, dkvb.num_keys
    if embeddings.ndim != 3 or tuple(embeddings.shape[1:]) != (C, dkvb.key_dim):
        raise ValueError(f"embeddings must be (N, {C}, {dkvb.key_dim}), got {tuple(embeddings.shape)}")
    gen = torch.Generator().manual_seed(seed)
    n = embeddings.shape[0]
    picks = torch.stack([torch.randperm(n, generator=gen)[:K] if n >= K else torch.randint(n, (K,), generator=gen)
                         for _ in range(C)])  # (C, K)
    emb = embeddings.float().to(dkvb.values.device)
    start = emb[picks.to(emb.device), torch.arange(C, device=emb.device)[:, None]]  # (C, K, Dk)
    dkvb.write_keys(start)
    return discrete_key_init(dkvb, emb, neighbours=neighbours, temperature=temperature)
