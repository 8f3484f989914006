"""Writing a student as a folder others load (transformers, safetensors + lkd_student.json) and loading it back."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch
from torch import nn

from lkd.export.result import STUDENT_SPEC, ExportError


def save_causal_lm(model: nn.Module, tokenizer, folder: Path) -> dict[str, Path]:
    """``save_pretrained`` of a transformers causal LM and its tokenizer (safetensors, no pickles)."""
    from transformers import GenerationConfig

    from lkd.tokenizers import ByteTokenizer, as_tokenizer, byte_tokenizer_fast

    tok = as_tokenizer(tokenizer)
    if isinstance(tok, ByteTokenizer):
        tok = byte_tokenizer_fast()
    config = model.config
    for name in ("eos_token_id", "pad_token_id"):
        value = getattr(tok, name, None)
        if value is not None:
            setattr(config, name, value)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id or tok.eos_token_id,
                                               bos_token_id=getattr(config, "bos_token_id", None), max_new_tokens=64)
    model.save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
    return {"weights": folder / "model.safetensors", "config": folder / "config.json", "tokenizer": folder / "tokenizer.json"}


def hf_sequence_classifier(network: nn.Module, label_names: list[str] | None = None):
    """A :class:`lkd.models.TransformerClassifier` without a DKVB as the equivalent transformers
    ``AutoModelForSequenceClassification``, or None when its encoder has no such head to map onto.

    lkd's head is BERT's: ``classifier(dropout(tanh(pre_classifier(h_CLS))))`` is the pooler (dense + tanh) then
    dropout then ``classifier``, so a BERT-like encoder maps weight for weight; ``num_classes = 1`` is the
    regression head (``problem_type="regression"``)."""
    from transformers import AutoModelForSequenceClassification

    if getattr(network, "dkvb", None) is not None or not hasattr(network, "pre_classifier"):
        return None
    config = network.config.__class__.from_dict(network.config.to_dict())
    n = int(network.num_classes)
    names = label_names if label_names and len(label_names) == n else [f"LABEL_{i}" for i in range(n)]
    config.num_labels = n
    config.id2label, config.label2id = dict(enumerate(names)), {name: i for i, name in enumerate(names)}
    config.problem_type = "regression" if n == 1 else "single_label_classification"
    try:
        hf = AutoModelForSequenceClassification.from_config(config)
    except ValueError:
        return None
    pooler = getattr(hf.base_model, "pooler", None)
    if pooler is None or not hasattr(pooler, "dense") or not hasattr(hf, "classifier"):
        return None
    missing, unexpected = hf.base_model.load_state_dict(network.encoder.state_dict(), strict=False)
    if unexpected or any(not k.startswith("pooler.") for k in missing):
        return None
    pooler.dense.load_state_dict(network.pre_classifier.state_dict())
    hf.classifier.load_state_dict(network.classifier.state_dict())
    return hf.eval()


def save_sequence_classifier(hf, tokenizer_name: str, folder: Path) -> dict[str, Path]:
    from lkd.tokenizers import load_tokenizer

    hf.save_pretrained(str(folder), safe_serialization=True)
    load_tokenizer(tokenizer_name).save_pretrained(str(folder))
    return {"weights": folder / "model.safetensors", "config": folder / "config.json", "tokenizer": folder / "tokenizer.json"}


def save_lkd_student(network: nn.Module, spec: dict, folder: Path) -> dict[str, Path]:
    """``model.safetensors`` + ``lkd_student.json`` (``{"class_path", "init_args"}``)."""
    from safetensors.torch import save_file

    if not spec or "class_path" not in spec:
        raise ExportError(f"{type(network).__name__} is saved as safetensors + {STUDENT_SPEC}, which needs the class_path and "
                          "init_args it was built with (the config's student). HINT: export through `lkd export --config ...`")
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    save_file(_untied(state), str(folder / "model.safetensors"), metadata={"format": "pt"})
    spec = _without_checkpoints({"class_path": spec["class_path"], "init_args": spec.get("init_args", {})})
    (folder / STUDENT_SPEC).write_text(json.dumps(spec, indent=2, default=str))
    return {"weights": folder / "model.safetensors", "config": folder / STUDENT_SPEC}


def _untied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory: copy the later names of a shared tensor."""
    seen, out = set(), {}
    for key, value in state.items():
        ptr = (value.data_ptr(), value.shape)
        out[key] = value.clone() if ptr in seen else value
        seen.add(ptr)
    return out


def _without_checkpoints(spec):
    """The spec with every nested ``checkpoint`` path dropped: a student built inside a folder gets all its weights
    (a TrainedEncoder's too) from ``model.safetensors``, and the training machine's paths mean nothing elsewhere."""
    if isinstance(spec, dict):
        return {k: _without_checkpoints(v) for k, v in spec.items() if k != "checkpoint"}
    if isinstance(spec, list):
        return [_without_checkpoints(v) for v in spec]
    return spec


