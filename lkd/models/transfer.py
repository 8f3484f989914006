"""Copy weights between transformer stacks of the same family: every tensor by name, layers through a map.

One weight-transfer function for the project (DistilBERT-style student initialisation, Sanh et al. 2019,
Sec. 3: "we initialize the student from the teacher by taking one layer out of two").
"""

from __future__ import annotations

import re

import torch
from torch import nn

_LAYER = re.compile(r"^(.*?\.?layers?\.)(\d+)(\..*)$")


class WeightTransferError(ValueError):
    """Source and target weights do not fit together."""


def evenly_spaced_layers(num_source: int, num_target: int) -> list[int]:
    """``num_target`` source-layer indices spread evenly from the first to the last layer.

    12 → 6 gives [0, 2, 4, 7, 9, 11] (DistilBERT's choice); 6 → 3 gives [0, 2, 5].
    """
    if not 1 <= num_target <= num_source:
        raise WeightTransferError(f"cannot pick {num_target} layers out of {num_source}; need 1 <= target <= source")
    if num_target == 1:
        return [num_source - 1]
    return [round(i * (num_source - 1) / (num_target - 1)) for i in range(num_target)]


class LayerMapError(ValueError):
    """A student → teacher layer map names a layer that does not exist."""


def default_layer_map(num_teacher: int, num_student: int) -> list[int]:
    """The teacher layer (0-based) for each student layer: evenly spread, first onto first, last onto last
    (:func:`evenly_spaced_layers`; a student deeper than its teacher maps several layers onto one)."""
    if num_student <= num_teacher:
        return evenly_spaced_layers(num_teacher, num_student)
    return [round(i * (num_teacher - 1) / max(num_student - 1, 1)) for i in range(num_student)]


def check_layer_map(layer_map: list[int], num_student: int, num_teacher: int) -> list[int]:
    """The one layer-map convention of lkd: a list with, for each student layer ``j`` (0-based, the output of
    decoder/encoder layer ``j``), the teacher layer it learns from (0-based). Returns it as ints.

    Raises:
        LayerMapError: not one entry per student layer, or a teacher layer out of range.
    """
    layer_map = [int(i) for i in layer_map]
    if len(layer_map) != num_student or any(not 0 <= i < num_teacher for i in layer_map):
        raise LayerMapError(
            f"layer_map {layer_map} must give one teacher layer (0..{num_teacher - 1}) for each of the student's "
            f"{num_student} layers (0-based: entry j is the teacher layer for student layer j). HINT: e.g. "
            f"{default_layer_map(num_teacher, num_student)}"
        )
    return layer_map


def _source_name(target_name: str, layer_map: list[int]) -> str:
    m = _LAYER.match(target_name)
    if m is None:
        return target_name
    j = int(m.group(2))
    if j >= len(layer_map):
        raise WeightTransferError(f"target layer {j} ({target_name}) has no entry in layer_map {layer_map}")
    return f"{m.group(1)}{layer_map[j]}{m.group(3)}"


@torch.no_grad()
def copy_transformer_weights(
    source: nn.Module, target: nn.Module, layer_map: list[int], *, skip: tuple[str, ...] = ()
) -> dict[str, str]:
    """Copy ``source`` into ``target``: target layer ``j`` gets source layer ``layer_map[j]``, every other tensor
    (embeddings, head, pooler, ...) the tensor of the same name. Names are ``state_dict`` keys (buffers too).

    Every target tensor must find a source tensor of the same shape, except names starting with one of
    ``skip`` (e.g. a new head); otherwise nothing is copied and one error lists every problem.

    Returns:
        {target name: source name} of what was copied.
    """
    src, dst = source.state_dict(), target.state_dict()
    num_source_layers = 1 + max((int(m.group(2)) for k in src if (m := _LAYER.match(k))), default=-1)
    bad_layers = [i for i in layer_map if not 0 <= i < num_source_layers]
    if bad_layers:
        raise WeightTransferError(
            f"layer_map {layer_map} names source layers {bad_layers} but the source has {num_source_layers} layers "
            f"(0..{num_source_layers - 1})"
        )
    plan, problems = {}, []
    for name, tensor in dst.items():
        if skip and name.startswith(skip):
            continue
        source_name = _source_name(name, layer_map)
        if source_name not in src:
            problems.append(f"{name}: no {source_name} in the source")
        elif src[source_name].shape != tensor.shape:
            problems.append(f"{name}: target {tuple(tensor.shape)} vs source {source_name} {tuple(src[source_name].shape)}")
        else:
            plan[name] = source_name
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} in all)" if len(problems) > 8 else "")
        raise WeightTransferError(
            f"cannot copy {type(source).__name__} into {type(target).__name__}: {shown}. HINT: the student must be "
            "the teacher's architecture with fewer layers (same hidden size, heads and vocabulary)."
        )
    for name, source_name in plan.items():
        dst[name].copy_(src[source_name])
    return plan
