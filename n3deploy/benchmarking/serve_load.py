"""Benchmark scenario ``serve_load``: ``n3deploy serve`` under load, and a replica killed under load.

Starts real servers (``n3deploy serve`` subprocesses on 127.0.0.1, random free ports, the shipped
default model) and drives them with ``tritonclient.http`` clients over loopback:

* **load**: 256x256 and 1080p requests from 1/4/16 concurrent clients, with dynamic batching
  (``--max-batch 8``) and without (``--max-batch 1``): requests/s, MP/s, p50/p95/p99 latency,
  errors and wrong answers (every response is compared with the in-process Denoiser's output for
  the same image), next to the in-process Denoiser on the same machine;
* **fault**: two replicas, four clients; one replica's process is killed (SIGKILL, found among the
  server's descendants by its Ray process title) and the run reports how many requests failed,
  how long until the replica was back (a new replica process) and whether any response was wrong.

Every phase is bounded in requests and seconds; ``quick`` runs 256x256 only, 1 and 4 clients,
with batching, on the fault phase's server (< 60 s on two cores).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..models import default_model_name
from .scenarios import Scenario, ScenarioOptions, register_scenario

__all__ = ["run", "render", "ServerUnderTest", "LoadResult"]

READY_TIMEOUT_S = 180.0
REPLICA_TITLE = "ServeReplica"


# ------------------------------------------------------------------ server process
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerUnderTest:
    """An ``n3deploy serve`` subprocess started by this scenario (stopped by its PID)."""

    args: tuple[str, ...]
    port: int = field(default_factory=_free_port)
    proc: Optional[subprocess.Popen] = None
    ready_s: float = float("nan")

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> "ServerUnderTest":
        cmd = [sys.executable, "-m", "n3deploy.cli", "serve", "--port", str(self.port), *self.args]
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < READY_TIMEOUT_S:
            if self.proc.poll() is not None:
                raise RuntimeError(f"n3deploy serve {' '.join(self.args)} exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        self.ready_s = time.perf_counter() - t0
                        self._warm_up(t0)
                        return self
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"n3deploy serve was not ready within {READY_TIMEOUT_S:.0f} s")

    def _warm_up(self, t0: float) -> None:
        """One answered inference before any measurement: replicas load their model after the
        proxy reports ready, and a first request's one-off costs are not load figures."""
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(self.host, connection_timeout=60, network_timeout=120)
        x = np.random.default_rng(0).random((1, 1, 64, 64), dtype=np.float32)
        while True:
            try:
                _infer(client, x)
                return
            except Exception:  # noqa: BLE001 - retried until the deadline below
                if time.perf_counter() - t0 > READY_TIMEOUT_S:
                    raise
                time.sleep(0.5)

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def replica_pids(self) -> list[int]:
        """PIDs of this server's Ray Serve replica processes (descendants titled ``ServeReplica``)."""
        import psutil

        assert self.proc is not None
        pids = []
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if REPLICA_TITLE in " ".join(child.cmdline()):
                    pids.append(child.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return sorted(pids)


# ------------------------------------------------------------------ load
@dataclass
class LoadResult:
    size: str
    clients: int
    batching: bool
    requests: int
    errors: int
    wrong: int
    seconds: float
    requests_per_s: float
    mp_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    first_error: str = ""  # the first failed request's exception, for the record


def _infer(client: Any, x: np.ndarray) -> np.ndarray:
    import tritonclient.http as httpclient

    inp = httpclient.InferInput("noisy", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    out = httpclient.InferRequestedOutput("denoised", binary_data=True)
    return client.infer("n3net", [inp], outputs=[out]).as_numpy("denoised")


def _drive(host: str, x: np.ndarray, expected: np.ndarray, clients: int, per_client: int, max_s: float) -> dict[str, Any]:
    """``clients`` threads each sending up to ``per_client`` requests (stopping after ``max_s``)."""
    import tritonclient.http as httpclient

    latencies: list[float] = []
    events: list[tuple[float, str]] = []  # (time, "ok" | "error" | "wrong")
    failures: list[str] = []  # the exception of each failed request
    lock = threading.Lock()
    t_start = time.perf_counter()

    def worker() -> None:
        client = httpclient.InferenceServerClient(host, connection_timeout=120, network_timeout=300)
        for _ in range(per_client):
            if time.perf_counter() - t_start > max_s:
                break
            t0 = time.perf_counter()
            try:
                y = _infer(client, x)
                outcome = "ok" if np.abs(np.clip(y, 0, 1) - expected).max() <= 1e-4 else "wrong"
            except Exception as exc:  # noqa: BLE001 - a failed request is a measured outcome
                outcome = "error"
                with lock:
                    failures.append(f"{type(exc).__name__}: {exc}"[:500])
            t1 = time.perf_counter()
            with lock:
                events.append((t1 - t_start, outcome))
                if outcome == "ok":
                    latencies.append(t1 - t0)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=max_s + 300)
    return {"latencies": latencies, "events": events, "failures": failures, "seconds": time.perf_counter() - t_start}


def _summary(size: str, clients: int, batching: bool, pixels: int, run: dict[str, Any]) -> LoadResult:
    lat = np.array(run["latencies"]) * 1000
    n_ok = len(lat)
    pct = (lambda q: float(np.percentile(lat, q))) if n_ok else (lambda q: float("nan"))
    return LoadResult(
        size=size, clients=clients, batching=batching, requests=len(run["events"]),
        errors=sum(e == "error" for _, e in run["events"]), wrong=sum(e == "wrong" for _, e in run["events"]),
        seconds=run["seconds"], requests_per_s=n_ok / run["seconds"], mp_per_s=n_ok * pixels / 1e6 / run["seconds"],
        p50_ms=pct(50), p95_ms=pct(95), p99_ms=pct(99),
        first_error=run["failures"][0] if run["failures"] else "",
    )


def _image(h: int, w: int) -> np.ndarray:
    """A noisy real photo (scikit-image's camera, mirrored to size) as 1 x 1 x H x W float32."""
    from skimage import data

    cam = data.camera().astype(np.float32) / 255.0
    reps = (-(-h // cam.shape[0]), -(-w // cam.shape[1]))
    img = np.tile(cam, reps)[:h, :w]
    noisy = img + np.random.default_rng(0).normal(0, 25 / 255, img.shape).astype(np.float32)
    return np.clip(noisy, 0, 1).astype(np.float32)[None, None]


# ------------------------------------------------------------------ scenario
def run(options: ScenarioOptions) -> dict[str, Any]:
    from ..denoiser import Denoiser

    quick = options.quick
    sizes = {"256x256": (256, 256)} if quick else {"256x256": (256, 256), "1080p": (1080, 1920)}
    client_counts = (1, 4) if quick else (1, 4, 16)
    budget = min(options.max_job_s, 8.0 if quick else 60.0)

    den = Denoiser()  # the shipped default model, in process
    images = {name: _image(h, w) for name, (h, w) in sizes.items()}
    expected: dict[str, np.ndarray] = {}
    in_process = []
    for name, x in images.items():
        out = den.denoise(x[0, 0])  # warm-up run (not timed); its output is the reference answer
        assert isinstance(out, np.ndarray)
        expected[name] = out
        n, t0 = 0, time.perf_counter()
        while n < 1 or (time.perf_counter() - t0 < min(budget, 10.0) and n < (2 if quick else 5)):
            den.denoise(x[0, 0])
            n += 1
        seconds = (time.perf_counter() - t0) / n
        pixels = x.shape[2] * x.shape[3]
        in_process.append({"size": name, "seconds_per_image": seconds, "mp_per_s": pixels / 1e6 / seconds, "runs": n})

    threads = options.threads or None
    common = ("--threads", str(threads)) if threads else ()
    load: list[dict[str, Any]] = []
    ready: dict[str, float] = {}

    def measure(server: ServerUnderTest, batching: bool) -> None:
        ready["batching" if batching else "no batching"] = server.ready_s
        for name, x in images.items():
            pixels = x.shape[2] * x.shape[3]
            for clients in client_counts:
                per_client = (3 if quick else 8) if name == "256x256" else 1
                result = _drive(server.host, x, expected[name], clients, per_client, budget)
                load.append(asdict(_summary(name, clients, batching, pixels, result)))

    if quick:  # one server (two replicas, batching) for the load cells and the fault
        with ServerUnderTest(("--replicas", "2", "--max-batch", "8", *common)) as server:
            measure(server, True)
            fault = _fault(server, images["256x256"], expected["256x256"], quick)
    else:
        for batching in (True, False):
            with ServerUnderTest(("--max-batch", "8" if batching else "1", "--batch-wait-ms", "5", *common)) as server:
                measure(server, batching)
        with ServerUnderTest(("--replicas", "2", "--max-batch", "8", *common)) as server:
            fault = _fault(server, images["256x256"], expected["256x256"], quick)
    return {
        "model": f"shipped default ({default_model_name()})", "cores": os.cpu_count(), "quick": quick,
        "server_ready_s": ready, "in_process": in_process, "load": load, "fault": fault,
        "settings": {"max_batch": 8, "batch_wait_ms": 5, "clients": list(client_counts), "budget_s_per_cell": budget},
    }


def _fault(server: ServerUnderTest, x: np.ndarray, expected: np.ndarray, quick: bool) -> dict[str, Any]:
    """Kill one of ``server``'s two replica processes under load; count failures and wrong answers."""
    try:
        import psutil  # noqa: F401
    except ImportError:
        return {"skipped": "psutil is not installed (needed to find the replica's process)"}
    clients, duration = (2, 8.0) if quick else (4, 40.0)
    before = server.replica_pids()
    if len(before) < 2:
        return {"skipped": f"found {len(before)} replica process(es), expected 2"}
    result: dict[str, Any] = {}
    drive = threading.Thread(target=lambda: result.update(_drive(server.host, x, expected, clients, 10_000, duration)))
    drive.start()
    time.sleep(duration / 4)
    victim = before[0]
    t_kill = time.perf_counter()
    os.kill(victim, signal.SIGKILL)
    back_s = None
    while time.perf_counter() - t_kill < max(duration, 60.0):
        now = server.replica_pids()
        if len(now) >= 2 and victim not in now:
            back_s = time.perf_counter() - t_kill
            break
        time.sleep(0.2)
    drive.join(timeout=duration + 300)
    events = result.get("events", [])
    return {
        "replicas": 2, "clients": clients, "duration_s": duration, "requests": len(events),
        "failed": sum(e == "error" for _, e in events), "wrong": sum(e == "wrong" for _, e in events),
        "replica_back_s": back_s, "ok": sum(e == "ok" for _, e in events),
    }


def render(results: dict[str, Any]) -> str:
    lines = [
        "## Serving under load (`n3deploy serve`, loopback)",
        "",
        f"Model: {results['model']}; {results['cores']} cores; tritonclient.http clients with binary tensors; every "
        "response compared with the in-process Denoiser (wrong = max abs difference > 1e-4). "
        f"Server ready in {', '.join(f'{k}: {v:.1f} s' for k, v in results['server_ready_s'].items())}.",
        "",
        "| size | in-process s/image | in-process MP/s |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {r['size']} | {r['seconds_per_image']:.3f} | {r['mp_per_s']:.2f} |" for r in results["in_process"]]
    lines += [
        "",
        "| size | clients | dynamic batching | requests | errors | wrong | req/s | MP/s | p50 ms | p95 ms | p99 ms |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results["load"]:
        lines.append(
            f"| {r['size']} | {r['clients']} | {'yes' if r['batching'] else 'no'} | {r['requests']} | {r['errors']} | {r['wrong']} "
            f"| {r['requests_per_s']:.2f} | {r['mp_per_s']:.2f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} |"
        )
    f = results["fault"]
    lines.append("")
    if "skipped" in f:
        lines.append(f"Fault run skipped: {f['skipped']}.")
    else:
        back = "not back within the run" if f["replica_back_s"] is None else f"back after {f['replica_back_s']:.1f} s"
        lines.append(
            f"Fault: {f['replicas']} replicas, {f['clients']} clients for {f['duration_s']:.0f} s at 256x256; one replica's "
            f"process killed (SIGKILL): {f['failed']} of {f['requests']} requests failed, {f['wrong']} wrong responses, "
            f"replica {back}."
        )
    return "\n".join(lines) + "\n"


register_scenario(Scenario(
    name="serve_load", title="Serving under load and a replica killed", run=run, render=render,
    needs=("ray.serve", "tritonclient.http"), min_timeout_s=2400.0,
))
