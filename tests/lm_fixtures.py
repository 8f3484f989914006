"""Tiny language-model pieces for the LM tests: a WikiText-shaped corpus in hub layout, tiny models, and the
CLI overrides that shrink any configs/lm/*.yaml to them."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.conftest import write_hub_dataset

WIKITEXT_CONFIG = "wikitext-2-raw-v1"
VOCAB = 257  # lkd.tokenizers.ByteTokenizer

TINY_TEACHER = dict(vocab_size=VOCAB, hidden_size=32, num_layers=4, num_heads=2, num_kv_heads=1, head_dim=16,
                    intermediate_size=64, moe_intermediate_size=16, num_experts=8, top_k=2, max_position_embeddings=64)
TINY_STUDENT = dict(vocab_size=VOCAB, hidden_size=24, num_layers=4, num_heads=2, num_kv_heads=1,
                    intermediate_size=48, max_position_embeddings=64)


def tiny_teacher(seed: int = 0, **kw):
    from lkd.models import TinyMoELM

    return TinyMoELM(**{**TINY_TEACHER, **kw}, seed=seed).model


def tiny_student(seed: int = 1, **kw):
    from lkd.models import TinyLlamaLM

    return TinyLlamaLM(**{**TINY_STUDENT, **kw}, seed=seed).model


def as_class_arg(builder: str, init_args: dict) -> str:
    """A CLI value replacing a model argument: ``{"class_path": ..., "init_args": ...}`` as JSON."""
    return json.dumps({"class_path": builder, "init_args": init_args})


CROSS_STUDENT_TOKENIZER = "checkpoints/lm/tiny_bpe"  # relative: the smoke tests run in a tmp folder
CROSS_STUDENT_VOCAB = 300
SMOLLM2_VOCAB = 49152  # the smollm2 tokenizer's ids: a tiny teacher reading them predicts over all of them
MOE_BUILDERS = ("lkd.models.TinyMoELM", "lkd.models.PretrainedLM")
MADE_FROM_TEACHER = ("lkd.models.PrunedLM", "lkd.models.RetokenizedLM")


def tiny_prompt_files(data_root: Path) -> dict[str, str]:
    """Train and validation JSONL files beside the tiny corpus with the columns prompt templates read (GLUE SST-2's
    ``sentence`` and ``label``)."""
    rows = [{"sentence": f"a {w} film about {n} people", "label": n % 2,
             "messages": [{"role": "user", "content": f"a {w} film?"}, {"role": "assistant", "content": f"{n} people"}]}
            for n, w in enumerate(["fine", "dull", "long", "sad", "odd", "warm"])]
    files = {}
    for split, part in (("train", rows), ("validation", rows[:4])):
        path = data_root.parent / f"tiny_prompts_{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
        files[split] = str(path)
    return files


def made_from_tiny_teacher(spec: dict, data_root: Path) -> str:
    """A student made from the tiny Llama teacher the way the config makes it from SmolLM2: half its layers kept (depth),
    narrower layers ranked on the tiny corpus (width), or moved to the tiny BPE (another tokenizer)."""
    init = spec["init_args"]
    teacher = {"class_path": "lkd.models.TinyLlamaLM", "init_args": {**TINY_STUDENT, "seed": 0}}
    corpus = {"hub_id": str(data_root), "config": WIKITEXT_CONFIG, "split": "validation[:90%]", "n_blocks": 4, "block_size": 16}
    if spec["class_path"] == "lkd.models.RetokenizedLM":
        moved = {"teacher": teacher, "tokenizer": CROSS_STUDENT_TOKENIZER, "teacher_tokenizer": "bytes", "init": init.get("init", "spelling"),
                 "train_tokenizer": CROSS_STUDENT_VOCAB, "corpus": corpus}
        return as_class_arg(spec["class_path"], moved)
    pruned = {"teacher": teacher, "keep_layers": [0, 2] if "keep_layers" in init else None}
    if "intermediate_size" in init or "num_heads" in init:
        pruned |= {"intermediate_size": 16, "num_heads": 1, "calibration": corpus, "tokenizer": "bytes"}
    return as_class_arg(spec["class_path"], pruned)


def tiny_overrides(config: Path, data_root: Path) -> list[str]:
    """CLI arguments that shrink an LM config's models and data; everything else stays as written.

    The teacher's network is ``model.init_args.teacher.model`` (:class:`lkd.teacher.Teacher`); its checkpoint,
    dtype and cache stay as the config writes them (override ``--model.init_args.teacher.checkpoint=...``).
    """
    import torch
    import yaml

    text = yaml.safe_load(config.read_text())
    init = text["model"]["init_args"]
    cross = init.get("teacher_tokenizer") is not None
    prompts = text["data"]["class_path"] in ("lkd.data.ArithmeticPromptDataModule", "lkd.data.PromptDataModule")
    if cross and prompts:  # two tokenizers on prompt data (nothing to train a BPE on): SmolLM2's, with its chat template, and bytes
        args = ["--model.init_args.teacher_tokenizer=smollm2", "--model.init_args.tokenizer=bytes"]
    elif cross:  # two tokenizers: the teacher reads bytes, the student a byte-level BPE trained on the tiny corpus
        args = ["--model.init_args.teacher_tokenizer=bytes", f"--model.init_args.tokenizer={CROSS_STUDENT_TOKENIZER}",
                f"--data.init_args.train_tokenizer={CROSS_STUDENT_VOCAB}", "--data.init_args.teacher_block_size=32"]
    else:
        args = ["--model.init_args.tokenizer=bytes"]
    made_from_teacher = init.get("student", {}).get("class_path") in MADE_FROM_TEACHER
    for key in ("model", "teacher", "student"):
        if key not in init:
            continue
        spec = init[key]["model"] if key == "teacher" else init[key]
        moe = (key == "teacher" and spec["class_path"] != "lkd.models.TinyLlamaLM") or (key == "model" and spec["class_path"] in MOE_BUILDERS)
        builder, size = ("TinyMoELM", TINY_TEACHER) if moe else ("TinyLlamaLM", TINY_STUDENT)
        if cross and key == "student" and not prompts:
            size = {**size, "vocab_size": CROSS_STUDENT_VOCAB}
        if cross and key == "teacher" and prompts:
            size = {**size, "vocab_size": SMOLLM2_VOCAB}
        target = "teacher.model" if key == "teacher" else key
        if made_from_teacher and key == "teacher":  # the student is made from this teacher: the same tiny Llama
            args.append(f"--model.init_args.{target}={as_class_arg('lkd.models.TinyLlamaLM', {**TINY_STUDENT, 'seed': 0})}")
            continue
        if spec["class_path"] in MADE_FROM_TEACHER:
            args.append(f"--model.init_args.{target}={made_from_tiny_teacher(spec, data_root)}")
            continue
        args.append(f"--model.init_args.{target}={as_class_arg('lkd.models.' + builder, size)}")
    if text["data"]["class_path"] == "lkd.data.PromptDataModule":  # prompts over a hub data set's columns: a tiny file of them
        return args + ["--data.init_args.hub_id=null", f"--data.init_args.data_files={json.dumps(tiny_prompt_files(data_root))}",
                       "--data.init_args.config=null", "--data.init_args.train_split=train", "--data.init_args.val_split=validation",
                       "--data.init_args.test_split=validation", "--data.init_args.batch_size=2", "--model.init_args.max_new_tokens=4",
                       "--data.init_args.max_prompt_tokens=40", "--data.init_args.truncate_prompts=true",
                       "--data.init_args.max_completion_tokens=8"]
    if prompts:  # prompt data: a small task, written in the run's folder
        return args + ["--data.init_args.n_train=40", "--data.init_args.n_test=8", "--data.init_args.val_size=8",
                       "--data.init_args.batch_size=4", "--data.init_args.digits=[1, 2]"]
    args += [f"--data.init_args.hub_id={data_root}", f"--data.init_args.config={WIKITEXT_CONFIG}",
             "--data.init_args.train_split=validation[:90%]", "--data.init_args.val_split=validation[90%:]",
             "--data.init_args.test_split=test", "--data.init_args.block_size=16", "--data.init_args.batch_size=2"]
    trainer = text.get("trainer", {})
    if trainer.get("precision") == "16-mixed" and not torch.cuda.is_available():
        args.append("--trainer.precision=bf16-mixed")  # fp16 autocast needs a GPU
    if trainer.get("accelerator") == "gpu" and not torch.cuda.is_available():
        # a multi-GPU (FSDP) config: its strategy is checked in tests/test_ddp_tracks.py; here the rest of it runs
        args += ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.precision=32-true"]
    return args


def make_lines(n: int, seed: int) -> list[str]:
    """WikiText-like lines: headings, empty lines and simple sentences a tiny model can learn."""
    rng = random.Random(seed)
    subjects, verbs, objects = ["the cat", "a dog", "the bird", "my friend"], ["sees", "likes", "eats"], ["fish", "bread", "the ball"]
    lines = []
    for i in range(n):
        if i % 10 == 0:
            lines.append(f" = Section {i // 10} = ")
        elif i % 10 == 1:
            lines.append("")
        else:
            lines.append(" ".join([rng.choice(subjects), rng.choice(verbs), rng.choice(objects)]) + " .")
    return lines


@pytest.fixture(scope="session")
def tiny_wikitext(tmp_path_factory) -> Path:
    """Hub-layout WikiText look-alike with validation (300 lines) and test (100 lines) splits only."""
    import datasets

    root = tmp_path_factory.mktemp("data") / "wikitext"
    splits = {"validation": datasets.Dataset.from_dict({"text": make_lines(300, 0)}),
              "test": datasets.Dataset.from_dict({"text": make_lines(100, 1)})}
    return write_hub_dataset(root, WIKITEXT_CONFIG, splits)


@pytest.fixture(scope="module")
def arithmetic_task(tmp_path_factory) -> dict[str, Path]:
    """The on-policy tests' prompt task: 24 training and 8 test sums of 1- and 2-digit numbers (JSON-lines files)."""
    from lkd.data.arithmetic import write_arithmetic_task

    return write_arithmetic_task(tmp_path_factory.mktemp("arith"), n_train=24, n_test=8, digits=(1, 2), seed=0)


def arithmetic_prompts(task: dict[str, Path], **kw):
    """A PromptDataModule over ``task`` (no validation split: 8 rows of train held out), batches of 4; ``kw`` override."""
    from lkd.data.prompts import PromptDataModule

    settings = {"val_split": None, "val_size": 8, "batch_size": 4}
    return PromptDataModule(data_files={"train": str(task["train"]), "test": str(task["test"])}, **{**settings, **kw})
