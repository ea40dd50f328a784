"""What ``n3deploy serve`` runs: one frozen dataclass shared by the command, the runner and the replicas."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

__all__ = ["ServeSettings", "DEFAULT_MAX_PIXELS"]

DEFAULT_MAX_PIXELS = 7680 * 4320  # 8K UHD: the largest image one request may carry (pixels per image x batch)


@dataclass(frozen=True)
class ServeSettings:
    """Settings of one served model.

    ``model``: a model file or registry name (``None``: the shipped default model);
    ``backend``/``precision``: as for :func:`n3deploy.backends.load_backend` (precision ``None``:
    the model's own);
    ``replicas``: Ray Serve replicas, each running ``threads`` inference threads (default: the
    machine's cores divided among the replicas); ``max_batch``/``batch_wait_ms``: dynamic batching
    of same-size tiles across concurrent requests (``max_batch`` 1 turns it off);
    ``max_pixels``: the largest request (pixels per image times images) accepted;
    ``tile``/``overlap``: the Denoiser's tiling of large requests.
    """

    model: Optional[str] = None
    backend: str = "auto"
    precision: Optional[str] = None
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    name: str = "n3net"
    address: Optional[str] = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    threads: Optional[int] = None
    tile: Optional[int] = None
    overlap: Optional[int] = None

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"--replicas must be >= 1, got {self.replicas}")
        if self.max_batch < 1:
            raise ValueError(f"--max-batch must be >= 1, got {self.max_batch}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"--batch-wait-ms must be >= 0, got {self.batch_wait_ms}")
        if self.max_pixels < 1:
            raise ValueError(f"--max-pixels must be >= 1, got {self.max_pixels}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"--port must be in 0..65535, got {self.port}")
        if not self.name or "/" in self.name:
            raise ValueError(f"--name must be a non-empty name without '/', got {self.name!r}")

    @property
    def batching(self) -> bool:
        return self.max_batch > 1

    @property
    def replica_threads(self) -> int:
        """Inference threads per replica: ``threads`` or the cores divided among the replicas."""
        return self.threads or max(1, (os.cpu_count() or 1) // self.replicas)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"
