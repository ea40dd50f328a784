"""Exact static shapes of every tensor of an ONNX graph at one concrete input size.

ONNX shape inference alone cannot follow the integer arithmetic (``Mod``, ``Clip``, ``Range``,
``Where`` on shape values) that a dynamic N3Net graph uses to derive its shapes. So:

1. **Split the graph.** A tensor is *data-dependent* when its value depends on the input's values;
   ``Shape``/``Size`` read only shapes, so their outputs and everything computed from them and from
   constants is *shape arithmetic*, which never touches pixel values (:func:`classify_tensors`).
2. **Evaluate only the values shapes depend on.** The shape-setting operands (``Reshape``'s shape,
   ``Range``'s bounds, ... see :data:`SHAPE_OPERANDS`) and the arithmetic they come from are run
   with ONNX Runtime (``Shape``/``Size`` are computed directly from known shapes).
3. **Infer the rest.** Every other node (the data path, and large shape-arithmetic tensors such as
   index tables and masks whose values no shape needs) gets its static shape from ONNX shape
   inference with those values as constants. Steps 2 and 3 alternate until every node is done.

Nothing of the input's size is ever allocated, so the 4K audit of the paper preset takes ~1 s and
~100 MB. The split also answers TensorRT's question "is every shape derived from the input's
shape and not from its values?": :func:`shape_operand_violations`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "TensorShape",
    "ShapeEvaluationError",
    "SHAPE_OPERANDS",
    "classify_tensors",
    "shape_operand_violations",
    "static_shapes_at",
]

# Inputs (by position) that set an output's shape: if one of these depends on pixel values, the
# graph's shapes are data-dependent (TensorRT needs shapes derived from input shapes alone).
SHAPE_OPERANDS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,),
    "Expand": (1,),
    "ConstantOfShape": (0,),
    "Range": (0, 1, 2),
    "Slice": (1, 2, 3, 4),
    "Pad": (1, 3),
    "Tile": (1,),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "Split": (1,),
    "ReduceSum": (1,),
    "ReduceMean": (1,),
    "ReduceMax": (1,),
    "ReduceMin": (1,),
    "ReduceProd": (1,),
    "ReduceL2": (1,),
    "ReduceSumSquare": (1,),
    "ReduceLogSumExp": (1,),
    "Resize": (1, 2, 3),
    "TopK": (1,),
    "OneHot": (1,),
}

# Shape-subgraph results up to this many elements are substituted as constants (shape operands
# are tiny); larger ones (masks, index tables) only need their shapes and become typed inputs.
_CONSTANT_LIMIT = 4096


class ShapeEvaluationError(RuntimeError):
    """A tensor whose shape does not follow from the input shape alone (or a graph ORT rejects)."""


@dataclass(frozen=True)
class TensorShape:
    """One tensor at a concrete input size: ``dtype`` (ONNX type name) and static ``shape``."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    producer: str  # "<op_type> <node name>", "input" or "initializer"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def classify_tensors(graph: onnx.GraphProto) -> set[str]:
    """Names of the tensors whose values depend on the graph inputs' values (not just their shapes).

    Nodes are visited in the (topological) order ONNX requires. ``Shape`` and ``Size`` outputs are
    shape-derived; any other node output is data-dependent as soon as one input is. Nodes with
    subgraphs are treated as data-dependent (the audit rejects them anyway).
    """
    data = {vi.name for vi in graph.input} - {t.name for t in graph.initializer}
    for node in graph.node:
        if node.op_type in ("Shape", "Size"):
            continue
        has_subgraph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        if has_subgraph or any(name in data for name in node.input if name):
            data.update(name for name in node.output if name)
    return data


def shape_operand_violations(graph: onnx.GraphProto, data: set[str] | None = None) -> list[str]:
    """One message per shape-setting operand (see :data:`SHAPE_OPERANDS`) computed from pixel values."""
    data = classify_tensors(graph) if data is None else data
    problems = []
    for node in graph.node:
        for position in SHAPE_OPERANDS.get(node.op_type, ()):
            if position < len(node.input) and node.input[position] in data:
                problems.append(
                    f"{node.op_type} node {node.name!r}: input {position} ({node.input[position]!r}) sets a shape "
                    "but is computed from the image's values (data-dependent shape)"
                )
    return problems


def _onnx_dtype_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type)


