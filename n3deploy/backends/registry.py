"""The backend registry: every inference backend n3deploy can open, in one table.

Each :class:`BackendSpec` says which model files (suffixes) or addresses a backend opens, on which
devices and in which precisions (the vocabulary of :data:`n3deploy.precision.PRECISIONS`) it
runs, how to construct it (``factory``) and whether it can run on this machine (``probe``:
``None``, or the reason it cannot). :func:`load_backend`, the :class:`~n3deploy.Denoiser`, and the
``parity``, ``bench``, ``doctor``, ``inspect``, ``denoise`` and ``eval`` commands all read this
table; a new backend is one :func:`register_backend` call.

``backend="auto"`` picks the first registered backend (in :data:`BACKENDS` order) that accepts the
model: ``.safetensors`` -> ``torch``, ``.onnx`` -> ``onnxruntime``, ``.plan``/``.engine`` ->
``tensorrt``. Backend modules are imported only by their factory, so the ONNX Runtime and OpenVINO
backends work on machines without PyTorch or TensorRT.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..errors import BackendUnavailableError, ModelFileError

if TYPE_CHECKING:
    from .base import Backend

__all__ = [
    "BackendSpec", "BACKENDS", "register_backend", "get_backend", "available_backends", "backend_for_path",
    "load_backend", "is_url",
]


def is_url(model: "str | os.PathLike") -> bool:
    """``True`` for ``http://`` / ``https://`` addresses (served models), ``False`` for file paths."""
    return str(model).lower().startswith(("http://", "https://"))


@dataclass(frozen=True)
class BackendSpec:
    """One backend: what it opens, where and how precisely it runs, how to build it, whether it can run here.

    ``factory(model, device=..., precision=..., **opts) -> Backend``: ``model`` is a ``Path`` (or
    the URL string for URL backends); ``device`` is ``None`` or one of ``devices`` (optionally
    ``:N``); ``precision`` is ``None`` (the backend's default: ``fp32``, or for a compiled graph or
    engine the precision it was built in) or one of ``precisions``. ``probe() -> None`` when the
    backend can run on this machine, else the reason it cannot (cheap: no model is loaded);
    ``precision_probe(precision) -> None`` when it can run that one of its ``precisions`` here,
    else why not (e.g. BF16 on a CPU without BF16 kernels).
    """

    name: str
    suffixes: tuple[str, ...]
    devices: tuple[str, ...]
    precisions: tuple[str, ...]
    factory: Callable[..., "Backend"]
    probe: Callable[[], Optional[str]]
    precision_probe: Callable[[str], Optional[str]] = lambda precision: None

    def accepts(self, model: "str | os.PathLike") -> bool:
        """Whether this backend opens ``model``: its file suffix is in :attr:`suffixes` (URL
        backends list ``"http://"``/``"https://"`` there and match addresses instead)."""
        text = str(model)
        if is_url(text):
            return any(text.lower().startswith(s) for s in self.suffixes if "://" in s)
        return Path(text).suffix.lower() in self.suffixes


#: Every registered backend, by name, in registration order (the order ``auto`` tries them).
BACKENDS: dict[str, BackendSpec] = {}


def register_backend(spec: BackendSpec) -> BackendSpec:
    """Add (or replace, by name) a backend; returns ``spec``."""
    BACKENDS[spec.name] = spec
    return spec


