"""Students out of lkd, as folders that other tools run (issue 17): Hugging Face folders, ONNX, int8, a card.

    lkd export --config configs/lm/student_kd.yaml --ckpt_path checkpoints/lm/student_kd.ckpt --to exported/lm_kd
    lkd export --config configs/mnist/student_kd.yaml --ckpt_path checkpoints/mnist/student_kd.ckpt --to out \\
        --format all --quantize int8

What a folder holds, by student:

* **causal LMs** (the LM track's students): ``save_pretrained`` of the transformers model (``model.safetensors``,
  ``config.json``, ``generation_config.json``) and its tokenizer, so ``AutoModelForCausalLM.from_pretrained(DIR)``
  and ``pipeline("text-generation", model=DIR)`` load it offline. lkd's byte tokenizer is written as an
  equivalent byte-level ``tokenizer.json`` (:func:`lkd.tokenizers.byte_tokenizer_fast`).
* **text classifiers** without a DKVB on a BERT-like encoder (the GLUE students): an
  ``AutoModelForSequenceClassification`` folder with ``id2label`` / ``label2id`` (or the regression head), weight
  for weight (:func:`hf_sequence_classifier`), so ``pipeline("text-classification", model=DIR)`` runs it.
* **every other student** (the MNIST MLP / ConvNet / DKVB students, text classifiers with a DKVB):
  ``model.safetensors`` and ``lkd_student.json`` (its ``class_path`` and ``init_args``), which
  :func:`load_student` builds back without the Lightning checkpoint and without pickles.
* ``model.onnx`` (``--format onnx``; dynamic batch and sequence axes, torch's dynamo exporter) and
  ``model.int8.onnx`` (``--quantize int8``: onnxruntime's dynamic quantization of the weights), each checked in
  onnxruntime against the student's own outputs when written (the largest difference goes into the card).
* ``README.md``: the model card (what was distilled from what, data, method, losses, metrics, sizes, commands).

Only the student leaves: for a distillation module its ``student``, for a module that trains one model alone
(``ClassifierModule``, ``GLUEClassifierModule``, ``CausalLMModule``) that model, said so in the card.
"""

from __future__ import annotations

import importlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

Format = Literal["hf", "onnx", "all"]
STUDENT_SPEC = "lkd_student.json"
ONNX_TOLERANCE = 1e-3
"""Largest |onnxruntime fp32 − torch| logit difference accepted when an ONNX file is written."""


class ExportError(ValueError):
    """The student cannot be exported as asked (the message says why and what would work)."""


@dataclass
class ExportResult:
    """What :func:`export_student` wrote: ``files`` by role and the round-trip differences it measured."""

    folder: Path
    kind: str
    files: dict[str, Path] = field(default_factory=dict)
    max_abs_diff: dict[str, float] = field(default_factory=dict)


# ---- which network leaves --------------------------------------------------------------------------------
def student_network(module: nn.Module) -> tuple[nn.Module, str, str]:
    """``(network, kind, role)``: the network to export, ``"causal_lm"`` or ``"lkd"``, and ``"student"`` (of a
    distillation module) or ``"model"`` (a module that trains one network alone)."""
    student = getattr(module, "student", None)
    role = "student"
    if student is None:
        student, role = getattr(module, "model", None), "model"
    if not isinstance(student, nn.Module):
        raise ExportError(
            f"{type(module).__name__} holds no student to export (no `student` or `model` network). HINT: export a "
            "distillation config (DistillModule, GLUEDistillModule, LMDistillModule) or one that trains a single model"
        )
    from lkd.models.causal_lm import CausalLM

    network = student.model if isinstance(student, CausalLM) else student
    kind = "causal_lm" if hasattr(getattr(network, "config", None), "vocab_size") and hasattr(network, "generate") else "lkd"
    return network, kind, role


