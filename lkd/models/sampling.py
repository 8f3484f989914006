"""Sampling completions from a causal LM for on-policy distillation: batched, with a KV cache, without gradient, in eval
mode, and finished rows dropped from the batch (and from the cache) as soon as they end.

A plain loop over *new tokens*, never over rows: one forward of the prompts (left-padded, position ids from the
attention mask), then one forward of one token per still-running row per step. Hugging Face ``generate`` keeps
every row in the batch until the last one ends and runs its logits processors and stopping criteria every step;
this loop keeps only what on-policy distillation needs (temperature, top-p, greedy, end of sequence) and draws from
a ``torch.Generator``, so a step's samples are reproducible from its seed (resumable, and each rank its own seed).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Completions:
    """Sampled completions of a batch of prompts.

    Attributes:
        tokens: ``(B, N)`` the sampled tokens, the end-of-sequence token included where a row ended, ``pad_token_id``
            after it (``N`` = the longest row's length, at most ``max_new_tokens``).
        mask: ``(B, N)`` 1 on sampled tokens (its end-of-sequence token included), 0 on padding.
        lengths: ``(B,)`` sampled tokens per row.
        finished: ``(B,)`` whether the row ended with the end-of-sequence token (else it hit ``max_new_tokens``).
        row_steps: forwards summed over rows (prompt pass excluded): the work done, for the tokens/s of a run.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor
    finished: torch.Tensor
    row_steps: int


def sampling_problems(*, max_new_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None) -> list[str]:
    """What is wrong with sampling settings (empty: nothing)."""
    problems = []
    if max_new_tokens is not None and max_new_tokens < 1:
        problems.append(f"max_new_tokens must be >= 1 (tokens the student samples per prompt), got {max_new_tokens}")
    if temperature is not None and temperature < 0:
        problems.append(f"sampling temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        problems.append(f"top_p must be in (0, 1] (1 = the whole distribution), got {top_p}")
    return problems


def next_tokens(logits: torch.Tensor, *, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row from ``logits`` ``(R, V)``: the argmax at ``temperature`` 0, else a draw from softmax(logits / T)
    restricted to the smallest set of tokens whose probability reaches ``top_p`` (nucleus sampling, Holtzman et al.
    2020, arXiv 1904.09751). Returns ``(R,)`` int64."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (R, V)
    if top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p  # tokens after the nucleus is full
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def sample_completions(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, max_new_tokens: int,
                       eos_token_id: int, pad_token_id: int, temperature: float = 1.0, top_p: float = 1.0,
                       generator: torch.Generator | None = None) -> Completions:
    """Completions of ``model`` (a transformers causal LM) for left-padded prompts.

    Args:
        prompt_ids: ``(B, P)`` left-padded prompt tokens.
        prompt_mask: ``(B, P)`` 1 on real prompt tokens.
        max_new_tokens: the most tokens a row samples.
        eos_token_id: ends a row (kept as its last sampled token).
        pad_token_id: fills ``tokens`` after a row's end.
        temperature: 0 = greedy; else the sampling temperature.
        top_p: nucleus mass (1 = the whole distribution).
        generator: the random source of the draws (None: the global one).

    The model runs in eval mode (dropout off) and is put back in the mode it was in; no gradient is recorded.
    """
    if problems := sampling_problems(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p):
        raise ValueError("; ".join(problems))
    from transformers import DynamicCache

    B, P = prompt_ids.shape
    device = prompt_ids.device
    was_training = model.training
    model.eval()
    tokens = torch.full((B, max_new_tokens), pad_token_id, dtype=torch.long, device=device)  # (B, N)
    lengths = torch.zeros(B, dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    alive = torch.arange(B, device=device)  # batch rows still sampling, in cache order
    mask = prompt_mask.long()  # (R, P + t) attention mask of the rows still sampling
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (R, P) left padding: every row's first real token is position 0
    cache = DynamicCache()
    row_steps = 0
    try:
        last_only = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
        logits = model(input_ids=prompt_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                       use_cache=True, **last_only).logits[:, -1]  # (R, V): the head on the last position only, as generate does
        position = positions[:, -1]  # (R,)
        for t in range(max_new_tokens):
            chosen = next_tokens(logits, temperature=temperature, top_p=top_p, generator=generator)  # (R,)
            tokens[alive, t] = chosen
            lengths[alive] += 1
            ended = chosen == eos_token_id
            finished[alive[ended]] = True
            if t == max_new_tokens - 1:
                break
            if ended.any():  # drop the rows that ended: from the batch, the mask and the cache
                keep = (~ended).nonzero().squeeze(-1)
                if keep.numel() == 0:
                    break
                alive, chosen, mask, position = alive[keep], chosen[keep], mask[keep], position[keep]
                cache.batch_select_indices(keep)
            mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=-1)
            position = position + 1
            row_steps += len(alive)
            logits = model(input_ids=chosen[:, None], attention_mask=mask, position_ids=position[:, None], past_key_values=cache,
                           use_cache=True).logits[:, -1]
    finally:
        model.train(was_training)
    n = int(lengths.max()) if B else 0
    tokens = tokens[:, :n]
    return Completions(tokens=tokens, mask=torch.arange(n, device=device)[None, :] < lengths[:, None], lengths=lengths,
                       finished=finished, row_steps=row_steps)

