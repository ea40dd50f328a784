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
  column-tiled and stacked ``G`` rows at a time in one gather (:func:`_tiled_row_groups`); each slot
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
  multiply-adds. Each axis is folded by two gathers straight into that banded layout, in
  the transposed ``(slot, span) x (T, k)`` order the matmuls take without a permute. The
  division by the patches covering a block is exact and free: x is scaled by 1/4 and blocks
  covered by one patch along an axis take it twice. The matmul results are concatenated
  straight into the output layout (one copy).
* **Memory** is O(H*W): the largest tensors hold ``k*(W+1)*(T+W)`` weights or ``G*(T+W)``
  candidate blocks per block; nothing of size ``patches x window x patch_length`` ever exists.
  Measured formulations and their timings: ``benchmarks/knn_formulations.md``.
* **Precision plan.** Everything here runs in at least float32 whatever the input dtype
  (float16 inputs are upcast, the result cast back); masked logits are finite, never
  ``-inf``; log(1-exp(w)) is computed without cancellation (:func:`n3deploy.knn.common.selection_rounds`).
* **Gathers run along the first axis** (:func:`_take`): PyTorch's CPU ``index_select`` copies
  whole rows there; the one exception is the column fold, whose k-float runs are the layout
  the aggregation matmuls read.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import distance_logits, pad_amounts, selection_rounds, window_start

__all__ = ["knn_aggregate_static", "DEFAULT_TILE", "DEFAULT_GROUP", "EXPORT_GROUP"]

DEFAULT_TILE = 8
# Block-row slots contracted per aggregation matmul. PyTorch: 4 (8 took 188 against 181 ms per
# block). Exported graphs: 8, which ONNX Runtime runs 2.6% faster over the whole forward (paper,
# 481x321, fresh processes: 1.690 -> 1.646 s, median of 4 each): half as many Slice copies of the
# candidate rows and matmuls twice as deep. 16 would put a 2^31-element tensor in a 4K graph.
DEFAULT_GROUP = 4
EXPORT_GROUP = 8
DEFAULT_GRAM_TILE = 24
MASKED_LOGIT = -1.0e30  # finite, never -inf: masked slots end up with weights < 1e-35


def _blocks(img: Tensor, stride: int) -> Tensor:
    """``B x C x Hp x Wp`` (Hp, Wp multiples of stride) -> ``B x Hb x Wb x (C*s*s)`` block grid."""
    return F.pixel_unshuffle(img, stride).permute(0, 2, 3, 1)


def _take(t: Tensor, index: Tensor) -> Tensor:
    """``t[:, index]``: ``B x N x ...`` and an int64 ``index`` of any shape -> ``B x index.shape x ...``.

    One gather along the first axis, with the batch folded into the index: PyTorch's CPU
    ``index_select`` copies whole rows along dim 0 but loops over elements along other dims
    (measured on the row fold of the weights, 1 x 975 x 10185 -> 1040 rows: 24.5 ms on dim 1,
    2.5 ms on dim 0). In ONNX it is one Gather on axis 0, as before.
    """
    b, n = t.shape[0], t.shape[1]
    rest = t.shape[2:]
    idx = index.reshape(-1)
    if b != 1:  # the batch is static (fixed in every export)
        idx = (torch.arange(b, device=t.device)[:, None] * n + idx).reshape(-1)
    return t.reshape(b * n, *rest).index_select(0, idx).reshape(b, *index.shape, *rest)


def _tiled_row_groups(blocks: Tensor, cols: Tensor, nh: int, window: int, group: int) -> Tensor:
    """Column-tiled candidate block rows stacked in groups, in one gather: ``B x L x n x (G*S) x D``.

    ``blocks``: ``B x R x Wb x D`` (R = nh + 1 block rows); ``cols``: ``n x S`` block columns of
    each of the ``n`` column tiles. Row ``r`` of the result holds, for each tile, rows
    ``r .. r+G-1`` one after another, so the candidates of a block row whose window starts at
    ``s`` are, for slot group ``g``, row ``s + g*G``: a plain slice for consecutive starts.
    Grids shorter than the window get zero rows (their weights are zero).
    """
    b, r, wb, d = blocks.shape
    dev = blocks.device
    nrows = r + torch.sym_max(window - nh, 0) - group + 1
    src = torch.arange(nrows, device=dev)[:, None] + torch.arange(group, device=dev)  # L x G
    index = torch.where(
        (src < r)[:, None, :, None], src[:, None, :, None] * wb + cols[None, :, None, :], r * wb
    )  # L x n x G x S; r * wb is the zero block
    flat = F.pad(blocks, (0, 0, 0, 0, 0, 1)).reshape(b, (r + 1) * wb, d)  # one copy, also of a permuted view
    n, span = cols.shape
    return _take(flat, index).reshape(b, nrows, n, group * span, d)


