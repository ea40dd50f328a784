"""What TensorRT needs to know about an ONNX file, read on the CPU with ``onnx`` alone.

Input/output names, which input dimensions are dynamic, which floating-point types the graph
stores (so the engine's precision is recorded from the graph itself: TensorRT >= 10 strongly
typed networks take their precision from the ONNX types), the exporter's ``metadata_props``,
and a checksum that covers external-data files too.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import ModelFileError
from ..fileio import sha256_file

__all__ = ["TensorInfo", "OnnxGraphInfo", "read_onnx_graph", "onnx_fingerprint"]


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output. ``dims`` holds an int for a fixed size, ``None`` for a dynamic one."""

    name: str
    dims: tuple[Optional[int], ...]
    elem_type: str  # "float32", "float16", ...

    @property
    def is_dynamic(self) -> bool:
        return any(d is None for d in self.dims)

    @property
    def rank(self) -> int:
        return len(self.dims)

    def describe(self) -> str:
        return "x".join("?" if d is None else str(d) for d in self.dims)


@dataclass(frozen=True)
class OnnxGraphInfo:
    """Summary of an ONNX file for engine building (see :func:`read_onnx_graph`)."""

    path: Path
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    float_types: frozenset[str]
    metadata_props: dict[str, str] = field(default_factory=dict)
    external_data_files: tuple[Path, ...] = ()

    @property
    def input(self) -> TensorInfo:
        """The single image input (n3deploy graphs have exactly one)."""
        if len(self.inputs) != 1:
            names = ", ".join(t.name for t in self.inputs) or "none"
            raise ModelFileError(
                f"{self.path}: expected exactly one graph input (the noisy image), found {len(self.inputs)} ({names})"
            )
        return self.inputs[0]

    @property
    def is_dynamic(self) -> bool:
        return any(t.is_dynamic for t in self.inputs)

    @property
    def precision(self) -> str:
        """``"fp16"`` for an FP16 or mixed FP16/FP32 graph, ``"bf16"`` likewise, else ``"fp32"``."""
        if "float16" in self.float_types:
            return "fp16"
        if "bfloat16" in self.float_types:
            return "bf16"
        return "fp32"


_FLOAT_NAMES = {"FLOAT": "float32", "FLOAT16": "float16", "BFLOAT16": "bfloat16", "DOUBLE": "float64"}


def _elem_type_name(elem_type: int) -> str:
    """ONNX ``TensorProto.DataType`` -> ``"float32"``, ``"float16"``, ``"bfloat16"``, ``"int64"``, ..."""
    import onnx

    try:
        name = onnx.TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"unknown({elem_type})"
    return _FLOAT_NAMES.get(name, name.lower())


def _tensor_info(value_info) -> TensorInfo:
    ttype = value_info.type.tensor_type
    dims: list[Optional[int]] = []
    for dim in ttype.shape.dim:
        # A dim with dim_value > 0 is fixed; dim_param (a symbol) or nothing at all is dynamic.
        dims.append(int(dim.dim_value) if dim.HasField("dim_value") and dim.dim_value > 0 else None)
    return TensorInfo(value_info.name, tuple(dims), _elem_type_name(ttype.elem_type))


def read_onnx_graph(path: str | os.PathLike) -> OnnxGraphInfo:
    """Read names, shapes, float types and metadata of an ONNX file without loading its weights' data.

    Raises :class:`ModelFileError` if the file is missing or not an ONNX model.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise ModelFileError(f"{path} is not a readable ONNX model: {exc}") from exc
    graph = model.graph
    initializer_names = {init.name for init in graph.initializer}
    inputs = tuple(_tensor_info(v) for v in graph.input if v.name not in initializer_names)
    outputs = tuple(_tensor_info(v) for v in graph.output)
    if not inputs or not outputs:
        raise ModelFileError(f"{path}: the graph has no inputs or no outputs")

    float_names = {"float32", "float16", "bfloat16", "float64"}
    float_types: set[str] = set()
    external: list[Path] = []

    def visit(g) -> None:
        for init in g.initializer:
            name = _elem_type_name(init.data_type)
            if name in float_names:
                float_types.add(name)
            if init.data_location == onnx.TensorProto.EXTERNAL:
                for entry in init.external_data:
                    if entry.key == "location":
                        external.append(path.parent / entry.value)
        for vi in list(g.value_info) + list(g.input) + list(g.output):
            if vi.type.HasField("tensor_type"):
                name = _elem_type_name(vi.type.tensor_type.elem_type)
                if name in float_names:
                    float_types.add(name)
        for node in g.node:
            for attr in node.attribute:
                if node.op_type == "Cast" and attr.name == "to":
                    name = _elem_type_name(attr.i)
                    if name in float_names:
                        float_types.add(name)
                if attr.type == onnx.AttributeProto.TENSOR:
                    name = _elem_type_name(attr.t.data_type)
                    if name in float_names:
                        float_types.add(name)
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)

    visit(graph)
    props = {p.key: p.value for p in model.metadata_props}
    unique_external = tuple(dict.fromkeys(external))
    return OnnxGraphInfo(path, inputs, outputs, frozenset(float_types), props, unique_external)


def onnx_fingerprint(path: str | os.PathLike, info: OnnxGraphInfo | None = None) -> str:
    """SHA-256 identifying an ONNX model: the file itself, plus its external-data files if any."""
    path = Path(path)
    info = info or read_onnx_graph(path)
    main = sha256_file(path)
    if not info.external_data_files:
        return main
    digest = hashlib.sha256(main.encode())
    for extra in sorted(info.external_data_files):
        if not extra.is_file():
            raise ModelFileError(f"{path} refers to external data {extra.name}, which is missing next to it")
        digest.update(extra.name.encode())
        digest.update(sha256_file(extra).encode())
    return digest.hexdigest()
