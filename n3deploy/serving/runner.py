"""Start, announce and stop ``n3deploy serve``: Ray (local or ``--address``), Ray Serve, signals.

:func:`serve_until_signalled` starts a local Ray instance sized to this machine (or connects to
the cluster at ``settings.address``), deploys :func:`~n3deploy.serving.app.build_app` with Ray
Serve's HTTP proxy on ``settings.host:settings.port``, prints the URL once the replicas are
ready, and on SIGINT/SIGTERM deletes the application gracefully (replicas finish their in-flight
requests) and then shuts Ray down (on a cluster: only the application is deleted).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Callable, Optional

from .settings import ServeSettings

__all__ = ["serve_until_signalled", "start", "stop"]


def start(settings: ServeSettings, after_ray_init: Optional[Callable[[], None]] = None) -> None:
    """Start Ray and Ray Serve and deploy the model; returns once every replica is ready.

    ``after_ray_init`` runs once Ray is up (``ray.init`` installs signal handlers of its own: the
    caller puts its own back there)."""
    import ray
    from ray import serve

    from .app import build_app

    if not ray.is_initialized():
        if settings.address:
            ray.init(address=settings.address, namespace="n3deploy", log_to_driver=False)
        else:
            ray.init(  # address="local": always our own instance, never a cluster already running here
                address="local",
                num_cpus=max(os.cpu_count() or 1, settings.replicas * settings.replica_threads),
                namespace="n3deploy", include_dashboard=False, log_to_driver=False,
            )
    if after_ray_init is not None:
        after_ray_init()
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(build_app(settings), name=settings.name, route_prefix="/", blocking=False)


def stop(settings: ServeSettings) -> None:
    """Graceful stop: on our own Ray instance everything goes; on a cluster only our application."""
    import ray
    from ray import serve

    try:
        # Deleting the application drains it: replicas finish their in-flight requests (up to the
        # deployment's graceful_shutdown_timeout_s) before they exit.
        serve.delete(settings.name)
        if settings.address:
            return
        # Our own instance: Ray's shutdown then ends the controller and proxy with it
        # (serve.shutdown() would wait for the proxy's draining period, 30 s by default).
    finally:
        ray.shutdown()


def serve_until_signalled(settings: ServeSettings, announce: Callable[[str], None] = print) -> int:
    """Serve until SIGINT or SIGTERM; returns the process exit status (0)."""
    stopping = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: Optional[object]) -> None:
        received.append(signum)
        stopping.set()

    def install() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    install()
    t0 = time.perf_counter()
    try:
        try:
            start(settings, after_ray_init=install)
        except RuntimeError as exc:  # Ray Serve's deployment failure (the replica's log is above)
            from ..errors import BackendUnavailableError

            raise BackendUnavailableError(f"the model could not be deployed: {str(exc).splitlines()[0]}") from None
        if not stopping.is_set():
            mode = f"dynamic batching up to {settings.max_batch} tiles, {settings.batch_wait_ms:g} ms" if settings.batching else "no batching"
            announce(
                f"n3deploy serve: model {settings.name!r} ready at {settings.url} "
                f"({settings.replicas} replica(s) x {settings.replica_threads} thread(s), {mode}; "
                f"{time.perf_counter() - t0:.1f} s). KServe v2: {settings.url}/v2/models/{settings.name}/infer, "
                f"images: {settings.url}/v1/denoise. Ctrl-C stops."
            )
            sys.stdout.flush()
        while not stopping.wait(0.5):
            pass
        announce(f"n3deploy serve: {signal.Signals(received[0]).name} received, finishing in-flight requests and stopping")
        sys.stdout.flush()
    finally:
        install()  # a second Ctrl-C must not interrupt the shutdown
        stop(settings)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    announce("n3deploy serve: stopped")
    return 0
