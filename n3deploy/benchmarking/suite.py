"""The benchmark suite behind ``n3deploy bench`` and ``runtime/bench.py``: what runs in which order.

For every available row (:mod:`.rows`: a registry backend, device and precision) and every image
size it measures, each in a *fresh worker process* (:mod:`.worker`, so the peak RSS belongs to that
one row and size): median latency after warm-up, megapixels/s, achieved GFLOP/s (analytic count,
:mod:`.flops`), peak RSS (``ru_maxrss``) and GPU memory. It also measures the machine's matmul peaks
in FP32 and BF16 (:mod:`.machine`), the PyTorch forward breakdown (:mod:`.breakdown`), the
``Denoiser`` on a large RGB photo, and the requested scenarios (:mod:`.scenarios`). Everything lands
in one JSON document, written after every measurement; :mod:`.report` renders it.

Model files come from :mod:`.artifacts`, sizes that cannot fit are skipped by :mod:`.prediction`,
another process can be paused meanwhile (:mod:`.pausing`), and ``--update`` merges (:mod:`.merge`).
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from ..fileio import atomic_path
from .artifacts import build_artifacts, check_model
from .machine import PEAK_DTYPES, machine_info, matmul_peak, probe_rows
from .merge import matmul_peaks, merge_results
from .pausing import paused
from .prediction import predict
from .rows import ROWS, get_row
from .settings import (
    DEFAULT_SIZES, QUICK_SIZES, SCHEMA_VERSION, BackendInfo, BenchSettings, Measurement, RowInfo, parse_size,
)
from .worker import run_worker_accounted, wait_for_quiet

__all__ = [
    "BenchSettings", "RowInfo", "BackendInfo", "Measurement", "ROWS", "DEFAULT_SIZES", "QUICK_SIZES",
    "parse_size", "probe_rows", "paused", "matmul_peak", "run_suite", "merge_results", "matmul_peaks",
    "command_line", "run_scenarios",
]


def _write(doc: dict[str, Any], path: Path | None) -> None:
    if path is None:
        return
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=2, default=str) + "\n")


def _measure_peaks(settings: BenchSettings) -> dict[str, dict[str, Any]]:
    """FP32 and BF16 matmul peaks, measured in a worker (so this process stays torch-thread-free)."""
    res = run_worker_accounted({"task": "peaks", "n": settings.matmul_n, "threads": settings.resolved_threads(),
                                "precisions": list(PEAK_DTYPES)}, settings.job_timeout_s)
    if not res["ok"]:
        return {p: {"precision": p, "error": res["error"]} for p in PEAK_DTYPES}
    return res["peaks"]


def run_suite(settings: BenchSettings, json_path: Path | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run everything ``settings`` asks for; returns the results document (also written to ``json_path``)."""
    import psutil

    from ..config import N3NetConfig
    from .flops import model_flops_per_pixel

    threads = settings.resolved_threads()
    config = N3NetConfig.preset(settings.preset)
    flops = model_flops_per_pixel(config)
    infos = probe_rows(settings.backends) if settings.sizes else []
    for info in infos:
        log(f"row {info.name}: {'available' if info.available else 'unavailable (' + info.reason + ')'}")
    check_model(settings)
    files = build_artifacts(settings, infos, log)
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
        "scenarios": {},
    }
    started = time.monotonic()
    with paused(settings.pause_pid, log) as was_paused:
        doc["pause"] = {"pid": settings.pause_pid, "paused": was_paused}
        time.sleep(1.0 if was_paused else 0.0)
        doc["load"]["loadavg_start"] = os.getloadavg()
        doc["load"]["cpu_percent_start"] = psutil.cpu_percent(interval=0.5)
        log(f"load: loadavg {doc['load']['loadavg_start']}, cpu {doc['load']['cpu_percent_start']}%")
        wait_for_quiet(settings.quiet_wait_s)
        doc["matmul_peaks"] = _measure_peaks(settings)
        for p, peak in doc["matmul_peaks"].items():
            log(f"matmul peak {p}: {peak['gflops']:.1f} GFLOP/s ({threads} threads)" if "gflops" in peak
                else f"matmul peak {p}: failed ({peak['error']})")
        _write(doc, json_path)
        if settings.breakdown:
            _run_breakdown(settings, doc, json_path, log)
        for width, height in sorted(settings.sizes, key=lambda s: s[0] * s[1]):
            for info in infos:
                m = _measure_one(settings, info, width, height, files, doc, started)
                doc["results"].append(asdict(m))
                log(_describe(m))
                _write(doc, json_path)
        if settings.denoiser_size:
            _run_denoiser(settings, files, doc, log)
            _write(doc, json_path)
        if settings.scenarios:
            doc["scenarios"] = run_scenarios(settings, log)
            _write(doc, json_path)
        wait_for_quiet(settings.quiet_wait_s)
        for p, peak in _measure_peaks(settings).items():
            first = doc["matmul_peaks"].get(p, {})
            if "gflops" not in peak:
                continue
            log(f"matmul peak {p} at the end: {peak['gflops']:.1f} GFLOP/s")
            first.setdefault("start_gflops", first.get("gflops"))
            first["end_gflops"] = peak["gflops"]
            if peak["gflops"] > (first.get("gflops") or 0):
                first.update(best_s=peak["best_s"], gflops=peak["gflops"])
        doc["load"]["loadavg_end"] = os.getloadavg()
    doc["total_wall_s"] = time.monotonic() - started
    _write(doc, json_path)
    return doc


