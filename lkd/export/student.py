"""Which network leaves a module, whether a checkpoint fits it, and the whole export (:func:`export_student`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn

from lkd.export.card import model_card
from lkd.export.folder import check_request, commit, files_under, staging, write_manifest
from lkd.export.int8 import quantize_int8
from lkd.export.onnx import example_inputs, export_onnx, logits_wrapper, onnx_max_diff
from lkd.export.result import ONNX_TOLERANCE, ExportError, ExportResult, Format
from lkd.export.saving import hf_sequence_classifier, save_causal_lm, save_lkd_student, save_sequence_classifier


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


def check_student_state(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], role: str, ckpt_path: str | Path,
                        architecture: str = "") -> None:
    """Refuse a checkpoint whose ``role`` (``student`` / ``model``) weights are not the config's: every missing,
    unexpected and differently shaped tensor listed (checkpoint vs config shape), as
    :func:`lkd.checkpoint.load_network_weights` does.

    Args:
        own: the config-built module's ``state_dict()``; state: the checkpoint's.

    Raises:
        ExportError: ending in a HINT to export with the config that trained the checkpoint."""
    prefix = f"{role}."
    own = {k: v for k, v in own.items() if k.startswith(prefix)}
    given = {k: v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = sorted(set(own) - set(given)), sorted(set(given) - set(own))
    shapes = {k: (tuple(given[k].shape), tuple(own[k].shape)) for k in sorted(set(own) & set(given))
              if given[k].shape != own[k].shape}
    if not (missing or unexpected or shapes):
        return
    lines = [f"--ckpt_path {ckpt_path} does not fit this config's {role}{f' ({architecture})' if architecture else ''}:"]
    if missing:
        lines.append(f"  missing in the checkpoint: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        lines.append(f"  not in the config's {role}: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    lines += [f"  {k}: checkpoint {theirs} vs config {mine}" for k, (theirs, mine) in list(shapes.items())[:8]]
    if len(shapes) > 8:
        lines.append(f"  ... and {len(shapes) - 8} more tensors of other shapes")
    lines.append(f"HINT: export --ckpt_path {ckpt_path} with the config that trained it (its run folder's "
                 f"runs/<name>/version_N/config.yaml), or set the config's {role} to the checkpoint's architecture")
    raise ExportError("\n".join(lines))


# ---- the whole export ------------------------------------------------------------------------------------
def export_student(module: nn.Module, to: str | Path, *, formats: Format = "hf", quantize: Literal["int8"] | None = None,
                   overwrite: bool = False, spec: dict | None = None, tokenizer=None, example: dict | None = None,
                   card: dict | None = None, label_names: list[str] | None = None,
                   ckpt_path: str | Path | None = None) -> ExportResult:
    """Export ``module``'s student into the folder ``to`` (see the module docstring).

    The export is written into a temporary folder beside ``to`` and moved in only when every file is written and
    checked, so a failed export changes nothing. ``to`` must be new or empty, or (with ``overwrite``) an earlier
    lkd export: then only the files its :data:`MANIFEST` lists are replaced and every other file stays
    (``ExportResult.kept``); see :func:`check_request` for what is refused.

    Args:
        formats: ``"hf"`` (the folder), ``"onnx"`` (the folder and ``model.onnx``) or ``"all"`` (the same).
        quantize: ``"int8"`` adds ``model.int8.onnx`` (needs ONNX: ``formats`` "onnx" or "all").
        overwrite: replace an earlier lkd export in ``to`` (its files only).
        spec: ``{"class_path", "init_args"}`` of a non-transformers student (the config's).
        tokenizer: the LM student's tokenizer (a name or object; default the module's ``tokenizer``).
        example: named example inputs for ONNX (default: made from the network's sizes).
        card: what :func:`model_card` writes (source, data, method, metrics, commands).
        label_names: class names of a text classifier (its ``id2label``; default ``LABEL_i``).
        ckpt_path: the checkpoint the weights came from: refused as (inside) ``to``, written into the manifest.
    """
    previous = check_request(to, formats, quantize, overwrite, ckpt_path)
    network, kind, role = student_network(module)
    network.eval()
    folder = Path(to).expanduser()
    with staging(folder) as stage:
        result = ExportResult(folder, kind)
        if kind == "causal_lm":
            result.files |= save_causal_lm(network, tokenizer if tokenizer is not None else getattr(module, "tokenizer", "bytes"), stage)
        elif (hf := hf_sequence_classifier(network, label_names)) is not None:
            result.kind = kind = "sequence_classifier"
            result.files |= save_sequence_classifier(hf, network.encoder_name, stage)
        else:
            result.files |= save_lkd_student(network, spec or {}, stage)
        if formats in ("onnx", "all"):
            inputs = example_inputs(network, kind, example)
            result.files["onnx"] = stage / "model.onnx"
            result.max_abs_diff["onnx"] = export_onnx(network, kind, inputs, result.files["onnx"])
            if result.max_abs_diff["onnx"] > ONNX_TOLERANCE:
                raise ExportError(f"onnxruntime's logits differ from torch's by {result.max_abs_diff['onnx']:.2e} (> {ONNX_TOLERANCE}): "
                                  f"the ONNX file would not be faithful; nothing was written to {folder}. HINT: --format hf")
            if quantize == "int8":
                import onnxruntime as ort

                result.files["onnx_int8"] = stage / "model.int8.onnx"
                result.int8_graph = quantize_int8(result.files["onnx"], result.files["onnx_int8"], example=inputs,
                                                  text_classifier=network if kind == "sequence_classifier" else None)
                session = ort.InferenceSession(str(result.files["onnx_int8"]), providers=["CPUExecutionProvider"])
                result.max_abs_diff["onnx_int8"] = onnx_max_diff(session, logits_wrapper(network, kind, inputs), inputs)
        result.files = {role_name: path for role_name, path in result.files.items() if path.is_file()}
        listed = set(result.files.values())
        for name in files_under(stage):  # what libraries wrote besides: ONNX external data, tokenizer files
            if (path := stage / name) not in listed:
                data_of = next((r for r, p in result.files.items() if r.startswith("onnx") and name == f"{p.name}.data"), None)
                result.files[f"{data_of}_data" if data_of else name] = path
        result.files["manifest"] = write_manifest(stage, [*(p.relative_to(stage).as_posix() for p in result.files.values()), "README.md"],
                                                  kind, ckpt_path)
        result.files["card"] = stage / "README.md"
        result.files["card"].write_text(model_card(network, kind, role, result, card or {}))
        _, kept = commit(stage, folder, previous)
    result.files = {role_name: folder / path.relative_to(stage) for role_name, path in result.files.items()}
    result.kept = [folder / name for name in kept]
    return result


