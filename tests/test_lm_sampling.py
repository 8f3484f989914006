"""Sampling completions inside a training step (lkd.models.sampling): batched with a KV cache, no gradient, eval mode."""

from __future__ import annotations

import pytest
import torch

from lkd.models import TinyLlamaLM
from lkd.models.sampling import next_tokens, sample_completions

EOS, PAD = 256, 256
LLAMA = {"vocab_size": 257, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 48,
         "max_position_embeddings": 64}


@pytest.fixture
def model():
    return TinyLlamaLM(**LLAMA, seed=0).model


def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


PROMPTS = [[10, 20, 30, 40, 50], [7, 8], [99, 98, 97]]


def test_greedy_completions_match_transformers_generate(model):
    ids, mask = left_padded(PROMPTS)
    out = sample_completions(model, ids, mask, max_new_tokens=6, eos_token_id=EOS, pad_token_id=PAD, temperature=0)
    model.eval()
    reference = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, eos_token_id=EOS,
                               pad_token_id=PAD)[:, ids.shape[1]:]
    assert torch.equal(out.tokens, reference[:, :out.tokens.shape[1]])
    for row, prompt in enumerate(PROMPTS):  # each row alone (no padding) gives the same tokens
        alone = sample_completions(model, torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long),
                                   max_new_tokens=6, eos_token_id=EOS, pad_token_id=PAD, temperature=0)
        assert torch.equal(alone.tokens[0], out.tokens[row, :alone.tokens.shape[1]])


def test_sixteen_bit_sampling_matches_generate_in_the_same_precision(model):
    """In bfloat16 weights and under bf16 autocast (a 16-bit run's training step) the sampler gives the tokens Hugging
    Face's ``generate`` gives in the same precision, and draws with a seeded generator in 16 bits too."""
    ids, mask = left_padded(PROMPTS)
    half = model.to(torch.bfloat16)
    out = sample_completions(half, ids, mask, max_new_tokens=6, eos_token_id=EOS, pad_token_id=PAD, temperature=0)
    reference = half.eval().generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, eos_token_id=EOS,
                                     pad_token_id=PAD)[:, ids.shape[1]:]
    assert torch.equal(out.tokens, reference[:, :out.tokens.shape[1]])
    model.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = sample_completions(model, ids, mask, max_new_tokens=6, eos_token_id=EOS, pad_token_id=PAD, temperature=1.0,
                                  generator=torch.Generator().manual_seed(0))
        again = sample_completions(model, ids, mask, max_new_tokens=6, eos_token_id=EOS, pad_token_id=PAD, temperature=1.0,
                                   generator=torch.Generator().manual_seed(0))
    assert torch.equal(auto.tokens, again.tokens) and int(auto.tokens.max()) < LLAMA["vocab_size"]


def test_the_prompt_pass_computes_the_head_on_the_last_position_only(model):
    """Like ``generate`` (``logits_to_keep=1``): the vocabulary projection of every prompt position is wasted work."""
    widths = []
    handle = model.lm_head.register_forward_hook(lambda module, args, out: widths.append(args[0].shape[1]))
    ids, mask = left_padded(PROMPTS)
    try:
        sample_completions(model, ids, mask, max_new_tokens=3, eos_token_id=EOS, pad_token_id=PAD, temperature=0)
    finally:
        handle.remove()
    assert widths and set(widths) == {1}  # the prompt pass included (its input is 5 positions wide)


def test_no_gradient_and_eval_mode_while_sampling_and_the_mode_restored(model):
    model.train()
    modes = []
    handle = model.model.layers[0].register_forward_hook(lambda module, args, output: modes.append(module.training))
    ids, mask = left_padded(PROMPTS)
    out = sample_completions(model, ids, mask, max_new_tokens=4, eos_token_id=EOS, pad_token_id=PAD, temperature=1.0,
                             generator=torch.Generator().manual_seed(0))
    handle.remove()
    assert modes and not any(modes)  # dropout off while sampling
    assert model.training  # restored
    assert not out.tokens.requires_grad and all(p.grad is None for p in model.parameters())


def test_a_seeded_generator_reproduces_the_samples(model):
    ids, mask = left_padded(PROMPTS)
    draws = [sample_completions(model, ids, mask, max_new_tokens=8, eos_token_id=EOS, pad_token_id=PAD, temperature=1.0,
                                generator=torch.Generator().manual_seed(seed)).tokens for seed in (1, 1, 2)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


def test_rows_stop_at_end_of_sequence_and_stop_costing_compute(model):
    ids, mask = left_padded(PROMPTS)
    greedy = sample_completions(model, ids, mask, max_new_tokens=5, eos_token_id=EOS, pad_token_id=PAD, temperature=0)
    stop_token = int(greedy.tokens[1, 0])  # what row 1 picks first: call that the end of sequence
    out = sample_completions(model, ids, mask, max_new_tokens=5, eos_token_id=stop_token, pad_token_id=PAD, temperature=0)
    assert out.lengths[1] == 1 and out.finished[1] and out.mask[1].tolist() == [True] + [False] * (out.tokens.shape[1] - 1)
    assert (out.tokens[1, 1:] == PAD).all()
    assert out.row_steps < 3 * 4  # row 1 left the batch after its first token


def test_nucleus_of_a_tiny_mass_is_greedy():
    logits = torch.randn(5, 257, generator=torch.Generator().manual_seed(0))
    picked = next_tokens(logits, temperature=1.0, top_p=1e-6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(picked, logits.argmax(-1))


@pytest.mark.parametrize(("options", "message"), [
    ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
    ({"max_new_tokens": 4, "temperature": -1.0}, "temperature must be >= 0"),
    ({"max_new_tokens": 4, "top_p": 0.0}, r"top_p must be in \(0, 1\]"),
])
def test_bad_sampling_settings_are_refused(model, options, message):
    ids, mask = left_padded(PROMPTS)
    with pytest.raises(ValueError, match=message):
        sample_completions(model, ids, mask, eos_token_id=EOS, pad_token_id=PAD, **options)
