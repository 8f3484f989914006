"""The export folder's README.md: the model card, and what `lkd export` knows to write in it (teacher, data, method)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from lkd.data.identity import data_identity
from lkd.export.result import ExportResult


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
    for role_name, path in result.files.items():  # every file but the card itself (ONNX data, manifest included)
        if path.exists() and role_name != "card":
            check = result.max_abs_diff.get(role_name)
            lines.append(f"| {path.name} | {path.stat().st_size:,} | "
                         f"{'' if check is None else f'max abs logit difference to torch {check:.2e}'} |")
    if result.int8_graph == "fused attention":
        lines += ["", "model.int8.onnx: attention fused by onnxruntime's transformer optimizer and quantized (QAttention); it "
                  "holds onnxruntime's own ops, so it runs in onnxruntime."]
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


def card_info(module, datamodule, role: str, *, configs: list[str], ckpt_path: str, to: str, format: str,
              quantize: str | None, metrics: dict[str, float]) -> dict:
    """What :func:`model_card` writes about a checkpoint exported by ``lkd export``: teacher, data, method,
    checkpoint, test metrics and the commands that reproduce it."""
    config_args = " ".join("--config " + c for c in configs)
    return {"name": Path(to).name, "teacher": teacher_line(module), "data": data_line(datamodule),
            "method": f"`{type(module).__name__}`" + (f", {method_line(module)}" if role == "student" else ""),
            "checkpoint": f"`{ckpt_path}`", "metrics": metrics,
            "commands": [f"lkd fit {config_args}",
                         f"lkd export {config_args} --ckpt_path {ckpt_path} --to {to} --format {format}"
                         + (f" --quantize {quantize}" if quantize else "")]}


def student_spec(model_config: dict, role: str, module) -> dict:
    """``{"class_path", "init_args"}`` of the config's student (``model_config``: the config's ``model`` block as a dict;
    a factory's ``num_classes`` filled in), what :func:`lkd.export.load_student` builds the student from."""
    import inspect

    node = model_config.get("init_args", {}).get(role)
    if not isinstance(node, dict) or "class_path" not in node:
        return {}
    init = dict(node.get("init_args") or {})
    num_classes = getattr(module, "num_classes", None)
    if num_classes is not None:
        module_name, _, name = node["class_path"].rpartition(".")
        import importlib

        params = list(inspect.signature(getattr(importlib.import_module(module_name), name)).parameters)
        if params and params[0] == "num_classes":
            init["num_classes"] = int(num_classes)
    return {"class_path": node["class_path"], "init_args": init}


def teacher_line(module) -> str | None:
    teacher = getattr(module, "teacher", None)
    if teacher is None:
        return None
    net = getattr(teacher, "model", teacher)
    name = getattr(getattr(net, "config", None), "_name_or_path", "") or type(net).__name__
    where = getattr(teacher, "checkpoint", None)
    return f"`{type(net).__name__}` ({name})" + (f" from `{where}`" if where else "")


def data_line(datamodule) -> str | None:
    if datamodule is None:
        return None
    identity = data_identity(datamodule)  # which data: what a published checkpoint records too
    parts = [identity.get(k) for k in ("hub_id", "dataset", "config", "task")]
    if "data_files" in identity:
        parts.append(f"files {identity['data_files']}")
    named = {k.removesuffix("_split"): getattr(datamodule, k, None) for k in ("train_split", "val_split", "validation_split", "test_split")}
    if not any(isinstance(v, str) for v in named.values()):  # TextDataModule keeps {"train", "val", "test"} names in `splits`
        named = getattr(datamodule, "splits", None) or {}
    splits = [f"{k}: {v}" for k, v in named.items() if isinstance(v, str) and v]
    unique = list(dict.fromkeys(str(p) for p in parts if p))
    return f"`{type(datamodule).__name__}` " + " / ".join(unique) + (f" ({', '.join(splits)})" if splits else "")


def method_line(module) -> str:
    keys = ("temperature", "alpha", "loss_weights", "cos_weight", "alm_temperature")
    parts = [f"{k} {getattr(module, k)}" for k in keys if getattr(module, k, None) is not None]
    router = getattr(module, "router", None)
    if router is not None:
        parts.append(f"routing `{type(router).__name__}`")
    return ", ".join(parts)
