"""On-policy distillation across tokenizers (lkd.modules.OnPolicyDistillModule with teacher_tokenizer): completions
spelled as text and read by the teacher's tokenizer, the chunk losses over completion chunks only, a short fit and the
refusals. Tiny Llamas on a tiny arithmetic task; the tokenizers are the byte tokenizer, its Hugging Face twin (with or
without a chat template of its own) and a byte-level BPE trained in the test."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from lkd.data.alignment import align_completion, spell_tokens
from lkd.data.prompts import join_prompt_completion
from lkd.losses.cross_tokenizer import binary_kl
from lkd.losses.lm import token_logprobs
from lkd.models import TinyLlamaLM
from lkd.modules.on_policy import OnPolicyDistillModule
from lkd.teacher import Teacher
from lkd.tokenizers import ByteTokenizer, byte_tokenizer_fast, token_bytes, train_byte_level_bpe
from tests.lm_fixtures import arithmetic_prompts

LLAMA = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 48, "max_position_embeddings": 96}
TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> str:
    """A byte-level BPE of 300 tokens trained on sums: multi-byte tokens the byte teacher reads byte by byte."""
    lines = [f"{a}+{b}={a + b}" for a in range(0, 100, 3) for b in range(0, 100, 7)]
    folder = tmp_path_factory.mktemp("bpe300")
    train_byte_level_bpe(lines, 300, folder)
    return str(folder)


def templated_bytes():
    """Hugging Face byte tokenizer (the ids of "bytes") with a chat template of its own: the teacher renders prompts
    differently from a student without one."""
    tok = byte_tokenizer_fast()
    tok.chat_template = TEMPLATE
    return tok


def module(tokenizer="bytes", teacher_tokenizer=None, *, student_vocab=257, teacher_vocab=257, teacher=None, **kw):
    teacher = teacher or TinyLlamaLM(vocab_size=teacher_vocab, **LLAMA, seed=0)
    return OnPolicyDistillModule(TinyLlamaLM(vocab_size=student_vocab, **LLAMA, seed=1), Teacher(model=teacher), tokenizer=tokenizer,
                                 teacher_tokenizer=teacher_tokenizer, **{"max_new_tokens": 6, **kw})


def first_batch(model, dm) -> dict:
    model.connect_data(dm)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


# ---- a completion read as text by another tokenizer ------------------------------------------------------------------
def test_spelled_tokens_keep_every_byte_in_place():
    """"é" split over two tokens, a stray byte, a special token: the text has one U+FFFD per stray byte, and character
    positions map to byte positions exactly."""
    pieces = [b"a\xc3", b"\xa9", b"\xff", None, b"b"]
    spelled = spell_tokens(pieces)
    assert spelled.text == "aé\ufffdb"
    assert spelled.token_spans == [(0, 2), (2, 3), (3, 4), (4, 4), (4, 5)]
    assert spelled.char_starts == [0, 1, 3, 4, 5]


def test_a_completion_aligns_with_the_teachers_reading_and_ends_with_its_eos(bpe):
    from lkd.tokenizers import load_tokenizer

    student = load_tokenizer(bpe)
    pieces = token_bytes(student)
    ids = student("12+34=46", add_special_tokens=False)["input_ids"]
    assert len(ids) < 8  # multi-byte tokens, so the chunks are not one byte each
    aligned = align_completion([*ids, student.eos_token_id], pieces, ByteTokenizer(), student_eos=student.eos_token_id, teacher_eos=256)
    assert aligned.text == "12+34=46" and aligned.teacher_ids == [*b"12+34=46", 256]
    for s0, s1, t0, t1 in aligned.chunks[:-1]:  # each chunk: the same bytes on both sides
        assert b"".join(pieces[i] for i in ids[s0:s1]) == bytes(aligned.teacher_ids[t0:t1])
    assert aligned.chunks[-1] == (len(ids), len(ids) + 1, 8, 9)  # the two EOS tokens, a chunk of their own
    assert [i for s0, s1, _, _ in aligned.chunks for i in range(s0, s1)] == list(range(len(ids) + 1))  # each token once, in order
    assert [i for _, _, t0, t1 in aligned.chunks for i in range(t0, t1)] == list(range(9))
    cut = align_completion([*ids, student.eos_token_id], pieces, ByteTokenizer(), student_eos=student.eos_token_id, teacher_eos=256,
                           teacher_room=4)
    assert cut.chunks == [c for c in aligned.chunks if c[3] <= 4] and len(cut.teacher_ids) == cut.chunks[-1][3] <= 4  # whole chunks, no EOS


# ---- the loss --------------------------------------------------------------------------------------------------------
def test_alm_across_an_identity_pair_is_the_binary_kl_of_each_token_and_zero_for_the_same_model(arithmetic_task):
    """Student "bytes", teacher the same ids through another tokenizer object: every completion byte (and the EOS) is a
    chunk of its own, so ALM is the mean binary KL of the two models' token probabilities, computed here directly on
    the one-tokenizer sequences; and zero when the teacher is the student."""
    model = module(teacher_tokenizer=byte_tokenizer_fast(), lmbda=0.0, loss="alm")
    batch = first_batch(model, arithmetic_prompts(arithmetic_task))
    assert model.cross_tokenizer and torch.equal(batch["teacher_prompt_ids"], batch["prompt_ids"])
    divergence = model.step(batch, "train").terms["divergence"]
    ids, attention, loss_mask = join_prompt_completion(batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
                                                       batch["completion_mask"])
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        s_lp, t_lp = (token_logprobs(m(input_ids=ids, attention_mask=attention, position_ids=positions).logits, ids)
                      for m in (model.student, model.teacher.model))
    keep = loss_mask.bool()
    torch.testing.assert_close(divergence.detach(), binary_kl(t_lp[keep], s_lp[keep]).mean(), rtol=1e-5, atol=1e-7)
    assert divergence > 1e-6  # small: two random models give every byte p ≈ 1/257
    for loss in ("alm", "shared_kl"):
        same = module(teacher_tokenizer=byte_tokenizer_fast(), lmbda=0.0, loss=loss)
        same.teacher.model.load_state_dict(same.student.state_dict())
        same.connect_data(arithmetic_prompts(arithmetic_task))
        assert abs(float(same.step(batch, "train").terms["divergence"].detach())) < 1e-9, loss


@pytest.mark.parametrize("loss", ["alm", "shared_kl"])
def test_prompt_tokens_never_enter_the_loss_across_tokenizers(arithmetic_task, bpe, loss):
    """BPE student, byte teacher with its own chat template, sampled and reference rows: garbage teacher logits at its
    prompt positions (all but the last, which predicts the completion's first token) leave the loss as it is; garbage
    from there on changes it. Every predicted chunk lies in both sides' completions."""
    model = module(bpe, templated_bytes(), student_vocab=300, lmbda=0.5, loss=loss, seed=2)
    batch = first_batch(model, arithmetic_prompts(arithmetic_task))
    assert batch["teacher_prompt_text"][0].startswith("<user>") and not batch["prompt_text"][0].startswith("<user>")
    honest = model.step(batch, "train").terms["divergence"]
    (prompt_ids, _, completion_ids, completion_mask, on), _ = model.rollout_and_batch(batch, "train")
    reading = model.teacher_tokens.read(batch["teacher_prompt_ids"], batch["teacher_prompt_mask"], completion_ids, completion_mask,
                                        student_prompt_width=prompt_ids.shape[1])
    index, P, P_t = reading.index, prompt_ids.shape[1], batch["teacher_prompt_ids"].shape[1]
    assert on.any() and (~on).any() and int(index.predicted.sum()) > 0
    assert bool((index.s_start[index.predicted] >= P).all()) and bool((index.t_start[index.predicted] >= P_t).all())
    original = model.teacher.model.forward

    def garbage(columns):
        def forward(*args, **kwargs):
            out = original(*args, **kwargs)
            out.logits[:, columns] = torch.randn_like(out.logits[:, columns]) * 50
            return out
        return forward

    model.teacher.model.forward = garbage(slice(0, P_t - 1))
    assert torch.equal(model.step(batch, "train").terms["divergence"], honest)
    model.teacher.model.forward = garbage(slice(P_t - 1, None))
    assert not torch.equal(model.step(batch, "train").terms["divergence"], honest)


# ---- training --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [
    {"loss": "alm", "lmbda": 0.5, "off_policy": "teacher", "ce_weight": 0.5},
    {"loss": "shared_kl", "lmbda": 1.0, "replay_steps": 2},
])
def test_a_short_fit_trains_the_student_and_scores_across_tokenizers(arithmetic_task, bpe, options):
    from lkd.callbacks import CompletionEvaluation

    model = module(bpe, templated_bytes(), student_vocab=300, **options)
    before = [p.detach().clone() for p in model.student.parameters()]
    teacher_before = [p.detach().clone() for p in model.teacher.parameters()]
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[CompletionEvaluation(checker="exact_match")])
    trainer.fit(model, datamodule=arithmetic_prompts(arithmetic_task))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.student.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, model.teacher.parameters(), strict=True))
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/divergence"]) and torch.isfinite(metrics["val/loss"])
    assert metrics["train/chunks_per_block"] >= 2 and metrics["train/teacher_completion_tokens"] > 0
    assert float(metrics["val/teacher_nll"]) > 0 and 0 <= float(metrics["val/rougeL_teacher"]) <= 1  # the teacher in its own tokens


