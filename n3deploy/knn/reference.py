"""The plain continuous KNN: index tensor + gather, as the authors formulate it.

Written for clarity and used as the ground truth in tests (and as the "straightforward gather"
baseline in benchmarks). Memory is bounded by processing queries in chunks, but every chunk
materialises ``chunk x candidates x (C*p*p)`` gathered patches, and the index tensor and
boolean masks make it unexportable. Use :mod:`n3deploy.knn.static` for deployment.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import distance_logits, pad_amounts, selection_rounds, window_start

__all__ = ["neighbour_index", "knn_aggregate_reference"]


def neighbour_index(nh: int, nw: int, window: int, device: torch.device | None = None) -> Tensor:
    """Candidate indices into the flattened ``nh x nw`` patch grid: ``(nh*nw) x (w_h*w_w - 1)``."""
    wh, ww = min(window, nh), min(window, nw)
    i = torch.arange(nh, device=device)
    j = torch.arange(nw, device=device)
    rows = window_start(i, nh, window)[:, None, None, None] + torch.arange(wh, device=device)[None, None, :, None]
    cols = window_start(j, nw, window)[None, :, None, None] + torch.arange(ww, device=device)[None, None, None, :]
    cand = (rows * nw + cols).reshape(nh * nw, wh * ww)
    query = torch.arange(nh * nw, device=device)[:, None]
    return cand[cand != query].view(nh * nw, wh * ww - 1)


def knn_aggregate_reference(
    x: Tensor,
    embed: Tensor,
    log_temp: Tensor,
    distance_bn: torch.nn.BatchNorm1d,
    *,
    k: int,
    patch_size: int,
    stride: int,
    window: int,
    temp_bias: float,
    chunk: int = 512,
) -> Tensor:
    """Continuous k-nearest-neighbour aggregation over image patches.

    Args:
        x: ``B x C x H x W`` data whose patches are aggregated.
        embed: ``B x E x H x W`` embedding whose patch distances select the neighbours.
        log_temp: ``B x 1 x H x W`` log-temperature image (averaged over each patch).
        distance_bn: batch-norm applied to the negated distances.
        chunk: queries per chunk (memory bound, no effect on the result).

    Returns:
        ``B x (k*C) x H x W``: the k neighbour images ``z_1..z_k``, neighbour-major.
    """
    b, c, h, w = x.shape
    pt, pb = pad_amounts(h, patch_size, stride)
    pl, pr = pad_amounts(w, patch_size, stride)
    pad = (pl, pr, pt, pb)
    xp, ep, tp = (F.pad(t, pad) for t in (x, embed, log_temp))
    hp, wp = xp.shape[-2:]
    nh, nw = (hp - patch_size) // stride + 1, (wp - patch_size) // stride + 1

    # Patches as rows: B x N x (C*p*p), channel-major like F.unfold.
    xpat = F.unfold(xp, patch_size, stride=stride).transpose(1, 2)
    epat = F.unfold(ep, patch_size, stride=stride).transpose(1, 2)
    temp = (F.avg_pool2d(tp, patch_size, stride).flatten(1) + math.log(temp_bias)).exp()  # B x N
    index = neighbour_index(nh, nw, window, device=x.device)  # N x O
    e_sq = (epat**2).sum(-1)  # B x N

    outs = []
    for start in range(0, nh * nw, chunk):
        idx = index[start : start + chunk]  # M x O
        q = epat[:, start : start + chunk]  # B x M x E
        cand = epat[:, idx]  # B x M x O x E
        dist = e_sq[:, idx] + (q**2).sum(-1, keepdim=True) - 2 * torch.einsum("bme,bmoe->bmo", q, cand)
        logits = distance_logits(dist, distance_bn, temp[:, start : start + chunk, None])
        wts = torch.stack(selection_rounds(logits, k), dim=2)  # B x M x k x O
        outs.append(torch.einsum("bmko,bmof->bmkf", wts, xpat[:, idx]))  # B x M x k x F
    z = torch.cat(outs, dim=1)  # B x N x k x F
    z = z.permute(0, 2, 3, 1).reshape(b * k, c * patch_size * patch_size, nh * nw)
    folded = F.fold(z, (hp, wp), patch_size, stride=stride)
    counts = F.fold(torch.ones_like(z[:1]), (hp, wp), patch_size, stride=stride)
    out = (folded / counts)[..., pt : pt + h, pl : pl + w]
    return out.reshape(b, k * c, h, w)