# ---- folders ---------------------------------------------------------------------------------------------
def check_request(to: str | Path, formats: str, quantize: str | None, overwrite: bool) -> None:
    """Refuse an export that cannot be done as asked, before anything is loaded or written."""
    if formats not in ("hf", "onnx", "all"):
        raise ExportError(f"--format must be hf, onnx or all, got {formats!r}")
    if quantize not in (None, "int8"):
        raise ExportError(f"--quantize must be int8 (or left out), got {quantize!r}")
    if quantize and formats == "hf":
        raise ExportError("--quantize int8 quantizes the ONNX file, but --format hf writes none. HINT: --format all "
                          "(or onnx) --quantize int8")
    folder = Path(to)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise ExportError(f"export folder {folder} exists and is not empty; nothing was written. HINT: pass --overwrite "
                          "to replace it, or choose another --to")


def prepare_folder(folder: Path, overwrite: bool) -> Path:
    folder = Path(folder)
    check_request(folder, "hf", None, overwrite)
    if folder.exists() and any(folder.iterdir()):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_causal_lm(model: nn.Module, tokenizer, folder: Path) -> dict[str, Path]:
    """``save_pretrained`` of a transformers causal LM and its tokenizer (safetensors, no pickles)."""
    from transformers import GenerationConfig

    from lkd.hub import ByteTokenizer, as_tokenizer
    from lkd.tokenizers import byte_tokenizer_fast

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
    from lkd.hub import load_tokenizer

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


def load_student(folder: str | Path) -> nn.Module:
    """A student folder back as a network in eval mode: a causal LM folder through transformers, an lkd folder
    (``lkd_student.json``) by importing its class and loading ``model.safetensors`` (no pickles, no remote code)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    spec_path = folder / STUDENT_SPEC
    if not spec_path.is_file():
        if (folder / "config.json").is_file():
            from transformers import AutoModelForCausalLM

            return AutoModelForCausalLM.from_pretrained(str(folder)).eval()
        raise ExportError(f"{folder} is not an exported student: neither {STUDENT_SPEC} nor config.json is there")
    spec = json.loads(spec_path.read_text())
    network = _build(spec)
    missing, unexpected = network.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
    if missing or unexpected:
        raise ExportError(f"{folder}/model.safetensors does not fit {spec['class_path']}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return network.eval()


# ---- ONNX ------------------------------------------------------------------------------------------------
class LogitsOnly(nn.Module):
    """The network's logits from one plain tensor (what ONNX and onnxruntime see): ``x`` for a classifier,
    ``input_ids`` for a causal LM."""

    def __init__(self, network: nn.Module, kind: str):
        super().__init__()
        self.network, self.kind = network, kind

    def forward(self, x):
        if self.kind == "causal_lm":
            return self.network(input_ids=x, use_cache=False).logits
        out = self.network(x)
        return getattr(out, "logits", out)


class TextLogits(nn.Module):
    """A text classifier's logits from ``input_ids`` and ``attention_mask``."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, input_ids, attention_mask):
        return self.network(input_ids, attention_mask).logits


def logits_wrapper(network: nn.Module, kind: str, inputs: dict) -> nn.Module:
    return (TextLogits(network) if list(inputs) == ["input_ids", "attention_mask"] else LogitsOnly(network, kind)).eval()


