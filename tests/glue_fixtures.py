"""Tiny GLUE-shaped data in the hub layout, and overrides that turn any GLUE config into a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

MINILM = "sentence-transformers/all-MiniLM-L6-v2"  # tokenizer + config only; weights random in tests
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 6, "num_attention_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 128}

_WORDS = {0: ["awful", "boring", "dull", "bad"], 1: ["great", "lovely", "superb", "good"]}


def _sentence(label: int, i: int) -> str:
    w = _WORDS[label]
    return f"the film was {w[i % 4]} and {w[(i + 1) % 4]}"


def write_tiny_glue(root: Path, n_train: int = 64, n_val: int = 16, n_test: int = 12) -> Path:
    """Configs ``sst2`` (single sentence), ``mrpc`` (pairs; test labelled, as in the real MRPC) and ``stsb``
    (float label) with learnable labels; unlabelled test splits carry -1, as GLUE's do."""
    import datasets

    cls = datasets.ClassLabel(names=["negative", "positive"])
    configs = []
    for config in ("sst2", "mrpc", "stsb"):
        (root / config).mkdir(parents=True, exist_ok=True)
        files = []
        for split, n in (("train", n_train), ("validation", n_val), ("test", n_test)):
            labels = [i % 2 for i in range(n)]
            hidden = split == "test" and config != "mrpc"
            if config == "sst2":
                feats = datasets.Features({"sentence": datasets.Value("string"), "label": cls, "idx": datasets.Value("int32")})
                rows = {"sentence": [_sentence(y, i) for i, y in enumerate(labels)]}
            else:
                label_type = cls if config == "mrpc" else datasets.Value("float32")
                feats = datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                                           "label": label_type, "idx": datasets.Value("int32")})
                rows = {"sentence1": [_sentence(y, i) for i, y in enumerate(labels)],
                        "sentence2": [_sentence(y, i + 1) for i, y in enumerate(labels)]}
            if config == "stsb":
                rows["label"] = [-1.0 if hidden else 5.0 * y for y in labels]
            else:
                rows["label"] = [-1 if hidden else y for y in labels]
            rows["idx"] = list(range(n))
            datasets.Dataset.from_dict(rows, features=feats).to_parquet(str(root / config / f"{split}-00000-of-00001.parquet"))
            files.append(f"  - split: {split}\n    path: {config}/{split}-*")
        configs.append(f"- config_name: {config}\n  data_files:\n" + "\n".join(files))
    (root / "README.md").write_text("---\nconfigs:\n" + "\n".join(configs) + "\n---\n")
    return root


def tiny_model_args(config_path: Path) -> list[str]:
    """CLI overrides: every TransformerClassifier of the config becomes a tiny random BERT with MiniLM's tokenizer
    (the teacher's is the ``model`` of its :class:`lkd.teacher.Teacher` block: ``teacher.model.init_args``)."""
    import yaml

    init = yaml.safe_load(config_path.read_text())["model"]["init_args"]
    args = []
    for role in ("model", "student", "teacher"):
        if role in init:
            key = f"--model.init_args.{role}.model.init_args" if role == "teacher" else f"--model.init_args.{role}.init_args"
            args += [f"{key}.encoder={MINILM}", f"{key}.pretrained=false", f"{key}.config_overrides={json.dumps(TINY_BERT)}"]
    return args


def tiny_data_args(root: Path) -> list[str]:
    """The tiny GLUE in place of the real one, its SST-2 task (a config's own task may be one it lacks: CoLA)."""
    return [f"--data.init_args.hub_id={root}", "--data.init_args.task=sst2", "--data.init_args.batch_size=8",
            "--data.init_args.eval_batch_size=8", "--data.init_args.max_length=32"]


@pytest.fixture(scope="session")
def tiny_glue(tmp_path_factory) -> Path:
    """Hub-layout GLUE look-alike with configs sst2, mrpc (pairs) and stsb (float labels)."""
    return write_tiny_glue(tmp_path_factory.mktemp("data") / "glue")
