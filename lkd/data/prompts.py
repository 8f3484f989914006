"""Prompt / completion data for on-policy distillation of language models: prompts the student continues, with
optional reference completions (teacher forcing, exact-match scoring), from any `datasets` source.

**The batch** (a dict; B rows, P = longest prompt, C = longest reference + EOS, at least 1):
* ``prompt_ids`` (B, P) int64, LEFT-padded with the pad id (``tokenizer.pad_token_id``, else its EOS), so every
  prompt ends at column P-1 and generation appends on the right; ``prompt_mask`` (B, P) int64, 1 on real tokens.
* ``completion_ids`` (B, C) int64, the reference's tokens followed by EOS, RIGHT-padded with the pad id;
  ``completion_mask`` (B, C) int64, 1 on those tokens (EOS included), all 0 on a row without a reference.
* ``row_index`` (B,) int64: the row in the data's split it came from (before slicing / carving), for seeded per-row
  decisions. ``prompt_text``, ``completion_text``: B strings, the rendered prompt that was tokenised (template applied,
  before any truncation) and the reference text (``""`` where there is none).
* With a teacher tokenizer other than the student's (:meth:`PromptDataModule.connect`): ``teacher_prompt_ids`` and
  ``teacher_prompt_mask`` (B, P_t), left-padded with the teacher's pad id, and ``teacher_prompt_text``: the same prompt
  rendered with the teacher's own chat template. :func:`join_prompt_completion` makes (B, P+C) sequences of a batch.
"""

from __future__ import annotations

import string
from functools import cached_property
from typing import Any

import datasets
import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader
from typing_extensions import override

from lkd.cache.store import SplitIdentity, sha256_tensors
from lkd.data.errors import TextDataError, near
from lkd.data.files import load_data_files
from lkd.data.loaders import SplitLoaders
from lkd.data.samplers import SeededRandomSampler
from lkd.data.splits import carve_splits
from lkd.hub import load_hub_dataset
from lkd.tokenizers import as_tokenizer, tokenizer_fingerprint, tokenizer_source

ROW = "__lkd_row__"
"""The column that keeps each example's row in the split it came from (``row_index``)."""


class PromptDataError(TextDataError):
    """The prompt data is not what the module was told (columns, messages, splits, chat template)."""


class PromptLengthError(PromptDataError):
    """A prompt (or prompt + reference) longer than a limit or than the model's context."""


def join_prompt_completion(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                           completion_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One sequence per row of left-padded prompts (B, P) and right-padded completions (B, C): ``[pads, prompt,
    completion, pads]``, so each row's real tokens are contiguous.

    Returns:
        ``input_ids`` (B, P+C); ``attention_mask`` (B, P+C), 1 on prompt and completion tokens; ``loss_mask``
        (B, P+C), 1 exactly on the completion tokens (``completion_mask``'s ones), never on a prompt or pad token.
        ``loss_mask`` marks TARGET tokens: for a causal LM whose logits at position t predict token t+1, score
        ``logits[:, :-1]`` against ``input_ids[:, 1:]`` where ``loss_mask[:, 1:]``. Left padding shifts positions:
        give the model ``position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)``. All int64.

    For generated completions, mark ``completion_mask`` up to and including the first EOS.
    """
    shapes = [tuple(t.shape) for t in (prompt_ids, prompt_mask, completion_ids, completion_mask)]
    if shapes[0] != shapes[1] or shapes[2] != shapes[3] or shapes[0][0] != shapes[2][0]:
        raise ValueError(f"join_prompt_completion: prompt ids, prompt mask, completion ids, completion mask must be (B, P), "
                         f"(B, P), (B, C), (B, C); got {shapes}")
    completion = completion_mask.long()
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (B, P+C)
    attention_mask = torch.cat([prompt_mask.long(), completion], dim=1)  # (B, P+C)
    loss_mask = torch.cat([torch.zeros_like(prompt_mask, dtype=torch.long), completion], dim=1)  # (B, P+C)
    return input_ids, attention_mask, loss_mask


def pad_sequences(seqs: list[list[int]], pad_id: int, *, side: str, min_length: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists padded on ``side`` (``"left"`` / ``"right"``) to the longest (at least ``min_length``): ids (B, L) and
    mask (B, L), int64, 1 on real tokens."""
    width = max([min_length, *map(len, seqs)])
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)  # (B, L)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)  # (B, L)
    for i, seq in enumerate(seqs):
        if seq:
            cols = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
            ids[i, cols], mask[i, cols] = torch.tensor(seq, dtype=torch.long), 1
    return ids, mask


