"""Pieces shared by both KNN implementations: padding rule, window geometry, log(1-exp(w)).

Window semantics (the authors' ``index_neighbours``, extended to small grids): on a grid of
``n`` patches along an axis, the window of query ``i`` covers ``w = min(window, n)`` patches
starting at ``clamp(i - window // 2, 0, n - w)``; it is shifted inward at the borders, never
truncated. The query itself is excluded, so each query has ``w_rows * w_cols - 1`` candidates
(224 for grids of at least 15x15 patches).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pad_amounts", "window_start", "log1mexp", "scaled_logits", "TINY"]

# Smallest positive normal float32: log(TINY) = -87.3 stands in for log(0).
TINY = 1.1754943508222875e-38


def pad_amounts(size: int, patch: int, stride: int) -> tuple[int, int]:
    """Zero padding (before, after) so that ``(size + pad - patch)`` is a multiple of ``stride``.

    The authors' rule: total ``(-(size - patch)) mod stride``, floor before, ceil after.
    """
    total = (-(size - patch)) % stride
    return total // 2, total - total // 2


def window_start(index: Tensor, n: int, window: int) -> Tensor:
    """First patch of each query's window along one axis (``index``: query positions, int64)."""
    return (index - window // 2).clamp(min=0, max=max(n - window, 0))


def log1mexp(w: Tensor) -> Tensor:
    """``log(1 - exp(w))`` for ``w <= 0``, accurate everywhere and without branches.

    Uses ``1 - exp(w) = -tanh(w/2) * (1 + exp(w))``: no cancellation near ``w = 0`` (where
    ``1 - exp(w)`` loses all digits) and no ``Where``/boolean indexing, so it exports to plain
    ONNX ops (Tanh, Exp, Mul, Max, Log). ``log(0)`` at ``w = 0`` is clamped to ``log(TINY)``.
    """
    return torch.log((-torch.tanh(0.5 * w) * (1.0 + torch.exp(w))).clamp_min(TINY))


def scaled_logits(neg_dist: Tensor, bn: torch.nn.BatchNorm1d, temperature: Tensor, valid: Tensor | None = None) -> Tensor:
    """Distance batch-norm then temperature: ``bn(-D) / T`` (the authors' order).

    ``neg_dist``: negated distances, any shape; ``temperature`` broadcasts against it.
    ``valid`` (bool, broadcastable) marks real candidates; in training mode the batch
    statistics are taken over those alone and the running statistics updated as
    ``nn.BatchNorm1d`` would. In eval mode this is exactly ``bn`` with running statistics.
    """
    if bn.training:
        if valid is None:
            valid = torch.ones_like(neg_dist, dtype=torch.bool)
        valid = valid.expand_as(neg_dist)
        count = valid.sum()
        vals = torch.where(valid, neg_dist, torch.zeros_like(neg_dist))
        mean = vals.sum() / count
        var = (torch.where(valid, neg_dist - mean, torch.zeros_like(neg_dist)) ** 2).sum() / count
        with torch.no_grad():
            m = bn.momentum if bn.momentum is not None else 0.1
            bn.running_mean.mul_(1 - m).add_(m * mean.detach())
            bn.running_var.mul_(1 - m).add_(m * var.detach() * count / max(int(count) - 1, 1))
            bn.num_batches_tracked.add_(1)
    else:
        mean, var = bn.running_mean, bn.running_var
    normed = (neg_dist - mean) * torch.rsqrt(var + bn.eps)
    if bn.affine:
        normed = normed * bn.weight + bn.bias
    return normed / temperature
