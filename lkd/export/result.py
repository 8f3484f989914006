"""What an export is asked and what it wrote: its error and its result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Format = Literal["hf", "onnx", "all"]
STUDENT_SPEC = "lkd_student.json"
ONNX_TOLERANCE = 1e-3
"""Largest |onnxruntime fp32 − torch| logit difference accepted when an ONNX file is written."""


class ExportError(ValueError):
    """The student cannot be exported as asked (the message says why and what would work)."""


@dataclass
class ExportResult:
    """What :func:`export_student` wrote: ``files`` by role (every file, ONNX external data and the manifest
    included), the round-trip differences it measured and the files of the folder that are not lkd's (``kept``)."""

    folder: Path
    kind: str
    files: dict[str, Path] = field(default_factory=dict)
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    kept: list[Path] = field(default_factory=list)
    int8_graph: str | None = None  # "fused attention" or "plain" (lkd.export.int8.quantize_int8), None: no int8 file
