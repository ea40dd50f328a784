"""Predicting a job's time and memory from the sizes already measured (to skip what cannot fit)."""

from __future__ import annotations

from .settings import Measurement

__all__ = ["predict"]


def predict(previous: list[Measurement], megapixels: float) -> tuple[float | None, float | None]:
    """(job seconds, peak RSS MB) predicted for ``megapixels`` by linear scaling from the largest
    size measured so far (``None`` when nothing was measured). Seconds include warm-up and repeats;
    the memory scales the part above the base RSS."""
    ok = [m for m in previous if m.status == "ok" and m.median_s]
    if not ok:
        return None, None
    last = max(ok, key=lambda m: m.megapixels)
    scale = megapixels / last.megapixels
    job_s = (last.median_s or 0.0) * scale * (1 + min(len(last.times_s), 5))
    mem = None
    if last.peak_rss_mb is not None and last.base_rss_mb is not None:
        mem = last.base_rss_mb + (last.peak_rss_mb - last.base_rss_mb) * scale
    return job_s, mem
