"""Audit an ONNX graph for TensorRT: op allow-list, input-derived shapes, the 2^31-element bound.

TensorRT's ONNX parser (onnx-tensorrt, TensorRT 10) builds an engine only from operators it
implements, with shapes it can derive from the input shapes. :func:`audit_model` checks:

* **Operators**: every node's op is in :data:`ALLOWED_OPS` (the ops TensorRT 10's parser supports
  that keep shapes static and input-derived). Ops known to be unsupported or to make shapes
  data-dependent are named with the reason (:data:`FORBIDDEN_OPS`): ``Col2Im`` (``F.fold``),
  ``NonZero`` (boolean-mask indexing), ``Loop``/``If``/``Scan``, ``ScatterND`` (in-place
  slice assignment), ``Unique``, ... Custom domains are rejected.
* **Constant attributes-as-inputs**: axes of ``Reduce*``/``Squeeze``/``Unsqueeze``/``Slice`` must
  be constants (initializers), and convolution weights initializers.
* **Input-derived shapes**: no operand that sets a shape (see
  :data:`~n3deploy.export.shape_eval.SHAPE_OPERANDS`) is computed from pixel values.
* **2^31 elements**: with the input at its declared maximum size every tensor's exact static
  shape is evaluated (:func:`~n3deploy.export.shape_eval.static_shapes_at`) and none may reach
  2^31 elements (TensorRT's per-tensor volume limit).

The report also carries the op histogram, inputs/outputs, metadata and the precision of each part
of the network (from node name scopes written by the exporter), which ``n3deploy inspect`` prints.
Plain ``onnx`` + ``onnxruntime``: runs without PyTorch.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Optional

import onnx
from onnx import TensorProto

from ..errors import ModelFileError
from .metadata import ExportMetadata, InputSpec, read_metadata
from .shape_eval import ShapeEvaluationError, classify_tensors, shape_operand_violations, static_shapes_at

__all__ = [
    "ALLOWED_OPS",
    "FORBIDDEN_OPS",
    "MAX_ELEMENTS",
    "AuditReport",
    "GraphAuditError",
    "TensorInfo",
    "TensorSize",
    "PartPrecision",
    "audit_model",
    "load_onnx",
    "tensor_elem_types",
]

# TensorRT's per-tensor limit: volumes must stay below 2^31 elements.
MAX_ELEMENTS = 2**31

# Operators TensorRT 10's ONNX parser supports with static, input-derived shapes (onnx-tensorrt
# docs/operators.md) and that an N3Net export may legitimately contain.
ALLOWED_OPS: frozenset[str] = frozenset(
    {
        # convolution and dense algebra
        "Conv", "MatMul", "Gemm", "Einsum", "BatchNormalization",
        # elementwise arithmetic and activations
        "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Sqrt", "Reciprocal", "Pow", "Exp", "Log", "Tanh",
        "Sigmoid", "Relu", "Max", "Min", "Clip", "Floor", "Ceil", "Mod", "Sum", "Erf",
        # comparisons and logic
        "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Not", "Xor", "Where",
        # reductions and softmax
        "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "Softmax", "LogSoftmax",
        # data movement
        "Reshape", "Transpose", "Concat", "Split", "Slice", "Squeeze", "Unsqueeze", "Flatten", "Expand",
        "Tile", "Pad", "Gather", "GatherElements", "GatherND", "DepthToSpace", "SpaceToDepth",
        "AveragePool", "MaxPool",
        # shapes, constants, types
        "Shape", "Size", "Range", "ConstantOfShape", "Constant", "Identity", "Cast",
    }
)

# Ops with a known reason to reject them (anything else outside the allow-list is "not audited").
FORBIDDEN_OPS: dict[str, str] = {
    "Col2Im": "TensorRT's ONNX parser has no Col2Im (what F.fold exports to); fold patches with reshapes/DepthToSpace",
    "NonZero": "data-dependent output shape (boolean-mask indexing x[mask] exports to NonZero + GatherND)",
    "Unique": "not supported by TensorRT's ONNX parser, and data-dependent output shape",
    "Loop": "data-dependent control flow; TensorRT cannot give Loop a dynamic scan-output length",
    "If": "data-dependent control flow (Python branches on tensor values)",
    "Scan": "control flow; unroll it",
    "ScatterND": "in-place slice assignment exports to ScatterND; TensorRT only supports it without reduction",
    "ScatterElements": "scatter (in-place indexing); write it as gathers/where",
    "TopK": "TensorRT needs sorted=1 and K < 3840 as an initializer; the static KNN needs no TopK",
    "Compress": "data-dependent output shape",
    "SequenceConstruct": "sequence types are not supported by TensorRT",
    "SplitToSequence": "sequence types are not supported by TensorRT",
    "ConcatFromSequence": "sequence types are not supported by TensorRT",
    "CastLike": "not in onnx-tensorrt's operator table; the exporter lowers it to Cast",
}

# Inputs (by position) TensorRT needs as constants (initializers).
_CONSTANT_INPUTS: dict[str, tuple[int, ...]] = {
    "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,), "ReduceMin": (1,),
    "Squeeze": (1,), "Unsqueeze": (1,), "Slice": (3,), "Conv": (1,),
}

# Ops counted when summarising the precision of a part (the ones that compute on float data).
_BOOKKEEPING_OPS = {"Cast", "CastLike", "Shape", "Size", "Constant", "Identity", "Range", "ConstantOfShape"}


class GraphAuditError(ModelFileError):
    """An ONNX graph that TensorRT could not build (ops, shapes or tensor sizes); the message lists why."""


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: ``dims`` holds ints (fixed) or names (symbolic)."""

    name: str
    dtype: str
    dims: tuple

    def describe(self) -> str:
        return f"{self.name}: {self.dtype.lower()}[{'x'.join(str(d) for d in self.dims)}]"


