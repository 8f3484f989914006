"""Tokenizers: loading one by name (``"bytes"``, ``"smollm2"``, a packaged model, a folder; :func:`load_tokenizer`) and
what lkd needs to know about its vocabulary: the bytes each token stands for (bits per byte), the tokens two
tokenizers share (KL over a shared vocabulary), a fingerprint (cache keys), and a byte-level BPE trained on a
corpus (a student tokenizer of its own). Where pretrained files live is :mod:`lkd.hub`'s job.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path

import torch

from lkd.hub import PACKAGED_MODELS, PretrainedNotFoundError, packaged_model_path, resolve_pretrained, smollm2_gguf_path


# ---- loading by name ---------------------------------------------------------------------------------------
class ByteTokenizer:
    """UTF-8 bytes as tokens (ids 0..255) plus an end-of-text token (256): vocab 257, nothing to download.

    Used by tests and by the offline benchmarks, where a 49,152-entry softmax would dominate CPU time. It
    follows the part of the Hugging Face tokenizer interface lkd's text data uses: ``tokenizer(texts)["input_ids"]``,
    ``eos_token_id``, ``len(tokenizer)`` and ``decode``.
    """

    vocab_size = 257
    eos_token_id = 256
    name_or_path = "bytes"

    supports_offsets = True
    """Gives ``offset_mapping`` like a fast tokenizer (each byte maps to the character it is part of)."""

    def __call__(self, texts: str | list[str], *, return_offsets_mapping: bool = False, **_) -> dict[str, list]:
        if isinstance(texts, str):
            out = self([texts], return_offsets_mapping=return_offsets_mapping)
            return {k: v[0] for k, v in out.items()}
        out = {"input_ids": [list(t.encode("utf-8")) for t in texts]}
        if return_offsets_mapping:  # every byte of character i has offsets (i, i + 1)
            out["offset_mapping"] = [[(i, i + 1) for i, ch in enumerate(t) for _ in range(len(ch.encode("utf-8")))]
                                     for t in texts]
        return out

    def __len__(self) -> int:
        return self.vocab_size

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """UTF-8 text of the byte ids (the end-of-text token is never text, whatever ``skip_special_tokens`` says)."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


@lru_cache(maxsize=8)
def load_tokenizer(name: str = "smollm2", *, trust_remote_code: bool = False):
    """A tokenizer by name: ``"bytes"``, ``"smollm2"`` (offline GGUF, ≈4 s), or a hub id / packaged model /
    local folder (:func:`resolve_pretrained`). Cached per process, so data and models share one instance."""
    if name == "bytes":
        return ByteTokenizer()
    from transformers import AutoTokenizer

    if name == "smollm2":
        gguf = smollm2_gguf_path()
        return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    source = resolve_pretrained(name)
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:  # not on the hub, the hub unreachable, or a folder without tokenizer files
        raise PretrainedNotFoundError(
            f"tokenizer {name!r} could not be loaded ({str(err).strip().splitlines()[0][:200]}). Available offline: 'bytes', "
            f"'smollm2', {', '.join(repr(k) for k in PACKAGED_MODELS)}, or a folder with tokenizer.json (data.init_args."
            "train_tokenizer trains one). HINT: name one of those, or set HF_HUB_OFFLINE=0 on a machine with hub access"
        ) from None


def tokenizer_source(tokenizer) -> str:
    """A stable name for a tokenizer given by name or as an object (for cache keys and messages)."""
    return tokenizer if isinstance(tokenizer, str) else type(tokenizer).__name__


def as_tokenizer(tokenizer):
    """A tokenizer object from a name (:func:`load_tokenizer`) or an object (returned as it is)."""
    return load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer


# ---- what a vocabulary holds ----

@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet (the printable character each byte is written as), inverted: printable
    Latin-1 bytes stand for themselves, the other 68 bytes for the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b], extra = chr(256 + extra), extra + 1
    return {c: b for b, c in chars.items()}


def _backend_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return json.loads(backend.to_str()) if backend is not None else {}


def _decoder_types(spec: dict) -> set[str]:
    decoder = spec.get("decoder") or {}
    types = {decoder.get("type")}
    for d in decoder.get("decoders", []) or []:
        types.add(d.get("type"))
    return types


def token_bytes(tokenizer) -> list[bytes | None]:
    """The text bytes each token id stands for (None for special / added control tokens).

    Exact for byte-level BPE (GPT-2, Qwen, SmolLM, Llama 3 style) and :class:`lkd.tokenizers.ByteTokenizer`; for
    SentencePiece (``▁`` → space, ``<0xNN>`` → the byte) and WordPiece (``##`` continuation marker dropped)
    it is the token's surface text, so bits per byte of such a tokenizer are approximate.
    """
    if isinstance(tokenizer, ByteTokenizer):
        return [bytes([i]) for i in range(256)] + [None]
    n = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for tok_id, added in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(added, "special", True):
            special.add(int(tok_id))
    kinds = _decoder_types(_backend_json(tokenizer))
    out: list[bytes | None] = []
    decoder = _byte_decoder()
    for i, tok in enumerate(tokens):
        if tok is None or i in special:
            out.append(None)
        elif "ByteLevel" in kinds:
            try:
                out.append(bytes(decoder[c] for c in tok))
            except KeyError:  # an added plain-text token
                out.append(tok.encode("utf-8"))
        elif tok.startswith("<0x") and tok.endswith(">") and len(tok) == 6:  # SentencePiece byte fallback
            out.append(bytes([int(tok[3:5], 16)]))
        else:
            out.append(tok.replace("\u2581", " ").removeprefix("##").encode("utf-8"))
    return out


