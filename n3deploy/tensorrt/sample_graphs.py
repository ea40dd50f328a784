"""Tiny ONNX graphs with n3deploy's I/O contract (one float32 NCHW input, one float32 output).

For tests and smoke checks of the TensorRT path without exporting a real N3Net: ``y = x - conv3x3(x)``,
in FP32, or as a strongly typed mixed-precision graph (FP32 I/O, FP16 conv between two Casts), like
the FP16 graphs n3deploy exports. Built with ``onnx.helper``; no torch needed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

__all__ = ["make_residual_conv_onnx", "residual_conv_reference"]

Dim = Union[int, str]


def _weights(channels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((channels, channels, 3, 3)) * 0.1).astype(np.float32)


def make_residual_conv_onnx(
    path: str | os.PathLike,
    dims: Sequence[Dim] = (1, 1, "height", "width"),
    *,
    fp16: bool = False,
    input_name: str = "noisy",
    output_name: str = "denoised",
    seed: int = 0,
    metadata: Optional[dict[str, str]] = None,
    opset: int = 17,
    external_data: bool = False,
) -> Path:
    """Write ``y = x - conv3x3(x)``; a ``str`` dim is dynamic. With ``fp16`` the conv runs in FP16 (weights
    rounded to FP16) between Casts, I/O stays FP32."""
    import onnx  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    path = Path(path)
    channels = int(dims[1])
    w = _weights(channels, seed)
    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(dims))
    y = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, list(dims))
    if fp16:
        nodes = [
            helper.make_node("Cast", [input_name], ["x16"], to=TensorProto.FLOAT16),
            helper.make_node("Conv", ["x16", "w"], ["r16"], pads=[1, 1, 1, 1]),
            helper.make_node("Cast", ["r16"], ["r"], to=TensorProto.FLOAT),
        ]
        init = numpy_helper.from_array(w.astype(np.float16), "w")
    else:
        nodes = [helper.make_node("Conv", [input_name, "w"], ["r"], pads=[1, 1, 1, 1])]
        init = numpy_helper.from_array(w, "w")
    nodes.append(helper.make_node("Sub", [input_name, "r"], [output_name]))
    graph = helper.make_graph(nodes, "residual_conv", [x], [y], [init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 9)
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data", size_threshold=0)
    else:
        onnx.save(model, str(path))
    return path


def residual_conv_reference(x: np.ndarray, *, seed: int = 0, fp16_weights: bool = False) -> np.ndarray:
    """NumPy reference of :func:`make_residual_conv_onnx` (float64 maths) for parity checks."""
    channels = x.shape[1]
    w = _weights(channels, seed)
    if fp16_weights:
        w = w.astype(np.float16).astype(np.float32)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros(x.shape, dtype=np.float64)
    h, wd = x.shape[2], x.shape[3]
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("oc,bchw->bohw", w[:, :, dy, dx], xp[:, :, dy:dy + h, dx:dx + wd])
    return (x - out).astype(np.float32)
