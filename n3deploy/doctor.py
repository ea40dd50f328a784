"""``n3deploy doctor``: what this machine can actually run.

Probes rather than trusts: an ONNX Runtime provider counts as working only if a tiny session created
with it alone still lists it first in ``session.get_providers()`` and computes the right answer
(onnxruntime-gpu lists CUDA/TensorRT providers on any machine and silently falls back to CPU).
TensorRT is reported with its version or the reason it cannot be imported; GPUs with name and
compute capability; the CPU's reduced-precision instructions (AVX512_BF16, VNNI, AMX) and whether
OpenVINO's CPU plugin would pick BF16 by itself (it then runs the *whole* graph in BF16, the KNN
included: n3deploy's ``--backend openvino --precision bf16`` keeps the KNN in FP32); and every
backend of the registry with its availability probe. Nothing here raises: every probe turns
failures into a reason.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from . import __version__
from .backends.registry import available_backends
from .tensorrt.env import GpuInfo, find_trtexec, gpu_info, tensorrt_available

__all__ = [
    "Probe", "ProviderProbe", "CpuFeatures", "DoctorReport", "run_doctor", "format_report", "probe_onnxruntime_providers",
    "list_gpus", "probe_cpu",
]

_PACKAGES = ("numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "torch", "polygraphy", "tensorrt", "cuda-python")
# /proc/cpuinfo flags of the reduced-precision paths: BF16 maths, int8 dot products, AMX tiles
_CPU_FLAGS = {"avx512_bf16": "AVX512_BF16", "amx_bf16": "AMX_BF16", "amx_tile": "AMX_TILE", "amx_int8": "AMX_INT8",
              "avx512_vnni": "AVX512_VNNI", "avx_vnni": "AVX_VNNI"}


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's reduced-precision support: ``flags`` found (``AVX512_BF16``, ``AMX_BF16``,
    ``AVX512_VNNI``, ...), and OpenVINO's view: ``openvino_bf16`` (native BF16 kernels) and
    ``openvino_default`` (the precision its CPU plugin picks when not told; ``None`` without OpenVINO)."""

    model: str
    flags: tuple[str, ...]
    openvino_bf16: Optional[bool]
    openvino_default: Optional[str]

    @property
    def bf16(self) -> bool:
        return any(f in self.flags for f in ("AVX512_BF16", "AMX_BF16"))

    @property
    def vnni(self) -> bool:
        return any(f in self.flags for f in ("AVX512_VNNI", "AVX_VNNI", "AMX_INT8"))

    @property
    def amx(self) -> bool:
        return any(f.startswith("AMX") for f in self.flags)


