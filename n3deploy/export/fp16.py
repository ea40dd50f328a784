"""The strongly typed mixed-precision graph TensorRT 10/11 builds FP16 engines from, and its headroom.

TensorRT 11 has no FP16 builder flag: the ONNX file's own types decide precision. So the FP16 graph
stores the convolutions (DnCNN blocks, embedding and temperature CNNs) and their activations in
FP16 and keeps the numerically fragile KNN chain in FP32 behind explicit ``Cast`` nodes: patch
distances, the batch-norm on distances, the temperature division, the softmax and log(1-exp)
selection rounds and the weighted aggregation. Input and output stay FP32.

**Which nodes stay FP32.** The exporter names every node after the torch module that produced it
(``nls.0.aggregation/node_MatMul_12``); the FP32 scopes are the module paths of every
:class:`~n3deploy.model.KNNAggregation` in the model (the whole non-local part of each N3 block,
read from the model, not guessed from op types). Those node names form the ``node_block_list`` of
onnxconverter-common's ``convert_float_to_float16(keep_io_types=True)``, which inserts the Casts.

**Headroom.** :func:`fp16_tensor_ranges` marks every FP16 tensor as a graph output, runs real
images through ONNX Runtime (CPU runs FP16 graphs: FP16 storage, FP32 maths) and reports each
tensor's largest magnitude against FP16's largest finite value, 65504.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from .audit import node_scope

__all__ = [
    "FP16_MAX",
    "TensorRange",
    "HeadroomReport",
    "fp32_node_names",
    "convert_to_mixed_fp16",
    "remove_fp16_round_trips",
    "fp16_tensor_ranges",
]

FP16_MAX = 65504.0


def _in_scopes(scope: str, scopes: Sequence[str]) -> bool:
    return any(scope == s or scope.startswith(s + ".") for s in scopes)


def fp32_node_names(model: onnx.ModelProto, fp32_scopes: Sequence[str]) -> list[str]:
    """Names of the nodes whose module scope lies inside one of ``fp32_scopes``."""
    return [n.name for n in model.graph.node if _in_scopes(node_scope(n), fp32_scopes)]


def _split_shared_initializers(model: onnx.ModelProto, blocked: set[str]) -> None:
    """Give FP32 (blocked) nodes their own copy of any float initializer FP16 nodes also read.

    The converter converts an initializer unless a blocked node reads it; a constant shared by both
    sides (the simplifier deduplicates constants) would leave the FP16 side reading FP32.
    """
    graph = model.graph
    floats = {t.name: t for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    readers: dict[str, set[bool]] = {}
    for node in graph.node:
        for name in node.input:
            if name in floats:
                readers.setdefault(name, set()).add(node.name in blocked)
    for name, kinds in readers.items():
        if kinds != {True, False}:
            continue
        copy = TensorProto()
        copy.CopyFrom(floats[name])
        copy.name = f"{name}__fp32"
        graph.initializer.append(copy)
        for node in graph.node:
            if node.name in blocked:
                for i, inp in enumerate(node.input):
                    if inp == name:
                        node.input[i] = copy.name


def remove_fp16_round_trips(model: onnx.ModelProto) -> int:
    """Rewire ``Cast(to=FLOAT)(Cast(to=FLOAT16)(t))`` with ``t`` FP32 to read ``t`` directly.

    onnxconverter-common casts every blocked node's output to FP16 and the next blocked node's
    input back to FP32, then removes such pairs; but its clean-up skips a cast whose output has
    several consumers (it compares the Cast ``to`` attribute with 16/32 instead of the ONNX type
    codes 10/1 on that path). The pairs left behind would round the FP32 chain through FP16 (and
    turn its masked logits, -1e30, into -inf). Removing a round trip never loses precision. The
    FP16 casts left without consumers are dropped by the simplifier. Returns how many were rewired.
    """
    graph = model.graph
    typed = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(typed.graph.value_info) + list(graph.input)}
    types.update({t.name: t.data_type for t in graph.initializer})
    producer = {o: n for n in graph.node for o in n.output}

    def cast_to(node: onnx.NodeProto) -> Optional[int]:
        if node.op_type != "Cast":
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    replace: dict[str, str] = {}
    for node in graph.node:
        if cast_to(node) != TensorProto.FLOAT:
            continue
        first = producer.get(node.input[0])
        if first is None or cast_to(first) != TensorProto.FLOAT16 or types.get(first.input[0]) != TensorProto.FLOAT:
            continue
        replace[node.output[0]] = first.input[0]
    outputs = {o.name for o in graph.output}
    replace = {k: v for k, v in replace.items() if k not in outputs}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in replace:
                node.input[i] = replace[name]
    return len(replace)


def convert_to_mixed_fp16(model: onnx.ModelProto, fp32_scopes: Sequence[str]) -> onnx.ModelProto:
    """FP16 graph with the nodes of ``fp32_scopes`` kept FP32 and FP32 input/output.

    Uses onnxconverter-common's ``convert_float_to_float16`` (``keep_io_types=True``, node block
    list from the scopes, plus its default op block list), then :func:`remove_fp16_round_trips`
    repairs the FP16 round trips its clean-up leaves inside the FP32 chain. Returns a new model;
    raises ``ValueError`` if no node lies in ``fp32_scopes`` (the block list would be empty).
    """
    from onnxconverter_common.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    blocked = fp32_node_names(model, fp32_scopes)
    if fp32_scopes and not blocked:
        raise ValueError(f"no node of the graph lies in the FP32 scopes {list(fp32_scopes)}: are nodes scope-named?")
    work = onnx.ModelProto()
    work.CopyFrom(model)
    _split_shared_initializers(work, set(blocked))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # per-weight notes about values below FP16's range
        converted = convert_float_to_float16(
            work,
            keep_io_types=True,
            node_block_list=blocked,
            op_block_list=list(DEFAULT_OP_BLOCK_LIST),
            # Round weights to the nearest FP16 (tiny ones flush to zero) instead of the converter's
            # default of raising |w| < 1e-7 to 1e-7 and clamping at 1e4.
            min_positive_val=0.0,
            max_finite_val=FP16_MAX,
        )
    remove_fp16_round_trips(converted)
    return converted


@dataclass(frozen=True)
class TensorRange:
    """Largest magnitude an FP16 tensor reached over the images, and its headroom to 65504."""

    name: str
    producer: str
    max_abs: float
    nonfinite: int

    @property
    def headroom(self) -> float:
        """``65504 / max_abs`` (inf for an all-zero tensor, 0 if it overflowed)."""
        if self.nonfinite:
            return 0.0
        return math.inf if self.max_abs == 0 else FP16_MAX / self.max_abs


@dataclass(frozen=True)
class HeadroomReport:
    """Every FP16 tensor's range over ``images`` inputs, largest first."""

    tensors: list[TensorRange]
    images: int

    @property
    def worst(self) -> Optional[TensorRange]:
        return self.tensors[0] if self.tensors else None

    @property
    def overflowed(self) -> list[TensorRange]:
        return [t for t in self.tensors if t.nonfinite or t.max_abs > FP16_MAX]

    def format(self, top: int = 10) -> str:
        lines = [f"FP16 tensors: {len(self.tensors)}, images: {self.images}"]
        if self.worst is not None:
            w = self.worst
            lines.append(
                f"largest |x| = {w.max_abs:.4g} in {w.name} ({w.producer}): headroom {w.headroom:.1f}x "
                f"({math.log2(w.headroom) if w.headroom not in (0.0, math.inf) else w.headroom:.1f} bits) to 65504"
            )
        for t in self.tensors[:top]:
            lines.append(f"  {t.max_abs:12.4g}  x{t.headroom:10.1f}  nonfinite={t.nonfinite:<4d} {t.producer}")
        return "\n".join(lines)


