"""A student as ONNX (torch's dynamo exporter), checked in onnxruntime (its int8 copy: :mod:`lkd.export.int8`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lkd.export.result import ExportError


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