def _fix_input_shape(model: onnx.ModelProto, input_shape: tuple[int, ...]) -> onnx.ModelProto:
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    graph_inputs = [vi for vi in fixed.graph.input if vi.name not in {t.name for t in fixed.graph.initializer}]
    if len(graph_inputs) != 1:
        raise ShapeEvaluationError(f"expected one graph input, found {[vi.name for vi in graph_inputs]}")
    dims = graph_inputs[0].type.tensor_type.shape.dim
    if len(dims) != len(input_shape):
        raise ShapeEvaluationError(f"input rank {len(dims)} != requested shape {input_shape}")
    for dim, size in zip(dims, input_shape):
        if dim.HasField("dim_value") and dim.dim_value != size:
            raise ShapeEvaluationError(f"input dimension is fixed at {dim.dim_value}, cannot evaluate at {size}")
        dim.Clear()
        dim.dim_value = int(size)
    for vi in list(fixed.graph.output):  # symbolic output dims are re-derived by inference
        for dim in vi.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.Clear()
    del fixed.graph.value_info[:]
    return fixed


def _values_needed(graph: onnx.GraphProto, data: set[str]) -> set[str]:
    """Shape-arithmetic tensors whose *values* some shape depends on.

    Seeds: the shape-setting operands (:data:`SHAPE_OPERANDS`); closure: every input of a
    non-data node that produces a needed tensor. Other shape arithmetic (index tables, masks:
    large, and only their shapes matter) is shape-inferred instead of evaluated, which keeps the
    audit's memory small at 4K.
    """
    producer = {o: n for n in graph.node for o in n.output if o}
    stack = [
        node.input[p]
        for node in graph.node
        for p in SHAPE_OPERANDS.get(node.op_type, ())
        if p < len(node.input) and node.input[p] and node.input[p] not in data
    ]
    needed: set[str] = set()
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        node = producer.get(name)
        if node is not None and node.op_type not in ("Shape", "Size"):
            stack.extend(i for i in node.input if i and i not in data)
    return needed


def _shape_of(node: onnx.NodeProto, shape: tuple[int, ...]) -> np.ndarray:
    """``Shape``/``Size`` evaluated on a known shape (``start``/``end`` attributes as in opset 15+)."""
    if node.op_type == "Size":
        return np.array(math.prod(shape), dtype=np.int64)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    start, end = attrs.get("start", 0), attrs.get("end", len(shape))
    return np.array(shape[slice(start, end)], dtype=np.int64)


def _run_nodes(model: onnx.ModelProto, nodes: list[onnx.NodeProto], feeds: dict[str, np.ndarray],
               initializers: dict[str, TensorProto]) -> dict[str, np.ndarray]:
    """Run ``nodes`` (shape arithmetic) with ONNX Runtime; returns every output's value."""
    import onnxruntime as ort

    produced = {o for n in nodes for o in n.output}
    needed = {name for n in nodes for name in n.input if name and name not in produced}
    inits = [initializers[name] for name in sorted(needed) if name in initializers]
    inputs = [
        helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(feeds[name].dtype), list(feeds[name].shape))
        for name in sorted(needed) if name not in initializers
    ]
    outputs = [helper.make_empty_tensor_value_info(o) for n in nodes for o in n.output if o]
    sub = helper.make_graph(nodes, "shape_part", inputs, outputs, initializer=inits)
    sub_model = helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(sub_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in outputs]
        results = session.run(names, {vi.name: feeds[vi.name] for vi in inputs})
    except Exception as exc:
        raise ShapeEvaluationError(f"ONNX Runtime cannot evaluate the shape arithmetic: {exc}") from None
    return dict(zip(names, results))


def _infer_nodes(model: onnx.ModelProto, nodes: list[onnx.NodeProto], known: dict[str, "TensorShape"],
                 values: dict[str, np.ndarray], initializers: dict[str, TensorProto]) -> dict[str, onnx.ValueInfoProto]:
    """ONNX shape inference over ``nodes`` with every outside operand given (value or static shape)."""
    produced = {o for n in nodes for o in n.output}
    needed = sorted({name for n in nodes for name in n.input if name and name not in produced})
    inits, inputs = [], []
    for name in needed:
        if name in initializers:
            inits.append(initializers[name])
        elif name in values and values[name].size <= _CONSTANT_LIMIT:
            inits.append(numpy_helper.from_array(values[name], name))
        else:
            t = known[name]
            inputs.append(helper.make_tensor_value_info(name, TensorProto.DataType.Value(t.dtype), list(t.shape)))
    graph = helper.make_graph(nodes, "data_part", inputs, [], initializer=inits)
    part = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    try:
        inferred = onnx.shape_inference.infer_shapes(part, strict_mode=True)
    except Exception as exc:
        raise ShapeEvaluationError(f"ONNX shape inference failed: {exc}") from None
    return {vi.name: vi for vi in inferred.graph.value_info}