def run_scenarios(settings: BenchSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Each scenario in ``settings.scenarios`` (``all``: every registered one) in its own worker process.

    Returns ``{name: {"ok", "title", "results" | "error", "seconds", "wall_s", ...}}``.
    """
    from .scenarios import scenarios

    known = scenarios()
    names = list(known) if "all" in settings.scenarios else list(settings.scenarios)
    out: dict[str, Any] = {}
    for name in names:
        if name not in known:
            raise ValueError(f"unknown benchmark scenario {name!r}; choose from all, {', '.join(known) or '(none)'}")
        scenario = known[name]
        missing = [m for m in scenario.needs if not _importable(m)]
        if missing:
            out[name] = {"ok": False, "title": scenario.title, "error": f"needs {', '.join(missing)} (not installed)"}
            log(f"scenario {name}: skipped ({out[name]['error']})")
            continue
        log(f"scenario {name}: {scenario.title}")
        wait_for_quiet(settings.quiet_wait_s)
        job = {"task": "scenario", "name": name, "module": getattr(scenario.run, "__module__", None),
               "threads": settings.resolved_threads(), "quick": settings.quick, "max_job_s": settings.max_job_s}
        res = run_worker_accounted(job, max(settings.job_timeout_s, scenario.min_timeout_s))
        out[name] = {"title": scenario.title, "command": settings.command, **res}
        log(f"scenario {name}: {'done in %.0f s' % res['wall_s'] if res['ok'] else 'failed (' + res['error'] + ')'}")
    return out


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _describe(m: Measurement) -> str:
    head = f"{m.backend:16s} {m.width}x{m.height}"
    if m.status != "ok":
        return f"{head}: {m.status} ({m.note})"
    return (f"{head}: {m.median_s:.3f} s median of {m.repeats}, {m.mpix_per_s:.3f} MP/s, "
            f"{m.gflops:.1f} GFLOP/s, peak RSS {m.peak_rss_mb:.0f} MB, other load {m.foreign_cpu_share:.0%}")


def _measure_one(settings: BenchSettings, info: RowInfo, width: int, height: int,
                 files: dict[str, str], doc: dict[str, Any], started: float) -> Measurement:
    m = Measurement(info.name, width, height, status="skipped")
    if not info.available:
        m.note = f"unavailable ({info.reason})"
        return m
    row = get_row(info.name)
    if row.knn == "reference" and width * height > settings.reference_max_pixels:
        m.note = f"reference KNN limited to <= {settings.reference_max_pixels} pixels (slow by design)"
        return m
    import psutil

    previous = [Measurement(**r) for r in doc["results"] if r["backend"] == info.name]
    pred_s, pred_mb = predict(previous, m.megapixels)
    avail_mb = psutil.virtual_memory().available / 2**20
    if pred_mb is not None and info.device == "cpu" and pred_mb > settings.memory_fraction * avail_mb:
        m.note = f"does not fit: predicted peak RSS {pred_mb:.0f} MB > {settings.memory_fraction:.0%} of {avail_mb:.0f} MB available"
        return m
    if settings.budget_s and pred_s is not None and time.monotonic() - started + pred_s > settings.budget_s:
        m.note = f"over time budget: predicted {pred_s:.0f} s"
        return m
    job = {
        "task": "measure", "row": info.name, "model": files[row.opens], "seed": settings.seed,
        "channels": doc["config"]["in_channels"], "height": height, "width": width,
        "threads": settings.resolved_threads(), "warmup": settings.warmup, "repeats": settings.repeats,
        "max_job_s": settings.max_job_s,
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


def _run_denoiser(settings: BenchSettings, files: dict[str, str], doc: dict[str, Any], log: Callable[[str], None]) -> None:
    assert settings.denoiser_size is not None
    w, h = settings.denoiser_size
    if "onnx-fp32" not in files:
        doc["denoiser"] = {"ok": False, "width": w, "height": h,
                           "error": "no FP32 ONNX graph (no ONNX Runtime row selected, or ONNX Runtime unavailable)"}
        return
    job = {"task": "denoiser", "onnx": files["onnx-fp32"], "width": w, "height": h, "seed": settings.seed,
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
