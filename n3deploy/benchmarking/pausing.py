"""Pausing another process (a training run) while measuring: SIGSTOP, and SIGCONT whatever happens."""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any, Callable, Iterator

__all__ = ["paused"]


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