def example_inputs(network: nn.Module, kind: str, example: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Named example inputs for the exporter (from ``example``, or made from the network's sizes)."""
    if example:
        return example
    if kind == "causal_lm":
        return {"input_ids": torch.randint(0, int(network.config.vocab_size), (2, 16))}
    if hasattr(network, "encoder_name"):  # a text classifier
        ids = torch.randint(0, int(network.config.vocab_size), (2, 16))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    encoder = getattr(network, "encoder", None)  # a DKVB reads what its frozen encoder reads
    if isinstance(encoder, nn.Module):
        inner = getattr(encoder, "model", encoder)  # TrainedEncoder wraps the classifier it came from
        if getattr(encoder, "deskew", False):  # a deskewing PCAEncoder reads square one-channel images
            side = int(round(int(encoder.in_features) ** 0.5))
            return {"x": torch.rand(2, 1, side, side)}
        return example_inputs(inner, kind, None)
    if hasattr(network, "in_features"):
        return {"x": torch.rand(2, int(network.in_features))}
    if hasattr(network, "image_size"):
        return {"x": torch.rand(2, int(getattr(network, "in_channels", 1)), int(network.image_size), int(network.image_size))}
    raise ExportError(f"no example input for {type(network).__name__}: pass one (an exported batch) to export it to ONNX")


def export_onnx(network: nn.Module, kind: str, inputs: dict[str, torch.Tensor], path: Path) -> float:
    """Write ``path`` (dynamic batch and sequence axes) and return max |onnxruntime − torch| on the inputs."""
    import warnings

    import onnxruntime as ort

    wrapper = logits_wrapper(network, kind, inputs)
    args = tuple(inputs.values())
    dims = tuple({0: torch.export.Dim("batch", min=1), **({1: torch.export.Dim("sequence", min=2)} if x.dtype == torch.long else {})}
                 for x in args)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, args, str(path), input_names=list(inputs), output_names=["logits"],
                              dynamic_shapes=dims, dynamo=True, verbose=False)
    except Exception as err:  # noqa: BLE001 - any exporter failure becomes one clear message
        reason = str(err).strip().splitlines()[0][:300]
        raise ExportError(f"{type(network).__name__} could not be exported to ONNX ({type(err).__name__}: {reason}). It "
                          "exports as --format hf (safetensors folder) only") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return onnx_max_diff(session, wrapper, inputs)


def onnx_max_diff(session, wrapper: nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    with torch.no_grad():
        ref = wrapper(*inputs.values()).float().numpy()
    out = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    return float(abs(out - ref).max())


INT8_OPS = ("MatMul", "Gemm", "Gather")
"""The ops --quantize int8 quantizes: onnxruntime's dynamic int8 convolution (ConvInteger) ran at 0.35x the fp32
convolution on this CPU (BENCHMARKS.md "Export"), so convolutions stay fp32."""


def quantize_int8(fp32: Path, int8: Path) -> None:
    """onnxruntime's dynamic int8 quantization of the matrix products' and embeddings' weights (activations at run
    time); :data:`INT8_OPS` only."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, op_types_to_quantize=list(INT8_OPS))


# ---- the whole export ------------------------------------------------------------------------------------
def export_student(module: nn.Module, to: str | Path, *, formats: Format = "hf", quantize: Literal["int8"] | None = None,
                   overwrite: bool = False, spec: dict | None = None, tokenizer=None, example: dict | None = None,
                   card: dict | None = None, label_names: list[str] | None = None) -> ExportResult:
    """Export ``module``'s student into the folder ``to`` (see the module docstring).

    Args:
        formats: ``"hf"`` (the folder), ``"onnx"`` (the folder and ``model.onnx``) or ``"all"`` (the same).
        quantize: ``"int8"`` adds ``model.int8.onnx`` (needs ONNX: ``formats`` "onnx" or "all").
        spec: ``{"class_path", "init_args"}`` of a non-transformers student (the config's).
        tokenizer: the LM student's tokenizer (a name or object; default the module's ``tokenizer``).
        example: named example inputs for ONNX (default: made from the network's sizes).
        card: what :func:`model_card` writes (source, data, method, metrics, commands).
        label_names: class names of a text classifier (its ``id2label``; default ``LABEL_i``).
    """
    check_request(to, formats, quantize, overwrite)
    network, kind, role = student_network(module)
    network.eval()
    folder = prepare_folder(Path(to), overwrite)
    result = ExportResult(folder, kind)
    if kind == "causal_lm":
        result.files |= save_causal_lm(network, tokenizer if tokenizer is not None else getattr(module, "tokenizer", "bytes"), folder)
    elif (hf := hf_sequence_classifier(network, label_names)) is not None:
        result.kind = kind = "sequence_classifier"
        result.files |= save_sequence_classifier(hf, network.encoder_name, folder)
    else:
        result.files |= save_lkd_student(network, spec or {}, folder)
    if formats in ("onnx", "all"):
        inputs = example_inputs(network, kind, example)
        result.files["onnx"] = folder / "model.onnx"
        result.max_abs_diff["onnx"] = export_onnx(network, kind, inputs, result.files["onnx"])
        if result.max_abs_diff["onnx"] > ONNX_TOLERANCE:
            raise ExportError(f"onnxruntime's logits differ from torch's by {result.max_abs_diff['onnx']:.2e} (> {ONNX_TOLERANCE}); "
                              f"the ONNX file in {folder} is not faithful")
        if quantize == "int8":
            import onnxruntime as ort

            result.files["onnx_int8"] = folder / "model.int8.onnx"
            quantize_int8(result.files["onnx"], result.files["onnx_int8"])
            session = ort.InferenceSession(str(result.files["onnx_int8"]), providers=["CPUExecutionProvider"])
            result.max_abs_diff["onnx_int8"] = onnx_max_diff(session, logits_wrapper(network, kind, inputs), inputs)
    result.files["card"] = folder / "README.md"
    result.files["card"].write_text(model_card(network, kind, role, result, card or {}))
    return result


def model_card(network: nn.Module, kind: str, role: str, result: ExportResult, info: dict) -> str:
    """The folder's README.md: what it is, where it came from, how it was made and measured, how to load it."""
    params = sum(p.numel() for p in network.parameters())
    lines = [f"# {info.get('name', result.folder.name)}", "",
             f"A {'student distilled' if role == 'student' else 'model trained'} with lkd (Lightning Knowledge Distillation): "
             f"`{type(network).__name__}`, {params:,} parameters."]
    if role == "model":
        lines.append("This config trains one model without a teacher; the folder holds that model.")
    rows = [("teacher", info.get("teacher")), ("data", info.get("data")), ("method", info.get("method")),
            ("losses", info.get("losses")), ("checkpoint", info.get("checkpoint"))]
    lines += ["", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows if v]]
    if metrics := info.get("metrics"):
        lines += ["", "## Metrics of this checkpoint", "", "| metric | value |", "|---|---|",
                  *[f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())]]
    lines += ["", "## Files", "", "| file | bytes | check |", "|---|---|---|"]
    for role_name, path in result.files.items():
        if path.exists() and role_name != "card":
            check = result.max_abs_diff.get(role_name)
            lines.append(f"| {path.name} | {path.stat().st_size:,} | "
                         f"{'' if check is None else f'max abs logit difference to torch {check:.2e}'} |")
    lines += ["", "## Loading", ""]
    if kind == "sequence_classifier":
        lines += ["```python", "from transformers import AutoModelForSequenceClassification, pipeline",
                  f'model = AutoModelForSequenceClassification.from_pretrained("{result.folder.name}")',
                  f'classify = pipeline("text-classification", model="{result.folder.name}")', "```"]
    elif kind == "causal_lm":
        lines += ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline",
                  f'model = AutoModelForCausalLM.from_pretrained("{result.folder.name}")',
                  f'generate = pipeline("text-generation", model="{result.folder.name}")', "```"]
    else:
        lines += ["```python", "import lkd", f'student = lkd.load_student("{result.folder.name}")  # safetensors, no pickles', "```"]
    if "onnx" in result.files:
        lines += ["", "```python", "import onnxruntime as ort", f'session = ort.InferenceSession("{result.folder.name}/model.onnx")', "```"]
    if commands := info.get("commands"):
        lines += ["", "## Reproduce", "", "```bash", *commands, "```"]
    return "\n".join(lines) + "\n"
