"""The KServe v2 / Triton HTTP inference protocol: request parsing and response encoding.

Pure functions over bytes and numpy arrays (no HTTP framework), so every rule is testable on its
own. Supports JSON tensors and Triton's binary tensor data extension: a request body is a JSON
header of ``Inference-Header-Content-Length`` bytes followed by the raw tensors that declare
``"parameters": {"binary_data_size": N}``; outputs are returned in binary when the request asks
for it (per output ``"binary_data": true``, or ``"binary_data_output": true`` for all).

Every malformed request raises :class:`ProtocolError` with the HTTP status to answer (4xx) and a
message for the KServe error body ``{"error": "..."}``.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..errors import N3DeployError

__all__ = ["ProtocolError", "InferRequest", "RequestedOutput", "parse_infer_request", "encode_infer_response", "datatype_name", "DATATYPES"]

#: KServe v2 datatype names -> numpy dtypes (the ones a request may carry).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
_NAMES = {dtype: name for name, dtype in DATATYPES.items()}


def datatype_name(dtype: np.dtype) -> str:
    """The KServe v2 name of a numpy dtype (``FP32``, ...)."""
    return _NAMES.get(np.dtype(dtype), str(dtype))


class ProtocolError(N3DeployError, ValueError):
    """A request the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass
class InferRequest:
    """A parsed inference request: input tensors by name (numpy, declared dtype and shape)."""

    id: Optional[str]
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput]  # empty: every output, binary if ``binary_default``
    binary_default: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


def _decompress(body: bytes, content_encoding: Optional[str]) -> bytes:
    encoding = (content_encoding or "identity").strip().lower()
    try:
        if encoding == "gzip":
            return gzip.decompress(body)
        if encoding == "deflate":
            return zlib.decompress(body)
    except (OSError, zlib.error, EOFError) as exc:
        raise ProtocolError(f"the request body is not valid {encoding} data ({exc})") from None
    if encoding != "identity":
        raise ProtocolError(f"unsupported Content-Encoding {content_encoding!r} (use gzip, deflate or none)", 415)
    return body


def _shape(tensor: dict[str, Any], name: str) -> tuple[int, ...]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"input {name!r}: 'shape' must be a list of non-negative integers, got {shape!r}")
    return tuple(shape)


def _tensor_from_json(tensor: dict[str, Any], name: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    if "data" not in tensor:
        raise ProtocolError(f"input {name!r} has neither 'data' nor a binary_data_size parameter")
    try:
        flat = np.asarray(tensor["data"], dtype=np.float64 if dtype.kind == "f" else None)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"input {name!r}: 'data' is not a (nested) list of numbers ({exc})") from None
    if flat.dtype == object or flat.dtype.kind not in "biuf":
        raise ProtocolError(f"input {name!r}: 'data' must hold numbers, got {flat.dtype} values")
    if flat.size != int(np.prod(shape)):
        raise ProtocolError(f"input {name!r}: shape {list(shape)} needs {int(np.prod(shape))} values, 'data' has {flat.size}")
    return flat.astype(dtype).reshape(shape)


def parse_infer_request(body: bytes, header_length: Optional[str] = None, content_encoding: Optional[str] = None) -> InferRequest:
    """Parse a ``POST /v2/models/{name}/infer`` body (``header_length``: the
    ``Inference-Header-Content-Length`` header, present when binary tensors follow the JSON)."""
    body = _decompress(body, content_encoding)
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise ProtocolError(f"Inference-Header-Content-Length must be an integer, got {header_length!r}") from None
        if not 0 < n <= len(body):
            raise ProtocolError(f"Inference-Header-Content-Length {n} is outside the body's {len(body)} bytes")
        header, binary = body[:n], memoryview(body)[n:]
    else:
        header, binary = body, memoryview(b"")
    try:
        request = json.loads(header)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"the request is not valid JSON ({exc})") from None
    if not isinstance(request, dict):
        raise ProtocolError("the request must be a JSON object with an 'inputs' list")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("the request needs a non-empty 'inputs' list")
    parsed: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in inputs:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise ProtocolError("every input must be an object with a 'name'")
        name = tensor["name"]
        datatype = tensor.get("datatype")
        if datatype not in DATATYPES:
            raise ProtocolError(f"input {name!r}: unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}")
        dtype, shape = DATATYPES[datatype], _shape(tensor, name)
        params = tensor.get("parameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError(f"input {name!r}: 'parameters' must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            expected = int(np.prod(shape)) * dtype.itemsize
            if not isinstance(size, int) or size != expected:
                raise ProtocolError(f"input {name!r}: binary_data_size {size!r} does not match shape {list(shape)} of {datatype} ({expected} bytes)")
            if offset + size > len(binary):
                raise ProtocolError(f"input {name!r}: the body holds {len(binary) - offset} binary bytes, {size} declared")
            parsed[name] = np.frombuffer(binary[offset : offset + size], dtype=dtype.newbyteorder("<")).reshape(shape).astype(dtype)
            offset += size
        else:
            parsed[name] = _tensor_from_json(tensor, name, dtype, shape)
    if offset != len(binary):
        raise ProtocolError(f"the body has {len(binary) - offset} binary bytes that no input declares")
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ProtocolError("'parameters' must be an object")
    outputs = []
    for out in request.get("outputs") or []:
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise ProtocolError("every requested output must be an object with a 'name'")
        out_params = out.get("parameters") or {}
        outputs.append(RequestedOutput(out["name"], bool(out_params.get("binary_data", parameters.get("binary_data_output", False)))))
    request_id = request.get("id")
    return InferRequest(
        id=None if request_id is None else str(request_id), inputs=parsed, outputs=outputs,
        binary_default=bool(parameters.get("binary_data_output", False)), parameters=parameters,
    )


def encode_infer_response(
    model_name: str, model_version: str, request: InferRequest, outputs: dict[str, np.ndarray]
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of the response carrying ``outputs`` as ``request`` asked (JSON or binary)."""
    wanted = request.outputs or [RequestedOutput(name, request.binary_default) for name in outputs]
    header: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": []}
    if request.id is not None:
        header["id"] = request.id
    blobs: list[bytes] = []
    for out in wanted:
        if out.name not in outputs:
            raise ProtocolError(f"unknown output {out.name!r}; this model has {', '.join(outputs)}")
        array = outputs[out.name]
        entry: dict[str, Any] = {"name": out.name, "datatype": _NAMES[array.dtype], "shape": list(array.shape)}
        if out.binary:
            raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = array.ravel().tolist()
        header["outputs"].append(entry)
    text = json.dumps(header, separators=(",", ":")).encode()
    if not blobs:
        return text, {"Content-Type": "application/json"}
    return text + b"".join(blobs), {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(text)),
    }
