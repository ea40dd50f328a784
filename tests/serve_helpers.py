"""One real ``n3deploy serve`` process per test session, shared by test_serve.py and test_remote_backend.py.

Started on 127.0.0.1 with a random free port, serving the tiny test graph; stopped by the PID it
was started with (SIGINT, then SIGKILL after 30 s). Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    port: int
    log: Path
    ready_s: float
    stop_s: Optional[float] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def stop(self) -> float:
        """SIGINT and wait (bounded); returns the seconds it took to exit (SIGKILL after the bound)."""
        if self.stop_s is not None:
            return self.stop_s
        t0 = time.perf_counter()
        if self.proc.poll() is None:
            children = _descendants(self.proc.pid)  # Ray's processes, started by this server
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
                self.stop_s = time.perf_counter() - t0
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                self.stop_s = float("inf")
            _kill_survivors(children)
            return self.stop_s
        self.stop_s = time.perf_counter() - t0
        return self.stop_s


def _descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _kill_survivors(processes: list) -> None:
    """SIGKILL those of ``processes`` (psutil handles: pid and start time) still running."""
    import psutil

    for p in processes:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


_SERVER: Optional[ServerProcess] = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, log: Path, *extra: str) -> ServerProcess:
    port = free_port()
    cmd = [sys.executable, "-m", "n3deploy.cli", "serve", "--model", str(model), "--port", str(port), *extra]
    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0")
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    t0 = time.perf_counter()
    server = ServerProcess(proc, port, log, ready_s=float("nan"))
    while time.perf_counter() - t0 < READY_TIMEOUT_S:
        if proc.poll() is not None:
            raise RuntimeError(f"n3deploy serve exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.url}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    server.ready_s = time.perf_counter() - t0
                    return server
        except OSError:
            pass
        time.sleep(0.5)
    server.stop()  # SIGINT (Ray shuts down), then SIGKILL to it and its processes if it hangs
    raise RuntimeError(f"n3deploy serve was not ready within {READY_TIMEOUT_S} s:\n{server.log_tail()}")


def shared_server(model: Path, log_dir: Path) -> ServerProcess:
    """The session's server (started on first use, and again if a test stopped it)."""
    global _SERVER
    if _SERVER is None or _SERVER.stop_s is not None:  # (re)start: test_serve's last test stops it
        _SERVER = start_server(model, log_dir / "serve.log", "--max-batch", "8", "--batch-wait-ms", "5", "--max-pixels", "250000")
    return _SERVER


def stop_shared_server() -> Optional[float]:
    return None if _SERVER is None else _SERVER.stop()


def infer(client, image, model: str = "n3net", binary: bool = True):
    """One KServe v2 inference of an ``H x W`` float32 image through ``tritonclient.http``: the raw
    ``H x W`` network output (not clipped; the Denoiser clips to [0, 1]). JSON tensors unless ``binary``."""
    import numpy as np
    import tritonclient.http as httpclient

    x = np.asarray(image, dtype=np.float32)[None, None]
    inp = httpclient.InferInput("noisy", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("denoised", binary_data=binary)
    return client.infer(model, [inp], outputs=[out]).as_numpy("denoised")[0, 0]
