"""The benchmark suite behind ``n3deploy bench`` and ``runtime/bench.py``.

For every available backend (PyTorch ``static``/``reference`` KNN, ONNX Runtime FP32/FP16 on CPU
and CUDA, TensorRT FP16) and every image size it measures, each in a *fresh subprocess* (so the
peak RSS belongs to that one backend and size): median latency after warm-up, megapixels/s,
achieved GFLOP/s (analytic count, :mod:`.flops`), peak RSS (``ru_maxrss``) and GPU memory.
It also measures the machine's float32 matmul peak and the PyTorch forward breakdown
(non-local vs CNN time, :mod:`.breakdown`). Everything lands in one JSON document, written after
every measurement; :mod:`.report` renders it to Markdown and plots.

Measurements can run on a quiet machine: :func:`paused` SIGSTOPs another process (a training
run) for their duration and always SIGCONTs it afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..perf import HUGEPAGE_TUNABLE, hugepage_env, tune_cpu_allocator

__all__ = [
    "BenchSettings", "BackendInfo", "Measurement", "BACKENDS", "DEFAULT_SIZES", "QUICK_SIZES",
    "parse_size", "probe_backends", "paused", "matmul_peak", "run_suite", "evaluate_criteria", "merge_results",
]

DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((256, 256), (481, 321), (1024, 1024), (1920, 1080), (3840, 2160))
QUICK_SIZES: tuple[tuple[int, int], ...] = ((256, 256), (481, 321))
BREAKDOWN_SIZE = (481, 321)  # width x height, the BSD68 / issue-2 size
DENOISER_SIZE = (1920, 1080)  # width x height of the Denoiser (tiled, RGB uint8) memory check
DENOISER_RSS_LIMIT_MB = 3 * 1024
SCHEMA_VERSION = 1

# name -> (label, kind, precision, device)
BACKENDS: dict[str, tuple[str, str, str, str]] = {
    "torch-static": ("PyTorch, static KNN (FP32)", "torch", "fp32", "cpu"),
    "torch-reference": ("PyTorch, reference KNN (FP32)", "torch", "fp32", "cpu"),
    "torch-cuda-fp32": ("PyTorch CUDA, static KNN (FP32)", "torch", "fp32", "cuda"),
    "torch-cuda-fp16": ("PyTorch CUDA, static KNN (FP16 plan)", "torch", "fp16", "cuda"),
    "ort-cpu-fp32": ("ONNX Runtime CPU FP32", "ort", "fp32", "cpu"),
    "ort-cpu-fp16": ("ONNX Runtime CPU FP16", "ort", "fp16", "cpu"),
    "ort-cuda-fp32": ("ONNX Runtime CUDA FP32", "ort", "fp32", "cuda"),
    "ort-cuda-fp16": ("ONNX Runtime CUDA FP16", "ort", "fp16", "cuda"),
    "tensorrt-fp16": ("TensorRT FP16", "tensorrt", "fp16", "cuda"),
}


# ----------------------------------------------------------------------------- data
@dataclass
class BenchSettings:
    """What to measure and how."""

    preset: str = "paper"
    sizes: tuple[tuple[int, int], ...] = DEFAULT_SIZES  # (width, height)
    backends: tuple[str, ...] = tuple(BACKENDS)
    repeats: int = 5
    warmup: int = 1
    max_job_s: float = 90.0  # repeats are cut so one (backend, size) takes about this long
    job_timeout_s: float = 900.0
    threads: int = 0  # 0: os.cpu_count()
    seed: int = 0
    reference_max_pixels: int = 481 * 321  # the reference KNN is O(10 s) per BSD image
    breakdown: bool = True
    breakdown_repeats: int = 3
    breakdown_size: tuple[int, int] = BREAKDOWN_SIZE  # (width, height)
    denoiser_size: tuple[int, int] | None = DENOISER_SIZE  # RGB uint8 image through Denoiser + ORT FP32
    matmul_n: int = 2048
    memory_fraction: float = 0.85  # skip sizes predicted to need more of the available memory
    budget_s: float = 0.0  # 0: unlimited; otherwise skip jobs predicted to overrun
    quiet_wait_s: float = 90.0  # before each job, wait up to this long for other processes to go idle
    contention_retry: float = 0.05  # re-measure once when other processes used more than this CPU share
    pause_pid: int | None = None
    command: str = ""

    def resolved_threads(self) -> int:
        return self.threads or os.cpu_count() or 1


@dataclass
class BackendInfo:
    name: str
    label: str
    kind: str
    precision: str
    device: str
    available: bool
    reason: str = ""


@dataclass
class Measurement:
    """One (backend, size): median latency and peak memory of a fresh process."""

    backend: str
    width: int
    height: int
    status: str  # ok | skipped | failed
    note: str = ""
    repeats: int = 0
    times_s: list[float] = field(default_factory=list)
    median_s: float | None = None
    min_s: float | None = None
    megapixels: float = 0.0
    mpix_per_s: float | None = None
    gflops: float | None = None
    peak_rss_mb: float | None = None
    base_rss_mb: float | None = None
    gpu_mem_mb: float | None = None
    wall_s: float | None = None
    foreign_cpu_share: float | None = None  # CPU share other processes used while this was measured
    quiet_wait_s: float | None = None

    def __post_init__(self) -> None:
        self.megapixels = self.width * self.height / 1e6


def parse_size(text: str) -> tuple[int, int]:
    """``"481x321"`` -> ``(481, 321)`` (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise ValueError(f"size must look like WIDTHxHEIGHT, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return w, h


# ------------------------------------------------------------------------ pausing
@contextlib.contextmanager
def paused(pid: int | None, log: Callable[[str], None] = print) -> Iterator[bool]:
    """SIGSTOP ``pid`` for the duration of the block; SIGCONT it afterwards, whatever happens.

    Yields whether the process was paused (``False`` for ``None`` or a process that is gone).
    SIGTERM/SIGINT/SIGHUP arriving meanwhile resume the process before the default handling.
    """
    if pid is None:
        yield False
        return
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        log(f"pause: process {pid} not found, measuring without pausing it")
        yield False
        return
    resumed = False

    def resume() -> None:
        nonlocal resumed
        if not resumed:
            resumed = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        resume()
        old = previous.get(signum)
        if callable(old):
            old(signum, frame)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            raise SystemExit(128 + signum)

    with contextlib.suppress(ValueError):  # signal handlers only install on the main thread
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            previous[sig] = signal.signal(sig, handler)
    log(f"pause: SIGSTOP sent to {pid}")
    try:
        yield True
    finally:
        resume()
        for sig, old in previous.items():
            signal.signal(sig, old)
        log(f"pause: SIGCONT sent to {pid}")


# ------------------------------------------------------------------------ probing
def _module_ok(name: str, attr: str | None = None) -> str:
    """'' if ``name`` (and ``name.attr``) imports, else the reason it does not."""
    import importlib

    try:
        module = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any import failure means unavailable
        return f"{name} not importable ({type(exc).__name__}: {exc})"
    if attr and not hasattr(module, attr):
        return f"{name}.{attr} missing"
    return ""


def probe_backends(names: tuple[str, ...] = tuple(BACKENDS)) -> list[BackendInfo]:
    """Which backends this machine (and this checkout) can run, and why not."""
    ort_reason = _module_ok("onnxruntime") or _module_ok("n3deploy.export.onnx_export", "export_onnx")
    providers: list[str] = []
    if not _module_ok("onnxruntime"):
        import onnxruntime

        providers = list(onnxruntime.get_available_providers())
    infos = []
    for name in names:
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}; choose from {sorted(BACKENDS)}")
        label, kind, precision, device = BACKENDS[name]
        reason = ""
        if kind == "torch" and device == "cuda":
            import torch

            if not torch.cuda.is_available():
                reason = "no CUDA GPU visible to PyTorch"
        elif kind == "ort":
            reason = ort_reason
            provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
            if not reason and provider not in providers:
                reason = f"onnxruntime has no {provider}"
        elif kind == "tensorrt":
            reason = (
                _module_ok("tensorrt")
                or _module_ok("n3deploy.export.onnx_export", "export_onnx")
                or _module_ok("n3deploy.backends", "load_backend")
            )
            if not reason:
                import torch

                if not torch.cuda.is_available():
                    reason = "no CUDA GPU"
        infos.append(BackendInfo(name, label, kind, precision, device, available=not reason, reason=reason))
    return infos


# ---------------------------------------------------------------------- machine
def machine_info(threads: int) -> dict[str, Any]:
    """CPU model, cores, memory, library versions, allocator tuning, GPU."""
    import psutil

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu": cpu,
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
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
        info["ort_providers"] = list(onnxruntime.get_available_providers())
    except ImportError:
        info["onnxruntime"] = None
    try:
        import tensorrt  # type: ignore[import-not-found]

        info["tensorrt"] = tensorrt.__version__
    except ImportError:
        info["tensorrt"] = None
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


def matmul_peak(n: int = 2048, threads: int = 1, repeats: int = 10) -> dict[str, float]:
    """Best float32 ``n x n @ n x n`` GFLOP/s with ``threads`` torch threads."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"n": n, "threads": threads, "best_s": best, "gflops": 2.0 * n**3 / best / 1e9}


# ------------------------------------------------------------------------ workers
def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _build_model(preset: str, seed: int, knn: str):
    import torch

    from ..config import N3NetConfig
    from ..model import N3Net

    torch.manual_seed(seed)
    return N3Net(N3NetConfig.preset(preset), knn=knn).eval()


def _timed_runs(fn: Callable[[], Any], warmup: int, repeats: int, max_job_s: float) -> list[float]:
    """Warm up, then time up to ``repeats`` calls (fewer where one call is long)."""
    first = None
    for _ in range(max(warmup, 1)):
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
    n = max(1, min(repeats, int(max_job_s / max(first or 0.0, 1e-9))))
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _worker_measure(job: dict[str, Any]) -> dict[str, Any]:
    """Run in a fresh process: build one backend, time it at one size, report memory."""
    tune_cpu_allocator()
    import numpy as np

    kind, device = job["kind"], job["device"]
    h, w, threads = job["height"], job["width"], job["threads"]
    rng = np.random.default_rng(job["seed"])
    x = rng.random((1, job["channels"], h, w), dtype=np.float32)
    gpu_mem: Callable[[], float | None] = lambda: None  # noqa: E731
    if kind == "torch":
        import torch

        from ..backends.torch_backend import TorchBackend

        torch.set_num_threads(threads)
        model = _build_model(job["preset"], job["seed"], job["knn"])
        # numpy in, numpy out: on CUDA the time includes the copies and the synchronisation
        backend = TorchBackend.from_model(model, device, precision=job["precision"])

        def fn() -> Any:
            return backend.run(x)

    elif kind == "ort":
        from ..backends.onnxruntime_backend import OnnxRuntimeBackend

        # the session settings the Denoiser and `n3deploy` use (memory pattern off, arena on)
        backend = OnnxRuntimeBackend(job["onnx"], device=device, threads=threads, strict=True)

        def fn() -> Any:
            return backend.run(x)

    elif kind == "tensorrt":
        from ..backends import load_backend  # type: ignore[attr-defined]

        backend = load_backend(job["onnx"], backend="tensorrt")

        def fn() -> Any:
            return backend.run(x)

    else:
        raise ValueError(f"unknown backend kind {kind!r}")
    if device == "cuda":
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

            def gpu_mem() -> float | None:
                if kind == "torch":  # peak of PyTorch's own allocations (tensors, incl. workspaces)
                    return torch.cuda.max_memory_allocated() / 2**20
                free, total = torch.cuda.mem_get_info()  # other runtimes: device memory in use
                return (total - free) / 2**20

    base = _rss_mb()
    times = _timed_runs(fn, job["warmup"], job["repeats"], job["max_job_s"])
    return {"times_s": times, "base_rss_mb": base, "peak_rss_mb": _peak_rss_mb(), "gpu_mem_mb": gpu_mem()}


def _worker_breakdown(job: dict[str, Any]) -> dict[str, Any]:
    """Breakdown of each KNN in ``job["knns"]``, one after the other in this process."""
    tune_cpu_allocator()
    import torch

    from .breakdown import forward_breakdown

    torch.set_num_threads(job["threads"])
    out: dict[str, Any] = {}
    for knn in job["knns"]:
        model = _build_model(job["preset"], job["seed"], knn)
        torch.manual_seed(job["seed"])
        x = torch.rand(1, job["channels"], job["height"], job["width"])
        try:
            out[knn] = {"ok": True, **forward_breakdown(model, x, repeats=job["repeats"], warmup=1).to_dict(),
                        "peak_rss_mb": _peak_rss_mb()}
        except Exception as exc:  # noqa: BLE001 - reported per KNN
            out[knn] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return out


def _worker_export(job: dict[str, Any]) -> dict[str, Any]:
    from ..export.onnx_export import export_onnx

    model = _build_model(job["preset"], job["seed"], "static")
    export_onnx(model, job["onnx"], fp16=job["fp16"])
    return {"onnx": job["onnx"]}


def _worker_denoiser(job: dict[str, Any]) -> dict[str, Any]:
    """``Denoiser(onnx).denoise`` of one RGB uint8 image in a fresh process: time and peak RSS."""
    tune_cpu_allocator()
    import numpy as np

    from ..denoiser import Denoiser

    denoiser = Denoiser(job["onnx"], backend="onnxruntime")
    rng = np.random.default_rng(job["seed"])
    image = rng.integers(0, 256, (job["height"], job["width"], 3), dtype=np.uint8)
    base = _rss_mb()
    t0 = time.perf_counter()
    out = denoiser.denoise(image)
    seconds = time.perf_counter() - t0
    if out.shape != image.shape or out.dtype != image.dtype:
        raise RuntimeError(f"Denoiser returned {out.shape} {out.dtype} for {image.shape} {image.dtype}")
    return {"seconds": seconds, "base_rss_mb": base, "peak_rss_mb": _peak_rss_mb(), "backend": denoiser.backend,
            "tile": list(denoiser.plan.tile), "overlap": denoiser.plan.overlap}


_WORKERS = {"measure": _worker_measure, "breakdown": _worker_breakdown, "export": _worker_export,
            "denoiser": _worker_denoiser}


def worker_main(argv: list[str]) -> int:
    """``python -m n3deploy.benchmarking.suite worker JSON``: prints one JSON result line."""
    job = json.loads(argv[0])
    try:
        result = {"ok": True, **_WORKERS[job["task"]](job)}
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print("@@RESULT@@" + json.dumps(result), flush=True)
    return 0


def _busy_cpu_s() -> float:
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def _own_cpu_s() -> float:
    import resource

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def wait_for_quiet(max_wait_s: float, threshold: float = 10.0) -> float:
    """Sample system CPU use until below ``threshold`` percent (or ``max_wait_s``); returns seconds waited."""
    import psutil

    if max_wait_s <= 0:
        return 0.0
    t0 = time.monotonic()
    while psutil.cpu_percent(interval=0.5) >= threshold and time.monotonic() - t0 < max_wait_s:
        pass
    return time.monotonic() - t0


def run_worker_accounted(job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """:func:`run_worker`, plus ``foreign_cpu_share``: the CPU other processes used meanwhile (0..1)."""
    busy0, own0, t0 = _busy_cpu_s(), _own_cpu_s(), time.monotonic()
    res = run_worker(job, timeout_s)
    wall = time.monotonic() - t0
    foreign = (_busy_cpu_s() - busy0) - (_own_cpu_s() - own0)
    res["foreign_cpu_share"] = max(0.0, foreign) / (wall * (os.cpu_count() or 1))
    res["wall_s"] = wall
    return res


def run_worker(job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run ``job`` in a fresh interpreter; returns its result dict (``ok`` False on failure)."""
    cmd = [sys.executable, "-m", "n3deploy.benchmarking.suite", "worker", json.dumps(job)]
    root = str(Path(__file__).resolve().parents[2])
    # every worker, whatever its backend, gets the huge-page tunable the command line runs with
    env = {**hugepage_env(), "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    threads = str(job.get("threads", 1))
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=root)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout_s:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@"):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"ok": False, "error": f"worker exited {proc.returncode}: {' | '.join(tail)}"}


# -------------------------------------------------------------------------- suite
def _graph_source_digest() -> str:
    """Digest of the code an exported graph depends on (model, KNN, export), so a cached graph
    is never reused after that code changed."""
    root = Path(__file__).resolve().parents[1]
    files = sorted([root / "config.py", root / "model.py", *(root / "knn").glob("*.py"), *(root / "export").glob("*.py")])
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def _export_cache(settings: BenchSettings, fp16: bool) -> Path:
    key = hashlib.sha256(
        json.dumps([settings.preset, settings.seed, fp16, SCHEMA_VERSION, _graph_source_digest()]).encode()
    ).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / "n3deploy-bench-cache"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"n3net-{settings.preset}-{'fp16' if fp16 else 'fp32'}-{key}.onnx"


def _export_graphs(settings: BenchSettings, infos: list[BackendInfo], log: Callable[[str], None]) -> dict[str, str]:
    """Export (or reuse) one graph per precision the selected ONNX-based backends need."""
    graphs: dict[str, str] = {}
    for info in infos:
        if not info.available or info.kind not in ("ort", "tensorrt"):
            continue
        if info.precision in graphs:
            continue
        path = _export_cache(settings, info.precision == "fp16")
        if not path.exists():
            log(f"export: {path.name}")
            res = run_worker(
                {"task": "export", "preset": settings.preset, "seed": settings.seed, "onnx": str(path),
                 "fp16": info.precision == "fp16", "threads": settings.resolved_threads()},
                settings.job_timeout_s,
            )
            if not res["ok"] or not path.exists():
                for other in infos:
                    if other.kind in ("ort", "tensorrt") and other.precision == info.precision:
                        other.available, other.reason = False, f"export failed: {res.get('error')}"
                continue
        graphs[info.precision] = str(path)
    return graphs


def _predict(previous: list[Measurement], mp: float) -> tuple[float | None, float | None]:
    """(seconds, peak MB) predicted for ``mp`` megapixels from the largest size measured so far."""
    ok = [m for m in previous if m.status == "ok" and m.median_s]
    if not ok:
        return None, None
    last = max(ok, key=lambda m: m.megapixels)
    scale = mp / last.megapixels
    job_s = last.median_s * scale * (1 + min(len(last.times_s), 5))  # warm-up + repeats
    mem = None
    if last.peak_rss_mb is not None and last.base_rss_mb is not None:
        mem = last.base_rss_mb + (last.peak_rss_mb - last.base_rss_mb) * scale
    return job_s, mem


def evaluate_criteria(doc: dict[str, Any]) -> dict[str, Any]:
    """The issue's bars: ORT CPU RSS scaling 1080p vs 1024², and CPU efficiency at 481x321."""
    rows = {(r["backend"], r["width"], r["height"]): r for r in doc["results"] if r["status"] == "ok"}
    out: dict[str, Any] = {}
    a, b = rows.get(("ort-cpu-fp32", 1920, 1080)), rows.get(("ort-cpu-fp32", 1024, 1024))
    crit: dict[str, Any] = {"bar": "ORT CPU peak RSS at 1920x1080 <= 2.5x that at 1024x1024", "limit": 2.5}
    if a and b:
        crit["ratio"] = a["peak_rss_mb"] / b["peak_rss_mb"]
        crit["met"] = crit["ratio"] <= 2.5
    else:
        crit["met"], crit["reason"] = None, "ort-cpu-fp32 not measured at both 1920x1080 and 1024x1024"
    out["ort_rss_scaling"] = crit
    w, h = BREAKDOWN_SIZE
    cpu = [r for (name, rw, rh), r in rows.items() if (rw, rh) == (w, h) and BACKENDS[name][3] == "cpu"]
    peak = doc.get("matmul_peak", {}).get("gflops")
    crit = {"bar": f"fastest CPU backend at {w}x{h} reaches >= 50% of measured matmul GFLOP/s", "limit": 0.5}
    if cpu and peak:
        best = min(cpu, key=lambda r: r["median_s"])
        crit.update(backend=best["backend"], gflops=best["gflops"], peak_gflops=peak,
                    fraction=best["gflops"] / peak, met=best["gflops"] / peak >= 0.5)
    else:
        crit["met"], crit["reason"] = None, "no CPU backend measured at that size, or no matmul peak"
    out["cpu_efficiency"] = crit
    ort, torch_ = rows.get(("ort-cpu-fp32", w, h)), rows.get(("torch-static", w, h))
    if ort and torch_:
        out["ort_vs_torch_static"] = {"size": f"{w}x{h}", "speedup": torch_["median_s"] / ort["median_s"]}
    den = doc.get("denoiser") or {}
    crit = {"bar": f"Denoiser on the FP32 ONNX graph, {den.get('width', DENOISER_SIZE[0])}x"
                   f"{den.get('height', DENOISER_SIZE[1])} RGB uint8 on CPU: peak RSS <= 3 GB",
            "limit_mb": DENOISER_RSS_LIMIT_MB}
    if den.get("ok"):
        crit.update(peak_rss_mb=den["peak_rss_mb"], met=den["peak_rss_mb"] <= DENOISER_RSS_LIMIT_MB)
    else:
        crit["met"], crit["reason"] = None, den.get("error", "not measured")
    out["denoiser_rss"] = crit
    return out


def merge_results(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new`` with what ``old`` measured and ``new`` did not: rows by (backend, size), the breakdown.

    The commands of both runs are kept (``commands``); the matmul peak is the higher of the two and
    the breakdown the one measured with less CPU used by other processes.
    """
    merged = dict(new)
    key = lambda r: (r["backend"], r["width"], r["height"])  # noqa: E731
    fresh = {key(r): r for r in new["results"] if r["status"] == "ok"}
    rows = [fresh.pop(key(r), r) for r in old.get("results", [])]
    rows += [r for r in new["results"] if key(r) in fresh or key(r) not in {key(o) for o in rows}]
    merged["results"] = rows
    probed = {b["name"] for b in new.get("backends", [])}
    merged["backends"] = [*new.get("backends", []), *(b for b in old.get("backends", []) if b["name"] not in probed)]
    if not (new.get("denoiser") or {}).get("ok") and (old.get("denoiser") or {}).get("ok"):
        merged["denoiser"] = old["denoiser"]
    ob, nb = old.get("breakdown") or {}, new.get("breakdown") or {}
    if ob and (not nb or ob.get("foreign_cpu_share", 1.0) < nb.get("foreign_cpu_share", 1.0)):
        merged["breakdown"] = ob  # keep the less contended breakdown
    merged["commands"] = [*old.get("commands", [old.get("command", "")]), new["command"]]
    op, np_ = old.get("matmul_peak", {}), new.get("matmul_peak", {})
    if op.get("gflops", 0) > np_.get("gflops", 0):
        merged["matmul_peak"] = op
    merged["criteria"] = evaluate_criteria(merged)
    return merged


def _write(doc: dict[str, Any], path: Path | None) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    tmp.replace(path)


def run_suite(settings: BenchSettings, json_path: Path | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run everything ``settings`` asks for; returns the results document (also written to ``json_path``)."""
    import psutil

    from ..config import N3NetConfig
    from .flops import model_flops_per_pixel

    threads = settings.resolved_threads()
    config = N3NetConfig.preset(settings.preset)
    flops = model_flops_per_pixel(config)
    infos = probe_backends(settings.backends)
    for info in infos:
        log(f"backend {info.name}: {'available' if info.available else 'unavailable (' + info.reason + ')'}")
    graphs = _export_graphs(settings, infos, log)
    doc: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": settings.command,
        "settings": {**asdict(settings), "threads": threads},
        "machine": machine_info(threads),
        "config": config.to_dict(),
        "flops_per_pixel": flops.to_dict(),
        "backends": [asdict(i) for i in infos],
        "results": [],
        "breakdown": {},
        "load": {},
    }
    started = time.monotonic()
    with paused(settings.pause_pid, log) as was_paused:
        doc["pause"] = {"pid": settings.pause_pid, "paused": was_paused}
        time.sleep(1.0 if was_paused else 0.0)
        doc["load"]["loadavg_start"] = os.getloadavg()
        doc["load"]["cpu_percent_start"] = psutil.cpu_percent(interval=0.5)
        log(f"load: loadavg {doc['load']['loadavg_start']}, cpu {doc['load']['cpu_percent_start']}%")
        wait_for_quiet(settings.quiet_wait_s)
        doc["matmul_peak"] = matmul_peak(settings.matmul_n, threads)
        log(f"matmul peak: {doc['matmul_peak']['gflops']:.1f} GFLOP/s ({threads} threads)")
        _write(doc, json_path)
        if settings.breakdown:
            _run_breakdown(settings, doc, json_path, log)
        for width, height in sorted(settings.sizes, key=lambda s: s[0] * s[1]):
            for info in infos:
                m = _measure_one(settings, info, width, height, graphs, doc, started)
                doc["results"].append(asdict(m))
                log(_describe(m))
                doc["criteria"] = evaluate_criteria(doc)
                _write(doc, json_path)
        if settings.denoiser_size:
            _run_denoiser(settings, graphs, doc, log)
            doc["criteria"] = evaluate_criteria(doc)
            _write(doc, json_path)
        wait_for_quiet(settings.quiet_wait_s)
        end_peak = matmul_peak(settings.matmul_n, threads)
        log(f"matmul peak at the end: {end_peak['gflops']:.1f} GFLOP/s")
        doc["matmul_peak"]["start_gflops"] = doc["matmul_peak"]["gflops"]
        doc["matmul_peak"]["end_gflops"] = end_peak["gflops"]
        if end_peak["gflops"] > doc["matmul_peak"]["gflops"]:
            doc["matmul_peak"].update(best_s=end_peak["best_s"], gflops=end_peak["gflops"])
        doc["load"]["loadavg_end"] = os.getloadavg()
    doc["criteria"] = evaluate_criteria(doc)
    doc["total_wall_s"] = time.monotonic() - started
    _write(doc, json_path)
    return doc


def _describe(m: Measurement) -> str:
    head = f"{m.backend:16s} {m.width}x{m.height}"
    if m.status != "ok":
        return f"{head}: {m.status} ({m.note})"
    return (f"{head}: {m.median_s:.3f} s median of {m.repeats}, {m.mpix_per_s:.3f} MP/s, "
            f"{m.gflops:.1f} GFLOP/s, peak RSS {m.peak_rss_mb:.0f} MB, other load {m.foreign_cpu_share:.0%}")


def _measure_one(settings: BenchSettings, info: BackendInfo, width: int, height: int,
                 graphs: dict[str, str], doc: dict[str, Any], started: float) -> Measurement:
    m = Measurement(info.name, width, height, status="skipped")
    if not info.available:
        m.note = f"unavailable ({info.reason})"
        return m
    if info.name == "torch-reference" and width * height > settings.reference_max_pixels:
        m.note = f"reference KNN limited to <= {settings.reference_max_pixels} pixels (slow by design)"
        return m
    import psutil

    previous = [Measurement(**r) for r in doc["results"] if r["backend"] == info.name]
    pred_s, pred_mb = _predict(previous, m.megapixels)
    avail_mb = psutil.virtual_memory().available / 2**20
    if pred_mb is not None and info.device == "cpu" and pred_mb > settings.memory_fraction * avail_mb:
        m.note = f"does not fit: predicted peak RSS {pred_mb:.0f} MB > {settings.memory_fraction:.0%} of {avail_mb:.0f} MB available"
        return m
    if settings.budget_s and pred_s is not None and time.monotonic() - started + pred_s > settings.budget_s:
        m.note = f"over time budget: predicted {pred_s:.0f} s"
        return m
    knn = "reference" if info.name == "torch-reference" else "static"
    job = {
        "task": "measure", "kind": info.kind, "device": info.device, "knn": knn, "preset": settings.preset,
        "seed": settings.seed, "channels": doc["config"]["in_channels"], "height": height, "width": width,
        "threads": settings.resolved_threads(), "warmup": settings.warmup, "repeats": settings.repeats,
        "max_job_s": settings.max_job_s, "onnx": graphs.get(info.precision), "precision": info.precision,
    }
    waited = wait_for_quiet(settings.quiet_wait_s)
    res = run_worker_accounted(job, settings.job_timeout_s)
    if res["ok"] and res["foreign_cpu_share"] > settings.contention_retry and res["wall_s"] < 2 * settings.max_job_s:
        waited += wait_for_quiet(settings.quiet_wait_s)
        again = run_worker_accounted(job, settings.job_timeout_s)
        if again["ok"] and again["foreign_cpu_share"] < res["foreign_cpu_share"]:
            res = again
    m.wall_s, m.foreign_cpu_share, m.quiet_wait_s = res["wall_s"], res["foreign_cpu_share"], waited
    if not res["ok"]:
        m.status, m.note = "failed", res["error"]
        return m
    times = res["times_s"]
    m.status, m.times_s, m.repeats = "ok", times, len(times)
    m.median_s, m.min_s = statistics.median(times), min(times)
    m.mpix_per_s = m.megapixels / m.median_s
    m.gflops = doc["flops_per_pixel"]["total"] * width * height / m.median_s / 1e9
    m.peak_rss_mb, m.base_rss_mb, m.gpu_mem_mb = res["peak_rss_mb"], res["base_rss_mb"], res["gpu_mem_mb"]
    return m


def _run_breakdown(settings: BenchSettings, doc: dict[str, Any], json_path: Path | None, log: Callable[[str], None]) -> None:
    w, h = settings.breakdown_size
    knns = ("static", "reference")
    job = {"task": "breakdown", "knns": list(knns), "preset": settings.preset, "seed": settings.seed,
           "channels": doc["config"]["in_channels"], "height": h, "width": w,
           "threads": settings.resolved_threads(), "repeats": settings.breakdown_repeats}
    waited = wait_for_quiet(settings.quiet_wait_s)
    res = run_worker_accounted(job, settings.job_timeout_s)
    if res["ok"] and res["foreign_cpu_share"] > settings.contention_retry:
        log(f"breakdown: other processes used {res['foreign_cpu_share']:.0%} of the CPU, measuring again")
        waited += wait_for_quiet(settings.quiet_wait_s)
        again = run_worker_accounted(job, settings.job_timeout_s)
        if again["ok"] and again["foreign_cpu_share"] < res["foreign_cpu_share"]:
            res = again
    doc["breakdown"]["foreign_cpu_share"] = res["foreign_cpu_share"]
    doc["breakdown"]["quiet_wait_s"] = waited
    for knn in knns:
        r = res.get(knn) if res["ok"] else {"ok": False, "error": res["error"]}
        doc["breakdown"][knn] = r
        if r["ok"]:
            log(f"breakdown {knn} {w}x{h}: total {r['total_s']:.3f} s, non-local {r['nonlocal_s']:.3f} s "
                f"({r['nonlocal_share']:.0%}), CNN {r['cnn_s']:.3f} s")
        else:
            log(f"breakdown {knn}: failed ({r['error']})")
    _write(doc, json_path)
    s, r = doc["breakdown"].get("static", {}), doc["breakdown"].get("reference", {})
    if s.get("ok") and r.get("ok"):
        doc["breakdown"]["speedup_total"] = r["total_s"] / s["total_s"]
        doc["breakdown"]["speedup_nonlocal"] = r["nonlocal_s"] / s["nonlocal_s"]


def _run_denoiser(settings: BenchSettings, graphs: dict[str, str], doc: dict[str, Any], log: Callable[[str], None]) -> None:
    w, h = settings.denoiser_size
    if "fp32" not in graphs:
        doc["denoiser"] = {"ok": False, "width": w, "height": h, "error": "no FP32 ONNX graph (ONNX Runtime unavailable?)"}
        return
    job = {"task": "denoiser", "onnx": graphs["fp32"], "width": w, "height": h, "seed": settings.seed,
           "threads": settings.resolved_threads()}
    waited = wait_for_quiet(settings.quiet_wait_s)
    res = run_worker_accounted(job, settings.job_timeout_s)
    doc["denoiser"] = {**res, "width": w, "height": h, "quiet_wait_s": waited}
    if res["ok"]:
        log(f"denoiser {w}x{h} RGB uint8 ({res['backend']}, tiles {res['tile']}, overlap {res['overlap']}): "
            f"{res['seconds']:.1f} s, peak RSS {res['peak_rss_mb']:.0f} MB")
    else:
        log(f"denoiser {w}x{h}: failed ({res['error']})")


def command_line(prog: str, argv: list[str]) -> str:
    """The shell command that reproduces a run."""
    return " ".join([prog, shlex.join(argv)]) if argv else prog


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "worker":
        sys.exit(worker_main(sys.argv[2:]))
    print("usage: python -m n3deploy.benchmarking.suite worker JSON  (use `n3deploy bench` instead)", file=sys.stderr)
    sys.exit(2)
