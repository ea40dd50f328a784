"""The continuous KNN: the static implementation equals the reference, and stays static-shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from n3deploy.knn import knn_aggregate_reference, knn_aggregate_static
from n3deploy.knn.common import log1m_softmax, log1mexp, selection_rounds
from n3deploy.knn.reference import neighbour_index

KNN_ARGS = dict(k=7, patch_size=10, stride=5, window=15, temp_bias=0.1)


def distance_bn() -> torch.nn.BatchNorm1d:
    bn = torch.nn.BatchNorm1d(1).eval()
    bn.running_mean.fill_(-3.0)
    bn.running_var.fill_(4.0)
    bn.weight.data.fill_(2.0)
    bn.bias.data.fill_(0.5)
    return bn


def photo_inputs(h: int, w: int, dtype=torch.float32, batch: int = 1, channels: int = 3):
    """Real-image data, an embedding made of it, and a varying log-temperature."""
    img = torch.from_numpy(data.camera()[40 : 40 + h, 60 : 60 + w].astype(np.float32) / 255.0).to(dtype)
    x = torch.stack([img * (c + 1) / channels for c in range(channels)])[None].repeat(batch, 1, 1, 1)
    gy, gx = torch.gradient(img)
    embed = 0.2 * torch.stack([img, gx, gy, img**2])[None].repeat(batch, 1, 1, 1)
    log_temp = (0.5 * torch.sin(torch.arange(h, dtype=dtype))[:, None] * torch.ones(w, dtype=dtype))[None, None]
    return x, embed, log_temp.repeat(batch, 1, 1, 1)


SIZES = [(15, 15), (17, 300), (40, 40), (97, 123), (128, 96), (300, 17), (16, 140)]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_static_equals_reference_float32_on_a_photo(size):
    x, embed, log_temp = photo_inputs(*size)
    bn = distance_bn()
    with torch.no_grad():
        static = knn_aggregate_static(x, embed, log_temp, bn, **KNN_ARGS)
        reference = knn_aggregate_reference(x, embed, log_temp, bn, **KNN_ARGS)
    assert static.shape == (1, 7 * 3, *size)
    assert torch.isfinite(static).all()
    assert (static - reference).abs().max().item() <= 1e-5
    # the neighbours really differ from the input, so the comparison is not vacuous
    assert (reference - x.repeat(1, 7, 1, 1)).abs().mean() > 1e-3


@pytest.mark.parametrize("group", [None, 8], ids=["eager-group", "export-group"])
@pytest.mark.parametrize("size", [(40, 40), (97, 123)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_static_equals_reference_float64_random_batch(size, group):
    torch.manual_seed(0)
    x = torch.rand(2, 8, *size, dtype=torch.float64)
    embed = 0.02 * torch.randn(2, 8, *size, dtype=torch.float64)
    log_temp = torch.randn(2, 1, *size, dtype=torch.float64)
    bn = distance_bn()
    static = knn_aggregate_static(x, embed, log_temp, bn, group=group, **KNN_ARGS)
    reference = knn_aggregate_reference(x, embed, log_temp, bn, **KNN_ARGS)
    assert (static - reference).abs().max().item() <= 1e-12


def test_test_inputs_give_informative_weights():
    """Selection weights on the test inputs are neither uniform nor one-hot."""
    x, embed, log_temp = photo_inputs(97, 123, dtype=torch.float64)
    captured = []
    import n3deploy.knn.reference as reference_module

    original = reference_module.selection_rounds
    reference_module.selection_rounds = lambda logits, k: captured.append(original(logits, k)) or captured[-1]
    try:
        knn_aggregate_reference(x, embed, log_temp, distance_bn(), **KNN_ARGS)
    finally:
        reference_module.selection_rounds = original
    first_round = torch.cat([w[0] for w in captured], dim=1)
    peak = first_round.amax(-1).mean().item()
    assert 5 / 224 < peak < 0.95


def test_window_on_grids_smaller_than_the_window():
    """A 7x4 patch grid: every query sees the whole grid but itself (27 candidates)."""
    index = neighbour_index(7, 4, window=15)
    assert index.shape == (28, 27)
    for q in range(28):
        assert sorted(index[q].tolist()) == [c for c in range(28) if c != q]
    # inside large grids the window is 15x15 less the query, shifted inward at borders
    index = neighbour_index(20, 30, window=15)
    assert index.shape == (600, 224)
    corner = set(index[0].tolist())
    assert corner == {r * 30 + c for r in range(15) for c in range(15)} - {0}


def test_selection_rounds_ignore_masked_slots():
    """A masked slot (large finite negative logit) never changes any round's weights."""
    torch.manual_seed(0)
    logits = torch.randn(4, 224, dtype=torch.float64) * 100  # spread wide enough to trigger the floor
    masked = torch.cat([logits, torch.full((4, 3), -1.0e30, dtype=torch.float64)], dim=-1)
    plain, with_mask = selection_rounds(logits, 7), selection_rounds(masked, 7)
    for a, b in zip(plain, with_mask):
        assert torch.allclose(a, b[:, :224], atol=1e-30, rtol=0)
        assert b[:, 224:].max() < 1e-30