@dataclass(frozen=True)
class Probe:
    """One capability: usable or not, and why."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class ProviderProbe:
    """An ONNX Runtime execution provider that was tried with a real session."""

    provider: str
    works: bool
    detail: str


@dataclass
class DoctorReport:
    """Everything ``n3deploy doctor`` found (see :func:`run_doctor`)."""

    n3deploy_version: str
    python: str
    platform: str
    packages: dict[str, Optional[str]]
    torch: Probe
    gpus: list[GpuInfo]
    gpu_detail: str
    onnxruntime: Probe
    providers: list[ProviderProbe]
    tensorrt: Probe
    trtexec: Probe
    cuda_buffers: Probe
    cpu: Optional[CpuFeatures] = None
    registry: dict[str, Optional[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def backends(self) -> dict[str, bool]:
        """Which n3deploy backends can run here."""
        works = {p.provider for p in self.providers if p.works}
        return {
            "onnxruntime (CPU)": "CPUExecutionProvider" in works,
            "onnxruntime (CUDA)": "CUDAExecutionProvider" in works,
            "onnxruntime (TensorRT EP)": "TensorrtExecutionProvider" in works,
            "tensorrt": self.tensorrt.ok and bool(self.gpus) and self.cuda_buffers.ok,
            "torch (CUDA)": self.torch.ok and "CUDA" in self.torch.detail and "no CUDA" not in self.torch.detail,
            "openvino (CPU, BF16 plan)": self.registry.get("openvino", "missing") is None and bool(self.cpu and self.cpu.openvino_bf16),
        }

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["backends"] = self.backends()
        return data


def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _probe_torch() -> Probe:
    try:
        import torch  # noqa: PLC0415
    except ImportError as exc:
        return Probe("torch", False, f"not installed ({exc}); only needed for training/export and torch CUDA buffers")
    try:
        if torch.cuda.is_available():
            return Probe("torch", True, f"torch {torch.__version__} with CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s)")
        built = torch.version.cuda
        why = "a CPU-only build" if not built else f"built for CUDA {built}, but no usable GPU/driver"
        return Probe("torch", True, f"torch {torch.__version__}, no CUDA ({why})")
    except Exception as exc:  # noqa: BLE001
        return Probe("torch", False, f"torch {getattr(torch, '__version__', '?')} failed its CUDA query: {exc}")


def list_gpus() -> tuple[list[GpuInfo], str]:
    """All visible CUDA devices (torch, else nvidia-smi, else cuda-python), or ``([], reason)``."""
    count = 0
    try:
        import torch  # noqa: PLC0415

        if torch.cuda.is_available():
            count = torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        pass
    if count == 0 and shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
            count = sum(1 for line in out.splitlines() if line.startswith("GPU "))
        except (subprocess.SubprocessError, OSError):
            pass
    if count == 0:
        info, reason = gpu_info(0)
        return ([info], "") if info else ([], reason)
    gpus = [g for g in (gpu_info(i)[0] for i in range(count)) if g is not None]
    return gpus, "" if gpus else "devices were listed but none could be queried"


def _tiny_model_bytes() -> bytes:
    """``y = x + 1`` on a 1x1x4x4 float tensor: enough to prove a provider executes a graph."""
    from onnx import TensorProto, helper  # noqa: PLC0415

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "doctor_probe", [x], [y], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)  # loadable by older onnxruntime builds too
    return model.SerializeToString()


def _nodes_ran_on(profile_path: str) -> set[str]:
    """Execution providers that ran graph nodes, from an ONNX Runtime profile (``args.provider`` of Node events)."""
    with open(profile_path, encoding="utf-8") as f:
        events = json.load(f)
    return {e["args"]["provider"] for e in events if e.get("cat") == "Node" and "provider" in e.get("args", {})}


def _probe_provider(ort: Any, model: bytes, provider: str, x: Any, prefix: Path) -> ProviderProbe:
    import numpy as np  # noqa: PLC0415

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_profiling = True  # the profile names the provider that ran each node
    options.profile_file_prefix = str(prefix)
    try:
        session = ort.InferenceSession(model, sess_options=options, providers=[provider])
        used = session.get_providers()
        if not used or used[0] != provider:
            session.end_profiling()
            return ProviderProbe(provider, False, f"listed, but the session fell back to {used[0] if used else 'nothing'}")
        (y,) = session.run(None, {"x": x})
        ran_on = _nodes_ran_on(session.end_profiling())
    except Exception as exc:  # noqa: BLE001 - provider libraries missing, no device, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ProviderProbe(provider, False, f"session failed: {first[:300]}")
    if not np.allclose(y, x + 1):
        return ProviderProbe(provider, False, "session ran but returned wrong values")
    if ran_on and ran_on != {provider}:
        return ProviderProbe(provider, False, f"session accepted it, but the graph ran on {', '.join(sorted(ran_on))}")
    return ProviderProbe(provider, True, "session created, graph ran on it")


def probe_onnxruntime_providers() -> tuple[Probe, list[ProviderProbe]]:
    """Create a one-op session per available provider and check it is really used and correct."""
    try:
        import numpy as np  # noqa: PLC0415
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError as exc:
        return Probe("onnxruntime", False, f"not importable ({exc})"), []
    try:
        model = _tiny_model_bytes()
    except Exception as exc:  # noqa: BLE001
        return Probe("onnxruntime", False, f"could not build the probe model ({exc})"), []
    ort.set_default_logger_severity(3)  # errors only: fallback warnings are reported by us instead
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    results = []
    with tempfile.TemporaryDirectory(prefix="n3deploy-doctor-") as tmp:
        for provider in ort.get_available_providers():
            results.append(_probe_provider(ort, model, provider, x, Path(tmp) / provider))
    return Probe("onnxruntime", True, f"onnxruntime {ort.__version__}, device {ort.get_device()}"), results


def probe_cpu() -> CpuFeatures:
    """The CPU model and reduced-precision flags (Linux ``/proc/cpuinfo``) plus OpenVINO's CPU view."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    ov_bf16: Optional[bool] = None
    ov_default: Optional[str] = None
    try:
        from .backends.openvino_backend import cpu_bf16_support  # noqa: PLC0415

        support = cpu_bf16_support()
        ov_bf16, ov_default = bool(support["bf16"]), str(support["default_precision"])
    except Exception:  # noqa: BLE001 - OpenVINO missing or failing: reported as unknown
        pass
    found = tuple(name for flag, name in _CPU_FLAGS.items() if flag in flags)
    return CpuFeatures(model=model, flags=found, openvino_bf16=ov_bf16, openvino_default=ov_default)