class PromptCollator:
    """Pads a split's rows (dicts of unpadded token lists and texts) into the batch of this module's docstring
    (picklable, for DataLoader workers)."""

    def __init__(self, pad_id: int, teacher_pad_id: int | None = None):
        self.pad_id, self.teacher_pad_id = pad_id, teacher_pad_id

    def __call__(self, items: list[dict]) -> dict[str, Any]:
        column = {k: [x[k] for x in items] for k in items[0]}
        batch: dict[str, Any] = {"row_index": torch.tensor(column["row_index"], dtype=torch.long)}  # (B,)
        batch["prompt_ids"], batch["prompt_mask"] = pad_sequences(column["prompt_ids"], self.pad_id, side="left")  # (B, P)
        batch["completion_ids"], batch["completion_mask"] = pad_sequences(column["completion_ids"], self.pad_id, side="right",
                                                                          min_length=1)  # (B, C)
        if "teacher_prompt_ids" in column:  # (B, P_t)
            batch["teacher_prompt_ids"], batch["teacher_prompt_mask"] = pad_sequences(column["teacher_prompt_ids"],
                                                                                      self.teacher_pad_id, side="left")
        return batch | {k: v for k, v in column.items() if k.endswith("_text")}


def template_fields(template: str) -> list[str] | None:
    """The column names a ``str.format`` template reads, in order of first use (None: not a format string)."""
    try:
        names = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError:
        return None
    return list(dict.fromkeys(names))


