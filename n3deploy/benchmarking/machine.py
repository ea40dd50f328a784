"""The machine a benchmark ran on: hardware, library versions, which rows can run, matmul peaks."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from pathlib import Path
from typing import Any

from ..perf import HUGEPAGE_TUNABLE, tune_cpu_allocator
from .rows import ROWS, get_row
from .settings import RowInfo

__all__ = ["probe_rows", "machine_info", "matmul_peak", "PEAK_DTYPES"]

#: precision -> torch dtype name of the matmul peak measured for it
PEAK_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def _cuda_reason() -> str:
    try:
        import torch
    except ImportError as exc:
        return f"PyTorch not importable ({exc}), so no CUDA check"
    return "" if torch.cuda.is_available() else "no CUDA GPU visible to PyTorch"


def probe_rows(names: tuple[str, ...] = tuple(ROWS)) -> list[RowInfo]:
    """Which rows this machine can run, and why not (the backend registry's probe, then the device)."""
    from ..backends import available_backends

    reasons = available_backends()
    providers: list[str] | None = None
    infos = []
    for name in names:
        row = get_row(name)
        reason = reasons.get(row.backend, f"backend {row.backend!r} is not registered") or ""
        if not reason and row.device == "cuda" and row.backend == "torch":  # the others' checks name the GPU runtime
            reason = _cuda_reason()
        if not reason and row.backend == "onnxruntime":
            if providers is None:
                import onnxruntime

                providers = list(onnxruntime.get_available_providers())
            provider = "CUDAExecutionProvider" if row.device == "cuda" else "CPUExecutionProvider"
            if provider not in providers:
                reason = f"onnxruntime has no {provider}"
        if not reason and row.opens.startswith("onnx-"):
            try:
                import torch  # noqa: F401 - the graph is exported from the PyTorch model
                import onnx  # noqa: F401
            except ImportError as exc:
                reason = f"exporting the ONNX graph needs torch and onnx ({exc})"
        infos.append(RowInfo(row.name, row.label, row.backend, row.precision, row.device,
                             available=not reason, reason=reason, peak=row.peak))
    return infos


def machine_info(threads: int) -> dict[str, Any]:
    """CPU model and flags that matter (BF16, VNNI, AMX), cores, memory, library versions, allocator, GPU."""
    import psutil

    cpu, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
            if cpu and flags:
                break
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_flags": sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16",
                                                       "amx_tile", "amx_int8", "avx512_fp16")),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "threads": threads,
    }
    import torch

    info["torch"] = torch.__version__
    info["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    for module, key in (("onnxruntime", "onnxruntime"), ("openvino", "openvino")):
        try:
            info[key] = __import__(module).__version__
        except (ImportError, AttributeError):
            info[key] = None
    if info["onnxruntime"]:
        import onnxruntime

        info["ort_providers"] = list(onnxruntime.get_available_providers())
    from ..tensorrt.env import tensorrt_available

    ok, detail = tensorrt_available()
    info["tensorrt"] = detail if ok else None
    info["allocator_tuned"] = tune_cpu_allocator()
    try:
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        thp = "unknown"
    info["allocator"] = (
        "glibc mallopt via n3deploy.perf.tune_cpu_allocator and GLIBC_TUNABLES=" + HUGEPAGE_TUNABLE
        + f" (transparent huge pages; kernel setting: {thp}) in every worker"
    )
    return info


def matmul_peak(n: int = 2048, threads: int = 1, repeats: int = 10, precision: str = "fp32") -> dict[str, Any]:
    """Best ``n x n @ n x n`` GFLOP/s with ``threads`` torch threads, in ``precision`` (``fp32``, ``bf16``)."""
    import torch

    dtype = getattr(torch, PEAK_DTYPES[precision])
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"n": n, "threads": threads, "precision": precision, "best_s": best, "gflops": 2.0 * n**3 / best / 1e9}