def _shifted(s: slice, offset: int) -> slice:
    """``s`` moved by ``offset`` (the rows of slot group ``g`` are the window starts + ``g*G``)."""
    return slice(s.start + offset, s.stop + offset)


def _by_window_rows(fn: Callable[[slice, slice, bool], Tensor], nh: int, window: int, dim: int = 1) -> Tensor:
    """``cat_u fn(u, start(u))`` over the block rows ``u = 0 .. nh`` without gathering rows.

    ``fn(rows, starts, shared)`` computes block rows ``rows`` (a slice) given the slice of their
    window starts; ``shared`` is True for the border runs, whose rows all have the same start.
    Windows clamp at the borders, so the rows split into three runs: the top
    ``min(W//2, nh)`` rows share start 0, the middle rows have consecutive starts
    ``0 .. max(nh - W, 0)``, and the remaining bottom rows share the last start. Each run is
    one batched computation on slices (rows of a shared start are stacked into one product),
    so no per-row copy of the candidates is ever made. The runs are concatenated along ``dim``.
    """
    top = torch.sym_min(window // 2, nh)
    nmain = torch.sym_max(nh - window, 0) + 1
    return torch.cat(
        [
            fn(slice(0, top), slice(0, 1), True),
            fn(slice(top, top + nmain), slice(0, nmain), False),
            fn(slice(top + nmain, nh + 1), slice(nmain - 1, nmain), True),
        ],
        dim=dim,
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
    group: int | None = None,
    gram_tile: int = DEFAULT_GRAM_TILE,
) -> Tensor:
    """Continuous k-nearest-neighbour aggregation; same contract as the reference.

    Args:
        x: ``B x C x H x W`` data whose patches are aggregated.
        embed: ``B x E x H x W`` embedding whose patch distances select the neighbours.
        log_temp: ``B x 1 x H x W`` log-temperature image (averaged over each patch).
        distance_bn: batch-norm applied to the negated distances.
        tile: columns per tile (speed/waste trade-off, no effect on the result).
        group: block-row slots contracted per aggregation matmul (speed/memory trade-off);
            default :data:`DEFAULT_GROUP`, or :data:`EXPORT_GROUP` while exporting.
        gram_tile: patch columns per query tile of the Gram matrices (speed/waste trade-off).

    Returns:
        ``B x (k*C) x H x W``: the k neighbour images ``z_1..z_k``, neighbour-major.
    """
    if patch_size != 2 * stride:
        raise ValueError("the static KNN needs patch_size == 2 * stride")
    if group is None:
        group = EXPORT_GROUP if torch.compiler.is_exporting() else DEFAULT_GROUP
    # slots are contracted in equal groups: the largest divisor of window + 1 not above `group`
    group = max(g for g in range(1, min(group, window + 1) + 1) if (window + 1) % g == 0)
    out_dtype = x.dtype
    work = torch.promote_types(x.dtype, torch.float32)
    # x / 4: every output block averages 4 patch contributions (see the weight fold)
    x, embed, log_temp = x.to(work) * 0.25, embed.to(work), log_temp.to(work)
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
    # columns shared by the tile. The Gram matrices use their own, wider column tile (gram_tile):
    # more query rows per matmul.
    gtile = gram_tile
    ntile = (nw + gtile - 1) // gtile
    nwq = ntile * gtile
    span = gtile + nwin - 1  # candidate patch columns per tile
    ub = torch.arange(hb, device=dev)
    alpha = torch.arange(nwin + 1, device=dev)
    tfirst = torch.arange(ntile, device=dev) * gtile
    tstart = window_start(tfirst, nw, nwin)  # ntile: first candidate patch column
    qcols = (tfirst[:, None] + torch.arange(gtile + 1, device=dev)).clamp(max=wb - 1)  # ntile x (T+1)
    ccols = (tstart[:, None] + torch.arange(span + 1, device=dev)).clamp(max=wb - 1)  # ntile x (span+1)
    qblocks = _take(be.reshape(b, hb * wb, de), ub[:, None, None] * wb + qcols)  # B x hb x ntile x (T+1) x De
    ecand = _tiled_row_groups(be, ccols, nh, nwin, group)  # B x L x ntile x G*(span+1) x De
    ngroup = (nwin + 1) // group

    def gram_rows(rows: slice, starts: slice, shared: bool) -> Tensor:  # B x rows x ntile x (T+1) x (W+1)*(span+1)
        q = qblocks[:, rows]
        if shared:  # one window start: the rows' queries are stacked against the shared candidates
            nr = rows.stop - rows.start
            q = q.transpose(1, 2).reshape(b * ntile, nr * (gtile + 1), de)
            cs = group * (span + 1)
            parts = [q @ ecand[:, starts.start + g * group].reshape(b * ntile, cs, de).transpose(1, 2) for g in range(ngroup)]
            return torch.cat(parts, dim=-1).reshape(b, ntile, nr, gtile + 1, ngroup * cs).transpose(1, 2)
        return torch.cat([q @ ecand[:, _shifted(starts, g * group)].transpose(-1, -2) for g in range(ngroup)], dim=-1)

    gram = _by_window_rows(gram_rows, nh, nwin).reshape(b, hb, ntile, gtile + 1, nwin + 1, span + 1)
    # Column offset d_j: query block column jj + d_j against candidate column m + d_j.
    gram = gram[:, :, :, :gtile, :, :span] + gram[:, :, :, 1:, :, 1:]  # B x hb x ntile x T x (W+1) x span
    # Row offset d_i: patch row i uses block row i (slot a) and block row i + 1 (slot a, or
    # a + 1 where the window is clamped: start(i+1) == start(i)).
    shift = (window_start(ub[1:] - 1, nh, nwin) + 1 - window_start(ub[1:], nh, nwin)) == 1  # nh
    lower = torch.where(shift[:, None, None, None, None], gram[:, 1:, :, :, 1:], gram[:, 1:, :, :, :nwin])
    gram = gram[:, :nh, :, :, :nwin] + lower  # B x nh x ntile x T x W(a) x span
    # Into slot form: query column j's window starts at start(j) - tstart inside its tile's span.
    jt = torch.arange(nwq, device=dev).reshape(ntile, gtile)
    in_span = ((window_start(jt, nw, nwin) - tstart[:, None])[..., None] + slots).clamp(max=span - 1)
    index = in_span[None, None, :, :, None, :].expand(b, nh, ntile, gtile, nwin, nwin)
    gram = torch.gather(gram, -1, index).reshape(b, nh, nwq, nwin, nwin)[:, :, :nw]
    cand_sq_idx = (cand_row[:, None, :, None] * nw + cand_col[None, :, None, :]).clamp(max=nh * nw - 1)
    cand_sq = _take(psq.reshape(b, nh * nw), cand_sq_idx)  # B x nh x nw x W x W
    dist = psq[..., None, None] + cand_sq - 2.0 * gram  # B x nh x nw x W x W

    # ------------------------------------------------------- softmax rounds
    logits = distance_logits(dist, distance_bn, temp[..., None, None], valid[None])
    logits = torch.where(valid[None], logits, MASKED_LOGIT).reshape(b, nh, nw, nwin * nwin)
    weights = selection_rounds(logits, k)

    # k tensors B x nh x nw x W*W -> weights matrix B x ((nh+1)*W) x ((nw+1)*W*k): rows (q_i, a),
    # columns (q_j, b, r); the zero padding (row nh*W, column nw*W) serves out-of-range lookups.
    # Stacked k-innermost, then (q_j, a) swapped in runs of W*k in the pad's copy: two cheap
    # copies. One transpose from k-major (k moves from outermost to innermost) is as fast in
    # PyTorch but took ONNX Runtime 39 ms per block at 481x321 against 9 ms for these two.
    wts = torch.stack(weights, -1).reshape(b, nh, nw, nwin, nwin * k).transpose(2, 3)
    wmat = F.pad(wts, (0, 0, 0, 1, 0, 0, 0, 1)).reshape(b, (nh + 1) * nwin, (nw + 1) * nwin * k)

    # -------------------------------------- fold the weights onto the block grid
    # Output block u = (ui, uj) averages the patches u - d (d in {0,1}^2) covering it, so it is
    # a weighted sum of input blocks in a (W+1) x (W+1) block window starting at
    # (start(ui), start(uj)). Patch q = u - d's slot (a, b) is block slot
    # (start(q_i) + a + d_i - start(ui), start(q_j) + b + d_j - start(uj)): the same slot inside
    # the grid, one further at the clamped borders. Each axis is folded by two gathers (d = 0, 1)
    # straight into the banded layout the matmuls want: block rows by slot alpha, block
    # columns in tiles of T with a span of T + W columns.
    # Blocks covered by one patch along an axis (the first and last) take it twice: the result
    # is divided by 4 everywhere (x is scaled by 1/4 beforehand, exactly).
    rows = []
    for d in (0, 1):
        qi = ub[:, None] - d
        a = window_start(ub, nh, nwin)[:, None] + alpha - d - window_start(qi, nh, nwin)
        ok = (qi >= 0) & (qi < nh) & (a >= 0) & (a < nwin)
        rows.append(torch.where(ok, qi * nwin + a, nh * nwin))  # hb x (W+1)
    first, last = (ub == 0)[:, None], (ub == nh)[:, None]
    rows = [torch.where(last, rows[1], rows[0]), torch.where(first, rows[0], rows[1])]
    # rows ordered (slot group g, block row, slot gi): a group's G slots sit next to each other
    rows = [r.reshape(hb, ngroup, group).transpose(0, 1).reshape(-1) for r in rows]
    wrow = _take(wmat, rows[0]) + _take(wmat, rows[1])  # B x (g, hb, gi) x (nw+1)*W*k
    # Columns: output block column v (tiles of T) and span slot m (block column bstart + m) take
    # patch q_j = v - d_j's slot bstart + m - d_j - start(q_j); k stays innermost (contiguous).
    nbt = (wb + tile - 1) // tile
    bspan = tile + nwin
    m = torch.arange(bspan, device=dev)
    vt = torch.arange(nbt * tile, device=dev).reshape(nbt, tile)
    bstart = window_start(vt[:, 0], nw, nwin)  # nbt
    ncols = (nw + 1) * nwin
    wrow = wrow.reshape(b * ngroup * hb, group * ncols, k)  # a group's G rows side by side
    cols = []
    for d in (0, 1):
        qj = vt[..., None] - d  # nbt x T x 1
        slot = bstart[:, None, None] + m - d - window_start(qj, nw, nwin)  # nbt x T x bspan
        ok = (qj >= 0) & (qj < nw) & (slot >= 0) & (slot < nwin)
        cols.append(torch.where(ok, qj * nwin + slot, nw * nwin))
    first, last = (vt == 0)[..., None], (vt == nw)[..., None]
    cols = [torch.where(last, cols[1], cols[0]), torch.where(first, cols[0], cols[1])]
    # Gathered in the order (tile, gi, m, T) with k innermost: each (slot group, block row, tile)
    # gets the transposed weight matrix (gi, m) x (T, k), contiguous, which the matmuls take as
    # it is (no permute of the banded weights).
    gi = torch.arange(group, device=dev)[None, :, None, None] * ncols
    cols = [(gi + col.transpose(1, 2)[:, None]).reshape(-1) for col in cols]  # nbt x G x bspan x T
    fw = wrow.index_select(1, cols[0]) + wrow.index_select(1, cols[1])
    fw = fw.reshape(b, ngroup, hb, nbt, group * bspan, tile * k)

    # -------------------------------- aggregation: groups of block-row slots per matmul
    bcols = (bstart[:, None] + m).clamp(max=wb - 1)  # nbt x bspan
    xcand = _tiled_row_groups(bx, bcols, nh, nwin, group)  # B x L x nbt x G*bspan x Dx

    def aggregate_rows(rows: slice, starts: slice, shared: bool) -> Tensor:  # B x k x C x rows x s x nbt x T x s
        nr = rows.stop - rows.start
        if shared:
            # One shared window start: the rows share their candidates, so they are stacked
            # into the matrix rows of one product per tile instead of repeating the candidates.
            z = None
            for g in range(ngroup):
                wg = fw[:, g, rows].permute(0, 2, 3, 1, 4).reshape(b * nbt, group * bspan, nr * tile * k)
                xg = xcand[:, starts.start + g * group].reshape(b * nbt, group * bspan, dx)
                wg = wg.transpose(1, 2)
                z = torch.bmm(wg, xg) if z is None else z.baddbmm_(wg, xg)  # accumulates in place
            z = z.reshape(b, nbt, nr, tile, k, c, stride, stride)
            return z.permute(0, 4, 5, 2, 6, 1, 3, 7)
        z = None
        for g in range(ngroup):
            wg = fw[:, g, rows].reshape(b * nr * nbt, group * bspan, tile * k).transpose(1, 2)
            xg = xcand[:, _shifted(starts, g * group)].reshape(b * nr * nbt, group * bspan, dx)
            z = torch.bmm(wg, xg) if z is None else z.baddbmm_(wg, xg)  # accumulates in place
        z = z.reshape(b, nr, nbt, tile, k, c, stride, stride)
        return z.permute(0, 4, 5, 1, 6, 2, 3, 7)

    # The runs are concatenated straight into the output layout B x k x C x (hb, s) x (nbt, T, s)
    # (one copy). The division by the patches covering each block is already in the weights
    # (border blocks count their single patch twice) and in x (scaled by 1/4, exactly).
    z = _by_window_rows(aggregate_rows, nh, nwin, dim=3)
    out = z.reshape(b, k * c, hb * stride, nbt * tile * stride)
    out = out[..., pt : pt + h, pl : pl + w]
    return out.reshape(b, k * c, h, w).to(out_dtype)
