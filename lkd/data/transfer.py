"""The transfer set: changed copies of the training texts, without labels, for a teacher to label (TinyBERT's
augmentation, with words drawn by their frequency in the training text instead of predicted by a masked LM)."""

from __future__ import annotations

import datasets
import numpy as np


def replace_words(text: str, words: np.ndarray, weights: np.ndarray, prob: float, rng: np.random.Generator) -> str:
    """``text`` with each whitespace-separated word replaced, with probability ``prob``, by a word drawn from
    ``words`` with probabilities ``weights`` (the training text's word frequencies): a transfer-set example
    near the data that a teacher labels (TinyBERT's augmentation, with frequency-drawn instead of
    MLM-predicted replacements)."""
    tokens = text.split()
    if not tokens:
        return text
    swap = rng.random(len(tokens)) < prob
    if swap.any():
        drawn = rng.choice(words, size=int(swap.sum()), p=weights)
        for i, w in zip(np.flatnonzero(swap), drawn):
            tokens[i] = str(w)
    return " ".join(tokens)


def transfer_set(data: datasets.Dataset, columns: list[str], *, copies: int, word_prob: float, seed: int) -> datasets.Dataset:
    """``copies`` changed copies of ``data`` (:func:`replace_words` on every text column in ``columns``, a
    ``word_prob`` of the words replaced by words drawn from ``data``'s own word frequencies), seeded by
    ``(seed, copy)``, with new ``idx`` values after the split's own; every other column as in ``data``."""
    n, offset = len(data), int(max(data["idx"])) + 1
    counts: dict[str, int] = {}
    for c in columns:
        for text in data[c]:
            for w in (text or "").split():
                counts[w] = counts.get(w, 0) + 1
    words = np.array(list(counts))
    weights = np.array(list(counts.values()), dtype=float)
    weights /= weights.sum()
    changed = []
    for copy in range(copies):
        rng = np.random.default_rng([seed, copy])
        texts = {c: [replace_words(t or "", words, weights, word_prob, rng) for t in data[c]] for c in columns}
        ids = np.arange(n) + offset + copy * n
        changed.append(data.remove_columns([*columns, "idx"]).add_column("idx", ids.tolist())
                       .map(lambda _, i: {c: texts[c][i] for c in columns}, with_indices=True, desc="transfer set")
                       .cast(data.features))
    return datasets.concatenate_datasets(changed)
