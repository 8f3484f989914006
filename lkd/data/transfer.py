"""The transfer set: texts without labels for a teacher to label. Either changed copies of the training texts
(TinyBERT's augmentation, with words drawn by their frequency in the training text instead of predicted by a masked
LM), or real text from another data set (:class:`TransferTexts`: Hinton et al.'s transfer set of unlabelled data)."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class TransferTexts:
    """Unlabelled text from another data set, added to the training split as a transfer set that the teacher labels
    (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network", sec. 3: the student learns from the teacher's
    soft targets on data without labels). E.g. SST-2's 67,349 movie-review sentences beside CoLA's 8,551. In YAML::

        transfer_texts: {dataset: nyu-mll/glue, config: sst2, column: sentence}

    Args:
        dataset: hub id or folder, resolved to its offline mirror like the task's own data (:mod:`lkd.hub`).
        config: the data set's config (GLUE's ``sst2``), or None.
        split: the split whose texts are read.
        column: the text column; it fills the task's one text column (a sentence-pair task needs pairs: refused).
        size: a seeded random subset of this many texts (None: all of them).
    """

    dataset: str
    config: str | None = None
    split: str = "train"
    column: str = "sentence"
    size: int | None = None

    def __post_init__(self):
        if self.size is not None and self.size <= 0:
            raise ValueError(f"transfer_texts.size must be > 0 or null (every text), got {self.size}")

    @property
    def name(self) -> str:
        """``dataset/config``, for messages."""
        return f"{self.dataset}/{self.config}" if self.config else self.dataset

    @property
    def source(self) -> str:
        """The data set, split and column, for messages."""
        return f"{self.name} split {self.split!r} column {self.column!r}"


def texts_from(source: TransferTexts, like: datasets.Dataset, column: str, *, seed: int) -> datasets.Dataset:
    """The texts of ``source`` as rows of ``like`` (its ``column`` and ``idx`` only, the same features), with new
    ``idx`` values after ``like``'s own; empty texts dropped, a ``size`` subset seeded by ``seed``.

    Raises:
        ValueError: the split or column is not in the source (naming the ones it has).
    """
    from lkd.hub import load_hub_dataset

    splits = load_hub_dataset(source.dataset, source.config)
    if source.split not in splits:
        raise ValueError(f"transfer_texts: {source.name} has no split {source.split!r}. HINT: one of {sorted(splits)}")
    data = splits[source.split]
    if source.column not in data.column_names:
        raise ValueError(f"transfer_texts: {source.source} is not a column; its columns: {data.column_names}. HINT: set "
                         "transfer_texts.column to the one that holds the text")
    if not isinstance(data.features[source.column], datasets.Value) or data.features[source.column].dtype not in ("string", "large_string"):
        raise ValueError(f"transfer_texts: {source.source} holds {data.features[source.column]}, not text. HINT: name a string column")
    if source.size is not None and source.size < len(data):
        data = data.shuffle(seed=seed).select(range(source.size))
    texts = [t for t in data[source.column] if t and t.strip()]
    first = int(max(like["idx"])) + 1
    features = like.select_columns([column, "idx"]).features
    return datasets.Dataset.from_dict({column: texts, "idx": list(range(first, first + len(texts)))}, features=features)
