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

On-policy distillation across tokenizers aligns a completion given as the student's *tokens* (its samples need not
be how its tokenizer would cut the text): :func:`spell_tokens` writes their text with each token's byte span, and
:func:`align_completion` has the teacher's tokenizer read that text and aligns the two in byte positions.
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


# ---- a token sequence read by another tokenizer (on-policy distillation across tokenizers) ----------------------
@dataclass(frozen=True)
class SpelledTokens:
    """The text a token sequence spells, with each token's place in it.

    Attributes:
        text: the UTF-8 text of the tokens' bytes; each byte that is not valid UTF-8 there reads as U+FFFD (one
            character per such byte, so a sampled stray byte keeps its place).
        token_spans: ``(start, end)`` of each token in **byte** positions of the tokens' bytes; ``(p, p)`` for a token
            without text (a special token).
        char_starts: ``len(text) + 1`` byte positions: where each character of ``text`` starts, then the end.
    """

    text: str
    token_spans: list[tuple[int, int]]
    char_starts: list[int]


def spell_tokens(pieces: Sequence[bytes | None]) -> SpelledTokens:
    """The text of tokens given by their bytes (:func:`lkd.tokenizers.token_bytes`; None: a special token, no text).

    The tokens' bytes are decoded with ``surrogateescape`` so each invalid byte stays one character, which is then
    written as U+FFFD (another tokenizer cannot read a lone surrogate): character positions map to byte positions
    one to one, and an alignment in byte positions lines up with the tokens exactly.
    """
    spans, position = [], 0
    for piece in pieces:
        spans.append((position, position + len(piece or b"")))
        position += len(piece or b"")
    escaped = b"".join(p or b"" for p in pieces).decode("utf-8", errors="surrogateescape")
    chars, starts, at = [], [], 0
    for ch in escaped:
        starts.append(at)
        stray = "\udc80" <= ch <= "\udcff"  # an escaped invalid byte (valid UTF-8 never decodes to a surrogate)
        chars.append("\ufffd" if stray else ch)
        at += 1 if stray else len(ch.encode("utf-8"))
    return SpelledTokens("".join(chars), spans, [*starts, at])


@dataclass(frozen=True)
class AlignedCompletion:
    """A completion in one tokenizer's tokens read by another tokenizer.

    Attributes:
        teacher_ids: the other tokenizer's tokens of the completion's text, then its EOS where the completion ended
            with one (cut to ``teacher_room``).
        chunks: ``(s0, s1, t0, t1)`` per aligned chunk in text order, token indices within the completion on each
            side; where the completion ended, the last chunk is the EOS pair ``(n, n + 1, m, m + 1)``.
        text: the completion's text (:func:`spell_tokens`).
    """

    teacher_ids: list[int]
    chunks: list[tuple[int, int, int, int]]
    text: str


def align_completion(student_ids: Sequence[int], student_pieces: Sequence[bytes | None], teacher, *, student_eos: int | None,
                     teacher_eos: int, teacher_room: int | None = None) -> AlignedCompletion:
    """Read a student's completion (sampled or a reference) as text with the teacher's tokenizer, and align the two.

    The student's tokens are spelled (:func:`spell_tokens`), the teacher tokenises the text (:func:`token_offsets`),
    and :func:`align_chunks` cuts it in **byte** positions (the teacher's character offsets mapped through
    ``char_starts``). A trailing student EOS becomes the teacher's EOS and one chunk of its own, so both models'
    probability of ending there is compared. Chunks whose teacher tokens would pass ``teacher_room`` (the teacher's
    context left after its prompt) are dropped, from the first that does not fit (the EOS chunk only if all fit). A
    completion without text has only its EOS chunk, if any; one whose text a side gives no token for has no chunk.

    Args:
        student_ids: the completion's tokens, without padding.
        student_pieces: bytes per student token id (:func:`lkd.tokenizers.token_bytes`).
        teacher: the teacher's tokenizer (fast, or :class:`lkd.tokenizers.ByteTokenizer`: it must give offsets).
        student_eos, teacher_eos: the two end-of-sequence ids.
        teacher_room: the most teacher tokens the completion may have (None: no limit).
    """
    ids = list(student_ids)
    ended = bool(ids) and ids[-1] == student_eos
    content = ids[:-1] if ended else ids
    spelled = spell_tokens([student_pieces[i] for i in content])
    t_ids, t_chars = token_offsets(teacher, spelled.text) if spelled.text else ([], [])
    starts = spelled.char_starts
    t_offsets = [(starts[a], starts[b]) for a, b in t_chars]
    try:
        aligned = align_chunks(t_offsets, spelled.token_spans, starts[-1])
    except AlignmentError:  # text one side gives no token for: nothing to compare, not even the end (other prefixes)
        return AlignedCompletion([], [], spelled.text)
    room = len(t_ids) + 1 if teacher_room is None else teacher_room
    kept = [(c.s0, c.s1, c.t0, c.t1) for c in aligned if c.t1 <= room]
    whole = len(kept) == len(aligned)
    t_ids = t_ids if whole else t_ids[:kept[-1][3] if kept else 0]
    if ended and whole and len(t_ids) < room:
        kept.append((len(content), len(content) + 1, len(t_ids), len(t_ids) + 1))
        t_ids = [*t_ids, teacher_eos]
    return AlignedCompletion(t_ids, kept, spelled.text)
