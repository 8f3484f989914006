"""A student's int8 ONNX file (``--quantize int8``): onnxruntime's dynamic quantization, after fusing a BERT text
classifier's attention so that onnxruntime runs it as one int8 op.

Measured on the GLUE student (MiniLM-L6 layers 0, 2, 5, SST-2, batch 32 × 64 tokens, 2 threads, AMD EPYC with
AVX-512 VNNI; BENCHMARKS.md "Export"): plain dynamic int8 of the dynamo graph ran at about 2.0× torch eager's
throughput; the fused graph at about 2.4–2.6×. onnxruntime's transformer optimizer finds no attention in the graph of
torch's dynamo exporter (its attention is scaled-dot-product attention), so the fused file comes from a second export
of the same weights with eager attention through the TorchScript exporter, which it recognises: one ``Attention``
per layer and ``EmbedLayerNormalization``, which quantization turns into ``QAttention``. The fused file holds
onnxruntime's own ops (``com.microsoft``): it runs in onnxruntime, not in every ONNX runtime. When the fusion does
not find every layer's attention the plain path is taken.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

INT8_OPS = ("MatMul", "Gemm", "Gather")
"""The ops the plain path quantizes: onnxruntime's dynamic int8 convolution (ConvInteger) ran at 0.35x the fp32
convolution on this CPU (BENCHMARKS.md "Export"), so convolutions stay fp32."""
FUSED_INT8_OPS = (*INT8_OPS, "Attention", "EmbedLayerNormalization")
FUSABLE = ("bert",)  # model types whose attention onnxruntime's transformer optimizer fuses from a TorchScript export


def quantize_int8(fp32: Path, int8: Path, *, text_classifier: nn.Module | None = None,
                  example: dict[str, torch.Tensor] | None = None) -> str:
    """Write ``int8`` from the fp32 ONNX file ``fp32``; returns which graph was quantized: ``"fused attention"``
    (a BERT ``text_classifier`` with its ``example`` inputs ``input_ids`` / ``attention_mask``, see the module
    docstring) or ``"plain"`` (onnxruntime's dynamic int8 of :data:`INT8_OPS` in ``fp32``, weights int8,
    activations quantized at run time)."""
    if text_classifier is not None and example is not None and fused_attention_int8(text_classifier, example, int8):
        return "fused attention"
    _quantize(fp32, int8, INT8_OPS)
    return "plain"


def _quantize(src: Path, dst: Path, ops: tuple[str, ...]) -> None:
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=list(ops),
                     extra_options={"DefaultTensorType": TensorProto.FLOAT})  # types of the fused ops' outputs


def fused_attention_int8(network: nn.Module, example: dict[str, torch.Tensor], int8: Path) -> bool:
    """Export ``network`` (an lkd text classifier over a Hugging Face BERT ``encoder``) with eager attention through
    the TorchScript exporter, fuse it with onnxruntime's transformer optimizer and quantize it to ``int8``; False
    (nothing written) when the encoder is not a BERT or the optimizer did not fuse every layer's attention."""
    from onnxruntime.transformers.optimizer import optimize_model

    from lkd.export.onnx import TextLogits

    encoder = getattr(network, "encoder", None)
    config = getattr(encoder, "config", None)
    if config is None or getattr(config, "model_type", None) not in FUSABLE or list(example) != ["input_ids", "attention_mask"]:
        return False
    attention = config._attn_implementation
    with tempfile.TemporaryDirectory(prefix="lkd-int8-") as tmp:
        scripted, fused = Path(tmp) / "scripted.onnx", Path(tmp) / "fused.onnx"
        try:
            encoder.set_attn_implementation("eager")
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}}
                torch.onnx.export(TextLogits(network).eval(), (example["input_ids"], example["attention_mask"]), str(scripted),
                                  input_names=["input_ids", "attention_mask"], output_names=["logits"], dynamic_axes=axes,
                                  opset_version=17, dynamo=False)
        except Exception:  # noqa: BLE001 - the TorchScript exporter is optional here: the plain path remains
            return False
        finally:
            encoder.set_attn_implementation(attention)
        optimized = optimize_model(str(scripted), model_type="bert", num_heads=int(config.num_attention_heads),
                                   hidden_size=int(config.hidden_size), opt_level=1)
        if optimized.get_fused_operator_statistics().get("Attention", 0) != int(config.num_hidden_layers):
            return False
        optimized.save_model_to_file(str(fused))
        _quantize(fused, int8, FUSED_INT8_OPS)
    return True
