"""Benchmark scenario ``ray_batch``: ``n3deploy denoise --engine local`` vs ``--engine ray``.

Runs the real command (a subprocess per job, the shipped default model, ``--overwrite`` so every
file is denoised) on two folders:

* **Set12-like**: ``../shared/data/set12`` when it exists next to the checkout, else twelve
  generated 256x256 grey images (smooth shapes plus sigma-25 noise); the result says which;
* **1080p**: generated 1920x1080 grey images.

Engines: ``local`` (one model with every core's threads), ``ray`` with 1 worker (the same
threads) and with 2 workers (half the threads each), each on a local cluster the command starts
itself. Per job: wall time of the command (imports, cluster start, model loads included),
images/s over that wall time, peak RSS of the driver process (sampled) and of one worker (the
largest ``peak_rss_mb`` in the job's report). Also the cost of starting a local cluster alone
(``ray.init`` + ``ray.shutdown`` in a fresh process).

``quick`` runs a 4-image 96x96 set with ``local`` and ``ray`` x1 only (< 60 s on a quiet 2-core machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .scenarios import Scenario, ScenarioOptions, register_scenario

__all__ = ["run", "render", "SET12_DIR"]

SET12_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "set12"


def _synthetic(n: int, height: int, width: int, seed: int) -> list[np.ndarray]:
    """``n`` grey uint8 ``height x width`` images: blurred random shapes plus sigma-25 noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    images = []
    for _ in range(n):
        clean = np.full((height, width), rng.uniform(0.2, 0.8))
        for _ in range(8):
            cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0.05, 0.3) * min(height, width)
            clean[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 1)
        noisy = np.clip(clean + rng.normal(0, 25 / 255, clean.shape), 0, 1)
        images.append(np.rint(noisy * 255).astype(np.uint8))
    return images


def _write_set(folder: Path, images: list[np.ndarray]) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"img_{i:02d}.png")
    return folder


def _set12(folder: Path, quick: bool) -> tuple[Path, str]:
    if not quick and SET12_DIR.is_dir() and any(SET12_DIR.glob("*.png")):
        return SET12_DIR, f"Set12 ({SET12_DIR})"
    if quick:
        return _write_set(folder, _synthetic(4, 96, 96, 0)), "4 generated 96x96 grey images (quick)"
    return _write_set(folder, _synthetic(12, 256, 256, 0)), "12 generated 256x256 grey images (Set12 not found)"


