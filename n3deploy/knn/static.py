"""The static-shape continuous KNN: exact, memory-bounded, exportable, FP16-safe.

Every shape follows from the input's shape and every index is computed from ``arange`` of
those shapes, so the graph exports to ONNX with symbolic height/width and builds in TensorRT:
no NonZero, no boolean-mask indexing, no scatter, no data-dependent loops, no ``F.fold``.

Formulation (``n`` = patches, ``F = C*p*p`` patch length, ``W`` = window, ``T`` = column tile):

* **Patches as 2x2 blocks.** With ``stride = patch/2`` a patch is 2x2 non-overlapping
  ``stride x stride`` blocks, so patch extraction is ``pixel_unshuffle`` plus four shifted
  slices, and folding back is four shifted adds plus ``pixel_shuffle`` (no Col2Im).
* **Rows by window slot, columns by tiles.** The window of query row ``i`` is rows
  ``start(i) + a`` for the ``W`` slots ``a``: one gather of whole rows per slot (a static loop
  of ``W`` steps). Along columns, the queries of a tile of ``T`` columns all draw their
  candidates from one span of ``T + W - 1`` columns, so distances and aggregation become dense
  batched matmuls (``T x F @ F x (T+W-1)`` and ``kT x (T+W-1) @ (T+W-1) x F``) with entries
  outside each query's window (and the query itself) masked out of the softmax.
* **Memory** is O(H*W): the largest tensors are the patch grids (4*C floats per pixel), one
  slot's gathered candidate span (``(T+W-1)/T`` times that) and the ``k`` aggregated patch
  grids (4*k*C floats per pixel); nothing of size ``patches x window x F`` ever exists.
* **Precision plan.** Distances, batch-norm, temperature, softmax rounds and aggregation run
  in at least float32 whatever the input dtype (float16 inputs are upcast and the result cast
  back); masked logits use a large finite negative number, never ``-inf``, and log(1-exp(w))
  is the branch-free form of :func:`n3deploy.knn.common.log1mexp`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import log1mexp, pad_amounts, scaled_logits, window_start

__all__ = ["knn_aggregate_static", "DEFAULT_TILE"]

DEFAULT_TILE = 8
MASKED_LOGIT = -1.0e30


def _blocks(img: Tensor, stride: int) -> Tensor:
    """``B x C x Hp x Wp`` (Hp, Wp multiples of stride) -> ``B x Hb x Wb x (C*s*s)`` block grid."""
    return F.pixel_unshuffle(img, stride).permute(0, 2, 3, 1)


def _patches(blocks: Tensor, nh: int, nw: int) -> Tensor:
    """Block grid ``B x (nh+1) x (nw+1) x D`` -> patch grid ``B x nh x nw x 4D`` (offset-major)."""
    return torch.cat(
        [blocks[:, di : di + nh, dj : dj + nw] for di in (0, 1) for dj in (0, 1)], dim=-1
    )


def _fold(z: Tensor, nh: int, nw: int, stride: int) -> Tensor:
    """Patch grid ``B x K x nh x nw x 4D`` -> overlap-averaged image ``B x K x (D/s^2) x Hp x Wp``."""
    b, kk = z.shape[:2]
    d = z.shape[-1] // 4
    z = z.permute(0, 1, 4, 2, 3)  # B x K x 4D x nh x nw
    acc = None
    for q, (di, dj) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        part = F.pad(z[:, :, q * d : (q + 1) * d], (dj, 1 - dj, di, 1 - di))
        acc = part if acc is None else acc + part
    # Each block is covered by 1 (border) or 2 (inside) patches per axis.
    rows = 2.0 - (torch.arange(nh + 1, device=z.device) % nh == 0).to(z.dtype)
    cols = 2.0 - (torch.arange(nw + 1, device=z.device) % nw == 0).to(z.dtype)
    acc = acc / (rows[:, None] * cols[None, :])
    acc = acc.reshape(b * kk, d, nh + 1, nw + 1)
    out = F.pixel_shuffle(acc, stride)
    return out.reshape(b, kk, -1, out.shape[-2], out.shape[-1])


def knn_aggregate_static(
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
    tile: int = DEFAULT_TILE,
) -> Tensor:
    """Continuous k-nearest-neighbour aggregation; same contract as the reference.

    Args:
        x: ``B x C x H x W`` data whose patches are aggregated.
        embed: ``B x E x H x W`` embedding whose patch distances select the neighbours.
        log_temp: ``B x 1 x H x W`` log-temperature image (averaged over each patch).
        distance_bn: batch-norm applied to the negated distances.
        tile: query columns per tile (speed/waste trade-off, no effect on the result).

    Returns:
        ``B x (k*C) x H x W``: the k neighbour images ``z_1..z_k``, neighbour-major.
    """
    if patch_size != 2 * stride:
        raise ValueError("the static KNN needs patch_size == 2 * stride")
    out_dtype = x.dtype
    work = torch.promote_types(x.dtype, torch.float32)
    x, embed, log_temp = x.to(work), embed.to(work), log_temp.to(work)
    b, c, h, w = x.shape
    dev = x.device
    pt, pb = pad_amounts(h, patch_size, stride)
    pl, pr = pad_amounts(w, patch_size, stride)
    pad = (pl, pr, pt, pb)
    xp, ep, tp = (F.pad(t, pad) for t in (x, embed, log_temp))
    hp, wp = xp.shape[-2:]
    nh, nw = hp // stride - 1, wp // stride - 1
    span = tile + window - 1
    ntile = (nw + tile - 1) // tile
    nwq = ntile * tile

    pe = _patches(_blocks(ep, stride), nh, nw)  # B x nh x nw x Fe
    px = _patches(_blocks(xp, stride), nh, nw)  # B x nh x nw x Fx
    fe, fx = pe.shape[-1], px.shape[-1]
    pe_flat, px_flat = pe.reshape(b, nh * nw, fe), px.reshape(b, nh * nw, fx)
    esq_flat = (pe_flat * pe_flat).sum(-1, keepdim=True)  # B x N x 1

    # Queries: columns padded to whole tiles -> B x nh x ntile x T x Fe.
    q = F.pad(pe, (0, 0, 0, nwq - nw)).reshape(b, nh, ntile, tile, fe)
    q_sq = (q * q).sum(-1, keepdim=True)  # B x nh x ntile x T x 1
    temp = (F.avg_pool2d(tp, patch_size, stride)[:, 0] + math.log(temp_bias)).exp()  # B x nh x nw
    temp = F.pad(temp, (0, nwq - nw), value=1.0).reshape(b, nh, ntile, tile, 1)

    # Column geometry (shared by all slots): tile t draws candidates from columns span_cols[t].
    i = torch.arange(nh, device=dev)
    j = torch.arange(nwq, device=dev).reshape(ntile, tile)
    tile_start = window_start(torch.arange(ntile, device=dev) * tile, nw, window)
    span_cols = tile_start[:, None] + torch.arange(span, device=dev)  # ntile x span
    col_start = window_start(j, nw, window)[..., None]  # ntile x T x 1
    cand = span_cols[:, None, :]  # ntile x 1 x span
    # A window holds min(window, n) patches: [start, start + window) clipped to the grid.
    col_ok = (cand >= col_start) & (cand < col_start + window) & (cand < nw) & (j[..., None] < nw)
    col_self = cand == j[..., None]  # ntile x T x span
    span_cols = span_cols.clamp(max=nw - 1)
    row_start = window_start(i, nh, window)

    def gather(flat: Tensor, a: int) -> Tensor:
        """Candidates of window-row slot ``a``: ``B x nh x ntile x span x F``."""
        rows = (row_start + a).clamp(max=nh - 1)
        idx = (rows[:, None, None] * nw + span_cols[None]).reshape(-1)
        return flat.index_select(1, idx).reshape(b, nh, ntile, span, flat.shape[-1])

    logits, valid = [], []
    for a in range(window):
        ce = gather(pe_flat, a)
        c_sq = gather(esq_flat, a).transpose(-1, -2)  # B x nh x ntile x 1 x span
        dist = q_sq + c_sq - 2.0 * torch.matmul(q, ce.transpose(-1, -2))
        rows = (row_start + a)[:, None, None, None]
        ok = col_ok[None] & ~(col_self[None] & (rows == i[:, None, None, None])) & (rows < nh)
        logits.append(dist.neg())
        valid.append(ok)  # nh x ntile x T x span
    neg_dist = torch.stack(logits, dim=-2)  # B x nh x ntile x T x W x span
    valid_all = torch.stack(valid, dim=-2)[None]  # 1 x nh x ntile x T x W x span
    scaled = scaled_logits(neg_dist, distance_bn, temp[..., None], valid_all)
    lg = torch.where(valid_all, scaled, MASKED_LOGIT).flatten(-2)

    weights = []
    for _ in range(k):
        logw = F.log_softmax(lg, dim=-1)
        weights.append(logw.exp())
        lg = lg + log1mexp(logw)
    # B x nh x ntile x k x T x W x span -> B x nh x ntile x W x (k*T) x span
    wts = torch.stack(weights, dim=3).reshape(b, nh, ntile, k, tile, window, span)
    wts = wts.permute(0, 1, 2, 5, 3, 4, 6).reshape(b, nh, ntile, window, k * tile, span)

    z = None
    for a in range(window):
        part = torch.matmul(wts[:, :, :, a], gather(px_flat, a))  # B x nh x ntile x kT x Fx
        z = part if z is None else z + part
    z = z.reshape(b, nh, ntile, k, tile, fx).permute(0, 3, 1, 2, 4, 5).reshape(b, k, nh, nwq, fx)
    out = _fold(z[:, :, :, :nw], nh, nw, stride)  # B x k x C x Hp x Wp
    out = out[..., pt : pt + h, pl : pl + w]
    return out.reshape(b, k * c, h, w).to(out_dtype)
