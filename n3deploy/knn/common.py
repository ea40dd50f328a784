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

__all__ = ["pad_amounts", "window_start", "log1mexp", "log1m_softmax", "selection_rounds", "distance_logits", "TINY", "SOFTMAX_FLOOR"]

# Smallest positive normal float32: log(TINY) = -87.3 stands in for log(0).
TINY = 1.1754943508222875e-38
# Logits further than this below their row's maximum are raised to it (weights < e^-80).
SOFTMAX_FLOOR = 80.0


def pad_amounts(size: int, patch: int, stride: int) -> tuple[int, int]:
    """Zero padding (before, after) so that ``(size + pad - patch)`` is a multiple of ``stride``.

    The authors' rule: total ``(-(size - patch)) mod stride``, floor before, ceil after.
    """
    total = (-(size - patch)) % stride
    return total // 2, total - total // 2


def window_start(index: Tensor, n: int, window: int) -> Tensor:
    """First patch of each query's window along one axis (``index``: query positions, int64)."""
    return (index - window // 2).clamp(min=0, max=max(n - window, 0))


def log1mexp(w: Tensor, exp_w: Tensor | None = None) -> Tensor:
    """``log(1 - exp(w))`` for ``w <= 0``, accurate everywhere and without branches.

    Uses ``1 - exp(w) = -tanh(w/2) * (1 + exp(w))``: no cancellation near ``w = 0`` (where
    ``1 - exp(w)`` loses all digits) and no ``Where``/boolean indexing, so it exports to plain
    ONNX ops (Tanh, Exp, Mul, Max, Log). ``log(0)`` at ``w = 0`` is clamped to ``log(TINY)``.
    ``exp_w`` may pass ``exp(w)`` when the caller already has it.
    """
    if exp_w is None:
        exp_w = torch.exp(w)
    # tanh is odd: tanh(-w/2) == -tanh(w/2) exactly, one negation pass less
    return torch.log((torch.tanh(w * -0.5) * (1.0 + exp_w)).clamp_min(TINY))


def log1m_softmax(logw: Tensor, p: Tensor) -> Tensor:
    """``log(1 - p)`` for softmax probabilities ``p = exp(logw)`` over the last dimension.

    Only a row's largest probability can exceed 1/2 (they sum to 1), and only there does
    ``log1p(-p)`` lose digits. So every entry takes ``log1p(-p)`` except the row's maximum,
    which takes :func:`log1mexp` of its log-probability (one value per row). The clamp at 1/2
    changes no selected value; it keeps ``log1p(-p)`` finite where ``p == 1``, so the unused
    branch of the ``Where`` cannot send NaN gradients. Same accuracy as :func:`log1mexp` on
    every entry (max abs error 2e-6 in float32, 4e-15 in float64, measured over logits
    of scale 0.3-300) at 1.8 instead of 3.0 ms per round of 64x96x225 on 2 CPU threads:
    one ``tanh`` per row instead of per entry. Exports to ReduceMax, Equal, Where, Clip, Log.
    """
    top = logw.amax(-1, keepdim=True)
    return torch.where(logw == top, log1mexp(top), torch.log1p(-p.clamp(max=0.5)))


def _log1m_weights(logw: Tensor, p: Tensor) -> Tensor:
    """``log(1 - p)`` of one round's weights, in the form that is fastest where it runs.

    Both forms are accurate to a few float32 ulps of ``log(-expm1(w))`` (tests/test_knn.py).
    PyTorch runs :func:`log1m_softmax` (its CPU ``tanh`` costs as much as four other passes);
    an exported graph gets :func:`log1mexp`: ONNX Runtime's Tanh is vectorised, while the
    broadcast Where of :func:`log1m_softmax` made the paper graph 10-40 ms slower at 481x321.
    """
    if torch.compiler.is_exporting():
        return log1mexp(logw, p)
    return log1m_softmax(logw, p)


def selection_rounds(logits: Tensor, k: int) -> list[Tensor]:
    """The k rounds of continuous nearest-neighbour selection over the last dimension.

    Round r: ``w = log_softmax(logits)``, weights ``exp(w)``, then ``logits += log(1 - exp(w))``
    (:func:`log1m_softmax` in PyTorch, :func:`log1mexp` in exported graphs).
    Before each softmax, logits more than ``SOFTMAX_FLOOR`` below their row's maximum are raised
    to that floor: their weights (< e^-80, about 1e-35) stay negligible, and every ``exp`` stays
    in the normal float range (CPUs run exponentials of subnormal results ~15x slower).
    Returns k tensors shaped like ``logits``.
    """
    weights = []
    for r in range(k):
        # The floor applies to this round's softmax only: the carried logits keep their values.
        floored = torch.maximum(logits, logits.amax(-1, keepdim=True) - SOFTMAX_FLOOR)
        logw = torch.log_softmax(floored, dim=-1)
        p = torch.exp(logw)
        weights.append(p)
        if r + 1 < k:
            logits = logits + _log1m_weights(logw, p)
    return weights


def distance_logits(dist: Tensor, bn: torch.nn.BatchNorm1d, temperature: Tensor, valid: Tensor | None = None) -> Tensor:
    """Logits ``bn(-dist) / T`` (the authors' order: batch-norm on negated distances, then temperature).

    ``dist``: distances, any shape; ``temperature`` broadcasts against it (one per query).
    ``valid`` (bool, broadcastable) marks real candidates; in training mode the batch
    statistics are taken over those alone and the running statistics updated as
    ``nn.BatchNorm1d`` would. In eval mode this is exactly ``bn`` with running statistics,
    computed as one fused multiply-add per element.
    """
    if bn.training:
        neg = dist.neg()
        if valid is None:
            valid = torch.ones_like(neg, dtype=torch.bool)
        valid = valid.expand_as(neg)
        count = valid.sum()
        zeros = torch.zeros_like(neg)
        mean = torch.where(valid, neg, zeros).sum() / count
        var = (torch.where(valid, neg - mean, zeros) ** 2).sum() / count
        with torch.no_grad():
            m = bn.momentum if bn.momentum is not None else 0.1
            bn.running_mean.mul_(1 - m).add_(m * mean.detach())
            bn.running_var.mul_(1 - m).add_(m * var.detach() * count / (count - 1).clamp_min(1))
            bn.num_batches_tracked.add_(1)
    else:
        mean, var = bn.running_mean, bn.running_var
    scale = torch.rsqrt(var + bn.eps)
    shift = -mean * scale
    if bn.affine:
        scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
    # bn(-d) / T = shift/T - d * scale/T
    return torch.addcmul(shift / temperature, dist, scale / temperature, value=-1.0)