def plain_prompt(messages: list[dict]) -> str:
    """A prompt's text without a chat template: one user message is its content as is; anything else (a system
    message, several turns) is ``"role: content"`` lines ending in ``"assistant: "``."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


class PromptDataModule(SplitLoaders, pl.LightningDataModule):
    """Prompts (and references) from a hub id, local mirror or local files, in the batches of :mod:`lkd.data.prompts`.

    **Rendering.** A plain prompt becomes one user message (after a ``system_prompt`` message, if given). With a chat
    template (``tokenizer.chat_template``) the prompt is ``apply_chat_template(messages, add_generation_prompt=True,
    tokenize=False)``, tokenised without added special tokens; without, :func:`plain_prompt` (a plain prompt as is) with
    the tokenizer's defaults. ``system_prompt=None`` passes no system message, so a template's own default applies:
    SmolLM2's inserts "You are a helpful AI assistant named SmolLM, trained by Hugging Face". References are tokenised
    on their own, without special tokens, plus EOS.

    Args:
        hub_id, config: a data set id or folder (a local mirror, :func:`lkd.hub.load_hub_dataset`) and its config; or
        data_files: local JSONL / CSV / parquet files (:func:`lkd.data.files.load_data_files`), a path or list (the ``train``
            split) or ``{split: path(s)}``, e.g. :func:`lkd.data.arithmetic.write_arithmetic_task`'s.
        prompt_column, completion_column: the prompt and reference texts (no completion column, or a None value: no reference).
        prompt_template: build each prompt from the row's columns instead (wins over ``prompt_column``): a Python format
            string naming them, e.g. ``"Summarise this review in a few words: {sentence}"`` for GLUE SST-2.
        messages_column: chat data instead (a list of ``{"role", "content"}``; wins over the two columns): a final
            assistant message is the reference, the messages before it the prompt (a system message there replaces
            ``system_prompt``); without a final assistant message the row has no reference.
        train_split, val_split, test_split: split names, `datasets` slicing allowed (``"train[:90%]"``); None: no such split.
        val_size: carve the validation split from the train split (a fraction, or a count), seeded by ``seed``
            (:func:`lkd.data.splits.carve_splits`); only with ``val_split=None``.
        tokenizer: a name or object (:func:`lkd.tokenizers.as_tokenizer`); default: the model's, given to :meth:`connect`.
        chat_template: None = use the tokenizer's when it has one; True = require one (an error naming the tokenizer
            without); False = never (:func:`plain_prompt`). Applies to the teacher's tokenizer too.
        system_prompt: a system message before each plain prompt; None = none.
        max_prompt_tokens: the longest prompt, in each tokenizer's own tokens. A longer one is an error naming the
            row and its length, unless ``truncate_prompts``: then its first tokens are dropped (the end, with the
            template's generation prompt, is kept; ``prompt_text`` stays whole).
        max_completion_tokens: the longest reference, EOS counted; longer ones are cut (losing EOS; not ``completion_text``).
        require_completions: every row must have a reference (an error naming the first row without).
        batch_size, eval_batch_size: rows per training / evaluation batch (default: ``batch_size``); num_workers: workers.
        seed: seed of the carving and of the training order (a fresh order every epoch, the same on resume).

    **Teacher cache.** It offers :class:`lkd.cache.CacheableData` (``train`` and ``val``, keyed by ``row_index``; the
    prompts' tokens are the content hash), so a sequence-level KD cache can hold the teacher's answers
    (:mod:`lkd.modules.on_policy_cache`).
    """

    def __init__(
        self, hub_id: str | None = None, config: str | None = None,
        data_files: str | list[str] | dict[str, str | list[str]] | None = None, *,
        prompt_column: str = "prompt", completion_column: str | None = "completion", messages_column: str | None = None,
        prompt_template: str | None = None, train_split: str = "train", val_split: str | None = None, test_split: str | None = "test",
        val_size: float | int | None = None,  # noqa: PYI041 - jsonargparse: "100" a count, "0.1" a fraction
        tokenizer: Any = None, chat_template: bool | None = None, system_prompt: str | None = None,
        max_prompt_tokens: int | None = None, truncate_prompts: bool = False,
        max_completion_tokens: int | None = None, require_completions: bool = False, batch_size: int = 8,
        eval_batch_size: int | None = None, seed: int = 0, num_workers: int = 0,
    ):
        super().__init__()
        problems = []
        if (hub_id is None) == (data_files is None):
            problems.append(f"give exactly one of hub_id (a hub id or folder) and data_files (local jsonl/csv/parquet files), "
                            f"got hub_id={hub_id!r}, data_files={data_files!r}")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size),
                            ("max_prompt_tokens", max_prompt_tokens), ("max_completion_tokens", max_completion_tokens)):
            if value is not None and value < 1:
                problems.append(f"{name} must be >= 1{'' if name == 'batch_size' else ' or null'}, got {value}")
        if prompt_template is not None and messages_column is not None:
            problems.append(f"give prompt_template ({prompt_template!r}) or messages_column ({messages_column!r}), not both")
        fields = None if prompt_template is None else template_fields(prompt_template)
        if prompt_template is not None and fields is None:
            problems.append(f"prompt_template {prompt_template!r} is not a format string (write a literal brace as {{{{ or }}}})")
        elif prompt_template is not None and not fields:
            problems.append(f"prompt_template {prompt_template!r} names no column; write the columns in braces, e.g. "
                            "'Summarise: {sentence}'")
        if truncate_prompts and max_prompt_tokens is None:
            problems.append("truncate_prompts=True needs max_prompt_tokens (the length to cut to)")
        if val_size is not None and (val_split is not None or not (0 < val_size < 1 or val_size >= 1 and float(val_size).is_integer())):
            problems.append(f"val_size (carves the validation split from train) must be a fraction in (0, 1) or a count >= 1, with "
                            f"val_split null; got val_size={val_size}, val_split={val_split!r}")
        if problems:
            raise ValueError("PromptDataModule: " + "; ".join(problems))
        self.hub_id, self.config, self.data_files = hub_id, config, data_files
        self.source = f"data_files {data_files}" if data_files is not None else f"{hub_id} (config {config!r})"  # for messages
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.has = {key: split is not None or (key == "val" and val_size is not None) for key, split in self.splits.items()}
        self.prompt_column, self.completion_column, self.messages_column = prompt_column, completion_column, messages_column
        self.prompt_template = prompt_template
        self.val_size = int(val_size) if val_size is not None and val_size >= 1 else val_size  # a count (YAML may give 100.0)
        self.seed, self.num_workers, self.tokenizer_arg, self.chat_template = seed, num_workers, tokenizer, chat_template
        self.system_prompt, self.require_completions, self.truncate_prompts = system_prompt, require_completions, truncate_prompts
        self.max_prompt_tokens, self.max_completion_tokens = max_prompt_tokens, max_completion_tokens
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        # set by connect: the tokenizers, their names (for messages), pad ids (pad, else EOS) and the models' contexts
        self.tokenizer = self.teacher_tokenizer = self.tokenizer_name = self.teacher_tokenizer_name = None
        self.pad_id = self.teacher_pad_id = self.context_length = self.teacher_context_length = None
        self.datasets: dict[str, list[dict]] = {}  # tokenised rows per split key
        self._raw: dict[str, datasets.Dataset] = {}

    def _where(self, key: str) -> str:
        return f"the {key} split ({self.splits[key] or f'val_size={self.val_size}'}) of {self.source}"

    # ---- tokenizers and context ---------------------------------------------------------------------
    def connect(self, tokenizer: Any, teacher_tokenizer: Any = None, context_length: int | None = None, *,
                vocab_size: int | None = None, teacher_context_length: int | None = None) -> None:
        """Bind the student's tokenizer (a ``tokenizer`` given to the constructor wins) and, when it is another one,
        the teacher's (a name or an object; the teacher fields of a batch come with it), and the model's context:
        a prompt must leave it room for one completion token. Checks the chat-template choice now."""
        source = self.tokenizer_arg if self.tokenizer_arg is not None else tokenizer
        student = as_tokenizer(source)
        teacher = None if teacher_tokenizer is None else as_tokenizer(teacher_tokenizer)
        if teacher is student or (isinstance(source, str) and teacher_tokenizer == source):
            teacher = None  # the student's own tokenizer: one set of fields
        names = (tokenizer_source(source), None if teacher is None else tokenizer_source(teacher_tokenizer))
        for side, name in [(student, names[0])] + ([(teacher, names[1])] if teacher is not None else []):
            if not self._uses_template(side, name) and self.messages_column and self.chat_template is None:
                rank_zero_info(f"the tokenizer {name!r} has no chat template: its side renders the chat messages as "
                               "'role: content' lines ending in 'assistant: ' (set data.init_args.chat_template: true to "
                               "require a template instead)")
            if getattr(side, "eos_token_id", None) is None:
                raise PromptDataError(f"tokenizer {name!r} has no EOS token (eos_token_id is None), which ends every reference "
                                      "and pads the batches. HINT: use a tokenizer with an EOS token")
        if vocab_size is not None and len(student) > vocab_size:
            raise PromptDataError(f"the tokenizer {names[0]} has {len(student)} tokens but the model's vocabulary has {vocab_size}: "
                                  "ids would be out of range. HINT: build the models with vocab_size >= the tokenizer's")
        if self.max_prompt_tokens is not None and context_length is not None and self.max_prompt_tokens >= context_length:
            raise PromptLengthError(f"max_prompt_tokens={self.max_prompt_tokens} leaves no room for a completion in the model's context "
                                    f"of {context_length} positions. HINT: set data.init_args.max_prompt_tokens < {context_length}")
        state = (student, teacher, context_length, teacher_context_length)
        if state != (self.tokenizer, self.teacher_tokenizer, self.context_length, self.teacher_context_length):
            self.tokenizer, self.teacher_tokenizer, self.context_length, self.teacher_context_length = state
            self.tokenizer_name, self.teacher_tokenizer_name = names
            self.pad_id, self.teacher_pad_id = (None if t is None else t.eos_token_id if getattr(t, "pad_token_id", None) is None
                                                else t.pad_token_id for t in (student, teacher))
            self.datasets = {}  # tokenised again, and checked against the new context

    def _uses_template(self, tokenizer, name: str | None) -> bool:
        """Whether ``tokenizer`` renders prompts with its chat template (``chat_template`` and whether it has one)."""
        has = bool(getattr(tokenizer, "chat_template", None))
        if self.chat_template and not has:
            raise PromptDataError(f"chat_template=True, but the tokenizer {name!r} has no chat template (tokenizer.chat_template "
                                  "is empty). HINT: use a tokenizer with one ('smollm2'), or set data.init_args.chat_template to null "
                                  "or false")
        return has if self.chat_template is None else bool(self.chat_template)

    # ---- the data -----------------------------------------------------------------------------------
    @cached_property
    def loaded(self) -> datasets.DatasetDict:
        """Every split of the source, unsliced, each with its row numbers (``ROW``)."""
        data = load_data_files(self.data_files) if self.data_files is not None else load_hub_dataset(self.hub_id, self.config)
        return datasets.DatasetDict({k: v.add_column(ROW, np.arange(len(v))) for k, v in data.items()})

    def _select(self, key: str) -> datasets.Dataset:
        """The rows the ``{key}_split`` option names (slicing and ``+`` allowed)."""
        spec, option = self.splits[key], f"data.init_args.{key}_split"
        missing = [n for n in (p.split("[", 1)[0].strip() for p in spec.split("+")) if n not in self.loaded]
        if missing:
            add = f", or add a file for it (data_files: {{{missing[0]}: ...}})" if self.data_files is not None else ""
            carve = " (or carve validation from train with data.init_args.val_size)" if key == "val" else ""
            raise PromptDataError(f"{option}={spec!r}: {self.source} has no split {missing[0]!r}; its splits: "
                                  f"{', '.join(self.loaded)}. HINT: set {option} to one of them{add}{carve}")
        try:
            parts = datasets.ReadInstruction.from_spec(spec).to_absolute({k: len(v) for k, v in self.loaded.items()})
        except (ValueError, AssertionError) as err:
            raise PromptDataError(f"{option}={spec!r} cannot be read: {err}. HINT: write a split name, optionally sliced, "
                                  "e.g. 'train[:90%]' or 'train[100:]'") from None
        rows = [self.loaded[p.splitname].select(range(p.from_, p.to)) for p in parts]
        return rows[0] if len(rows) == 1 else datasets.concatenate_datasets(rows)

    def raw(self, key: str) -> datasets.Dataset:
        """The untokenised rows of ``train``, ``val`` or ``test`` (``val`` carved from train with ``val_size``)."""
        if key not in self._raw:
            if key in ("train", "val") and self.val_size is not None:
                loaded = dict(carve_splits(datasets.DatasetDict({"train": self._select("train")}), source=self.source, seed=self.seed,
                                           train_split="train", validation_split="val", test_split=None,
                                           validation_size=self.val_size, test_size=None))
            else:
                loaded = {key: self._select(key)}
            for name, data in loaded.items():
                if not len(data):
                    raise PromptDataError(f"{self._where(name)} is empty. HINT: give it rows, or change data.init_args.{name}_split")
                self._raw[name] = data
                self._check_columns(name)
        return self._raw[key]

    def _check_columns(self, key: str) -> None:
        """Refuse a split without the prompt (or messages) column, or without references when they are required."""
        columns, where = [c for c in self._raw[key].column_names if c != ROW], self._where(key)
        column, option, other = ((self.messages_column, "messages_column", "prompt_column") if self.messages_column
                                 else (self.prompt_column, "prompt_column", "messages_column"))
        if self.prompt_template is not None:
            if missing := [f for f in template_fields(self.prompt_template) if f not in columns]:
                raise PromptDataError(f"{where} has no column {missing[0]!r}{near(missing[0], columns)}, which prompt_template "
                                      f"{self.prompt_template!r} names; its columns: {columns}. HINT: name those columns in the template")
        elif column not in columns:
            raise PromptDataError(f"{where} has no {option.split('_')[0]} column {column!r}{near(column, columns)}; its columns: "
                                  f"{columns}. HINT: set data.init_args.{option} to one of them (or set {other} instead)")
        if self.require_completions and not self.messages_column and self.completion_column not in columns:
            raise PromptDataError(f"{where} has no completion column {self.completion_column!r}{near(str(self.completion_column), columns)}"
                                  f", and require_completions=True; its columns: {columns}. HINT: set data.init_args.completion_column "
                                  "to the column of the references, or require_completions=false")

    def _examples(self, key: str) -> tuple[list[list[dict]], list[str | None], list[int]]:
        """Each row's prompt messages (system message included), reference text (None: none) and row number."""
        data, where = self.raw(key), self._where(key)
        rows = [int(r) for r in data[ROW]]
        system = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        prompts, references = [], []
        if self.messages_column:
            for row, messages in zip(rows, data[self.messages_column]):
                if not isinstance(messages, list) or not all(
                        isinstance(m, dict) and m.get("role") and isinstance(m.get("content"), str) for m in messages):
                    raise PromptDataError(f"{where}, row {row}: {self.messages_column!r} must be a list of {{'role', 'content'}} "
                                          f"messages, got {str(messages)[:200]}. HINT: fix the row, or name another messages_column")
                last = bool(messages) and messages[-1]["role"] == "assistant"
                reference, turns = (messages[-1]["content"], messages[:-1]) if last else (None, messages)
                if not turns:
                    raise PromptDataError(f"{where}, row {row}: no message before the final assistant message, so the prompt is "
                                          "empty. HINT: give each conversation a user message first")
                turns = [{"role": m["role"], "content": m["content"]} for m in turns]
                prompts.append(turns if turns[0]["role"] == "system" else system + turns)
                references.append(reference)
        else:
            references = data[self.completion_column] if self.completion_column in data.column_names else [None] * len(rows)
            texts = (data[self.prompt_column] if self.prompt_template is None else
                     [self.prompt_template.format_map(r) for r in data.select_columns(template_fields(self.prompt_template))])
            for row, prompt in zip(rows, texts):
                if not isinstance(prompt, str) or not prompt:
                    raise PromptDataError(f"{where}, row {row}: the prompt ({self.prompt_column!r}) is {prompt!r}; a prompt must "
                                          "be a non-empty string. HINT: fix or drop the row")
                prompts.append([*system, {"role": "user", "content": prompt}])
        if self.require_completions and (gaps := [r for r, ref in zip(rows, references) if ref is None]):
            what = "has no final assistant message" if self.messages_column else f"has no {self.completion_column!r}"
            raise PromptDataError(f"{where}, row {gaps[0]} {what} ({len(gaps)} rows without a reference), and require_completions="
                                  "True. HINT: end every conversation with the assistant's answer, or set require_completions=false")
        return prompts, [None if r is None else str(r) for r in references], rows

    # ---- tokenisation -------------------------------------------------------------------------------
    def _prompt_ids(self, tokenizer, name: str | None, prompts: list[list[dict]], rows: list[int], key: str,
                    context: int | None) -> tuple[list[str], list[list[int]]]:
        """Rendered prompt texts and their token lists (truncated from the left with ``truncate_prompts``)."""
        templated = self._uses_template(tokenizer, name)
        texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) if templated else plain_prompt(p)
                 for p in prompts]
        ids = tokenizer(texts, add_special_tokens=not templated)["input_ids"]
        limit, where = self.max_prompt_tokens, self._where(key)
        for i, row in enumerate(rows):
            if limit is not None and len(ids[i]) > limit:
                if not self.truncate_prompts:
                    raise PromptLengthError(f"{where}, row {row}: the prompt has {len(ids[i])} tokens ({name!r}), over max_prompt_tokens="
                                            f"{limit}. HINT: raise it, set truncate_prompts=true (keeps the last {limit}) or drop the row")
                ids[i] = ids[i][-limit:]
            if context is not None and len(ids[i]) >= context:
                raise PromptLengthError(f"{where}, row {row}: the prompt has {len(ids[i])} tokens ({name!r}), leaving no room for a "
                                        f"completion in the model's context of {context} positions. HINT: set data.init_args."
                                        f"max_prompt_tokens < {context} with truncate_prompts=true, or drop such rows")
        return texts, [list(x) for x in ids]

    def tokenise(self, key: str) -> list[dict]:
        """The tokenised rows of ``train``, ``val`` or ``test``."""
        prompts, references, rows = self._examples(key)
        texts, prompt_ids = self._prompt_ids(self.tokenizer, self.tokenizer_name, prompts, rows, key, self.context_length)
        eos, limit = self.tokenizer.eos_token_id, self.max_completion_tokens
        encoded = self.tokenizer([r or "" for r in references], add_special_tokens=False)["input_ids"]
        completion_ids = [[] if ref is None else (list(ids) + [eos])[:limit] for ref, ids in zip(references, encoded)]
        for row, p, c in zip(rows, prompt_ids, completion_ids):
            if self.context_length is not None and len(p) + len(c) > self.context_length:
                raise PromptLengthError(f"{self._where(key)}, row {row}: prompt ({len(p)}) + reference ({len(c)} tokens with EOS) > "
                                        f"the model's context of {self.context_length} positions. HINT: set data.init_args."
                                        f"max_completion_tokens <= {self.context_length - len(p)}, or drop such rows")
        items = [{"prompt_ids": p, "completion_ids": c, "row_index": row, "prompt_text": t, "completion_text": r or ""}
                 for p, c, row, t, r in zip(prompt_ids, completion_ids, rows, texts, references)]
        if self.teacher_tokenizer is not None:
            teacher = self._prompt_ids(self.teacher_tokenizer, self.teacher_tokenizer_name, prompts, rows, key, self.teacher_context_length)
            for item, text, ids in zip(items, *teacher):
                item.update(teacher_prompt_text=text, teacher_prompt_ids=ids)
        cut = sum(r is not None and len(c) < len(e) + 1 for r, c, e in zip(references, completion_ids, encoded))
        rank_zero_info(f"prompts, {self._where(key)}: {len(rows)} rows, {sum(r is not None for r in references)} "
                       f"with a reference ({cut} cut to max_completion_tokens), longest prompt {max(map(len, prompt_ids))} tokens")
        return items

    def split(self, key: str) -> list[dict]:
        """The tokenised rows of ``train``, ``val`` or ``test``, tokenised on first use."""
        if self.tokenizer is None:
            raise PromptDataError("PromptDataModule has no tokenizer yet: pass tokenizer=..., or let the model connect it "
                                  "(trainer.fit(model, datamodule=...) with an lkd LM module does), or call connect(tokenizer)")
        if key not in self.datasets:
            self.datasets[key] = self.tokenise(key)
        return self.datasets[key]

    # ---- Lightning ----------------------------------------------------------------------------------
    def _stage_keys(self, stage: str) -> list[str]:
        stage = str(getattr(stage, "value", stage))  # Lightning passes a TrainerFn
        keys = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}.get(stage, ())
        return [k for k in keys if self.has[k]]

    @override
    def setup(self, stage: str) -> None:
        """Load the stage's splits and check them (splits there, not empty, columns) before any tokenising."""
        for key in self._stage_keys(stage):
            self.raw(key)
        if self.tokenizer is None and self.tokenizer_arg is not None:
            self.connect(self.tokenizer_arg)

    def prepare_stage(self, stage: str) -> None:
        """Tokenise the stage's splits now (the LM modules call this after connect): problems surface before training."""
        for key in self._stage_keys(stage):
            self.split(key)

    # ---- the teacher-cache contract (lkd.cache.store.CacheableData): key = the row's index -------------------
    def cache_stages(self) -> list[str]:
        """``train`` and, when there is one, ``val``: the splits a teacher cache (sequence-level KD) holds."""
        return [key for key in ("train", "val") if self.has[key]]

    def cache_identity(self, stage: str) -> SplitIdentity:
        """The rendered prompts' tokens (what the teacher completes) are the content hash; the row indices, in loader
        order, the sample ids'. References do not enter it: the teacher never reads them."""
        rows = self.split(stage)
        prompts = [torch.tensor(r["prompt_ids"], dtype=torch.long) for r in rows]
        content = {"prompt_ids": torch.cat(prompts), "prompt_lengths": torch.tensor([len(p) for p in prompts])}
        source = "data_files" if self.data_files is not None else f"{self.hub_id}/{self.config}"
        return SplitIdentity(dataset=f"{type(self).__name__} {source}", split=self.splits[stage] or f"val_size={self.val_size}",
                             rows=len(rows), sample_ids_sha256=sha256_tensors({"ids": self.cache_sample_ids(stage)}),
                             content_sha256=sha256_tensors(content), tokenizer=tokenizer_fingerprint(self.tokenizer))

    def cache_sample_ids(self, stage: str) -> torch.Tensor:
        """(N,) the split's ``row_index`` in the order :meth:`cache_batches` yields them."""
        return torch.tensor([r["row_index"] for r in self.split(stage)], dtype=torch.long)

    def _loader(self, key: str, shuffle: bool) -> DataLoader | list:
        if not self.has[key]:
            return []  # no such split: Lightning runs no loop over it
        rows = self.split(key)  # a list of dicts: a map-style data set
        return DataLoader(rows, batch_size=self.batch_size if key == "train" else self.eval_batch_size,
                          collate_fn=PromptCollator(self.pad_id, self.teacher_pad_id),
                          sampler=SeededRandomSampler(len(rows), self.seed) if shuffle else None, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)