def get_backend(name: str) -> BackendSpec:
    """The spec of backend ``name``, or :class:`BackendUnavailableError` listing the known ones."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise BackendUnavailableError(f"unknown backend {name!r}; choose auto, {', '.join(BACKENDS)}") from None


def available_backends() -> dict[str, Optional[str]]:
    """``{name: None if it can run here else the reason}`` for every registered backend."""
    out: dict[str, Optional[str]] = {}
    for name, spec in BACKENDS.items():
        try:
            out[name] = spec.probe()
        except Exception as exc:  # noqa: BLE001 - a probe must never take the caller down
            out[name] = f"probe failed: {exc}"
    return out


def backend_for_path(model: "str | os.PathLike") -> str:
    """The default backend for ``model`` (the first registered one that accepts it)."""
    for name, spec in BACKENDS.items():
        if spec.accepts(model):
            return name
    known = ", ".join(f"{' / '.join(s.suffixes)} ({n})" for n, s in BACKENDS.items())
    raise ModelFileError(f"{model}: unknown model type {Path(str(model)).suffix!r}; expected one of: {known}")


def _check_device(spec: BackendSpec, device: Optional[str]) -> None:
    if device is None or device.lower() == "auto":
        return
    base = device.lower().split(":", 1)[0]
    if base not in spec.devices:
        raise BackendUnavailableError(f"the {spec.name} backend runs on {', '.join(spec.devices)}, not {device!r}")


def load_backend(
    model: "str | os.PathLike",
    backend: str = "auto",
    device: Optional[str] = None,
    precision: Optional[str] = None,
    **opts: Any,
) -> "Backend":
    """Open ``model`` (file or URL) with ``backend`` (``auto`` or a name in :data:`BACKENDS`).

    ``device``: ``None``/``auto``, ``cpu``, ``cuda[:N]``, ... (one of the backend's ``devices``);
    ``precision``: ``None`` (FP32, or the precision a graph/engine was built in), ``fp32``,
    ``fp16``, ``bf16`` or ``fp64`` where the backend offers it; ``opts`` go to the backend (e.g.
    ``threads=`` for onnxruntime and openvino). Examples::

        load_backend("model.onnx")                                   # onnxruntime, FP32
        load_backend("model.onnx", "openvino", precision="bf16", threads=2)
        load_backend("n3net.safetensors", "torch", precision="bf16")

    Raises :class:`~n3deploy.errors.ModelFileError` for a missing or mismatched file and
    :class:`~n3deploy.errors.BackendUnavailableError` for an unknown backend, device or precision,
    or one that cannot run here (with the probe's reason).
    """
    from ..precision import normalize_precision

    url = is_url(model)
    path: "str | Path" = str(model) if url else Path(model)
    if not url and not Path(path).exists():
        raise ModelFileError(f"{path}: no such model file")
    name = backend_for_path(path) if backend == "auto" else backend
    spec = get_backend(name)
    if not spec.accepts(path):
        what = Path(str(path)).suffix or str(path)
        raise ModelFileError(f"{path}: the {name} backend opens {', '.join(spec.suffixes)}, not {what}")
    _check_device(spec, device)
    if precision is not None:
        precision = normalize_precision(precision)
        if precision not in spec.precisions:
            raise BackendUnavailableError(
                f"unknown precision {precision!r} for the {name} backend: use {', '.join(spec.precisions)}"
            )
    reason = spec.probe()
    if reason is not None:
        raise BackendUnavailableError(f"the {name} backend cannot run here: {reason}")
    reason = spec.precision_probe(precision) if precision is not None else None
    if reason is not None:
        raise BackendUnavailableError(f"the {name} backend cannot run {precision} here: {reason}")
    return spec.factory(path, device=device, precision=precision, **opts)


# -- the built-in backends ---------------------------------------------------------------------------


def _module_probe(module: str, label: str, hint: str) -> Callable[[], Optional[str]]:
    def probe() -> Optional[str]:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        return None if found else f"{label} is not installed ({hint})"

    return probe


def _torch_factory(path: Path, *, device: Optional[str] = None, precision: Optional[str] = None, **opts: Any) -> "Backend":
    from .torch_backend import TorchBackend

    return TorchBackend(path, device, precision=precision or "fp32", **opts)


def _onnxruntime_factory(path: Path, *, device: Optional[str] = None, precision: Optional[str] = None, **opts: Any) -> "Backend":
    from .onnxruntime_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(path, device, **opts)
    _check_built_precision(backend, precision, "export the graph you want (`n3deploy export`, --fp16 for fp16)")
    return backend


def _openvino_factory(path: Path, *, device: Optional[str] = None, precision: Optional[str] = None, **opts: Any) -> "Backend":
    from .openvino_backend import OpenVINOBackend

    return OpenVINOBackend(path, device, precision=precision or "fp32", **opts)


def _openvino_precision_probe(precision: str) -> Optional[str]:
    from .openvino_backend import precision_unavailable

    return precision_unavailable(precision)


def _cuda_index(device: Optional[str]) -> int:
    if device and device.lower().startswith("cuda:"):
        return int(device.split(":", 1)[1])
    return 0


def _tensorrt_factory(path: Path, *, device: Optional[str] = None, precision: Optional[str] = None, **opts: Any) -> "Backend":
    try:
        from .tensorrt_backend import load_tensorrt_backend
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the tensorrt backend is not available here ({exc}); it needs TensorRT >= 10 and a CUDA GPU "
            "(pip install 'n3deploy[gpu]', then `n3deploy doctor`)"
        ) from None
    try:
        backend = load_tensorrt_backend(path, device=_cuda_index(device), **opts)
    except ImportError as exc:  # tensorrt / cuda bindings missing at construction time
        raise BackendUnavailableError(
            f"the tensorrt backend cannot run here: {exc} (needs TensorRT >= 10 and a CUDA GPU; see `n3deploy doctor`)"
        ) from None
    _check_built_precision(backend, precision, "build the engine from the graph of that precision")
    return backend


def _check_built_precision(backend: "Backend", precision: Optional[str], fix: str) -> None:
    """Graphs and engines carry their precision: refuse a request they do not match."""
    if precision is not None and backend.precision != precision:
        raise ModelFileError(f"{backend.model_path}: this {backend.name} model runs in {backend.precision}, not {precision}; {fix}")


def _tensorrt_probe() -> Optional[str]:
    from ..tensorrt.env import gpu_info, tensorrt_available

    ok, detail = tensorrt_available()
    if not ok:
        return f"TensorRT cannot be imported ({detail}); it needs TensorRT >= 10 and a CUDA GPU"
    info, reason = gpu_info(0)
    return None if info is not None else f"{detail} is installed but there is no CUDA GPU ({reason})"


register_backend(BackendSpec(
    name="torch", suffixes=(".safetensors",), devices=("cpu", "cuda"), precisions=("fp32", "fp16", "bf16", "fp64"),
    factory=_torch_factory, probe=_module_probe("torch", "PyTorch", "pip install 'n3deploy[torch]', or use an .onnx export"),
))
register_backend(BackendSpec(
    name="onnxruntime", suffixes=(".onnx",), devices=("cpu", "cuda", "tensorrt"), precisions=("fp32", "fp16"),
    factory=_onnxruntime_factory, probe=_module_probe("onnxruntime", "ONNX Runtime", "pip install onnxruntime"),
))
register_backend(BackendSpec(
    name="openvino", suffixes=(".onnx",), devices=("cpu",), precisions=("fp32", "bf16"),
    factory=_openvino_factory, probe=_module_probe("openvino", "OpenVINO", "pip install 'n3deploy[openvino]'"),
    precision_probe=_openvino_precision_probe,
))
register_backend(BackendSpec(
    name="tensorrt", suffixes=(".plan", ".engine", ".onnx"), devices=("cuda",), precisions=("fp32", "fp16"),
    factory=_tensorrt_factory, probe=_tensorrt_probe,
))


def _remote_factory(url: str, *, device: Optional[str] = None, precision: Optional[str] = None, **opts: Any) -> "Backend":
    from .remote_backend import RemoteBackend

    backend = RemoteBackend(url, device, **opts)
    _check_built_precision(backend, precision, "the server decides the precision it runs in")
    return backend


register_backend(BackendSpec(
    name="remote", suffixes=("http://", "https://"), devices=("cpu", "cuda"), precisions=("fp32", "fp16", "bf16", "fp64"),
    factory=_remote_factory,
    probe=_module_probe("tritonclient.http", "tritonclient[http]", "pip install 'n3deploy[serve]'"),
))
