"""Run a TensorRT plan: deserialize, bind I/O tensors by name, execute on a CUDA stream.

Checks the engine metadata (TensorRT version, GPU, profile) before deserializing anything. Device
buffers come from torch CUDA tensors when PyTorch with CUDA is present, else from cuda-python.
API calls and their documentation (TensorRT Python API reference, Core/Runtime, Core/Engine,
Core/ExecutionContext; the 8.x->10.x migration guide's name-based I/O and ``execute_async_v3``):

* ``trt.Runtime(logger).deserialize_cuda_engine(bytes)`` -> ``ICudaEngine`` or None
* ``engine.num_io_tensors``, ``engine.get_tensor_name(i)``, ``engine.get_tensor_mode(name)``
  (``trt.TensorIOMode.INPUT/OUTPUT``), ``engine.get_tensor_dtype(name)``
* ``engine.create_execution_context()``
* ``context.set_input_shape(name, shape)`` -> bool, ``context.get_tensor_shape(name)``
* ``context.set_tensor_address(name, int_ptr)`` -> bool, ``context.execute_async_v3(stream_handle)`` -> bool

cuda-python calls follow NVIDIA's ``samples/python/common_runtime.py``: ``cudaStreamCreate``,
``cudaMalloc``, ``cudaMemcpyAsync``, ``cudaStreamSynchronize``, ``cudaFree`` (each returns ``(err, ...)``).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Protocol

import numpy as np

from ..errors import BackendUnavailableError, EngineMismatchError, InvalidImageError
from .env import RuntimeInfo, current_runtime_info, import_tensorrt
from .metadata import EngineMetadata, check_compatible, check_input_shape, read_metadata
from .shapes import dims_tuple

if TYPE_CHECKING:  # NVIDIA's tensorrt-stubs type these (tests/test_typecheck.py)
    import tensorrt

__all__ = ["TensorRTEngine", "polygraphy_trt_runner"]


class _DeviceIO(Protocol):
    name: str

    def run(self, context: "tensorrt.IExecutionContext", input_name: str, output_name: str, x: np.ndarray) -> np.ndarray: ...


class _TorchCudaIO:
    """Device buffers as torch CUDA tensors, executed on a dedicated ``torch.cuda.Stream``."""

    name = "torch"

    def __init__(self, device: int) -> None:
        import torch  # noqa: PLC0415

        self._torch = torch
        self._device = torch.device("cuda", device)
        self._stream = torch.cuda.Stream(device=self._device)

    def run(self, context: "tensorrt.IExecutionContext", input_name: str, output_name: str, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            x_dev = torch.from_numpy(x).to(self._device)  # enqueued on self._stream
            if not context.set_input_shape(input_name, tuple(x.shape)):
                raise EngineMismatchError(f"TensorRT rejected input shape {tuple(x.shape)} for {input_name!r}")
            out_shape = dims_tuple(context.get_tensor_shape(output_name))
            y_dev = torch.empty(out_shape, dtype=torch.float32, device=self._device)
            if not (context.set_tensor_address(input_name, x_dev.data_ptr())
                    and context.set_tensor_address(output_name, y_dev.data_ptr())):
                raise RuntimeError("TensorRT rejected a tensor address")
            if not context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
            y = y_dev.to("cpu")  # synchronous copy on self._stream: waits for the engine
        self._stream.synchronize()
        return y.numpy()


def _cuda_check(result: Any) -> Any:
    """Unpack a cuda-python ``(err, *values)`` tuple, raising on error (as common_runtime.cuda_call does)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    code = int(getattr(err, "value", err) or 0)
    if code != 0:
        raise RuntimeError(f"CUDA error {code} ({err})")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


class _CudaPythonIO:
    """Device buffers from cuda-python (``cuda.bindings.runtime``) when PyTorch has no CUDA."""

    name = "cuda-python"

    def __init__(self, device: int) -> None:
        from .env import _cudart  # noqa: PLC0415

        self._rt = _cudart()
        _cuda_check(self._rt.cudaSetDevice(device))
        self._device = device
        self._stream = _cuda_check(self._rt.cudaStreamCreate())

    def run(self, context: "tensorrt.IExecutionContext", input_name: str, output_name: str, x: np.ndarray) -> np.ndarray:
        rt = self._rt
        _cuda_check(rt.cudaSetDevice(self._device))
        d_in = d_out = None
        try:
            d_in = _cuda_check(rt.cudaMalloc(x.nbytes))
            _cuda_check(rt.cudaMemcpyAsync(d_in, x.ctypes.data, x.nbytes,
                                           rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream))
            if not context.set_input_shape(input_name, tuple(x.shape)):
                raise EngineMismatchError(f"TensorRT rejected input shape {tuple(x.shape)} for {input_name!r}")
            out_shape = dims_tuple(context.get_tensor_shape(output_name))
            y = np.empty(out_shape, dtype=np.float32)
            d_out = _cuda_check(rt.cudaMalloc(y.nbytes))
            if not (context.set_tensor_address(input_name, int(d_in)) and context.set_tensor_address(output_name, int(d_out))):
                raise RuntimeError("TensorRT rejected a tensor address")
            if not context.execute_async_v3(stream_handle=self._stream):
                raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
            _cuda_check(rt.cudaMemcpyAsync(y.ctypes.data, d_out, y.nbytes,
                                           rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream))
            _cuda_check(rt.cudaStreamSynchronize(self._stream))
            return y
        finally:
            for ptr in (d_in, d_out):
                if ptr is not None:
                    rt.cudaFree(ptr)

    def __del__(self) -> None:
        stream = getattr(self, "_stream", None)
        if stream is not None:
            try:
                self._rt.cudaStreamDestroy(stream)
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass


def _device_io(device: int) -> _DeviceIO:
    try:
        import torch  # noqa: PLC0415

        if torch.cuda.is_available():
            return _TorchCudaIO(device)
    except ImportError:
        pass
    try:
        return _CudaPythonIO(device)
    except ImportError as exc:
        raise BackendUnavailableError(
            "running a TensorRT engine needs device buffers from PyTorch with CUDA or from cuda-python "
            f"(pip install cuda-python); neither is usable here ({exc})"
        ) from exc


def _load_checked(plan_path: Path, device: int, allow_gpu_model_mismatch: bool,
                  runtime: Optional[RuntimeInfo]) -> tuple[EngineMetadata, bytes]:
    meta = read_metadata(plan_path)
    check_compatible(meta, runtime or current_runtime_info(device), allow_gpu_model_mismatch=allow_gpu_model_mismatch)
    return meta, plan_path.read_bytes()


class TensorRTEngine:
    """A deserialized plan with one execution context; :meth:`infer` maps float32 NCHW -> float32 NCHW.

    Thread-safe (one inference at a time per engine); create one per thread for parallelism.
    """

    def __init__(self, plan_path: str | os.PathLike, *, device: int = 0, allow_gpu_model_mismatch: bool = False) -> None:
        import_tensorrt("running a TensorRT engine")  # a clear error where TensorRT is missing
        import tensorrt as trt  # noqa: PLC0415 - importable now

        self.plan_path = Path(plan_path)
        self.metadata, plan = _load_checked(self.plan_path, device, allow_gpu_model_mismatch, None)
        self._logger: "tensorrt.ILogger" = trt.Logger(trt.Logger.WARNING)
        self._runtime: "tensorrt.Runtime" = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise EngineMismatchError(
                f"TensorRT could not deserialize {self.plan_path} (see its log above). Rebuild it with: "
                f"{self.metadata.rebuild_command()}"
            )
        self._engine: "tensorrt.ICudaEngine" = engine
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineMismatchError(f"{self.plan_path}: expected one input and one output, found {inputs} -> {outputs}")
        for name in inputs + outputs:
            if self._engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
                raise EngineMismatchError(f"{self.plan_path}: tensor {name!r} is {self._engine.get_tensor_dtype(name)}, expected float32")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self._context: "tensorrt.IExecutionContext" = self._engine.create_execution_context()
        self._io = _device_io(device)
        self._lock = threading.Lock()

    @property
    def buffer_source(self) -> str:
        """``"torch"`` or ``"cuda-python"``: where device buffers come from."""
        return self._io.name

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Run the engine on a float32 array inside its profile; returns a new float32 array."""
        if not isinstance(x, np.ndarray) or x.dtype != np.float32:
            raise InvalidImageError(f"TensorRT engine input must be a float32 numpy array, got {getattr(x, 'dtype', type(x))}")
        check_input_shape(self.metadata, x.shape)
        x = np.ascontiguousarray(x)
        with self._lock:
            return self._io.run(self._context, self.input_name, self.output_name, x)


def polygraphy_trt_runner(plan_path: str | os.PathLike, *, device: int = 0, allow_gpu_model_mismatch: bool = False,
                          name: Optional[str] = None):
    """A polygraphy ``TrtRunner`` for the parity harness, after the same metadata checks as :class:`TensorRTEngine`.

    ``TrtRunner(EngineFromBytes(plan))`` as in polygraphy's TensorRT backend API and NVIDIA's
    strongly_type_autocast sample. The harness should call ``metadata.check_input_shape`` for each
    feed (returned metadata) so an out-of-profile input gets n3deploy's message, not a TensorRT error.
    """
    import_tensorrt("running a TensorRT engine through polygraphy")
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner  # type: ignore[import-untyped]  # noqa: PLC0415

    plan_path = Path(plan_path)
    meta, plan = _load_checked(plan_path, device, allow_gpu_model_mismatch, None)
    runner = TrtRunner(EngineFromBytes(plan), name=name or f"tensorrt-{meta.precision}")
    return runner, meta