def static_shapes_at(model: onnx.ModelProto, input_shape: tuple[int, ...]) -> dict[str, TensorShape]:
    """Every tensor of ``model`` (inputs, initializers, node outputs) at ``input_shape``, exactly.

    Alternates two exact steps until every node is done: shape arithmetic whose operands are
    known is *evaluated* (``Shape``/``Size`` from known shapes, the rest in one ONNX Runtime run),
    and data nodes whose operands are known are *shape-inferred*. Raises
    :class:`ShapeEvaluationError` when some shape does not follow from the input shape alone.
    """
    input_shape = tuple(int(s) for s in input_shape)
    fixed = _fix_input_shape(model, input_shape)
    graph = fixed.graph
    data = classify_tensors(graph)
    initializers = {t.name: t for t in graph.initializer}
    known: dict[str, TensorShape] = {
        t.name: TensorShape(t.name, _onnx_dtype_name(t.data_type), tuple(t.dims), "initializer") for t in graph.initializer
    }
    for vi in graph.input:
        if vi.name not in known:
            known[vi.name] = TensorShape(vi.name, _onnx_dtype_name(vi.type.tensor_type.elem_type), input_shape, "input")
    values: dict[str, np.ndarray] = {}
    needed = _values_needed(graph, data)
    pending = list(graph.node)

    def describe(node: onnx.NodeProto) -> str:
        return f"{node.op_type} {node.name}"

    def evaluated(node: onnx.NodeProto) -> bool:
        """Shape arithmetic whose values some shape depends on (everything else is inferred)."""
        return not any(o in data for o in node.output if o) and any(o in needed for o in node.output)

    while pending:
        progress = False
        # 1. shape arithmetic: Shape/Size in Python, the rest batched through ONNX Runtime.
        available = set(values) | set(initializers)
        batch, rest = [], []
        for node in pending:
            if node.op_type in ("Shape", "Size") and node.input[0] in known:
                value = _shape_of(node, known[node.input[0]].shape)
                values[node.output[0]] = value
                known[node.output[0]] = TensorShape(node.output[0], "INT64", value.shape, describe(node))
                available.add(node.output[0])
                progress = True
            elif evaluated(node) and node.op_type not in ("Shape", "Size") and all(i in available for i in node.input if i):
                batch.append(node)
                available.update(o for o in node.output if o)
            else:
                rest.append(node)
        if batch:
            for name, value in _run_nodes(fixed, batch, values, initializers).items():
                values[name] = value
                dtype = _onnx_dtype_name(helper.np_dtype_to_tensor_dtype(value.dtype))
                known[name] = TensorShape(name, dtype, tuple(value.shape), "?")
            for node in batch:
                for o in node.output:
                    if o:
                        known[o] = TensorShape(o, known[o].dtype, known[o].shape, describe(node))
            progress = True
        # 2. every other node whose operands are known (data, or shape arithmetic no shape depends
        #    on, such as index tables and masks): shape inference, without computing values.
        available = set(known)
        ready, pending = [], []
        for node in rest:
            if node.op_type not in ("Shape", "Size") and not evaluated(node) and all(i in available for i in node.input if i):
                ready.append(node)
                available.update(o for o in node.output if o)
            else:
                pending.append(node)
        if ready:
            inferred = _infer_nodes(fixed, ready, known, values, initializers)
            for node in ready:
                for o in node.output:
                    if not o:
                        continue
                    vi = inferred.get(o)
                    tt = vi.type.tensor_type if vi is not None else None
                    if tt is None or not tt.HasField("shape") or not all(d.HasField("dim_value") for d in tt.shape.dim):
                        raise ShapeEvaluationError(
                            f"at input shape {input_shape} the shape of {o!r} ({describe(node)}) does not follow "
                            "from the input shape alone"
                        )
                    known[o] = TensorShape(o, _onnx_dtype_name(tt.elem_type), tuple(d.dim_value for d in tt.shape.dim), describe(node))
            progress = True
        if not progress:
            shown = ", ".join(describe(n) for n in pending[:5])
            raise ShapeEvaluationError(
                f"at input shape {input_shape}, {len(pending)} nodes have shapes that cannot be derived from the "
                f"input shape: {shown}"
            )
    return known
