"""Aligning two tokenisations of one text: the *chunks* where both tokenizers put a token boundary.

Teacher and student tokenise the same text differently (Qwen's 151,936 tokens vs SmolLM's 49,152, or a
byte-level student). Distillation across tokenizers compares them on spans both can express: a **chunk**
is a maximal run of text whose start and end are token boundaries on both sides and which contains no
smaller such span. Inside one chunk the teacher has tokens ``teacher[t0:t1]``, the student
``student[s0:s1]``, both covering the characters ``text[c0:c1]``; the chunks tile the text exactly once.

The alignment reads only character offsets (fast tokenizers' ``offset_mapping``), never token strings, so
it does not care how a tokenizer normalises or spells a token:

* special tokens one side adds (BOS, EOS, ``[CLS]``) have empty offsets ``(i, i)`` and belong to no chunk;
* tokens whose offsets overlap (a SentencePiece ``▁`` that claims the next character; the byte-fallback
  pieces ``<0xE2><0x82><0xAC>`` of one character; byte-level BPE splitting a multi-byte character) cannot
  be cut between, so they stay in one chunk;
* lowercasing / accent-stripping normalisers (WordPiece) change the tokens but their offsets still index
  the original text;
* characters no token covers (whitespace WordPiece drops) and whitespace runs one side packs into a single
  token fall inside a chunk: a boundary is any position between the end of one token and the start of the
  next, so two boundaries coincide when those gaps overlap.

The walk is the two-pointer merge TRL's GOLD trainer uses on byte offsets (and, after its PR #5885, it
treats a BOS on one side only as outside the alignment, as here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Offsets = Sequence[tuple[int, int]]


class AlignmentError(ValueError):
    """Two tokenisations that cannot be aligned (no offsets, or no common boundary where one is needed)."""


@dataclass(frozen=True)
class Chunk:
    """One aligned span: teacher tokens ``[t0, t1)``, student tokens ``[s0, s1)``, characters ``[c0, c1)``."""

    t0: int
    t1: int
    s0: int
    s1: int
    c0: int
    c1: int


def _cuts(offsets: Offsets) -> tuple[list[int], list[tuple[int, int, int]]]:
    """The content tokens (non-empty offsets) of one side and its possible cuts.

    A cut after content token ``k`` is allowed when every earlier token ends at or before every later token
    starts; it may sit anywhere in ``[lo, hi]`` (lo = max end so far, hi = min start of the rest).

    Returns:
        ``(content token indices, [(k, lo, hi), ...])`` in text order.
    """
    content = [i for i, (s, e) in enumerate(offsets) if e > s]
    if not content:
        return content, []
    starts = np.array([offsets[i][0] for i in content])
    ends = np.array([offsets[i][1] for i in content])
    lo = np.maximum.accumulate(ends)[:-1]  # max end of tokens 0..k
    hi = np.minimum.accumulate(starts[::-1])[::-1][1:]  # min start of tokens k+1..
    return content, [(k, int(a), int(b)) for k, (a, b) in enumerate(zip(lo, hi)) if a <= b]


def align_chunks(teacher_offsets: Offsets, student_offsets: Offsets, text_length: int | None = None) -> list[Chunk]:
    """The aligned chunks of one text tokenised twice.

    Args:
        teacher_offsets: (start, end) character offsets of each teacher token (``offset_mapping``); specials
            have ``start == end``.
        student_offsets: the same for the student.
        text_length: ``len(text)``, so the last chunk ends at the text's end (default: the last offset).
    Returns:
        chunks in text order; their character spans tile ``[0, text_length)``, and each side's content
        tokens appear in exactly one chunk, in order. Empty when both sides have no content token.

    Raises:
        AlignmentError: one side has content tokens and the other none.
    """
    t_content, t_cuts = _cuts(teacher_offsets)
    s_content, s_cuts = _cuts(student_offsets)
    if not t_content and not s_content:
        return []
    if not t_content or not s_content:
        empty = "teacher" if not t_content else "student"
        raise AlignmentError(f"the {empty} tokenisation has no token with a non-empty character offset, so nothing can be aligned")
    end = max(text_length or 0, teacher_offsets[t_content[-1]][1], student_offsets[s_content[-1]][1])
    # (teacher content index k, student content index k, character position) of every common boundary
    matched: list[tuple[int, int, int]] = []
    i = j = 0
    while i < len(t_cuts) and j < len(s_cuts):
        (kt, lo_t, hi_t), (ks, lo_s, hi_s) = t_cuts[i], s_cuts[j]
        if max(lo_t, lo_s) <= min(hi_t, hi_s):  # the two gaps overlap: a common boundary
            matched.append((kt, ks, max(lo_t, lo_s)))
            i, j = i + 1, j + 1
        elif hi_t < lo_s:
            i += 1
        else:
            j += 1
    chunks, prev_t, prev_s, prev_c = [], 0, 0, 0
    for kt, ks, pos in [*matched, (len(t_content) - 1, len(s_content) - 1, end)]:
        chunks.append(Chunk(t0=t_content[prev_t], t1=t_content[kt] + 1, s0=s_content[prev_s], s1=s_content[ks] + 1,
                            c0=prev_c, c1=pos))
        prev_t, prev_s, prev_c = kt + 1, ks + 1, pos
    return chunks


def token_offsets(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of ``text`` without special tokens.

    Raises:
        AlignmentError: the tokenizer cannot give offsets (a slow, Python tokenizer).
    """
    if not getattr(tokenizer, "is_fast", False) and not getattr(tokenizer, "supports_offsets", False):
        name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
        raise AlignmentError(
            f"tokenizer {name!r} ({type(tokenizer).__name__}) gives no character offsets, which cross-tokenizer "
            "alignment needs. HINT: load its fast version (AutoTokenizer.from_pretrained(..., use_fast=True), or "
            "save a tokenizer.json), or use 'bytes'"
        )
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(encoded["input_ids"]), [tuple(map(int, o)) for o in encoded["offset_mapping"]]