class _RssSampler(threading.Thread):
    """Peak RSS (MB) of one process, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_mb, self._stop_event = pid, 0.0, threading.Event()

    def run(self) -> None:
        import psutil

        try:
            proc = psutil.Process(self.pid)
            while not self._stop_event.is_set():
                self.peak_mb = max(self.peak_mb, proc.memory_info().rss / 2**20)
                time.sleep(0.05)
        except psutil.Error:
            pass

    def stop(self) -> float:
        self._stop_event.set()
        self.join(timeout=2)
        return self.peak_mb


def _env() -> dict[str, str]:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONWARNINGS="ignore")
    env.pop("RAY_ADDRESS", None)
    return env


def _job(src: Path, out: Path, engine: str, workers: Optional[int], threads: int, timeout_s: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "n3deploy.cli", "denoise", str(src), "-o", str(out), "--overwrite", "--no-progress",
           "--engine", engine, "--threads-per-worker", str(threads)]
    if workers:
        cmd += ["--workers", str(workers)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    sampler = _RssSampler(proc.pid)
    sampler.start()
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"engine": engine, "workers": workers or 0, "threads": threads, "error": f"over {timeout_s:.0f} s"}
    wall = time.perf_counter() - t0
    driver_mb = sampler.stop()
    rows = [json.loads(line) for line in (out / "denoise_report.jsonl").read_text().splitlines()] if (
        out / "denoise_report.jsonl").exists() else []
    done = [r for r in rows if r["status"] == "done"]
    result: dict[str, Any] = {
        "engine": engine, "workers": workers or 0, "threads": threads, "images": len(done), "wall_s": wall,
        "images_per_s": len(done) / wall if wall > 0 else 0.0, "driver_peak_rss_mb": driver_mb,
        "worker_peak_rss_mb": max((r["peak_rss_mb"] for r in done), default=0.0) if engine == "ray" else None,
        "processes": len({r["pid"] for r in done}), "rc": proc.returncode,
    }
    if proc.returncode != 0:
        result["error"] = err.decode(errors="replace")[-500:]
    return result


def _cluster_start_s(cpus: int, timeout_s: float) -> Optional[float]:
    code = ("import time, ray; t = time.perf_counter(); "
            f"ray.init(address='local', num_cpus={cpus}, include_dashboard=False, logging_level='warning'); "
            "print(time.perf_counter() - t); ray.shutdown()")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s, env=_env())
        return float(done.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        return None


def run(options: ScenarioOptions) -> dict[str, Any]:
    from ..assets import default_model_path

    cores = options.threads or os.cpu_count() or 1
    timeout = max(30.0, options.max_job_s)
    with tempfile.TemporaryDirectory(prefix="n3deploy-ray-batch-") as tmp:
        root = Path(tmp)
        set12, set12_label = _set12(root / "set12", options.quick)
        sets = [("set12", set12, set12_label)]
        if not options.quick:
            sets.append(("1080p", _write_set(root / "1080p", _synthetic(4, 1080, 1920, 1)), "4 generated 1920x1080 grey images"))
        configs: list[tuple[str, Optional[int], int]] = [("local", None, cores), ("ray", 1, cores)]
        if not options.quick and cores >= 2:
            configs.append(("ray", 2, max(1, cores // 2)))
        jobs = []
        for key, folder, label in sets:
            for engine, workers, threads in configs:
                row = _job(folder, root / f"out-{key}-{engine}-{workers}", engine, workers, threads, timeout)
                jobs.append({"set": key, "set_label": label, **row})
        start = _cluster_start_s(cores, timeout)
    return {
        "model": Path(default_model_path()).name, "cores": cores, "quick": options.quick,
        "cluster_start_s": start, "jobs": jobs,
    }


def render(results: dict[str, Any]) -> str:
    start = results.get("cluster_start_s")
    lines = [
        "## Batch denoising: `--engine local` vs `--engine ray` (Ray Data)",
        "",
        f"Model: {results['model']}; {results['cores']} cores; `n3deploy denoise DIR -o OUT --overwrite` as a fresh "
        "process per job (imports, a local Ray cluster started by the command, model loads included in wall time). "
        f"Starting a local cluster alone: {'n/a' if start is None else f'{start:.1f} s'}.",
        "",
        "| set | engine | workers x threads | images | wall s | images/s | vs local | driver peak RSS MB | worker peak RSS MB |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    local = {j["set"]: j for j in results["jobs"] if j["engine"] == "local" and "error" not in j}
    labels = {}
    for j in results["jobs"]:
        labels[j["set"]] = j["set_label"]
        if "error" in j:
            lines.append(f"| {j['set']} | {j['engine']} | {j['workers']} x {j['threads']} | failed: {j['error'][:80]} |||||")
            continue
        base = local.get(j["set"])
        rel = f"{j['wall_s'] / base['wall_s'] - 1:+.0%}" if base and j is not base else ""
        worker = "" if j["worker_peak_rss_mb"] is None else f"{j['worker_peak_rss_mb']:.0f}"
        pool = "in-process" if j["engine"] == "local" else f"{j['workers']} x {j['threads']}"
        lines.append(
            f"| {j['set']} | {j['engine']} | {pool} | {j['images']} | {j['wall_s']:.1f} | {j['images_per_s']:.2f} | {rel} "
            f"| {j['driver_peak_rss_mb']:.0f} | {worker} |"
        )
    lines += ["", "Sets: " + "; ".join(f"{k}: {v}" for k, v in labels.items()) + ". \"vs local\": wall-time overhead."]
    return "\n".join(lines) + "\n"


register_scenario(Scenario(
    name="ray_batch", title="Batch denoising on Ray Data vs in-process", run=run, render=render, needs=("ray.data",),
))
