"""PyTorch N3Net -> one self-contained, audited ONNX file (FP32 or mixed FP16/FP32).

* :mod:`.onnx_export` -- :func:`export_onnx` (torch.export -> ONNX -> onnxslim -> audit -> verify)
* :mod:`.audit`       -- the TensorRT op allow-list, input-derived shapes, the 2^31-element bound
* :mod:`.shape_eval`  -- exact static shapes of every tensor at a given input size
* :mod:`.fp16`        -- the strongly typed mixed-precision graph and its FP16 overflow headroom
* :mod:`.metadata`    -- what an exported graph records about itself (config, sigma, input spec)
* :mod:`.cache`       -- :func:`cached_export`: a checkpoint's export built once, reused until the code changes

Only :mod:`.onnx_export` needs PyTorch; the rest runs on deployment machines with ``onnx`` and
``onnxruntime`` alone, so names are imported lazily here.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "export_onnx": "n3deploy.export.onnx_export",
    "cached_export": "n3deploy.export.cache",
    "ExportResult": "n3deploy.export.onnx_export",
    "DEFAULT_OPSET": "n3deploy.export.onnx_export",
    "audit_model": "n3deploy.export.audit",
    "AuditReport": "n3deploy.export.audit",
    "GraphAuditError": "n3deploy.export.audit",
    "ALLOWED_OPS": "n3deploy.export.audit",
    "convert_to_mixed_fp16": "n3deploy.export.fp16",
    "fp16_tensor_ranges": "n3deploy.export.fp16",
    "ExportMetadata": "n3deploy.export.metadata",
    "InputSpec": "n3deploy.export.metadata",
    "read_metadata": "n3deploy.export.metadata",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'n3deploy.export' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
