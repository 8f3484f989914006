"""A student moved to another tokenizer: the teacher's body with a new vocabulary, its embedding rows initialised
from the teacher's own.

Each new token is spelled with the teacher's tokenizer and its row is made from the teacher rows of that spelling
(FOCUS, Dobler & de Melo, arXiv 2305.14481, copies the rows of tokens both vocabularies share; Fast Vocabulary
Transfer, Gee et al., EMNLP 2022 industry track, and WECHSEL, Minixhofer et al., arXiv 2112.06598, build the others
from the teacher's pieces; mergekit-tokensurgeon does the same for DistillKit):

    e_new(v) = E_teacher[u]                          when the teacher has a token u with v's exact bytes (shared)
    e_new(v) = mean_{u in spell(v)} E_teacher[u]     otherwise, spell(v) = the teacher's tokens of v's text
    e_new(v) = mean_u E_teacher[u]                   for a token the teacher cannot spell (a special token it lacks)

The output head is initialised the same way from the teacher's head rows when it is not tied to the embedding.
``init="random"`` draws every row from N(0, std(E_teacher)) instead (the ablation: what the initialisation buys).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

INITS = ("spelling", "random")


@dataclass
class Spelling:
    """How each student token is written in the teacher's vocabulary.

    Attributes:
        pieces: for each student id, the teacher ids its row is the mean of (empty: the mean of all teacher rows).
        shared: student ids with a teacher token of the same bytes (one piece, copied exactly).
        composed: student ids spelled with several teacher tokens.
        unmatched: student ids the teacher cannot spell (a special token it has no token of the same name for, a byte
            its vocabulary lacks), given the mean of all teacher rows.
    """

    pieces: list[list[int]]
    shared: int
    composed: int
    unmatched: int

    def summary(self) -> str:
        n = len(self.pieces)
        return (f"{n} tokens: {self.shared} shared with the teacher (copied), {self.composed} spelled with teacher tokens "
                f"(mean of their rows), {self.unmatched} the teacher cannot spell (special tokens or bytes it lacks: mean row)")


def _greedy(data: bytes, teacher_id: dict[bytes, int]) -> list[int] | None:
    """Longest-prefix match of ``data`` over the teacher's token bytes (None when a byte has no token)."""
    longest = max(map(len, teacher_id))
    out, i = [], 0
    while i < len(data):
        for j in range(min(len(data), i + longest), i, -1):
            if data[i:j] in teacher_id:
                out.append(teacher_id[data[i:j]])
                i = j
                break
        else:
            return None
    return out


def spell(student_tokenizer, teacher_tokenizer) -> Spelling:
    """:class:`Spelling` of every student token id in the teacher's vocabulary.

    A token's bytes (:func:`lkd.tokenizers.token_bytes`) found among the teacher's tokens are that token; otherwise
    its text is tokenised by the teacher (``add_special_tokens=False``) when the pieces give back the same bytes, and
    matched greedily byte by byte when it does not (a partial UTF-8 sequence, a pre-tokeniser that splits it).
    Special tokens are matched by name (``<|endoftext|>``).
    """
    from lkd.tokenizers import token_bytes

    t_bytes = token_bytes(teacher_tokenizer)
    teacher_id: dict[bytes, int] = {}
    for i, b in enumerate(t_bytes):
        if b is not None and b not in teacher_id:
            teacher_id[b] = i
    vocab = teacher_tokenizer.get_vocab() if hasattr(teacher_tokenizer, "get_vocab") else {}
    names = student_tokenizer.convert_ids_to_tokens(list(range(len(student_tokenizer)))) \
        if hasattr(student_tokenizer, "convert_ids_to_tokens") else [None] * len(student_tokenizer)
    pieces, shared, composed, unmatched = [], 0, 0, 0
    for sid, b in enumerate(token_bytes(student_tokenizer)):
        if b is None:  # a special token: the teacher's of the same name, if any
            tid = vocab.get(names[sid]) if names[sid] is not None else None
            pieces.append([tid] if tid is not None else [])
            shared, unmatched = shared + (tid is not None), unmatched + (tid is None)
            continue
        if b in teacher_id:
            pieces.append([teacher_id[b]])
            shared += 1
            continue
        ids = None
        try:
            text = b.decode("utf-8")
            ids = list(teacher_tokenizer(text, add_special_tokens=False)["input_ids"])
            if b"".join(t_bytes[i] or b"" for i in ids) != b:
                ids = None
        except (UnicodeDecodeError, TypeError):
            ids = None
        ids = ids or _greedy(b, teacher_id)
        pieces.append(ids or [])
        composed, unmatched = composed + bool(ids), unmatched + (not ids)
    return Spelling(pieces=pieces, shared=shared, composed=composed, unmatched=unmatched)


def transfer_rows(teacher_rows: torch.Tensor, spelling: Spelling, *, init: str = "spelling", seed: int = 0) -> torch.Tensor:
    """``(V_student, d)`` rows for the student's vocabulary from the teacher's ``(V_teacher, d)`` (the formula above)."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    rows = teacher_rows.detach().float()
    if init == "random":
        generator = torch.Generator().manual_seed(seed)
        out = torch.randn(len(spelling.pieces), rows.shape[1], generator=generator) * rows.std()
        return out.to(teacher_rows.dtype)
    mean = rows.mean(dim=0)
    out = torch.stack([rows[ids].mean(dim=0) if ids else mean for ids in spelling.pieces])  # (V_student, d)
    return out.to(teacher_rows.dtype)


@torch.no_grad()
def move_to_tokenizer(teacher: nn.Module, student_tokenizer, teacher_tokenizer, *, init: str = "spelling",
                      seed: int = 0) -> tuple[nn.Module, Spelling]:
    """A copy of the causal LM ``teacher`` that reads and writes ``student_tokenizer``'s vocabulary: every body weight
    copied, the embedding (and an untied head) rebuilt by :func:`transfer_rows`. The teacher is not changed.

    Returns:
        the new model (the teacher's class, ``vocab_size`` and special token ids from the new tokenizer) and the
        :class:`Spelling` used.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}. HINT: 'spelling' builds each row from the teacher's "
                         "rows of the token's spelling; 'random' is the ablation")
    spelling = spell(student_tokenizer, teacher_tokenizer)
    config = copy.deepcopy(teacher.config)
    config.vocab_size = len(student_tokenizer)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(student_tokenizer, name, None)
        setattr(config, name, value if value is not None else getattr(student_tokenizer, "eos_token_id", None))
    student = type(teacher)(config).to(dtype=next(teacher.parameters()).dtype)
    student.train(teacher.training)
    body = {k: v for k, v in teacher.state_dict().items() if k not in ("model.embed_tokens.weight", "lm_head.weight")}
    missing, unexpected = student.load_state_dict(body, strict=False)
    missing = [k for k in missing if k not in ("model.embed_tokens.weight", "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"cannot move {type(teacher).__name__} to a new tokenizer: weights missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}. HINT: a transformers *ForCausalLM with model.embed_tokens is expected")
    student.get_input_embeddings().weight.copy_(transfer_rows(teacher.get_input_embeddings().weight, spelling, init=init, seed=seed))
    if not config.tie_word_embeddings:
        student.get_output_embeddings().weight.copy_(
            transfer_rows(teacher.get_output_embeddings().weight, spelling, init=init, seed=seed + 1))
    return student, spelling
