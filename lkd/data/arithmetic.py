"""A small offline prompt / completion task for the on-policy distillation benchmark: integer arithmetic
(``{"prompt": "12+345=", "completion": "357"}``) written as JSON Lines that :class:`lkd.data.PromptDataModule`
reads through ``data_files`` (:class:`ArithmeticPromptDataModule` writes and reads them, for a YAML), and the
exact-match check that scores a generated answer."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from lkd.data.prompts import PromptDataModule

END_MARKERS = ("<|im_end|>", "<|endoftext|>", "</s>", "<|eot_id|>")
"""End-of-turn / end-of-text markers a decoded generation may carry (SmolLM2 / ChatML, GPT-2, Llama 2, Llama 3)."""

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
"""The operators :func:`write_arithmetic_task` knows, and what each computes."""


def _operand_count(digits: tuple[int, int]) -> int:
    """How many operands have between ``digits[0]`` and ``digits[1]`` digits (0 counts as a 1-digit number)."""
    low, high = digits
    return 10**high - (0 if low == 1 else 10 ** (low - 1))


def _operand(rng: random.Random, digits: tuple[int, int]) -> int:
    """A number whose digit count is drawn uniformly from ``digits`` (so short and long problems are equally
    common), then its value uniformly among the numbers of that many digits."""
    n = rng.randint(*digits)
    return rng.randint(0 if n == 1 else 10 ** (n - 1), 10**n - 1)


def write_arithmetic_task(folder: str | Path, *, n_train: int, n_test: int, digits: tuple[int, int] = (1, 3),
                          ops: Sequence[str] = ("+", "-"), seed: int = 0, reversed_answer: bool = False) -> dict[str, Path]:
    """Write ``train.jsonl`` (``n_train`` rows) and ``test.jsonl`` (``n_test`` rows; not written when 0) of
    ``{"prompt": "12+345=", "completion": "357"}`` into ``folder``.

    Every problem is distinct and no test problem is in train (the same prompt text is the same problem). Each
    operand has between ``digits[0]`` and ``digits[1]`` digits (uniform over the digit count, then over the
    value); a subtraction may go below zero (``"3-12="`` → ``"-9"``). The same arguments write the same files.
    ``reversed_answer`` writes the answer's digits least significant first (``"12+345="`` → ``"753"``, a sign stays in
    front): the order in which the digits are computed, which small transformers learn far faster than the plain
    one (Lee et al., "Teaching Arithmetic to Small Transformers", arXiv 2307.03381).

    Returns:
        ``{"train": path, "test": path}``, ready for ``PromptDataModule(data_files=...)``.
    """
    low, high = digits
    problems = []
    if not 1 <= low <= high:
        problems.append(f"digits must be (low, high) with 1 <= low <= high, got {digits}")
    if not ops or any(op not in OPS for op in ops):
        problems.append(f"ops must be a non-empty selection of {list(OPS)}, got {list(ops)}")
    if n_train < 1 or n_test < 0:
        problems.append(f"n_train must be >= 1 and n_test >= 0, got {n_train} and {n_test}")
    if not problems and n_train + n_test > (space := len(set(ops)) * _operand_count(digits) ** 2):
        problems.append(f"n_train + n_test = {n_train + n_test} distinct problems asked for, but digits={digits} with ops="
                        f"{list(ops)} make only {space}. HINT: widen digits, add ops or ask for fewer rows")
    if problems:
        raise ValueError("write_arithmetic_task: " + "; ".join(problems))
    rng, ops = random.Random(seed), sorted(set(ops), key=list(OPS).index)  # the same ops in any order: the same files
    seen: set[str] = set()
    rows: list[dict[str, str]] = []
    attempts, limit = 0, 100 * (n_train + n_test) + 10_000
    while len(rows) < n_train + n_test:
        if (attempts := attempts + 1) > limit:  # short operands exhausted: the rest are too rare to draw at random
            raise ValueError(f"write_arithmetic_task: found only {len(rows)} distinct problems in {limit} draws for digits="
                             f"{digits}, ops={ops}. HINT: widen digits or ask for fewer rows")
        a, op, b = _operand(rng, digits), rng.choice(ops), _operand(rng, digits)
        prompt = f"{a}{op}{b}="
        if prompt not in seen:
            seen.add(prompt)
            answer = OPS[op](a, b)
            digits_text = str(abs(answer))[::-1] if reversed_answer else str(abs(answer))
            rows.append({"prompt": prompt, "completion": ("-" if answer < 0 else "") + digits_text})
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, part in (("train", rows[:n_train]), ("test", rows[n_train:])):
        if part:
            paths[split] = folder / f"{split}.jsonl"
            paths[split].write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    return paths


def answer_text(text: str, *, stop: Sequence[str] = END_MARKERS) -> str:
    """The answer in ``text``: leading whitespace dropped, cut at the first newline or end marker (``stop``),
    surrounding whitespace stripped. ``" 357<|im_end|>junk"`` → ``"357"``."""
    text = text.lstrip()
    for marker in ("\n", *stop):
        text = text.split(marker, 1)[0]
    return text.strip()


def exact_match(prediction: str, reference: str, *, stop: Sequence[str] = END_MARKERS) -> bool:
    """Whether a generated answer equals the reference: both compared as :func:`answer_text` (whitespace stripped,
    the text before the first newline or end marker), so ``"357\\n12+1="`` matches ``"357"`` and ``"35"`` does not."""
    return answer_text(prediction, stop=stop) == answer_text(reference, stop=stop)


class ArithmeticPromptDataModule(PromptDataModule):
    """The arithmetic task as prompt data, self-contained for a YAML: :func:`write_arithmetic_task` writes ``train.jsonl``
    and ``test.jsonl`` into ``folder`` (when missing, before the data is read; the same arguments write the same files)
    and :class:`lkd.data.PromptDataModule` reads them, carving ``val_size`` held-out problems from the training file.

    Args:
        folder: where the task's files are written (default under ``runs/``, which git ignores).
        n_train, n_test, digits, ops, reversed_answer, task_seed: :func:`write_arithmetic_task`'s (``task_seed`` its seed).
        val_size, batch_size, eval_batch_size, seed, num_workers: :class:`lkd.data.PromptDataModule`'s.
    """

    def __init__(self, folder: str = "runs/arithmetic", *, n_train: int = 8000, n_test: int = 300, digits: tuple[int, int] = (3, 3),
                 ops: tuple[str, ...] = ("+",), reversed_answer: bool = True, task_seed: int = 0, val_size: int = 200,
                 batch_size: int = 32, eval_batch_size: int | None = None, seed: int = 0, num_workers: int = 0):
        self.task_settings = {"n_train": n_train, "n_test": n_test, "digits": tuple(digits), "ops": tuple(ops),
                     "reversed_answer": reversed_answer, "seed": task_seed}
        self.folder = Path(folder)
        super().__init__(data_files={"train": str(self.folder / "train.jsonl"), "test": str(self.folder / "test.jsonl")},
                         val_split=None, val_size=val_size, test_split="test" if n_test else None, require_completions=True,
                         batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed, num_workers=num_workers)

    def write_task(self) -> None:
        """Write the task's files unless ``folder`` holds them for these arguments (``task.json`` says which)."""
        settings = self.folder / "task.json"
        wanted = json.dumps(self.task_settings, sort_keys=True)
        if settings.is_file() and settings.read_text() == wanted:
            return
        write_arithmetic_task(self.folder, **self.task_settings)
        settings.write_text(wanted)

    def prepare_data(self) -> None:
        self.write_task()

    def setup(self, stage: str) -> None:
        self.write_task()
        super().setup(stage)
