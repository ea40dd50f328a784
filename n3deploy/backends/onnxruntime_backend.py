"""The ``onnxruntime`` backend: an exported ``.onnx`` graph in an ONNX Runtime session.

Defaults: full graph optimisation, as many intra-op threads as physical cores, sequential
execution, and ONNX Runtime's *memory pattern* off: it pre-plans one block per input shape and,
measured on the paper preset at 481x321, doubles peak RSS (3.1 GB -> 1.6 GB without it) for no
speed gain. ``cpu_arena=False`` saves another ~0.1 GB at ~40% more time.

ONNX Runtime's *memory reuse* is off too (``mem_reuse=False``): its allocation planner hands a
dead buffer to the next tensor of the same (symbolic) shape, however far away, and keeps the
buffer allocated until then. The two N3 blocks have identical tensor shapes, so every buffer
of ``nls.0`` (113 of them, ~1.5 GB at 481x321) was held until its twin in ``nls.1``. Without
reuse, peak RSS over the session at 481x321: 1.80 -> 0.48 GB; at 1024x1024: 12.0 -> 3.2 GB
(bit-identical output, no slower; graphs exported since with 8 slots per matmul,
``n3deploy.knn.static.EXPORT_GROUP``, peak at 0.63 and 4.1 GB). Device selection:

* ``None``/``"auto"``: CUDA when the installed ``onnxruntime-gpu`` offers it, else CPU;
* ``"cpu"``; ``"cuda"`` or ``"cuda:N"``; ``"tensorrt"`` (ONNX Runtime's TensorRT provider, with
  CUDA and CPU behind it).

``onnxruntime-gpu`` lists CUDA/TensorRT providers even where they cannot run and then silently
uses the CPU. After creating the session the backend reads ``session.get_providers()`` (the
providers actually in use), reports them in :attr:`providers`, and warns with
:class:`ProviderFallbackWarning` when a requested GPU provider is missing (``strict=True``
raises :class:`~n3deploy.errors.BackendUnavailableError` instead).

Imports only numpy, psutil and onnxruntime: runs on deployment machines without PyTorch.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import BackendUnavailableError, ModelFileError
from ..export.metadata import ONNX_FORMAT, decode_props
from .base import Backend, InputShapeLimits

__all__ = ["OnnxRuntimeBackend", "ProviderFallbackWarning", "make_session_options", "resolve_providers"]

_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


class ProviderFallbackWarning(RuntimeWarning):
    """A requested GPU execution provider is not in use: ONNX Runtime fell back to the CPU."""


def resolve_providers(device: Optional[str], available: list[str]) -> tuple[list[Any], list[str]]:
    """``(providers for the session, GPU providers the caller asked for)`` for ``device``."""
    device = (device or "auto").lower()
    if device == "cpu":
        return ["CPUExecutionProvider"], []
    if device == "auto":
        if "CUDAExecutionProvider" in available:
            return [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"], []
        return ["CPUExecutionProvider"], []
    if device.startswith("cuda"):
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"], ["CUDAExecutionProvider"]
    if device in ("tensorrt", "trt"):
        chain = [("TensorrtExecutionProvider", {"device_id": 0}), ("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
        return chain, ["TensorrtExecutionProvider"]
    raise BackendUnavailableError(f"unknown device {device!r} for onnxruntime: use auto, cpu, cuda[:N] or tensorrt")


def _physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:  # pragma: no cover - psutil is a core dependency
        return os.cpu_count() or 1


_LEVELS = ("disable", "basic", "extended", "all")


def make_session_options(
    *,
    optimization: str = "all",
    threads: Optional[int] = None,
    mem_pattern: bool = False,
    mem_reuse: bool = False,
    cpu_arena: bool = True,
) -> Any:
    """n3deploy's ``onnxruntime.SessionOptions`` (see the module docstring for each default).

    Every session n3deploy opens on a whole N3Net graph uses these (the backend, the export's
    verification, the FP16 range measurement), so none of them holds the ~12 KB per pixel that
    ONNX Runtime's memory reuse keeps alive across the N3 blocks.
    """
    import onnxruntime as ort

    if optimization not in _LEVELS:
        raise ValueError(f"optimization must be one of {list(_LEVELS)}, got {optimization!r}")
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    options.intra_op_num_threads = threads or _physical_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_mem_pattern = mem_pattern
    options.enable_mem_reuse = mem_reuse
    options.enable_cpu_mem_arena = cpu_arena
    # Flush subnormal floats (slow on x86): on the paper preset at 481x321 this changed no output
    # bit and took 3-10% less time in an in-process A/B (where the subnormals arise was not traced).
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    options.log_severity_level = 3
    return options


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime inference of an n3deploy ONNX graph (FP32, or the FP16 plan's graph); float32 in, float32 out."""

    name = "onnxruntime"

    def __init__(
        self,
        model_path: "str | os.PathLike",
        device: Optional[str] = None,
        *,
        threads: Optional[int] = None,
        optimization: str = "all",
        mem_pattern: bool = False,
        mem_reuse: bool = False,
        cpu_arena: bool = True,
        strict: bool = False,
        session_options: Any = None,
    ) -> None:
        import onnxruntime as ort

        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise ModelFileError(f"{self.model_path}: no such ONNX file")
        options = session_options or make_session_options(
            optimization=optimization, threads=threads, mem_pattern=mem_pattern, mem_reuse=mem_reuse, cpu_arena=cpu_arena
        )
        providers, requested_gpu = resolve_providers(device, ort.get_available_providers())
        try:
            self._session = ort.InferenceSession(str(self.model_path), options, providers=providers)
        except Exception as exc:  # InvalidGraph, Fail, NoSuchFile, ...
            raise ModelFileError(f"{self.model_path}: ONNX Runtime cannot load it: {exc}") from None
        self._providers = list(self._session.get_providers())
        missing = [p for p in requested_gpu if p not in self._providers]
        if missing:
            message = (
                f"requested {', '.join(missing)} but ONNX Runtime is running {self.model_path.name} on "
                f"{', '.join(self._providers)} (onnxruntime-gpu without a usable GPU/CUDA/TensorRT falls back "
                "silently; run `n3deploy doctor`)"
            )
            if strict:
                raise BackendUnavailableError(message)
            warnings.warn(message, ProviderFallbackWarning, stacklevel=2)
        inp = self._session.get_inputs()
        if len(inp) != 1:
            raise ModelFileError(f"{self.model_path}: expected one graph input (the noisy image), found {len(inp)}")
        self._input = inp[0]
        self._output = self._session.get_outputs()[0].name
        if self._input.type != "tensor(float)":
            raise ModelFileError(f"{self.model_path}: the input is {self._input.type}, n3deploy graphs take tensor(float)")
        self._metadata = decode_props(dict(self._session.get_modelmeta().custom_metadata_map))

    # -- Backend interface -----------------------------------------------------------------------
    @property
    def is_n3deploy_export(self) -> bool:
        return self._metadata.get("format") == ONNX_FORMAT

    @property
    def precision(self) -> str:
        from ..precision import normalize_precision

        return normalize_precision(str(self._metadata.get("precision", "fp32")))

    @property
    def providers(self) -> list[str]:
        return list(self._providers)

    @property
    def input_shape_limits(self) -> InputShapeLimits:
        dims = self._input.shape
        spec = self._metadata.get("input_spec") or {}

        def fixed(d: Any) -> Optional[int]:
            return d if isinstance(d, int) else None

        b, c, h, w = (list(dims) + [None] * 4)[:4]
        return InputShapeLimits(
            channels=fixed(c) or int(spec.get("channels", 1)),
            batch=fixed(b),
            height=fixed(h),
            width=fixed(w),
            min_size=int(spec.get("min_size", 1)),
            max_height=fixed(h) or spec.get("max_height"),
            max_width=fixed(w) or spec.get("max_width"),
            max_batch=None if fixed(b) else spec.get("max_batch"),
        )

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    @property
    def input_name(self) -> str:
        return self._input.name

    @property
    def session(self):
        """The underlying ``onnxruntime.InferenceSession``."""
        return self._session

    def run_impl(self, x: np.ndarray) -> np.ndarray:
        return self._session.run([self._output], {self._input.name: x})[0].astype(np.float32, copy=False)
