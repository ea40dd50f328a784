"""Where an N3Net forward pass spends its time: the non-local part vs the CNNs.

The non-local part is everything inside :class:`n3deploy.model.KNNAggregation` (patch
extraction, distances, selection weights, aggregation, folding); the rest is the DnCNN,
embedding and temperature CNNs. Timing uses forward pre/post hooks on those modules.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch

from ..model import KNNAggregation, N3Net

__all__ = ["ForwardBreakdown", "forward_breakdown"]


@dataclass
class ForwardBreakdown:
    """Median seconds over the timed repeats."""

    knn: str
    height: int
    width: int
    threads: int
    total_s: float
    nonlocal_s: float

    @property
    def cnn_s(self) -> float:
        return self.total_s - self.nonlocal_s

    @property
    def nonlocal_share(self) -> float:
        return self.nonlocal_s / self.total_s

    def to_dict(self) -> dict:
        return {**asdict(self), "cnn_s": self.cnn_s, "nonlocal_share": self.nonlocal_share}


def forward_breakdown(model: N3Net, x: torch.Tensor, repeats: int = 3, warmup: int = 1) -> ForwardBreakdown:
    """Time ``model(x)`` under ``torch.no_grad()``; ``x``: ``B x C x H x W``."""
    spent: list[float] = []
    starts: dict[int, float] = {}

    def pre(module, _inputs):
        starts[id(module)] = time.perf_counter()

    def post(module, _inputs, _output):
        spent.append(time.perf_counter() - starts.pop(id(module)))

    handles = []
    for module in model.modules():
        if isinstance(module, KNNAggregation):
            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    totals, nonlocal_ = [], []
    try:
        with torch.no_grad():
            for i in range(warmup + repeats):
                spent.clear()
                t0 = time.perf_counter()
                model(x)
                dt = time.perf_counter() - t0
                if i >= warmup:
                    totals.append(dt)
                    nonlocal_.append(sum(spent))
    finally:
        for h in handles:
            h.remove()
    return ForwardBreakdown(
        knn=model.knn,
        height=x.shape[-2],
        width=x.shape[-1],
        threads=torch.get_num_threads(),
        total_s=statistics.median(totals),
        nonlocal_s=statistics.median(nonlocal_),
    )