def fp16_tensor_ranges(
    model: "onnx.ModelProto | str | os.PathLike",
    inputs: Iterable[np.ndarray],
    *,
    chunk: int = 64,
    progress: bool = False,
) -> HeadroomReport:
    """Max ``|x|`` of every FP16 tensor of ``model`` over ``inputs`` (each ``B x C x H x W`` float32).

    Every FP16 node output (types from ONNX shape inference) is marked as a graph output and the
    model run with ONNX Runtime on CPU, ``chunk`` tensors per run to bound memory. Equivalent to
    ``polygraphy run m.onnx --onnxrt --onnx-outputs mark all`` followed by a max over FP16 outputs.
    """
    import onnxruntime as ort
    from tqdm.auto import tqdm

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    typed = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in typed.graph.value_info}
    producer = {o: f"{n.op_type} {n.name}" for n in model.graph.node for o in n.output}
    existing = {o.name for o in model.graph.output}
    fp16 = [o for n in model.graph.node for o in n.output if o and types.get(o) == TensorProto.FLOAT16]
    marked = onnx.ModelProto()
    marked.CopyFrom(model)
    for name in fp16:
        if name not in existing:
            marked.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT16, None))
    from ..backends.onnxruntime_backend import make_session_options

    # Keep every marked tensor as the graph computes it (no fusion that would hide intermediates).
    options = make_session_options(optimization="basic")
    session = ort.InferenceSession(marked.SerializeToString(), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    max_abs = dict.fromkeys(fp16, 0.0)
    nonfinite = dict.fromkeys(fp16, 0)
    count = 0
    for x in tqdm(list(inputs), desc="fp16 ranges", unit="image", disable=not progress):
        count += 1
        for start in range(0, len(fp16), chunk):
            names = fp16[start : start + chunk]
            for name, value in zip(names, session.run(names, {input_name: np.asarray(x, dtype=np.float32)})):
                v = np.abs(value.astype(np.float32))
                finite = np.isfinite(v)
                nonfinite[name] += int(v.size - finite.sum())
                if finite.any():
                    max_abs[name] = max(max_abs[name], float(v[finite].max()))
    ranges = [TensorRange(n, producer.get(n, "?"), max_abs[n], nonfinite[n]) for n in fp16]
    ranges.sort(key=lambda t: (-t.nonfinite, -t.max_abs))
    return HeadroomReport(ranges, count)
