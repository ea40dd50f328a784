"""The benchmark rows: one name -> which registry backend runs what file, on which device, in which precision.

Each :class:`BenchRow` is one line of the results table. The worker opens the row's model file
with :func:`n3deploy.backends.load_backend` (``backend``, ``device``, ``precision``, ``threads``), so
a backend added to the registry is one more row here. ``opens`` names the file the row runs:
``checkpoint`` (an n3deploy ``.safetensors``), ``onnx-fp32`` or ``onnx-fp16`` (the exported graph
of that precision). ``peak`` is the matmul peak the row's GFLOP/s is compared with: the peak of the
precision its arithmetic runs in (ONNX Runtime CPU computes FP16 graphs in FP32), ``None`` on a GPU
(the CPU peaks say nothing about it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["BenchRow", "ROWS", "get_row"]


@dataclass(frozen=True)
class BenchRow:
    name: str
    label: str
    backend: str  # a name in n3deploy.backends.BACKENDS
    device: str  # cpu | cuda
    precision: str  # fp32 | fp16 | bf16
    opens: str  # checkpoint | onnx-fp32 | onnx-fp16
    peak: Optional[str]  # fp32 | bf16 | None (a GPU row)
    knn: str = "static"  # torch rows: static | reference

    @property
    def graph_precision(self) -> Optional[str]:
        """``fp32``/``fp16`` for rows that open an exported ONNX graph, else ``None``."""
        return self.opens.split("-", 1)[1] if self.opens.startswith("onnx-") else None

    @property
    def takes_threads(self) -> bool:
        """Whether the backend takes ``threads=`` (torch rows set ``torch.set_num_threads`` instead)."""
        return self.backend in ("onnxruntime", "openvino")


ROWS: dict[str, BenchRow] = {r.name: r for r in (
    BenchRow("torch-static", "PyTorch, static KNN (FP32)", "torch", "cpu", "fp32", "checkpoint", "fp32"),
    BenchRow("torch-reference", "PyTorch, reference KNN (FP32)", "torch", "cpu", "fp32", "checkpoint", "fp32",
             knn="reference"),
    BenchRow("torch-cpu-bf16", "PyTorch, static KNN (BF16 plan)", "torch", "cpu", "bf16", "checkpoint", "bf16"),
    BenchRow("torch-cuda-fp32", "PyTorch CUDA, static KNN (FP32)", "torch", "cuda", "fp32", "checkpoint", None),
    BenchRow("torch-cuda-fp16", "PyTorch CUDA, static KNN (FP16 plan)", "torch", "cuda", "fp16", "checkpoint", None),
    BenchRow("ort-cpu-fp32", "ONNX Runtime CPU FP32", "onnxruntime", "cpu", "fp32", "onnx-fp32", "fp32"),
    BenchRow("ort-cpu-fp16", "ONNX Runtime CPU FP16", "onnxruntime", "cpu", "fp16", "onnx-fp16", "fp32"),
    BenchRow("ov-cpu-fp32", "OpenVINO CPU FP32", "openvino", "cpu", "fp32", "onnx-fp32", "fp32"),
    BenchRow("ov-cpu-bf16", "OpenVINO CPU BF16 plan", "openvino", "cpu", "bf16", "onnx-fp32", "bf16"),
    BenchRow("ort-cuda-fp32", "ONNX Runtime CUDA FP32", "onnxruntime", "cuda", "fp32", "onnx-fp32", None),
    BenchRow("ort-cuda-fp16", "ONNX Runtime CUDA FP16", "onnxruntime", "cuda", "fp16", "onnx-fp16", None),
    BenchRow("tensorrt-fp16", "TensorRT FP16", "tensorrt", "cuda", "fp16", "onnx-fp16", None),
)}


def get_row(name: str) -> BenchRow:
    try:
        return ROWS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark row {name!r}; choose from {', '.join(ROWS)}") from None