def _build(spec):
    """Instantiate ``{"class_path", "init_args"}``, nested ones first (e.g. a DKVB's ``encoder``)."""
    if isinstance(spec, list):
        return [_build(v) for v in spec]
    if not isinstance(spec, dict):
        return spec
    if "class_path" not in spec:
        return {k: _build(v) for k, v in spec.items()}
    module_name, _, class_name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**{k: _build(v) for k, v in spec.get("init_args", {}).items()})


def check_safetensors(path: Path) -> None:
    """Refuse a ``.safetensors`` file that is missing, truncated or corrupt (its header and its length disagree),
    naming it, before a library reads it.

    Raises:
        ExportError: naming ``path``, what is wrong and to export (or copy) it again."""
    import struct

    hint = "HINT: export the student again (`lkd export ... --to FOLDER --overwrite`) or copy the folder again"
    if not path.is_file():
        raise ExportError(f"{path} is missing: the folder holds no weights. {hint}")
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > size - 8:
                raise ValueError(f"its header says {length:,} header bytes, the file has {size:,} bytes")
            header = json.loads(f.read(length))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        if size != 8 + length + end:
            raise ValueError(f"its header says {8 + length + end:,} bytes, the file has {size:,}")
    except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error) as err:
        why = str(err) if isinstance(err, ValueError) and "header says" in str(err) else f"{type(err).__name__}: {str(err)[:120]}"
        raise ExportError(f"{path} cannot be read: it is truncated or corrupt ({why}). {hint}") from None


def _transformers_auto_class(config_path: Path, again: str):
    """The transformers Auto class a Hugging Face student folder loads with, from its config's ``architectures``:
    a sequence classifier (a GLUE student) or a causal LM; anything else is no lkd student."""
    import transformers

    try:
        architectures = json.loads(config_path.read_text()).get("architectures") or []
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as err:
        raise ExportError(f"{config_path} cannot be read: it is truncated or corrupt ({type(err).__name__}). {again}") from None
    for suffix, auto in (("ForSequenceClassification", "AutoModelForSequenceClassification"), ("ForCausalLM", "AutoModelForCausalLM")):
        if any(str(a).endswith(suffix) for a in architectures):
            return getattr(transformers, auto)
    raise ExportError(f"{config_path} names architectures {architectures}: lkd students are sequence classifiers "
                      "(…ForSequenceClassification) or causal LMs (…ForCausalLM). HINT: pass the folder `lkd export --to` wrote")


def load_student(folder: str | Path) -> nn.Module:
    """A student folder back as a network in eval mode: a Hugging Face folder (a GLUE student's sequence classifier, or
    a causal LM, by its config's ``architectures``) through transformers, an lkd folder
    (``lkd_student.json``) by importing its class and loading ``model.safetensors`` (no pickles, no remote code).

    Raises:
        ExportError: the folder is no exported student, or a file in it is missing, truncated or corrupt (named)."""
    from safetensors.torch import load_file

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ExportError(f"{folder} is not a folder. HINT: pass the folder `lkd export --to` wrote")
    spec_path = folder / STUDENT_SPEC
    again = "HINT: export the student again (`lkd export ... --to FOLDER --overwrite`) or copy the folder again"
    if not spec_path.is_file():
        if (folder / "config.json").is_file():
            auto = _transformers_auto_class(folder / "config.json", again)
            for weights in sorted(folder.glob("*.safetensors")) or [folder / "model.safetensors"]:
                check_safetensors(weights)
            try:
                return auto.from_pretrained(str(folder)).eval()
            except Exception as err:  # noqa: BLE001 - any transformers failure becomes one message naming the folder
                reason = (str(err).strip().splitlines() or [""])[0][:200]
                raise ExportError(f"{folder} cannot be loaded by transformers ({type(err).__name__}: {reason}). {again}") from None
        raise ExportError(f"{folder} is not an exported student: neither {STUDENT_SPEC} nor config.json is there. HINT: pass "
                          "the folder `lkd export --to` wrote")
    try:
        spec = json.loads(spec_path.read_text())
        if not isinstance(spec, dict) or "class_path" not in spec:
            raise ValueError("no class_path")
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ExportError(f"{spec_path} cannot be read: it is truncated or corrupt ({type(err).__name__}: "
                          f"{str(err)[:120]}). {again}") from None
    try:
        network = _build(spec)
    except (ImportError, AttributeError, TypeError, ValueError) as err:
        raise ExportError(f"{spec_path} names {spec['class_path']}, which cannot be built here ({type(err).__name__}: "
                          f"{str(err)[:200]}). HINT: install the lkd version that exported it, or export the student again") from None
    weights = folder / "model.safetensors"
    check_safetensors(weights)
    try:
        state = load_file(str(weights))
    except Exception as err:  # noqa: BLE001 - safetensors' own errors name no file
        raise ExportError(f"{weights} cannot be read: it is truncated or corrupt ({type(err).__name__}: {str(err)[:120]}). "
                          f"{again}") from None
    missing, unexpected = network.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ExportError(f"{weights} does not fit {spec['class_path']}: missing {missing[:5]}, unexpected {unexpected[:5]}. "
                          f"{again}")
    return network.eval()


