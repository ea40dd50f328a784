"""The static-shape continuous KNN: exact, memory-bounded, exportable, FP16-safe.

Every shape follows from the input's shape and every index is computed from ``arange`` of
those shapes, so the graph exports to ONNX with symbolic height/width and builds in TensorRT:
no NonZero, no boolean-mask indexing, no scatter, no data-dependent loops, no ``F.fold``.

Formulation (``s`` = stride, ``W`` = window, ``T`` = column tile, ``D = C*s*s``):

* **Patches are 2x2 blocks.** With ``patch = 2*stride`` every patch is 2x2 non-overlapping
  ``s x s`` blocks of the padded image (``pixel_unshuffle``), so the patch dot product is the
  sum of four block dot products and folding patches back is a sum over four block offsets.
* **Distances: rows by window slot, columns by tiles.** The window of query row ``i`` is rows
  ``start(i) + a`` (``W`` slots, a static loop). The queries of a tile of ``T`` columns draw
  their candidates from one span of ``T + W - 1`` columns, so each slot's patch Gram matrix
  is a dense batched matmul of query blocks against one gathered block-row span. The
  distances are then gathered into slot form ``nh x nw x W x W`` (the exact window).
* **Softmax rounds** run on ``patches x W*W`` logits with the query itself and the slots
  outside small grids masked by a large finite negative number.
* **Aggregation with folded weights.** Folding is linear, so the four patches covering a
  block can be folded into the *weights* first: output block ``u`` is a weighted sum over a
  ``(W+1) x (W+1)`` window of input blocks (``k x (W+1)^2`` weights per block), computed as
  batched matmuls of block-row slots against column spans, like the distances. This needs
  ``D``-dimensional blocks instead of ``4D``-dimensional patches: 4x fewer multiply-adds.
* **Memory** is O(H*W): the largest tensors hold ``k*(W+1)*(T+W)`` weights per block; nothing
  of size ``patches x window x patch_length`` ever exists.
* **Precision plan.** Everything here runs in at least float32 whatever the input dtype
  (float16 inputs are upcast, the result cast back); masked logits are finite, never
  ``-inf``; log(1-exp(w)) is the branch-free :func:`n3deploy.knn.common.log1mexp`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import log1mexp, pad_amounts, scaled_logits, window_start

__all__ = ["knn_aggregate_static", "DEFAULT_TILE"]

DEFAULT_TILE = 16
DEFAULT_GROUP = 4
MASKED_LOGIT = -1.0e30
_OFFSETS = ((0, 0), (0, 1), (1, 0), (1, 1))


def _blocks(img: Tensor, stride: int) -> Tensor:
    """``B x C x Hp x Wp`` (Hp, Wp multiples of stride) -> ``B x Hb x Wb x (C*s*s)`` block grid."""
    return F.pixel_unshuffle(img, stride).permute(0, 2, 3, 1)


def _span_gather(flat: Tensor, rows: Tensor, cols: Tensor, ncols: int) -> Tensor:
    """Gather ``flat[:, rows[r]*ncols + cols[t, m]]`` -> ``B x R x nt x M x D``.

    ``flat``: ``B x (nrows*ncols) x D``; ``rows``: ``R``; ``cols``: ``nt x M`` (both int64).
    """
    idx = (rows[:, None, None] * ncols + cols[None]).reshape(-1)
    out = flat.index_select(1, idx)
    return out.reshape(flat.shape[0], rows.shape[0], cols.shape[0], cols.shape[1], flat.shape[-1])


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
    group: int = DEFAULT_GROUP,
) -> Tensor:
    """Continuous k-nearest-neighbour aggregation; same contract as the reference.

    Args:
        x: ``B x C x H x W`` data whose patches are aggregated.
        embed: ``B x E x H x W`` embedding whose patch distances select the neighbours.
        log_temp: ``B x 1 x H x W`` log-temperature image (averaged over each patch).
        distance_bn: batch-norm applied to the negated distances.
        tile: columns per tile (speed/waste trade-off, no effect on the result).
        group: block-row slots contracted per aggregation matmul (speed/memory trade-off).

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
    nwin = window
    pt, pb = pad_amounts(h, patch_size, stride)
    pl, pr = pad_amounts(w, patch_size, stride)
    pad = (pl, pr, pt, pb)
    xp, ep, tp = (F.pad(t, pad) for t in (x, embed, log_temp))
    hb, wb = xp.shape[-2] // stride, xp.shape[-1] // stride  # block grid
    nh, nw = hb - 1, wb - 1  # patch grid

    be = _blocks(ep, stride)  # B x hb x wb x De
    bx = _blocks(xp, stride)  # B x hb x wb x Dx
    de, dx = be.shape[-1], bx.shape[-1]
    bsq = (be * be).sum(-1)  # B x hb x wb
    psq = bsq[:, :-1, :-1] + bsq[:, :-1, 1:] + bsq[:, 1:, :-1] + bsq[:, 1:, 1:]  # B x nh x nw
    temp = (F.avg_pool2d(tp, patch_size, stride)[:, 0] + math.log(temp_bias)).exp()  # B x nh x nw

    # ---------------------------------------------------------------- geometry
    i = torch.arange(nh, device=dev)
    jq = torch.arange(nw, device=dev)
    slots = torch.arange(nwin, device=dev)
    row_start = window_start(i, nh, nwin)  # nh
    col_start = window_start(jq, nw, nwin)  # nw
    cand_row = row_start[:, None] + slots  # nh x W
    cand_col = col_start[:, None] + slots  # nw x W
    valid = (cand_row < nh)[:, None, :, None] & (cand_col < nw)[None, :, None, :]
    valid = valid & ~((cand_row == i[:, None])[:, None, :, None] & (cand_col == jq[:, None])[None, :, None, :])

    # ------------------------------------------------ distances, slot by slot
    ntile = (nw + tile - 1) // tile
    nwq = ntile * tile
    span = tile + nwin - 1
    tstart = window_start(torch.arange(ntile, device=dev) * tile, nw, nwin)  # ntile
    span_cols = tstart[:, None] + torch.arange(span + 1, device=dev)  # ntile x (span+1)
    jt = torch.arange(nwq, device=dev).reshape(ntile, tile)
    # Where query column j's window sits inside its tile's span: ntile x T x W.
    in_span = (window_start(jt, nw, nwin) - tstart[:, None])[..., None] + slots
    in_span = in_span.clamp(max=span - 1)

    queries = torch.cat(
        [F.pad(be[:, di : di + nh, dj : dj + nw], (0, 0, 0, nwq - nw)) for di, dj in _OFFSETS], dim=-2
    )  # B x nh x 4*nwq x De, offset-major along columns
    queries = queries.reshape(b, nh, 4, ntile, tile, de).transpose(2, 3).reshape(b, nh, ntile, 4 * tile, de)
    q_sq = F.pad(psq, (0, nwq - nw)).reshape(b, nh, ntile, tile, 1)
    be_flat = be.reshape(b, hb * wb, de)
    psq_flat = psq.reshape(b, nh * nw, 1)
    psq_cols = span_cols[:, :span].clamp(max=nw - 1)

    def block_gram(alpha: int) -> Tensor:
        """Query blocks x candidate blocks of block-row slot alpha: B x nh x ntile x 4T x (span+1)."""
        rows = (row_start + alpha).clamp(max=hb - 1)
        cand = _span_gather(be_flat, rows, span_cols.clamp(max=wb - 1), wb)
        return torch.matmul(queries, cand.transpose(-1, -2))

    dist_slots = []
    gram_next = block_gram(0)
    for a in range(nwin):
        gram, gram_next = gram_next, block_gram(a + 1)
        g = (
            gram[..., 0 * tile : 1 * tile, :span]
            + gram[..., 1 * tile : 2 * tile, 1:]
            + gram_next[..., 2 * tile : 3 * tile, :span]
            + gram_next[..., 3 * tile : 4 * tile, 1:]
        )  # B x nh x ntile x T x span
        rows = (row_start + a).clamp(max=nh - 1)
        c_sq = _span_gather(psq_flat, rows, psq_cols, nw).squeeze(-1)[..., None, :]  # B x nh x ntile x 1 x span
        dist = q_sq + c_sq - 2.0 * g
        index = in_span[None, None].expand(b, nh, ntile, tile, nwin)
        dist_slots.append(torch.gather(dist, -1, index))  # B x nh x ntile x T x W(b)
    dist = torch.stack(dist_slots, dim=-2).reshape(b, nh, nwq, nwin, nwin)[:, :, :nw]

    # ------------------------------------------------------- softmax rounds
    scaled = scaled_logits(-dist, distance_bn, temp[..., None, None], valid[None])
    lg = torch.where(valid[None], scaled, MASKED_LOGIT).reshape(b, nh, nw, nwin * nwin)
    weights = []
    for _ in range(k):
        logw = F.log_softmax(lg, dim=-1)
        weights.append(logw.exp())
        lg = lg + log1mexp(logw)
    wts = torch.stack(weights, dim=1).reshape(b, k, nh, nw, nwin, nwin)

    # -------------------------------------- fold the weights onto the block grid
    # Output block u = (ui, uj) sums the patches u - d (d in {0,1}^2) that cover it, so its
    # value is a weighted sum of input blocks in a (W+1) x (W+1) window starting at
    # (start(ui), start(uj)); patch q = u - d's slot (a, b) is block row start(q_i) + a + d_i,
    # i.e. block slot alpha = start(q_i) + a + d_i - start(ui) (same for columns). The folded
    # weights are gathered straight into the banded layout the matmuls want: block rows by
    # slot alpha, block columns by tiles of T with a span of T + W columns.
    nbt = (wb + tile - 1) // tile
    bspan = tile + nwin
    ub = torch.arange(hb, device=dev)
    vt = torch.arange(nbt * tile, device=dev).reshape(nbt, tile)
    bstart = window_start(vt[:, 0], nw, nwin)  # nbt
    alpha = torch.arange(nwin + 1, device=dev)
    m = torch.arange(bspan, device=dev)
    # Weights as B x k x (nh*W + 1) x (nw*W + 1): rows (q_i, a), columns (q_j, b), a zero last row/column.
    wmat = F.pad(wts.permute(0, 1, 2, 4, 3, 5).reshape(b, k, nh * nwin, nw * nwin), (0, 1, 0, 1))
    fw = None
    for d in (0, 1):
        qi = ub[:, None] - d
        a = window_start(ub, nh, nwin)[:, None] + alpha - d - window_start(qi, nh, nwin)
        ok = (qi >= 0) & (qi < nh) & (a >= 0) & (a < nwin)
        rows = torch.where(ok, qi * nwin + a, nh * nwin).reshape(-1)  # hb*(W+1)
        wrow = wmat.index_select(2, rows)  # B x k x hb*(W+1) x (nw*W + 1)
        for e in (0, 1):
            qj = vt[..., None] - e
            bb = bstart[:, None, None] + m - e - window_start(qj, nw, nwin)
            ok = (qj >= 0) & (qj < nw) & (bb >= 0) & (bb < nwin)
            cols = torch.where(ok, qj * nwin + bb, nw * nwin).reshape(-1)  # nbt*T*bspan
            part = wrow.index_select(3, cols)
            fw = part if fw is None else fw + part
    # B x k x hb x (W+1) x nbt x T x bspan -> B x hb x nbt x k*T x (W+1)*bspan
    fw = fw.reshape(b, k, hb, nwin + 1, nbt, tile, bspan).permute(0, 2, 4, 1, 5, 3, 6)
    fw = fw.reshape(b, hb, nbt, k * tile, (nwin + 1) * bspan)

    # -------------------------------- aggregation: groups of block-row slots per matmul
    bx_flat = bx.reshape(b, hb * wb, dx)
    bcols = (bstart[:, None] + m).clamp(max=wb - 1)  # nbt x bspan
    brow = window_start(ub, nh, nwin)[:, None] + alpha  # hb x (W+1)
    z = None
    for g0 in range(0, nwin + 1, group):
        g1 = min(g0 + group, nwin + 1)
        rows = brow[:, g0:g1].clamp(max=hb - 1)  # hb x G
        idx = (rows[:, None, :, None] * wb + bcols[None, :, None, :]).reshape(-1)
        cand = bx_flat.index_select(1, idx).reshape(b, hb, nbt, (g1 - g0) * bspan, dx)
        part = torch.matmul(fw[..., g0 * bspan : g1 * bspan], cand)  # B x hb x nbt x kT x Dx
        z = part if z is None else z + part
    # B x hb x nbt x k x T x Dx -> B*k x Dx x hb x wb, divided by the patches covering each block
    z = z.reshape(b, hb, nbt, k, tile, dx).permute(0, 3, 5, 1, 2, 4).reshape(b * k, dx, hb, nbt * tile)[..., :wb]
    cover_r = 2.0 - (ub % nh == 0).to(work)
    cover_c = 2.0 - (torch.arange(wb, device=dev) % nw == 0).to(work)
    z = z / (cover_r[:, None] * cover_c[None, :])
    out = F.pixel_shuffle(z, stride)[..., pt : pt + h, pl : pl + w]
    return out.reshape(b, k * c, h, w).to(out_dtype)
