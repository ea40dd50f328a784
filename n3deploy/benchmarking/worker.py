"""The worker protocol: every measurement runs in a fresh interpreter, so its peak RSS is its own.

The parent calls :func:`run_worker` with a JSON job (``{"task": ..., ...}``); the child
(``python -m n3deploy.benchmarking.worker JSON``) runs the task and prints one
``@@RESULT@@{json}`` line. Tasks: ``measure`` (one row at one size, through
:func:`n3deploy.backends.load_backend`), ``breakdown``, ``export`` (build a model file),
``denoiser``, ``peaks`` (matmul peaks) and ``scenario`` (one registered scenario).
:func:`run_worker_accounted` also reports the CPU share other processes used meanwhile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ..perf import hugepage_env, tune_cpu_allocator

__all__ = ["run_worker", "run_worker_accounted", "wait_for_quiet", "worker_main", "TASKS"]

_MARK = "@@RESULT@@"


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _build_model(preset: str, seed: int, knn: str = "static") -> Any:
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


def _task_measure(job: dict[str, Any]) -> dict[str, Any]:
    """Open the row's model file with the registry's ``load_backend``, time it at one size, report memory."""
    tune_cpu_allocator()
    import numpy as np

    from ..backends import load_backend
    from .rows import get_row

    row = get_row(job["row"])
    h, w, threads = job["height"], job["width"], job["threads"]
    x = np.random.default_rng(job["seed"]).random((1, job["channels"], h, w), dtype=np.float32)
    opts: dict[str, Any] = {"threads": threads} if row.takes_threads else {}
    if row.backend == "torch":
        import torch

        torch.set_num_threads(threads)
        opts["knn"] = row.knn
    elif row.backend == "onnxruntime":
        opts["strict"] = True  # refuse a silent fallback from CUDA to CPU
    # numpy in, numpy out: on CUDA the time includes the copies and the synchronisation
    backend = load_backend(job["model"], row.backend, device=row.device, precision=row.precision, **opts)
    gpu_mem: Callable[[], float | None] = lambda: None  # noqa: E731
    if row.device == "cuda":
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

            def gpu_mem() -> float | None:
                if row.backend == "torch":  # peak of PyTorch's own allocations (tensors, incl. workspaces)
                    return torch.cuda.max_memory_allocated() / 2**20
                free, total = torch.cuda.mem_get_info()  # other runtimes: device memory in use
                return (total - free) / 2**20

    base = _rss_mb()
    times = _timed_runs(lambda: backend.run(x), job["warmup"], job["repeats"], job["max_job_s"])
    return {"times_s": times, "base_rss_mb": base, "peak_rss_mb": _peak_rss_mb(), "gpu_mem_mb": gpu_mem(),
            "providers": list(backend.providers)}


def _task_breakdown(job: dict[str, Any]) -> dict[str, Any]:
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


def _task_export(job: dict[str, Any]) -> dict[str, Any]:
    """Write the random-weight model of ``preset``/``seed`` as ``kind`` (checkpoint, onnx-fp32, onnx-fp16),
    or, with ``model`` (a registry name or checkpoint), that model's cached ONNX export."""
    if job.get("model") is not None:
        from ..export.cache import cached_export

        return {"path": str(cached_export(job["model"], fp16=job["kind"] == "onnx-fp16"))}
    model = _build_model(job["preset"], job["seed"])
    if job["kind"] == "checkpoint":
        from ..checkpoint import save_checkpoint

        save_checkpoint(model, job["path"])
    else:
        from ..export.onnx_export import export_onnx

        export_onnx(model, job["path"], fp16=job["kind"] == "onnx-fp16")
    return {"path": job["path"]}


def _task_denoiser(job: dict[str, Any]) -> dict[str, Any]:
    """``Denoiser(onnx).denoise`` of one RGB uint8 image in a fresh process: time and peak RSS."""
    tune_cpu_allocator()
    import numpy as np

    from ..denoiser import Denoiser

    denoiser = Denoiser(job["onnx"], backend="onnxruntime", threads=job["threads"])
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


def _task_peaks(job: dict[str, Any]) -> dict[str, Any]:
    """Matmul peaks of ``job["precisions"]``, each the best of 10 runs."""
    from .machine import matmul_peak

    return {"peaks": {p: matmul_peak(job["n"], job["threads"], precision=p) for p in job["precisions"]}}


def _task_scenario(job: dict[str, Any]) -> dict[str, Any]:
    """Run one registered scenario (``scenarios.py``) and return its results dict."""
    import importlib

    from .scenarios import ScenarioOptions, get_scenario

    if job.get("module"):  # a scenario registered outside SCENARIO_MODULES (e.g. a plug-in)
        importlib.import_module(job["module"])
    scenario = get_scenario(job["name"])
    options = ScenarioOptions(threads=job["threads"], quick=job["quick"], max_job_s=job["max_job_s"])
    t0 = time.perf_counter()
    results = scenario.run(options)
    return {"results": results, "seconds": time.perf_counter() - t0, "peak_rss_mb": _peak_rss_mb()}


TASKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "measure": _task_measure, "breakdown": _task_breakdown, "export": _task_export, "denoiser": _task_denoiser,
    "peaks": _task_peaks, "scenario": _task_scenario,
}


def worker_main(argv: list[str]) -> int:
    """``python -m n3deploy.benchmarking.worker JSON``: prints one result line."""
    job = json.loads(argv[0])
    try:
        result = {"ok": True, **TASKS[job["task"]](job)}
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print(_MARK + json.dumps(result, default=str), flush=True)
    return 0


def run_worker(job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run ``job`` in a fresh interpreter; returns its result dict (``ok`` False on failure)."""
    cmd = [sys.executable, "-m", "n3deploy.benchmarking.worker", json.dumps(job)]
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
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"ok": False, "error": f"worker exited {proc.returncode}: {' | '.join(tail)}"}


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


if __name__ == "__main__":
    if len(sys.argv) >= 2:
        sys.exit(worker_main(sys.argv[1:]))
    print("usage: python -m n3deploy.benchmarking.worker JSON  (use `n3deploy bench` instead)", file=sys.stderr)
    sys.exit(2)