def _probe_cuda_buffers() -> Probe:
    try:
        import torch  # noqa: PLC0415

        if torch.cuda.is_available():
            return Probe("cuda buffers", True, "torch CUDA tensors")
    except Exception:  # noqa: BLE001
        pass
    try:
        from .tensorrt.env import _cudart  # noqa: PLC0415

        rt = _cudart()
        err, count = rt.cudaGetDeviceCount()
        if int(getattr(err, "value", err)) == 0 and count > 0:
            return Probe("cuda buffers", True, "cuda-python")
        return Probe("cuda buffers", False, f"cuda-python is installed but sees no device ({err})")
    except ImportError:
        return Probe("cuda buffers", False, "neither torch with CUDA nor cuda-python is available")
    except Exception as exc:  # noqa: BLE001
        return Probe("cuda buffers", False, f"cuda-python failed: {exc}")


def run_doctor(*, probe_providers: bool = True) -> DoctorReport:
    """Probe this machine; never raises."""
    gpus, gpu_reason = list_gpus()
    if probe_providers:
        ort_probe, providers = probe_onnxruntime_providers()
    else:
        ort_probe, providers = Probe("onnxruntime", _version("onnxruntime") is not None or _version("onnxruntime-gpu") is not None,
                                     "providers not probed (--no-probe)"), []
    trt_ok, trt_detail = tensorrt_available()
    if trt_ok and not gpus:
        trt_detail += f", but it cannot build or run engines without a CUDA GPU ({gpu_reason})"
    trtexec = find_trtexec()
    notes = []
    if _version("onnxruntime") and _version("onnxruntime-gpu"):
        notes.append("both onnxruntime and onnxruntime-gpu are installed; they share one module and the last "
                     "installed wins: uninstall both and install only the one you need")
    return DoctorReport(
        n3deploy_version=__version__,
        python=sys.version.split()[0],
        platform=platform.platform(),
        packages={name: _version(name) for name in _PACKAGES},
        torch=_probe_torch(),
        gpus=gpus,
        gpu_detail=gpu_reason,
        onnxruntime=ort_probe,
        providers=providers,
        tensorrt=Probe("tensorrt", trt_ok, trt_detail),
        trtexec=Probe("trtexec", trtexec is not None,
                      trtexec or "not found (it ships with NVIDIA's TensorRT tarball/container, not pip; see docs/tensorrt.md)"),
        cuda_buffers=_probe_cuda_buffers(),
        cpu=probe_cpu(),
        registry=available_backends(),
        notes=notes,
    )


def format_report(report: DoctorReport) -> str:
    """Human-readable report."""
    mark = {True: "ok ", False: "-- "}
    lines = [f"n3deploy {report.n3deploy_version} on Python {report.python} ({report.platform})", "", "packages:"]
    for name, version in report.packages.items():
        lines.append(f"  {name:<16} {version or 'not installed'}")
    lines += ["", "GPU:"]
    if report.gpus:
        lines += [f"  [{g.index}] {g.name}, compute capability {g.compute_capability} (via {g.source})" for g in report.gpus]
    else:
        lines.append(f"  none: {report.gpu_detail}")
    lines += ["", "checks:"]
    for probe in (report.torch, report.onnxruntime, report.tensorrt, report.trtexec, report.cuda_buffers):
        lines.append(f"  {mark[probe.ok]}{probe.name:<14} {probe.detail}")
    if report.providers:
        lines += ["", "ONNX Runtime providers (each tried with a real session):"]
        lines += [f"  {mark[p.works]}{p.provider:<28} {p.detail}" for p in report.providers]
    cpu = report.cpu
    if cpu is not None:
        yes = {True: "yes", False: "no"}
        lines += ["", f"CPU: {cpu.model}", f"  BF16 {yes[cpu.bf16]}, VNNI {yes[cpu.vnni]}, AMX {yes[cpu.amx]}"
                  f" ({', '.join(cpu.flags) or 'no reduced-precision flags'})"]
        if cpu.openvino_default is None:
            lines.append("  OpenVINO: not installed (pip install 'n3deploy[openvino]')")
        else:
            lines.append(f"  OpenVINO CPU plugin: native BF16 {yes[bool(cpu.openvino_bf16)]}, picks {cpu.openvino_default} by default"
                         + (" (for the whole graph, KNN included: use --backend openvino --precision bf16 for the plan)"
                            if cpu.openvino_default == "bf16" else ""))
    lines += ["", "backend registry (load_backend / --backend):"]
    lines += [f"  {mark[reason is None]}{name:<14} {reason or 'available'}" for name, reason in report.registry.items()]
    lines += ["", "backends usable here:"]
    lines += [f"  {mark[ok]}{name}" for name, ok in report.backends().items()]
    for note in report.notes:
        lines += ["", f"note: {note}"]
    return "\n".join(lines)