def test_selection_rounds_match_the_plain_formula():
    torch.manual_seed(1)
    logits = torch.randn(5, 50, dtype=torch.float64) * 3
    ref = logits.clone()
    for w in selection_rounds(logits, 4):
        logw = torch.log_softmax(ref, -1)
        assert torch.allclose(w, logw.exp(), atol=1e-14)
        ref = ref + torch.log(-torch.expm1(logw))


def test_log1mexp_is_accurate_and_finite():
    w = torch.tensor([0.0, -1e-12, -1e-7, -1e-3, -0.5, -0.7, -1.0, -20.0, -100.0, -1e30], dtype=torch.float64)
    got = log1mexp(w)
    assert torch.isfinite(got).all()
    exact = torch.log(-torch.expm1(w[1:]))
    assert torch.allclose(got[1:], exact, rtol=1e-12, atol=1e-300)
    got32 = log1mexp(w.float())
    assert torch.isfinite(got32).all()
    assert torch.allclose(got32[1:-1].double(), exact[:-1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("scale", [0.3, 3.0, 30.0, 300.0])
def test_log1m_softmax_is_as_accurate_as_log1mexp(scale):
    # scale 30+ makes rows nearly one-hot: the top weight is within 1e-6 of 1, where log1p(-p) fails
    torch.manual_seed(0)
    logw = torch.log_softmax(torch.randn(64, 225, dtype=torch.float64) * scale, -1)
    exact = torch.log(-torch.expm1(logw))
    finite = torch.isfinite(exact)
    for dtype, tol in ((torch.float64, 1e-13), (torch.float32, 3e-6)):
        lw = logw.to(dtype)
        got = log1m_softmax(lw, lw.exp())
        assert (got.double() - exact)[finite].abs().max() <= tol
        assert (log1mexp(lw, lw.exp()).double() - exact)[finite].abs().max() <= tol


def test_log1m_softmax_has_finite_gradients_on_one_hot_rows():
    logits = torch.tensor([[0.0, -200.0, -300.0], [1.0, 2.0, 3.0]], dtype=torch.float64, requires_grad=True)
    logw = torch.log_softmax(logits, -1)
    assert logw.exp()[0, 0] == 1.0  # p == 1 exactly: log1p(-p) alone would be -inf
    out = log1m_softmax(logw, logw.exp())
    out.sum().backward()
    assert torch.isfinite(out[1]).all() and torch.isfinite(logits.grad).all()


def test_exported_graphs_take_the_tanh_form_and_eager_the_log1p_form(monkeypatch):
    # the exported form is the one ONNX Runtime runs fastest (see common._log1m_weights)
    from n3deploy.knn.common import _log1m_weights

    torch.manual_seed(0)
    logw = torch.log_softmax(torch.randn(64, 225) * 10, -1)
    p = logw.exp()
    assert not torch.equal(log1mexp(logw, p), log1m_softmax(logw, p))  # the forms differ in rounding
    assert torch.equal(_log1m_weights(logw, p), log1m_softmax(logw, p))
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    assert torch.equal(_log1m_weights(logw, p), log1mexp(logw, p))


def test_exported_graphs_contract_more_slots_per_matmul(monkeypatch):
    # EXPORT_GROUP is what ONNX Runtime runs fastest (see n3deploy.knn.static)
    import n3deploy.knn.static as static

    groups = []
    original = static._tiled_row_groups
    monkeypatch.setattr(static, "_tiled_row_groups", lambda *a: groups.append(a[-1]) or original(*a))
    x, embed, log_temp = photo_inputs(40, 40)
    static.knn_aggregate_static(x, embed, log_temp, distance_bn(), **KNN_ARGS)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    static.knn_aggregate_static(x, embed, log_temp, distance_bn(), **KNN_ARGS)
    assert groups == [static.DEFAULT_GROUP] * 2 + [static.EXPORT_GROUP] * 2


def test_static_gradients_are_exact():
    torch.manual_seed(0)
    size = (15, 20)
    x = torch.rand(1, 1, *size, dtype=torch.float64, requires_grad=True)
    embed = (0.3 * torch.randn(1, 2, *size, dtype=torch.float64)).requires_grad_()
    log_temp = (0.1 * torch.randn(1, 1, *size, dtype=torch.float64)).requires_grad_()
    bn = distance_bn().double()
    args = dict(KNN_ARGS, k=2)
    assert torch.autograd.gradcheck(
        lambda a, e, t: knn_aggregate_static(a, e, t, bn, **args), (x, embed, log_temp), eps=1e-6, atol=1e-5, fast_mode=True
    )


def test_training_mode_batch_norm_matches_reference():
    x, embed, log_temp = photo_inputs(40, 52, dtype=torch.float64, batch=2)
    bn_static, bn_ref = distance_bn().double().train(), distance_bn().double().train()
    static = knn_aggregate_static(x, embed, log_temp, bn_static, **KNN_ARGS)
    reference = knn_aggregate_reference(x, embed, log_temp, bn_ref, chunk=10**9, **KNN_ARGS)
    assert (static - reference).abs().max() < 1e-10
    assert torch.allclose(bn_static.running_mean, bn_ref.running_mean)
    assert torch.allclose(bn_static.running_var, bn_ref.running_var)
    assert not torch.allclose(bn_static.running_mean, torch.tensor([-3.0], dtype=torch.float64))


def test_float16_inputs_compute_in_float32():
    x, embed, log_temp = photo_inputs(40, 48)
    bn = distance_bn()
    full = knn_aggregate_static(x, embed, log_temp, bn, **KNN_ARGS)
    half = knn_aggregate_static(x.half(), embed.half(), log_temp.half(), bn, **KNN_ARGS)
    assert half.dtype == torch.float16
    assert torch.isfinite(half).all()
    assert (half.float() - full).abs().max() < 5e-3


class _Recorder(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every op and the largest tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.add(str(func.overloadpacket))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


def _record(h: int, w: int) -> _Recorder:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x, embed, log_temp = torch.empty(1, 8, h, w), torch.empty(1, 8, h, w), torch.empty(1, 1, h, w)
        bn = torch.nn.BatchNorm1d(1).eval()
        with _Recorder() as rec, torch.no_grad():
            knn_aggregate_static(x, embed, log_temp, bn, **KNN_ARGS)
    return rec


def test_static_uses_no_data_dependent_ops():
    ops = _record(97, 123).ops
    forbidden = {"aten.nonzero", "aten.index_put", "aten.index_put_", "aten.scatter", "aten.scatter_add",
                 "aten.masked_select", "aten.col2im", "aten.im2col", "aten.unique", "aten._unique2", "aten.masked_scatter"}
    assert not ops & forbidden, ops & forbidden


def test_largest_intermediate_is_linear_in_pixels_and_small_at_4k():
    """Shapes only (fake tensors): every intermediate stays O(H*W) and far below 2^31 at 4K."""
    small, large = _record(480, 640), _record(2160, 3840)
    per_pixel_small = small.max_numel / (480 * 640)
    per_pixel_large = large.max_numel / (2160 * 3840)
    assert per_pixel_large < 1.2 * per_pixel_small
    assert large.max_numel < 2**31 / 2