@dataclass(frozen=True)
class TensorSize:
    """One tensor's exact shape at the audited input size."""

    name: str
    producer: str
    shape: tuple[int, ...]
    numel: int


@dataclass(frozen=True)
class PartPrecision:
    """How many compute nodes of one part (module scope) run in each float type."""

    part: str
    counts: dict[str, int]  # "FLOAT16"/"FLOAT" -> number of nodes

    @property
    def label(self) -> str:
        kinds = [k for k in ("FLOAT16", "FLOAT") if self.counts.get(k)]
        if kinds == ["FLOAT16"]:
            return "fp16"
        if kinds == ["FLOAT"]:
            return "fp32"
        return "mixed" if kinds else "-"


@dataclass
class AuditReport:
    """Everything :func:`audit_model` found; ``problems`` empty means TensorRT-ready."""

    source: str
    op_histogram: dict[str, int]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    metadata: Optional[ExportMetadata]
    opset: int
    audited_shape: Optional[tuple[int, ...]]
    largest: list[TensorSize] = field(default_factory=list)
    precision: list[PartPrecision] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    file_bytes: Optional[int] = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def max_elements(self) -> int:
        return max((t.numel for t in self.largest), default=0)

    def raise_for_problems(self) -> None:
        if self.problems:
            lines = "\n  - ".join(self.problems)
            raise GraphAuditError(f"{self.source}: the graph is not TensorRT-ready:\n  - {lines}")

    def format(self, top: int = 5) -> str:
        """Human-readable report (what ``n3deploy inspect`` prints)."""
        out = [f"ONNX graph: {self.source}"]
        if self.file_bytes is not None:
            out.append(f"  file size: {self.file_bytes / 1e6:.2f} MB (self-contained)")
        out.append(f"  opset: {self.opset}, nodes: {sum(self.op_histogram.values())}")
        out += ["inputs:"] + [f"  {t.describe()}" for t in self.inputs]
        out += ["outputs:"] + [f"  {t.describe()}" for t in self.outputs]
        if self.metadata is not None:
            m = self.metadata
            out.append("metadata:")
            out.append(f"  n3deploy {m.n3deploy_version}, precision {m.precision}, sigma {m.sigma}")
            out.append(f"  input: {m.input_spec.describe()}")
            cfg = m.config
            out.append(
                "  config: " + ", ".join(f"{k}={cfg[k]}" for k in sorted(cfg))
            )
            if m.source:
                out.append(f"  source: {m.source}")
        else:
            out.append("metadata: none (not an n3deploy export)")
        out.append("op histogram:")
        for op, n in sorted(self.op_histogram.items(), key=lambda kv: (-kv[1], kv[0])):
            flag = "" if op in ALLOWED_OPS else "   <-- not allowed"
            out.append(f"  {op:<18} {n:5d}{flag}")
        if self.precision:
            out.append("precision by part (compute nodes: fp16 / fp32):")
            for p in self.precision:
                out.append(f"  {p.part:<28} {p.label:<6} {p.counts.get('FLOAT16', 0):4d} / {p.counts.get('FLOAT', 0):4d}")
        if self.audited_shape is not None:
            shape = "x".join(map(str, self.audited_shape))
            out.append(f"largest tensors at {shape} (limit 2^31 = {MAX_ELEMENTS:,} elements):")
            for t in self.largest[:top]:
                out.append(f"  {t.numel:>14,}  {'x'.join(map(str, t.shape)):<24} {t.producer}")
        out.append("audit: " + ("PASS (TensorRT-ready)" if self.ok else f"FAIL ({len(self.problems)} problems)"))
        out += [f"  - {p}" for p in self.problems]
        return "\n".join(out)


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX file with a clear error for missing or unreadable files."""
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: no such ONNX file")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # DecodeError etc. for files that are not ONNX
        raise ModelFileError(f"{path}: not a readable ONNX file ({exc})") from None


def _tensor_info(vi: onnx.ValueInfoProto) -> TensorInfo:
    tt = vi.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim)
    return TensorInfo(vi.name, TensorProto.DataType.Name(tt.elem_type), dims)


def node_scope(node: onnx.NodeProto) -> str:
    """The module scope the exporter put in front of a node name (``nls.0.aggregation/...``)."""
    return node.name.split("/", 1)[0] if "/" in node.name else "(unnamed)"


def node_part(node: onnx.NodeProto) -> str:
    """The part of the network a node belongs to, for reports: a DnCNN block (``blocks.1``), or a
    piece of an N3 block (``nls.0.embedcnn``, ``nls.0.tempcnn``, ``nls.0.aggregation``, ``nls.0``)."""
    parts = node_scope(node).split(".")
    return ".".join(parts[: 3 if parts[0] == "nls" else 2])


def tensor_elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """ONNX element type (``TensorProto.FLOAT``, ...) of every tensor ONNX shape inference can
    type: inputs, outputs, intermediates and initializers (a failing inference types fewer)."""
    try:
        typed = onnx.shape_inference.infer_shapes(model)
    except Exception:
        typed = model
    g = typed.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.value_info, *g.input, *g.output]}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


def _precision_by_part(model: onnx.ModelProto) -> list[PartPrecision]:
    types = tensor_elem_types(model)
    counts: dict[str, Counter] = defaultdict(Counter)
    for node in model.graph.node:
        if node.op_type in _BOOKKEEPING_OPS or not node.output:
            continue
        elem = types.get(node.output[0])
        if elem in (TensorProto.FLOAT, TensorProto.FLOAT16):
            counts[node_part(node)][TensorProto.DataType.Name(elem)] += 1
    return [PartPrecision(part, dict(c)) for part, c in sorted(counts.items())]


def _constants(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer}
    names.update(o for n in graph.node if n.op_type == "Constant" for o in n.output)
    return names


def audit_model(
    model: "onnx.ModelProto | str | os.PathLike",
    *,
    max_height: Optional[int] = None,
    max_width: Optional[int] = None,
    check_sizes: bool = True,
    full_check: bool = True,
) -> AuditReport:
    """Audit ``model`` (a path or ``ModelProto``) for TensorRT; never raises on findings.

    The 2^31 check evaluates every tensor at the maximum input size: ``max_height``/``max_width``
    if given, else the graph's fixed size or its metadata's declared maximum. Call
    :meth:`AuditReport.raise_for_problems` to turn findings into a :class:`GraphAuditError`.
    ``full_check`` runs ``onnx.checker`` with ``full_check=True`` (strict shape inference) too.
    """
    source, file_bytes = "model", None
    if not isinstance(model, onnx.ModelProto):
        source, file_bytes = str(model), os.path.getsize(model) if os.path.isfile(model) else None
        model = load_onnx(model)
    graph = model.graph
    init_names = {t.name for t in graph.initializer}
    try:
        metadata: Optional[ExportMetadata] = read_metadata(model)
    except ModelFileError:
        metadata = None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    problems: list[str] = []

    if full_check:
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception as exc:  # ValidationError / InferenceError
            problems.append(f"onnx.checker (full check) failed: {str(exc).splitlines()[0]}")

    # Operators.
    histogram = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in graph.node)
    for op in sorted(histogram):
        if op in ALLOWED_OPS:
            continue
        reason = FORBIDDEN_OPS.get(op, "not in n3deploy's TensorRT allow-list (unaudited op)")
        problems.append(f"{histogram[op]} x {op}: {reason}")
    constants = _constants(graph)
    for node in graph.node:
        for position in _CONSTANT_INPUTS.get(node.op_type, ()):
            if position < len(node.input) and node.input[position] and node.input[position] not in constants:
                problems.append(
                    f"{node.op_type} node {node.name!r}: input {position} must be a constant for TensorRT"
                )
    # Shapes must follow from input shapes, not pixel values.
    problems += shape_operand_violations(graph, classify_tensors(graph))

    # Tensor sizes at the maximum input size.
    inputs = [_tensor_info(vi) for vi in graph.input if vi.name not in init_names]
    outputs = [_tensor_info(vi) for vi in graph.output]
    audited_shape, largest = None, []
    if check_sizes and len(inputs) == 1:
        audited_shape = _max_input_shape(inputs[0], metadata.input_spec if metadata else None, max_height, max_width)
        if audited_shape is None:
            problems.append(
                "the input has symbolic dimensions but no declared maximum size: pass max_height/max_width "
                "(--max-height/--max-width) to check the 2^31-element limit"
            )
        else:
            try:
                shapes = static_shapes_at(model, audited_shape)
            except ShapeEvaluationError as exc:
                problems.append(str(exc))
            else:
                node_outputs = {o for n in graph.node for o in n.output if o}
                sizes = [TensorSize(t.name, t.producer, t.shape, t.numel) for t in shapes.values() if t.name in node_outputs]
                largest = sorted(sizes, key=lambda t: -t.numel)
                for t in largest:
                    if t.numel < MAX_ELEMENTS:
                        break
                    problems.append(
                        f"tensor {t.name!r} ({t.producer}) has {t.numel:,} elements (shape {t.shape}) at input "
                        f"{audited_shape}: TensorRT needs < 2^31; lower the maximum size or tile the image"
                    )
    elif check_sizes:
        problems.append(f"expected one graph input (the noisy image), found {len(inputs)}")

    return AuditReport(
        source=source,
        op_histogram=dict(histogram),
        inputs=inputs,
        outputs=outputs,
        metadata=metadata,
        opset=opset,
        audited_shape=audited_shape,
        largest=largest,
        precision=_precision_by_part(model),
        problems=problems,
        file_bytes=file_bytes,
    )


def _max_input_shape(
    info: TensorInfo, spec: Optional[InputSpec], max_height: Optional[int], max_width: Optional[int]
) -> Optional[tuple[int, ...]]:
    """The input shape to audit: fixed dims as they are, symbolic H/W at the declared maximum."""
    if len(info.dims) != 4:
        return None
    b, c, h, w = info.dims
    if not isinstance(h, int):
        h = max_height or (spec.max_height if spec else None)
    if not isinstance(w, int):
        w = max_width or (spec.max_width if spec else None)
    if not isinstance(b, int):
        b = (spec.batch or spec.max_batch or 1) if spec else 1
    if h is None or w is None or not isinstance(c, int):
        return None
    return (b, c, int(h), int(w))