@dataclass(frozen=True)
class AlignedBlock:
    """A block of text tokenised by both sides and cut at a common boundary.

    Attributes:
        student_ids, teacher_ids: token ids of the block, each at most the side's block size.
        chunks: (C, 4) int64 ``[s0, s1, t0, t1]`` token ranges within the block, C >= 2.
        num_bytes: UTF-8 bytes of the block's text.
    """

    student_ids: list[int]
    teacher_ids: list[int]
    chunks: np.ndarray
    num_bytes: int


def pack_blocks(text: str, teacher, student, *, student_block: int, teacher_block: int) -> list[AlignedBlock]:
    """Tokenise ``text`` with both tokenizers, align it, and pack whole chunks greedily into blocks of at most
    ``student_block`` student and ``teacher_block`` teacher tokens. A block with fewer than two chunks
    (nothing predictable on both sides) is dropped.

    Raises:
        AlignmentError: a single chunk is longer than a block (the tokenizers share no boundary for that
            stretch of text), naming the text.
    """
    t_ids, t_off = token_offsets(teacher, text)
    s_ids, s_off = token_offsets(student, text)
    chunks = align_chunks(t_off, s_off, len(text))
    blocks: list[AlignedBlock] = []
    current: list[Chunk] = []

    def flush():
        if len(current) >= 2:
            first, last = current[0], current[-1]
            table = np.array([[c.s0 - first.s0, c.s1 - first.s0, c.t0 - first.t0, c.t1 - first.t0] for c in current], dtype=np.int64)
            blocks.append(AlignedBlock(s_ids[first.s0:last.s1], t_ids[first.t0:last.t1], table,
                                       len(text[first.c0:last.c1].encode("utf-8"))))
        current.clear()

    for chunk in chunks:
        if chunk.s1 - chunk.s0 > student_block or chunk.t1 - chunk.t0 > teacher_block:
            excerpt = text[chunk.c0:chunk.c1][:80]
            raise AlignmentError(
                f"no token boundary common to both tokenizers within a block: the chunk {excerpt!r}... has "
                f"{chunk.s1 - chunk.s0} student and {chunk.t1 - chunk.t0} teacher tokens, more than block_size="
                f"{student_block} / teacher_block_size={teacher_block}. HINT: raise the block sizes, or check that "
                "both tokenizers' offsets index this text"
            )
        if current and (chunk.s1 - current[0].s0 > student_block or chunk.t1 - current[0].t0 > teacher_block):
            flush()
        current.append(chunk)
    flush()
    return blocks
