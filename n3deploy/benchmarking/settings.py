"""What a benchmark run measures (:class:`BenchSettings`) and the records it produces."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .rows import ROWS

__all__ = ["BenchSettings", "RowInfo", "Measurement", "DEFAULT_SIZES", "QUICK_SIZES", "parse_size", "SCHEMA_VERSION"]

DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((256, 256), (481, 321), (1024, 1024), (1920, 1080), (3840, 2160))
QUICK_SIZES: tuple[tuple[int, int], ...] = ((256, 256), (481, 321))
BREAKDOWN_SIZE = (481, 321)  # width x height, the BSD68 photo size
DENOISER_SIZE = (1920, 1080)  # width x height of the Denoiser (tiled, RGB uint8) memory measurement
SCHEMA_VERSION = 2  # 2: rows name their registry backend; matmul peaks per precision; scenarios


@dataclass
class BenchSettings:
    """What to measure and how."""

    preset: str = "paper"
    model: str | None = None  # registry name or checkpoint: time its weights (the preset must be its preset)
    sizes: tuple[tuple[int, int], ...] = DEFAULT_SIZES  # (width, height)
    backends: tuple[str, ...] = tuple(ROWS)  # row names (rows.ROWS)
    repeats: int = 5
    warmup: int = 1
    max_job_s: float = 90.0  # repeats are cut so one (row, size) takes about this long
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
    scenarios: tuple[str, ...] = ()  # scenario names (scenarios.py) to run after the grid
    quick: bool = False  # scenarios run their quick form
    command: str = ""

    def resolved_threads(self) -> int:
        return self.threads or os.cpu_count() or 1


@dataclass
class RowInfo:
    """A row as probed on this machine (stored under the results document's ``"backends"``)."""

    name: str
    label: str
    backend: str
    precision: str
    device: str
    available: bool
    reason: str = ""
    peak: str | None = None


BackendInfo = RowInfo  # the name of schema 1


@dataclass
class Measurement:
    """One (row, size): median latency and peak memory of a fresh process."""

    backend: str  # the row name
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