# ---- refused before training -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("options", "message"), [
    ({"teacher_vocab": 300}, r"vocabulary \(257\) differs from the teacher's \(300\).*HINT: set it to the teacher's tokenizer"),
    ({"loss": "alm"}, r"loss='alm' compares two tokenizers, but model.init_args.teacher_tokenizer is not set"),
    ({"teacher_tokenizer": "T", "loss": "jsd"}, r"loss='jsd' compares the models token by token.*HINT: across tokenizers use loss: alm"),
    ({"teacher_tokenizer": "T", "loss": "sampled"}, r"loss='sampled' compares the models token by token.*shared_kl"),
    ({"teacher_tokenizer": "T", "loss": "jsd_topk"}, r"loss='jsd_topk' compares.*uld"),
    ({"teacher_tokenizer": "T", "loss": "kl"}, r"loss must be one of \('alm', 'uld', 'shared_kl'\) across tokenizers"),
    ({"teacher_tokenizer": "T", "reduction": "sequence"}, r"reduction='sequence'.*HINT: use reduction: token"),
])
def test_what_does_not_fit_the_tokenizers_is_refused_naming_the_value(options, message):
    options = {**options, "teacher_tokenizer": templated_bytes()} if options.get("teacher_tokenizer") == "T" else options
    with pytest.raises(ValueError, match=message):
        module(**options)


def test_the_students_own_tokenizer_as_the_teachers_is_one_tokenizer():
    model = module(teacher_tokenizer="bytes")
    assert not model.cross_tokenizer and model.loss_name == "jsd" and model.teacher_tokens is None
    assert module(teacher_tokenizer=byte_tokenizer_fast()).loss_name == "alm"  # another tokenizer object: two, ALM by default
