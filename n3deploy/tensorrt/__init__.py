"""TensorRT engines for n3deploy: build specs, metadata, cache, builder and runner.

Importing this package never imports ``tensorrt``: the spec, shape, metadata and cache logic is
plain Python that runs (and is tested) on CPU machines; only :mod:`.builder` and :mod:`.runner`
call TensorRT, through :func:`~n3deploy.tensorrt.env.import_tensorrt`, inside functions.

* :mod:`.shapes`     -- ``parse_shape("1x1x64x64")``, :class:`ProfileShapes` (min <= opt <= max)
* :mod:`.onnx_graph` -- input names/dynamic dims/precision of an ONNX file, read with ``onnx``
* :mod:`.spec`       -- :class:`EngineBuildSpec`: one source of truth for the Python-API build and trtexec
* :mod:`.env`        -- :func:`tensorrt_available`, GPU name/compute capability, :class:`RuntimeInfo`
* :mod:`.metadata`   -- :class:`EngineMetadata` (``model.plan.json``), :func:`check_compatible`, :func:`check_input_shape`
* :mod:`.cache`      -- :func:`cache_key`, :class:`EngineCache` (build once, reuse)
* :mod:`.builder`    -- :func:`build_engine` (TensorRT Python API)
* :mod:`.runner`     -- :class:`TensorRTEngine`, :func:`polygraphy_trt_runner`
"""

from __future__ import annotations

from .cache import EngineCache, cache_key
from .env import RuntimeInfo, gpu_info, tensorrt_available
from .metadata import EngineMetadata, check_compatible, check_input_shape, metadata_path, read_metadata, write_metadata
from .shapes import ProfileShapes, ShapeError, format_shape, parse_shape
from .spec import EngineBuildSpec, resolve_spec

__all__ = [
    "EngineBuildSpec",
    "EngineCache",
    "EngineMetadata",
    "ProfileShapes",
    "RuntimeInfo",
    "ShapeError",
    "cache_key",
    "check_compatible",
    "check_input_shape",
    "format_shape",
    "gpu_info",
    "metadata_path",
    "parse_shape",
    "read_metadata",
    "resolve_spec",
    "tensorrt_available",
    "write_metadata",
]