def token_byte_lengths(tokenizer) -> torch.Tensor:
    """(V,) int64: UTF-8 bytes of each token's text (0 for specials), for bits per byte."""
    return torch.tensor([len(b) if b is not None else 0 for b in token_bytes(tokenizer)], dtype=torch.long)


def shared_vocabulary(teacher, student) -> torch.Tensor:
    """(V_teacher,) int64: the student id whose text bytes equal each teacher token's, −1 where none does.

    Special tokens never match. Two byte-level BPEs share the tokens with identical byte strings; a
    tokenizer paired with itself maps every (non-special) id to itself.
    """
    student_id: dict[bytes, int] = {}
    for i, b in enumerate(token_bytes(student)):
        if b is not None and b not in student_id:
            student_id[b] = i
    mapping = [student_id.get(b, -1) if b is not None else -1 for b in token_bytes(teacher)]
    return torch.tensor(mapping, dtype=torch.long)


def same_vocabulary(a, b) -> bool:
    """Whether two tokenizers (objects) give every token id the same text: the same size and the same bytes per id
    (:func:`token_bytes`), so one model's logits index the other's tokens (a KL over one vocabulary is exact)."""
    if a is b:
        return True
    return len(a) == len(b) and token_bytes(a) == token_bytes(b)


def same_tokenizer(a: str, b: str, *, load: bool = True) -> bool:
    """Whether two tokenizer names (:func:`lkd.tokenizers.load_tokenizer`'s) mean one vocabulary: the same name, the same
    folder, or, with ``load``, two tokenizers on this machine (built in, packaged or a folder: the hub is never asked)
    that load with the same vocabulary (:func:`same_vocabulary`). A name that cannot be loaded now (a folder a data
    module trains later, a hub id) is not the same as another."""
    if a == b:
        return True
    first, second = Path(a).expanduser(), Path(b).expanduser()
    if first.exists() and second.exists() and first.resolve() == second.resolve():
        return True
    def local(name: str) -> bool:
        return name in ("bytes", "smollm2") or Path(name).expanduser().is_dir() or packaged_model_path(name) is not None

    if not (load and local(a) and local(b)):
        return False
    try:
        return same_vocabulary(load_tokenizer(a), load_tokenizer(b))
    except Exception:  # noqa: BLE001 - not loadable now: the data module reports it when it needs the tokenizer
        return False


def tokenizer_fingerprint(tokenizer) -> str:
    """A short, stable id of what a tokenizer does: its class plus a hash of its serialised pipeline
    (vocabulary, merges, normaliser, pre-tokeniser), so a cache written with one tokenizer is not read with another."""
    if isinstance(tokenizer, ByteTokenizer):
        return "bytes"
    spec = _backend_json(tokenizer)
    payload = json.dumps(spec, sort_keys=True) if spec else json.dumps(sorted(tokenizer.get_vocab().items()))
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    return f"{Path(str(name)).name} sha256:{hashlib.sha256(payload.encode()).hexdigest()[:16]} vocab={len(tokenizer)}"


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int, folder: str | Path, *, min_frequency: int = 2):
    """Train a lossless byte-level BPE (GPT-2 style: every byte is a token, no unknown token) on ``texts``
    with the ``tokenizers`` library and save it as a Hugging Face tokenizer folder.

    The vocabulary is the 256 byte tokens, ``<|endoftext|>`` (id 0) and merges up to ``vocab_size``.
    Returns the loaded ``PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 257 + 1:
        raise ValueError(f"vocab_size must be > 257 (256 bytes + <|endoftext|>) for a byte-level BPE, got {vocab_size}")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                        unk_token=None, pad_token="<|endoftext|>")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    return tokenizer



def train_bpe_if_missing(folder: str | Path, vocab_size: int, texts: Callable[[], Iterable[str]]) -> Path:
    """Train a byte-level BPE of ``vocab_size`` tokens on ``texts()`` into ``folder`` (:func:`train_byte_level_bpe`)
    unless it already holds a ``tokenizer.json``; ``texts`` is called only when training. The text data module and a
    student moved to a new tokenizer (:class:`lkd.models.RetokenizedLM`) train the same one from the same split."""
    folder = Path(folder).expanduser()
    if not (folder / "tokenizer.json").is_file():
        train_byte_level_bpe(texts(), vocab_size, folder)
    return folder

def byte_tokenizer_fast():
    """lkd's byte tokenizer (:class:`lkd.tokenizers.ByteTokenizer`: UTF-8 byte b is id b, ``<|endoftext|>`` is 256) as a
    Hugging Face ``PreTrainedTokenizerFast``, so an exported byte-level student runs in ``transformers``: a
    byte-level BPE with the 256 byte tokens in byte order and no merges (every byte its own token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    char_of = {b: ch for ch, b in _byte_decoder().items()}  # byte -> GPT-2 printable character
    vocab = {char_of[b]: b for b in range(256)} | {"<|endoftext|>": 256}
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    bpe.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token=None)
