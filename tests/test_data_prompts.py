"""PromptDataModule (prompt / completion data for on-policy distillation): padding sides and masks, the join's loss
mask, chat templates (SmolLM2's, a tiny Jinja one, none), teacher fields, splits and seeded order, the arithmetic task
files, and every error naming its value and fix."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import pytest
import torch

from lkd.data.arithmetic import answer_text, exact_match, write_arithmetic_task
from lkd.data.prompts import PromptDataError, PromptDataModule, PromptLengthError, join_prompt_completion
from lkd.tokenizers import ByteTokenizer, byte_tokenizer_fast, load_tokenizer
from tests.conftest import write_hub_dataset

EOS = ByteTokenizer.eos_token_id  # 256, also the byte tokenizer's pad id (it has no pad token)
TINY_TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def bytes_of(text: str) -> list[int]:
    return list(text.encode())


def module(tmp_path, rows: list[dict], **kwargs) -> PromptDataModule:
    """A module on one train file of ``rows``; by default the byte tokenizer and batches of 4."""
    files = {"train": write_jsonl(tmp_path / "train.jsonl", rows)}
    return PromptDataModule(data_files=files, **{"tokenizer": "bytes", "batch_size": 4, **kwargs})


def first_batch(dm: PromptDataModule, stage: str = "fit", loader: str = "val_dataloader") -> dict:
    dm.setup(stage)
    return next(iter(getattr(dm, loader)()))


def teacher_tokenizer():
    """A byte-level HF tokenizer (same ids as "bytes", pad = EOS = 256) with a tiny chat template of its own."""
    tok = byte_tokenizer_fast()
    tok.chat_template = TINY_TEMPLATE
    return tok


ROWS = [{"prompt": "1+2=", "completion": "3"}, {"prompt": "10+20=", "completion": "30"},
        {"prompt": "7-9=", "completion": None}]


# ---- the batch ---------------------------------------------------------------------------------------------
def test_prompts_left_padded_completions_right_padded_with_eos(tmp_path):
    dm = module(tmp_path, ROWS, val_split="train", test_split=None)
    batch = first_batch(dm)
    assert batch["prompt_ids"].tolist() == [[EOS] * 2 + bytes_of("1+2="), bytes_of("10+20="), [EOS] * 2 + bytes_of("7-9=")]
    assert batch["prompt_mask"].tolist() == [[0, 0, 1, 1, 1, 1], [1] * 6, [0, 0, 1, 1, 1, 1]]
    assert batch["completion_ids"].tolist() == [[ord("3"), EOS, EOS], [ord("3"), ord("0"), EOS], [EOS, EOS, EOS]]
    assert batch["completion_mask"].tolist() == [[1, 1, 0], [1, 1, 1], [0, 0, 0]]  # the row without a reference: zeros
    assert batch["row_index"].tolist() == [0, 1, 2] and batch["row_index"].dtype == torch.int64
    assert batch["prompt_text"] == ["1+2=", "10+20=", "7-9="] and batch["completion_text"] == ["3", "30", ""]
    assert all(v.dtype == torch.int64 for v in batch.values() if isinstance(v, torch.Tensor))
    assert "teacher_prompt_ids" not in batch


def test_batch_without_any_reference_has_one_masked_completion_column(tmp_path):
    dm = module(tmp_path, [{"prompt": "ab"}, {"prompt": "c"}], val_split="train")  # no completion column at all
    batch = first_batch(dm)
    assert batch["completion_ids"].shape == (2, 1) and batch["completion_mask"].sum() == 0
    assert batch["completion_text"] == ["", ""]


def test_join_puts_only_completion_tokens_into_the_loss_mask():
    prompt_ids, prompt_mask = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 4]]), torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    completion_ids, completion_mask = torch.tensor([[1, 2, 0], [3, 0, 0]]), torch.tensor([[1, 1, 0], [0, 0, 0]])
    input_ids, attention_mask, loss_mask = join_prompt_completion(prompt_ids, prompt_mask, completion_ids, completion_mask)
    assert input_ids.tolist() == [[0, 0, 5, 6, 1, 2, 0], [7, 8, 9, 4, 3, 0, 0]]
    assert attention_mask.tolist() == [[0, 0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0]]
    assert loss_mask.tolist() == [[0, 0, 0, 0, 1, 1, 0], [0] * 7]  # targets: the completion tokens only
    with pytest.raises(ValueError, match=r"\(B, P\), \(B, P\), \(B, C\), \(B, C\); got"):
        join_prompt_completion(prompt_ids, prompt_mask[:, :3], completion_ids, completion_mask)


def test_join_of_a_real_batch_never_marks_prompt_or_pad_tokens(tmp_path):
    rows = [{"prompt": "x" * (i % 5 + 1), "completion": "y" * (i % 3)} for i in range(10)]
    batch = first_batch(module(tmp_path, rows, val_split="train"))
    input_ids, attention_mask, loss_mask = join_prompt_completion(batch["prompt_ids"], batch["prompt_mask"],
                                                                  batch["completion_ids"], batch["completion_mask"])
    p = batch["prompt_ids"].shape[1]
    assert loss_mask[:, :p].sum() == 0 and not (loss_mask.bool() & ~attention_mask.bool()).any()
    assert torch.equal(loss_mask[:, p:], batch["completion_mask"])
    for row, ids, mask in zip(rows, input_ids, attention_mask):  # [pads, prompt, completion, EOS, pads]: contiguous
        assert ids[mask.bool()].tolist() == bytes_of(row["prompt"] + row["completion"]) + [EOS]
    assert set(input_ids[loss_mask.bool()].tolist()) == {ord("y"), EOS}


# ---- rendering ---------------------------------------------------------------------------------------------
def test_smollm2_chat_template_renders_the_generation_prompt(tmp_path):
    smollm2 = load_tokenizer("smollm2")
    dm = module(tmp_path, ROWS[:2], val_split="train", tokenizer=None)
    dm.connect(smollm2)
    batch = first_batch(dm)
    text = batch["prompt_text"][0]
    assert "<|im_start|>user\n1+2=<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
    assert "You are a helpful AI assistant named SmolLM" in text  # no system_prompt: the template's own default
    real = batch["prompt_ids"][0][batch["prompt_mask"][0].bool()].tolist()
    assert real == smollm2(text, add_special_tokens=False)["input_ids"] and smollm2.decode(real) == text
    assert batch["completion_ids"][0][batch["completion_mask"][0].bool()].tolist() == smollm2("3")["input_ids"] + [smollm2.eos_token_id]
    own = module(tmp_path, ROWS[:1], val_split="train", tokenizer=smollm2, system_prompt="Answer with a number.")
    assert first_batch(own)["prompt_text"][0].startswith("<|im_start|>system\nAnswer with a number.<|im_end|>")
    plain = module(tmp_path, ROWS[:1], val_split="train", tokenizer=smollm2, chat_template=False)
    assert first_batch(plain)["prompt_text"] == ["1+2="]


def test_byte_tokenizer_uses_the_prompt_as_is_and_refuses_a_required_template(tmp_path):
    assert first_batch(module(tmp_path, ROWS, val_split="train", system_prompt="Be brief."))["prompt_text"][0] == \
        "system: Be brief.\nuser: 1+2=\nassistant: "  # no template: plain_prompt's lines
    dm = module(tmp_path, ROWS, val_split="train", chat_template=True)
    with pytest.raises(PromptDataError, match=r"chat_template=True, but the tokenizer 'bytes' has no chat template.*HINT"):
        dm.setup("fit")


def test_a_teacher_tokenizer_gets_its_own_rendering_and_fields(tmp_path):
    dm = module(tmp_path, ROWS, val_split="train")
    dm.connect("bytes", teacher_tokenizer=teacher_tokenizer())
    batch = first_batch(dm)
    assert batch["teacher_prompt_text"] == ["<user>1+2=<assistant>", "<user>10+20=<assistant>", "<user>7-9=<assistant>"]
    assert batch["prompt_text"] == ["1+2=", "10+20=", "7-9="]  # the student has no template
    width = len("<user>10+20=<assistant>")
    assert batch["teacher_prompt_ids"].shape == batch["teacher_prompt_mask"].shape == (3, width)
    assert batch["teacher_prompt_ids"][0].tolist() == [EOS] * 2 + bytes_of("<user>1+2=<assistant>")  # left-padded
    assert batch["teacher_prompt_mask"][0].tolist() == [0, 0] + [1] * (width - 2)
    dm.connect("bytes", teacher_tokenizer="bytes")  # the student's own tokenizer: no teacher fields
    assert "teacher_prompt_ids" not in next(iter(dm.val_dataloader()))


def test_messages_column_final_assistant_message_is_the_reference(tmp_path, caplog):
    chats = [{"chat": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
             {"chat": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}]}]
    dm = module(tmp_path, chats, messages_column="chat", val_split="train")
    with caplog.at_level(logging.INFO):
        dm.connect("bytes", teacher_tokenizer=teacher_tokenizer())
    assert "the tokenizer 'bytes' has no chat template: its side renders the chat messages as 'role: content'" in caplog.text
    batch = first_batch(dm)
    assert batch["teacher_prompt_text"] == ["<user>hi<assistant>", "<system>S<user>q<assistant>"]
    assert batch["prompt_text"] == ["hi", "system: S\nuser: q\nassistant: "] and batch["completion_text"] == ["yo", ""]
    assert batch["completion_mask"].tolist() == [[1, 1, 1], [0, 0, 0]]
    strict = module(tmp_path, chats, messages_column="chat", val_split="train", require_completions=True)
    with pytest.raises(PromptDataError, match=r"row 1 has no final assistant message.*require_completions=True. HINT"):
        first_batch(strict)


# ---- limits ------------------------------------------------------------------------------------------------
def test_prompt_and_completion_limits(tmp_path):
    rows = [{"prompt": "short", "completion": "abcdef"}, {"prompt": "a much longer prompt", "completion": "z"}]
    with pytest.raises(PromptLengthError, match=r"row 1: the prompt has 20 tokens \('bytes'\), over max_prompt_tokens=8.*HINT"):
        first_batch(module(tmp_path, rows, val_split="train", max_prompt_tokens=8))
    batch = first_batch(module(tmp_path, rows, val_split="train", max_prompt_tokens=8, truncate_prompts=True,
                               max_completion_tokens=4))
    assert batch["prompt_ids"][1].tolist() == bytes_of("r prompt")  # the last 8 tokens
    assert batch["prompt_text"][1] == "a much longer prompt"  # the text stays whole
    assert batch["completion_ids"][0].tolist() == bytes_of("abcd")  # cut to 4 tokens: no EOS
    assert batch["completion_ids"][1].tolist() == [ord("z"), EOS, EOS, EOS]
    dm = module(tmp_path, rows, val_split="train")
    dm.connect("bytes", context_length=16)
    with pytest.raises(PromptLengthError, match=r"row 1: the prompt has 20 tokens.*context of 16 positions. HINT"):
        first_batch(dm)
    with pytest.raises(PromptLengthError, match=r"max_prompt_tokens=16 leaves no room.*context of 16 positions. HINT"):
        module(tmp_path, rows, max_prompt_tokens=16).connect("bytes", context_length=16)


# ---- splits and order --------------------------------------------------------------------------------------
def test_hub_layout_source_with_sliced_splits_keeps_row_numbers(tmp_path):
    rows = datasets.Dataset.from_dict({"prompt": [f"p{i}" for i in range(10)], "completion": [str(i) for i in range(10)]})
    root = write_hub_dataset(tmp_path / "mirror", "default", {"train": rows})
    dm = PromptDataModule(str(root), "default", train_split="train[:60%]", val_split="train[60%:]", tokenizer="bytes",
                          eval_batch_size=10)
    assert first_batch(dm)["row_index"].tolist() == [6, 7, 8, 9]  # rows of the unsliced split
    assert first_batch(dm)["prompt_text"] == ["p6", "p7", "p8", "p9"] and len(dm.split("train")) == 6


def test_val_size_carves_validation_from_train(tmp_path):
    dm = module(tmp_path, [{"prompt": f"q{i}", "completion": "a"} for i in range(20)], val_size=5.0, eval_batch_size=20)  # 5.0: a count
    dm.setup("fit")
    val = first_batch(dm)["row_index"].tolist()
    train = sorted(item["row_index"] for item in dm.split("train"))
    assert len(val) == 5 and sorted(val + train) == list(range(20))


def test_seeded_training_order_is_reproducible(tmp_path):
    rows = [{"prompt": f"q{i}", "completion": "a"} for i in range(12)]

    def order(seed: int, epoch: int = 0) -> list[int]:
        dm = module(tmp_path, rows, seed=seed)
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)  # what Lightning calls at each epoch start, also after a resume
        return torch.cat([b["row_index"] for b in loader]).tolist()

    assert order(3) == order(3) and sorted(order(3)) == list(range(12))
    assert order(3) != order(4) and order(3, epoch=1) != order(3) and order(3, epoch=1) == order(3, epoch=1)
    dm = module(tmp_path, rows, val_split="train[:6]", eval_batch_size=6)
    assert first_batch(dm)["row_index"].tolist() == list(range(6))  # evaluation in order


# ---- the arithmetic task ------------------------------------------------------------------------------------
def test_arithmetic_files_are_deterministic_disjoint_and_correct(tmp_path):
    a = write_arithmetic_task(tmp_path / "a", n_train=200, n_test=50, seed=1)
    b = write_arithmetic_task(tmp_path / "b", n_train=200, n_test=50, seed=1)
    c = write_arithmetic_task(tmp_path / "c", n_train=200, n_test=50, seed=2)
    assert a["train"].read_bytes() == b["train"].read_bytes() and a["test"].read_bytes() == b["test"].read_bytes()
    assert a["train"].read_bytes() != c["train"].read_bytes()
    train, test = ([json.loads(line) for line in a[s].read_text().splitlines()] for s in ("train", "test"))
    assert len(train) == 200 and len(test) == 50
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test} and len({r["prompt"] for r in train}) == 200
    for r in train + test:
        left, right = r["prompt"].removesuffix("=").replace("-", " - ").replace("+", " + ").split(" ", 2)[::2]
        assert 1 <= len(left) <= 3 and 1 <= len(right.split()[-1]) <= 3 and eval(r["prompt"][:-1]) == int(r["completion"])
    dm = PromptDataModule(data_files={k: str(v) for k, v in a.items()}, tokenizer="bytes", val_size=0.1,
                          require_completions=True, batch_size=8)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["prompt_text"] == [r["prompt"] for r in test[:8]] and batch["completion_text"] == [r["completion"] for r in test[:8]]
    with pytest.raises(ValueError, match=r"make only 200. HINT"):
        write_arithmetic_task(tmp_path / "d", n_train=150, n_test=51, digits=(1, 1))


def test_exact_match_compares_the_first_line():
    assert exact_match(" 357\n", "357") and exact_match("357<|im_end|>garbage", "357") and exact_match("-9\n1+1=2", "-9")
    assert not exact_match("35", "357") and not exact_match("3570", "357") and not exact_match("", "357")
    assert answer_text("\n 42 \nmore") == "42"


# ---- errors ------------------------------------------------------------------------------------------------
def test_prompt_template_builds_prompts_from_the_rows_columns(tmp_path):
    rows = [{"sentence": "a fine film", "label": 1, "ref": "yes"}, {"sentence": "dull", "label": 0, "ref": "no"}]
    dm = module(tmp_path, rows, prompt_template="Review ({label}): {sentence}", completion_column="ref", val_split="train")
    batch = first_batch(dm)
    assert batch["prompt_text"] == ["Review (1): a fine film", "Review (0): dull"]
    assert batch["completion_text"] == ["yes", "no"]
    with pytest.raises(PromptDataError, match=r"no column 'sentense' \(did you mean 'sentence'\?\), which prompt_template "
                                              r"'x \{sentense\}' names; its columns: \['sentence', 'label', 'ref'\]"):
        module(tmp_path, rows, prompt_template="x {sentense}").setup("fit")
    with pytest.raises(ValueError, match=r"prompt_template 'x' names no column"):
        module(tmp_path, rows, prompt_template="x")
    with pytest.raises(ValueError, match=r"prompt_template 'x \{' is not a format string"):
        module(tmp_path, rows, prompt_template="x {")
    with pytest.raises(ValueError, match=r"prompt_template .* or messages_column .*not both"):
        module(tmp_path, rows, prompt_template="{sentence}", messages_column="m")


def test_errors_name_the_value_and_the_fix(tmp_path):
    rows = [{"question": "1+1=", "answer": "2"}]
    with pytest.raises(PromptDataError, match=r"has no prompt column 'prompt'; its columns: \['question', 'answer'\]. HINT"):
        module(tmp_path, rows).setup("fit")
    with pytest.raises(PromptDataError, match=r"no prompt column 'promt' \(did you mean 'prompt'\?\)"):
        module(tmp_path, ROWS, prompt_column="promt").setup("fit")
    with pytest.raises(PromptDataError, match=r"no completion column 'answer'.*require_completions=True; its columns"):
        module(tmp_path, ROWS, completion_column="answer", require_completions=True).setup("fit")
    with pytest.raises(PromptDataError, match=r"data.init_args.val_split='validation'.*no split 'validation'; its splits: train. HINT"):
        module(tmp_path, ROWS, val_split="validation").setup("fit")
    with pytest.raises(PromptDataError, match=r"the val split \(train\[:0\]\) of data_files .* is empty. HINT"):
        module(tmp_path, ROWS, val_split="train[:0]").setup("fit")
    with pytest.raises(PromptDataError, match=r"row 2 has no 'completion' \(1 rows without a reference\)"):
        first_batch(module(tmp_path, ROWS, val_split="train", require_completions=True))
    with pytest.raises(PromptDataError, match=r"row 0: the prompt \('prompt'\) is ''"):
        first_batch(module(tmp_path, [{"prompt": ""}], val_split="train"))
    with pytest.raises(PromptDataError, match="has no tokenizer yet"):
        PromptDataModule(data_files=write_jsonl(tmp_path / "t.jsonl", ROWS)).split("train")
    with pytest.raises(ValueError, match=r"exactly one of hub_id.*batch_size must be >= 1, got 0.*truncate_prompts=True needs.*"
                                         r"val_size.*got val_size=0.1, val_split='test'"):
        PromptDataModule(batch_size=0, truncate_prompts=True, val_size=0.1, val_split="test")
