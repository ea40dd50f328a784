"""The static-shape continuous KNN: exact, memory-bounded, exportable, FP16-safe.

Every shape follows from the input's shape and every index is computed from ``arange`` of
those shapes, so the graph exports to ONNX with symbolic height/width and builds in TensorRT:
no NonZero, no boolean-mask indexing, no scatter, no data-dependent loops, no ``F.fold``.

Formulation (``s`` = stride, ``W`` = window, ``T`` = column tile, ``D = C*s*s``):

* **Patches are 2x2 blocks.** With ``patch = 2*stride`` every patch is 2x2 non-overlapping
  ``s x s`` blocks of the padded image (``pixel_unshuffle``), so the patch dot product is the
  sum of four block dot products and folding patches back is a sum over four block offsets.
* **Distances: rows by window slot, columns by tiles.** The window of block row ``u`` is
  rows ``start(u) + a`` (``W + 1`` slots). The queries of a tile of ``T`` columns draw
  their candidates from one span of ``T + W - 1`` columns, so the candidate blocks are
  column-tiled once and stacked ``G`` rows at a time (:func:`_row_groups`); each slot
  group's Gram matrix is then a batched matmul of query blocks against a *slice* of that
  tensor: window starts are consecutive except at the clamped borders, so the rows of one
  start form three runs (top, middle, bottom) and no per-row copy of the candidates is made
  (:func:`_by_window_rows`). The distances are then gathered into slot form
  ``nh x nw x W x W`` (the exact window).
* **Softmax rounds** run on ``patches x W*W`` logits with the query itself and the slots
  outside small grids masked by a large finite negative number.
* **Aggregation with folded weights.** Folding is linear, so the four patches covering a
  block can be folded into the *weights* first: output block ``u`` is a weighted sum over a
  ``(W+1) x (W+1)`` window of input blocks (``k x (W+1)^2`` weights per block), computed as
  batched matmuls of block-row slot groups against column spans, like the distances. This
  needs ``D``-dimensional blocks instead of ``4D``-dimensional patches: 4x fewer
  multiply-adds. Each axis is folded by two gathers straight into that banded layout.
* **Memory** is O(H*W): the largest tensors hold ``k*(W+1)*(T+W)`` weights or ``G*(T+W)``
  candidate blocks per block; nothing of size ``patches x window x patch_length`` ever exists.
  Measured formulations and their timings: ``benchmarks/knn_formulations.md``.
* **Precision plan.** Everything here runs in at least float32 whatever the input dtype
  (float16 inputs are upcast, the result cast back); masked logits are finite, never
  ``-inf``; log(1-exp(w)) is the branch-free :func:`n3deploy.knn.common.log1mexp`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import distance_logits, pad_amounts, selection_rounds, window_start

__all__ = ["knn_aggregate_static", "DEFAULT_TILE"]

DEFAULT_TILE = 8
DEFAULT_GROUP = 4
MASKED_LOGIT = -1.0e30  # finite, never -inf: masked slots end up with weights < 1e-35


def _blocks(img: Tensor, stride: int) -> Tensor:
    """``B x C x Hp x Wp`` (Hp, Wp multiples of stride) -> ``B x Hb x Wb x (C*s*s)`` block grid."""
    return F.pixel_unshuffle(img, stride).permute(0, 2, 3, 1)


def _row_groups(t: Tensor, nh: int, window: int, group: int) -> Tensor:
    """Candidate block rows stacked in groups: ``B x R x ...`` -> ``B x L x n x (G*S) x D``.

    ``t``: ``B x R x n x S x D`` (R = nh + 1 block rows, n column tiles of S blocks). Row
    ``r`` of the result holds rows ``r .. r+G-1`` of ``t`` one after another, so the
    candidates of a block row whose window starts at ``s`` are, for slot group ``g``, row
    ``s + g*G``: a plain slice for consecutive starts. Zero rows are appended to grids shorter
    than the window (their weights are zero).
    """
    pad = torch.sym_max(window - nh, 0)
    t = F.pad(t, (0, 0, 0, 0, 0, 0, 0, pad))
    rows = t.shape[1] - group + 1
    return torch.cat([t[:, i : i + rows] for i in range(group)], dim=3)


def _shifted(s: slice, offset: int) -> slice:
    """``s`` moved by ``offset`` (the rows of slot group ``g`` are the window starts + ``g*G``)."""
    return slice(s.start + offset, s.stop + offset)


def _by_window_rows(fn: Callable[[slice, slice], Tensor], nh: int, window: int) -> Tensor:
    """``cat_u fn(u, start(u))`` over the block rows ``u = 0 .. nh`` without gathering rows.

    ``fn(rows, starts)`` computes block rows ``rows`` (a slice) given the slice of their
    window starts. Windows clamp at the borders, so the rows split into three runs: the top
    ``min(W//2, nh)`` rows share start 0, the middle rows have consecutive starts
    ``0 .. max(nh - W, 0)``, and the remaining bottom rows share the last start. Each run is
    one batched computation on slices (a shared start broadcasts), so no per-row copy of the
    candidates is ever made.
    """
    top = torch.sym_min(window // 2, nh)
    nmain = torch.sym_max(nh - window, 0) + 1
    return torch.cat(
        [
            fn(slice(0, top), slice(0, 1)),
            fn(slice(top, top + nmain), slice(0, nmain)),
            fn(slice(top + nmain, nh + 1), slice(nmain - 1, nmain)),
        ],
        dim=1,
    )


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
    # slots are contracted in equal groups: the largest divisor of window + 1 not above `group`
    group = max(g for g in range(1, min(group, window + 1) + 1) if (window + 1) % g == 0)
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

    # ---------------------------------------------------- block Gram matrices
    # Patch dot products are sums of four block dot products. Every block row ub is matched
    # against block rows start(ub) + alpha (alpha < W + 1) in batched matmuls: queries in
    # tiles of T patch columns (T + 1 block columns), candidates in a span of T + W block
    # columns shared by the tile.
    ntile = (nw + tile - 1) // tile
    nwq = ntile * tile
    span = tile + nwin - 1  # candidate patch columns per tile
    ub = torch.arange(hb, device=dev)
    alpha = torch.arange(nwin + 1, device=dev)
    tfirst = torch.arange(ntile, device=dev) * tile
    tstart = window_start(tfirst, nw, nwin)  # ntile: first candidate patch column
    qcols = (tfirst[:, None] + torch.arange(tile + 1, device=dev)).clamp(max=wb - 1)  # ntile x (T+1)
    ccols = (tstart[:, None] + torch.arange(span + 1, device=dev)).clamp(max=wb - 1)  # ntile x (span+1)
    qblocks = be.index_select(2, qcols.reshape(-1)).reshape(b, hb, ntile, tile + 1, de)
    ecand = _row_groups(be.index_select(2, ccols.reshape(-1)).reshape(b, hb, ntile, span + 1, de), nh, nwin, group)
    ngroup = (nwin + 1) // group

    def gram_rows(rows: slice, starts: slice) -> Tensor:  # B x rows x ntile x (T+1) x (W+1)*(span+1)
        q = qblocks[:, rows]
        return torch.cat([q @ ecand[:, _shifted(starts, g * group)].transpose(-1, -2) for g in range(ngroup)], dim=-1)

    gram = _by_window_rows(gram_rows, nh, nwin).reshape(b, hb, ntile, tile + 1, nwin + 1, span + 1)
    # Column offset d_j: query block column jj + d_j against candidate column m + d_j.
    gram = gram[:, :, :, :tile, :, :span] + gram[:, :, :, 1:, :, 1:]  # B x hb x ntile x T x (W+1) x span
    # Row offset d_i: patch row i uses block row i (slot a) and block row i + 1 (slot a, or
    # a + 1 where the window is clamped: start(i+1) == start(i)).
    shift = (window_start(ub[1:] - 1, nh, nwin) + 1 - window_start(ub[1:], nh, nwin)) == 1  # nh
    lower = torch.where(shift[:, None, None, None, None], gram[:, 1:, :, :, 1:], gram[:, 1:, :, :, :nwin])
    gram = gram[:, :nh, :, :, :nwin] + lower  # B x nh x ntile x T x W(a) x span
    # Into slot form: query column j's window starts at start(j) - tstart inside its tile's span.
    jt = torch.arange(nwq, device=dev).reshape(ntile, tile)
    in_span = ((window_start(jt, nw, nwin) - tstart[:, None])[..., None] + slots).clamp(max=span - 1)
    index = in_span[None, None, :, :, None, :].expand(b, nh, ntile, tile, nwin, nwin)
    gram = torch.gather(gram, -1, index).reshape(b, nh, nwq, nwin, nwin)[:, :, :nw]
    cand_sq_idx = (cand_row[:, None, :, None] * nw + cand_col[None, :, None, :]).clamp(max=nh * nw - 1)
    cand_sq = psq.reshape(b, nh * nw).index_select(1, cand_sq_idx.reshape(-1)).reshape(b, nh, nw, nwin, nwin)
    dist = psq[..., None, None] + cand_sq - 2.0 * gram  # B x nh x nw x W x W

    # ------------------------------------------------------- softmax rounds
    logits = distance_logits(dist, distance_bn, temp[..., None, None], valid[None])
    logits = torch.where(valid[None], logits, MASKED_LOGIT).reshape(b, nh, nw, nwin * nwin)
    weights = selection_rounds(logits, k)

    # B x nh x nw x W*W x k -> weights matrix B x (nh*W + 1) x (nw*W*k + 1): rows (q_i, a),
    # columns (q_j, b, r), a zero row and k zero columns at the end for out-of-range lookups.
    wts = torch.stack([p.reshape(b, nh, nw, nwin, nwin).transpose(2, 3) for p in weights], dim=-1)
    wmat = F.pad(wts.reshape(b, nh * nwin, nw * nwin * k), (0, k, 0, 1))

    # -------------------------------------- fold the weights onto the block grid
    # Output block u = (ui, uj) averages the patches u - d (d in {0,1}^2) covering it, so it is
    # a weighted sum of input blocks in a (W+1) x (W+1) block window starting at
    # (start(ui), start(uj)). Patch q = u - d's slot (a, b) is block slot
    # (start(q_i) + a + d_i - start(ui), start(q_j) + b + d_j - start(uj)): the same slot inside
    # the grid, one further at the clamped borders. Each axis is folded by two gathers (d = 0, 1)
    # straight into the banded layout the matmuls want: block rows by slot alpha, block
    # columns in tiles of T with a span of T + W columns.
    wrow = None
    for d in (0, 1):
        qi = ub[:, None] - d
        a = window_start(ub, nh, nwin)[:, None] + alpha - d - window_start(qi, nh, nwin)
        ok = (qi >= 0) & (qi < nh) & (a >= 0) & (a < nwin)
        rows = torch.where(ok, qi * nwin + a, nh * nwin).reshape(-1)  # hb*(W+1)
        part = wmat.index_select(1, rows)
        wrow = part if wrow is None else wrow + part
    # Columns: output block column v (tiles of T) and span slot m (block column bstart + m) take
    # patch q_j = v - d_j's slot bstart + m - d_j - start(q_j); k stays innermost (contiguous).
    nbt = (wb + tile - 1) // tile
    bspan = tile + nwin
    m = torch.arange(bspan, device=dev)
    vt = torch.arange(nbt * tile, device=dev).reshape(nbt, tile)
    bstart = window_start(vt[:, 0], nw, nwin)  # nbt
    wrow = wrow.reshape(b * hb * (nwin + 1), nw * nwin + 1, k)
    fw = None
    for d in (0, 1):
        qj = vt[..., None] - d  # nbt x T x 1
        slot = bstart[:, None, None] + m - d - window_start(qj, nw, nwin)  # nbt x T x bspan
        ok = (qj >= 0) & (qj < nw) & (slot >= 0) & (slot < nwin)
        cols = torch.where(ok, qj * nwin + slot, nw * nwin).reshape(-1)
        part = wrow.index_select(1, cols)  # B*hb*(W+1) x nbt*T*bspan x k
        fw = part if fw is None else fw + part
    # B x (hb, g, gi) x (nbt, T, m) x k -> B x g x hb x nbt x (k, T) x (gi, m): one matrix per
    # (slot group, block row, tile)
    fw = fw.reshape(b, hb, ngroup, group, nbt, tile, bspan, k).permute(0, 2, 1, 4, 7, 5, 3, 6)
    fw = fw.reshape(b, ngroup, hb, nbt, k * tile, group * bspan)

    # -------------------------------- aggregation: groups of block-row slots per matmul
    bcols = (bstart[:, None] + m).clamp(max=wb - 1)  # nbt x bspan
    xcand = _row_groups(bx.index_select(2, bcols.reshape(-1)).reshape(b, hb, nbt, bspan, dx), nh, nwin, group)

    def aggregate_rows(rows: slice, starts: slice) -> Tensor:  # B x rows x nbt x kT x Dx
        z = None
        for g in range(ngroup):
            part = fw[:, g, rows] @ xcand[:, _shifted(starts, g * group)]
            z = part if z is None else z + part
        return z

    z = _by_window_rows(aggregate_rows, nh, nwin)
    # Divide by the patches covering each block (2 per axis inside, 1 on the first and last block
    # row/column), then B x hb x nbt x k x T x (C x s x s) -> B x k*C x Hp x Wp in one copy.
    cover_r = 2.0 - ((ub == 0) | (ub == nh)).to(work)  # hb
    vcol = torch.arange(nbt * tile, device=dev)
    cover_c = 2.0 - ((vcol == 0) | (vcol == nw)).to(work)  # nbt*T (columns >= wb are cropped)
    inv_cover = (1.0 / (cover_r[:, None] * cover_c[None, :])).reshape(hb, nbt, 1, tile, 1, 1, 1)
    z = z.reshape(b, hb, nbt, k, tile, c, stride, stride) * inv_cover
    out = z.permute(0, 3, 5, 1, 6, 2, 4, 7).reshape(b, k * c, hb * stride, nbt * tile * stride)
    out = out[..., pt : pt + h, pl : pl + w]
    return out.reshape(b, k * c, h, w).to(out_dtype)
