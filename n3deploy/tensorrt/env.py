"""What this machine offers for TensorRT: is ``tensorrt`` importable, which GPU is there.

Every ``import tensorrt`` in n3deploy goes through :func:`import_tensorrt`, inside functions, so
``import n3deploy`` and the CPU-side engine logic work where TensorRT cannot be installed (it needs
NVIDIA's package index and a CUDA GPU). :class:`RuntimeInfo` is plain data: engine compatibility
checks compare it with an engine's metadata, and tests build it by hand.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from dataclasses import dataclass
from types import ModuleType
from typing import Optional

from ..errors import BackendUnavailableError

__all__ = [
    "MIN_TENSORRT_MAJOR",
    "GpuInfo",
    "RuntimeInfo",
    "tensorrt_available",
    "import_tensorrt",
    "tensorrt_major",
    "gpu_info",
    "current_runtime_info",
    "find_trtexec",
    "INSTALL_HINT",
]

# Strongly typed networks (NetworkDefinitionCreationFlag.STRONGLY_TYPED) exist from TensorRT 10;
# TensorRT 11 makes every network strongly typed. n3deploy's FP16 graphs rely on that.
MIN_TENSORRT_MAJOR = 10

INSTALL_HINT = (
    'on a machine with an NVIDIA GPU: pip install "n3deploy[gpu]" (the tensorrt wheel downloads '
    "its libraries from NVIDIA's package index), or use NVIDIA's TensorRT container "
    "nvcr.io/nvidia/tensorrt; see docs/tensorrt.md"
)


@dataclass(frozen=True)
class GpuInfo:
    """One CUDA device: marketing name and compute capability as ``"major.minor"``."""

    index: int
    name: str
    compute_capability: str
    source: str = ""  # which probe found it: "torch", "cuda-python", "nvidia-smi", "tensorrt"


@dataclass(frozen=True)
class RuntimeInfo:
    """The facts an engine must match to be loaded here (see ``metadata.check_compatible``)."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str


def tensorrt_major(version: str) -> int:
    """``"10.13.0.35"`` -> ``10``; raises ValueError on a malformed version."""
    return int(str(version).split(".")[0])


@functools.lru_cache(maxsize=1)
def _try_import_tensorrt() -> tuple[Optional[ModuleType], str]:
    try:
        import tensorrt as trt  # noqa: PLC0415 - guarded import, by design
    except ImportError as exc:
        return None, f"the tensorrt Python package is not importable ({exc})"
    except OSError as exc:  # wheel present but its shared libraries missing
        return None, f"the tensorrt package is installed but its libraries failed to load ({exc})"
    version = getattr(trt, "__version__", "")
    try:
        major = tensorrt_major(version)
    except ValueError:
        return None, f"the tensorrt package reports an unreadable version {version!r}"
    if major < MIN_TENSORRT_MAJOR:
        return None, (
            f"TensorRT {version} is too old: n3deploy needs TensorRT >= {MIN_TENSORRT_MAJOR} "
            "(strongly typed networks)"
        )
    return trt, ""


def tensorrt_available() -> tuple[bool, str]:
    """``(True, "TensorRT 10.x")`` or ``(False, why not)``. Never raises; imports lazily once."""
    trt, reason = _try_import_tensorrt()
    if trt is None:
        return False, reason
    return True, f"TensorRT {trt.__version__}"


def import_tensorrt(purpose: str = "this operation") -> ModuleType:
    """Return the ``tensorrt`` module or raise :class:`BackendUnavailableError` saying what to do."""
    trt, reason = _try_import_tensorrt()
    if trt is None:
        raise BackendUnavailableError(f"{purpose} needs TensorRT >= {MIN_TENSORRT_MAJOR}, but {reason}. Install it {INSTALL_HINT}.")
    return trt


def _gpu_from_torch(index: int) -> Optional[GpuInfo]:
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return None
    try:
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            return None
        major, minor = torch.cuda.get_device_capability(index)
        return GpuInfo(index, torch.cuda.get_device_name(index), f"{major}.{minor}", "torch")
    except Exception:  # noqa: BLE001 - a broken driver must not crash a probe
        return None


def _cudart():
    """cuda-python's runtime module: ``cuda.bindings.runtime`` (cuda-python >= 12.6) or ``cuda.cudart``."""
    try:
        from cuda.bindings import runtime as cudart  # noqa: PLC0415
    except ImportError:
        from cuda import cudart  # type: ignore[no-redef]  # noqa: PLC0415
    return cudart


def _gpu_from_cuda_python(index: int) -> Optional[GpuInfo]:
    try:
        cudart = _cudart()
    except ImportError:
        return None
    try:
        err, props = cudart.cudaGetDeviceProperties(index)
        if int(getattr(err, "value", err)) != 0:
            return None
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return GpuInfo(index, name.rstrip("\x00").strip(), f"{props.major}.{props.minor}", "cuda-python")
    except Exception:  # noqa: BLE001
        return None


def _gpu_from_nvidia_smi(index: int) -> Optional[GpuInfo]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, f"--id={index}", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return None
    if not out:
        return None
    name, _, cap = out.splitlines()[0].rpartition(",")
    return GpuInfo(index, name.strip(), cap.strip(), "nvidia-smi") if name else None


def gpu_info(index: int = 0) -> tuple[Optional[GpuInfo], str]:
    """Name and compute capability of CUDA device ``index`` via torch, cuda-python or nvidia-smi.

    Returns ``(info, "")`` or ``(None, reason)``.
    """
    for probe in (_gpu_from_torch, _gpu_from_cuda_python, _gpu_from_nvidia_smi):
        info = probe(index)
        if info is not None:
            return info, ""
    return None, (
        f"no CUDA device {index} found (torch.cuda, cuda-python and nvidia-smi all report none "
        "or are absent)"
    )


def current_runtime_info(device: int = 0) -> RuntimeInfo:
    """TensorRT version and GPU of this process; raises :class:`BackendUnavailableError` if either is missing."""
    trt = import_tensorrt("loading or building a TensorRT engine")
    gpu, reason = gpu_info(device)
    if gpu is None:
        raise BackendUnavailableError(f"TensorRT {trt.__version__} is installed but {reason}; TensorRT needs a CUDA GPU.")
    return RuntimeInfo(str(trt.__version__), gpu.name, gpu.compute_capability)


def find_trtexec() -> Optional[str]:
    """Path of ``trtexec`` on PATH or in the usual NVIDIA install locations, else None."""
    found = shutil.which("trtexec")
    if found:
        return found
    for candidate in ("/usr/src/tensorrt/bin/trtexec", "/opt/tensorrt/bin/trtexec", "/usr/local/tensorrt/bin/trtexec"):
        if shutil.which(candidate):
            return candidate
    return None
