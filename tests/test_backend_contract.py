"""The contract every registered backend keeps, driven by the backend registry.

Every entry of :data:`n3deploy.backends.BACKENDS` is run through the same suite (round trip of shape
and dtype, :class:`InvalidImageError` for NaN/Inf, empty, wrong channel count, wrong rank and wrong
dtype, the documented metadata keys, typed shape limits that ``run`` enforces). A backend that cannot
run on this machine is skipped with its registry probe's reason.

Adding a backend to the suite: register it in the registry, then add one entry to
:data:`MODEL_FACTORIES` below, ``"name": ModelFactory(make, precisions)``, where ``make(request)``
returns ``(model, load_backend keyword arguments)`` for the tiny test model. ``make`` may pull
pytest fixtures with ``request.getfixturevalue("...")``, e.g. a session-scoped fixture that starts a
server on 127.0.0.1 and returns its URL (a remote backend's entry). A test module or conftest.py
can also extend the dict before collection (``MODEL_FACTORIES["remote"] = ModelFactory(...)``).
A registered backend without an entry fails :func:`test_every_registered_backend_has_a_test_model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import pytest

from n3deploy.backends import BACKENDS, Backend, InputShapeLimits, get_backend, load_backend
from n3deploy.errors import InvalidImageError
from n3deploy.precision import PRECISIONS


@dataclass(frozen=True)
class ModelFactory:
    """How to open the tiny test model with one backend: ``make(request) -> (model, opts)``,
    tested at each of ``precisions`` (``None``: the backend's default)."""

    make: Callable[[pytest.FixtureRequest], tuple[Any, dict[str, Any]]]
    precisions: tuple[Optional[str], ...] = (None,)


def _checkpoint(request: pytest.FixtureRequest) -> tuple[Any, dict[str, Any]]:
    return request.getfixturevalue("tiny_checkpoint"), {}


def _onnx(request: pytest.FixtureRequest) -> tuple[Any, dict[str, Any]]:
    return request.getfixturevalue("tiny_onnx").path, {"threads": 1}


def _plan_source(request: pytest.FixtureRequest) -> tuple[Any, dict[str, Any]]:
    return request.getfixturevalue("tiny_onnx").path, {}  # the tensorrt backend builds a cached engine


@pytest.fixture(scope="session")
def remote_server_url(tiny_onnx, tmp_path_factory):
    """``n3deploy serve`` of the tiny graph on 127.0.0.1 (the session's shared server, tests/serve_helpers.py)."""
    pytest.importorskip("ray.serve")
    pytest.importorskip("tritonclient.http")
    from serve_helpers import shared_server, stop_shared_server

    server = shared_server(tiny_onnx.path, tmp_path_factory.mktemp("serve"))
    yield server.url
    stop_shared_server()


def _served(request: pytest.FixtureRequest) -> tuple[Any, dict[str, Any]]:
    return request.getfixturevalue("remote_server_url"), {"model_name": "n3net"}


MODEL_FACTORIES: dict[str, ModelFactory] = {
    "torch": ModelFactory(_checkpoint, (None, "bf16", "fp64")),
    "onnxruntime": ModelFactory(_onnx),
    "openvino": ModelFactory(_onnx, ("fp32", "bf16")),
    "tensorrt": ModelFactory(_plan_source),
    "remote": ModelFactory(_served),
}


def _cases() -> list[Any]:
    cases = []
    for name in BACKENDS:
        factory = MODEL_FACTORIES.get(name)
        for precision in factory.precisions if factory else (None,):
            cases.append(pytest.param((name, precision), id=f"{name}-{precision or 'default'}"))
    return cases


_OPENED: dict[tuple[str, Optional[str]], Backend] = {}


@pytest.fixture(params=_cases())
def backend(request: pytest.FixtureRequest) -> Backend:
    """The tiny model opened by one registered backend (once per test session), or a skip saying why not."""
    name, precision = request.param
    spec = get_backend(name)
    reason = spec.probe()
    if reason is not None:
        pytest.skip(f"{name} cannot run here: {reason}")
    reason = spec.precision_probe(precision) if precision is not None else None
    if reason is not None:
        pytest.skip(f"{name} cannot run {precision} here: {reason}")
    if name not in MODEL_FACTORIES:  # test_every_registered_backend_has_a_test_model fails for it
        pytest.skip(f"backend {name!r} has no test model: add it to MODEL_FACTORIES in {__name__}")
    if (name, precision) not in _OPENED:
        model, opts = MODEL_FACTORIES[name].make(request)
        _OPENED[(name, precision)] = load_backend(model, name, precision=precision, **opts)
    return _OPENED[(name, precision)]


def _good_shape(limits: InputShapeLimits) -> tuple[int, int, int, int]:
    h, w = (limits.height, limits.width) if not limits.is_dynamic else (64, 64)
    return (limits.batch or 1, limits.channels, int(h), int(w))


def _input(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.1, 0.9, shape).astype(np.float32)


def test_every_registered_backend_has_a_test_model():
    assert set(BACKENDS) <= set(MODEL_FACTORIES), f"add entries to MODEL_FACTORIES for {set(BACKENDS) - set(MODEL_FACTORIES)}"


def test_round_trip_keeps_shape_and_dtype(backend: Backend):
    shape = _good_shape(backend.input_shape_limits)
    x = _input(shape)
    out = backend.run(x)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == x.shape
    assert np.isfinite(out).all()
    assert np.abs(out - x).max() > 0  # the model did something
    two = np.concatenate([x, _input(shape, 1)])
    both = backend.run(two)
    assert both.shape == two.shape and both.dtype == np.float32
    assert np.allclose(both[:1], out, atol=1e-2)


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_nonfinite_input_is_refused(backend: Backend, bad: float):
    x = _input(_good_shape(backend.input_shape_limits))
    x[0, 0, 3, 5] = bad
    with pytest.raises(InvalidImageError, match="NaN or Inf"):
        backend.run(x)


def test_empty_input_is_refused(backend: Backend):
    _, c, h, w = _good_shape(backend.input_shape_limits)
    with pytest.raises(InvalidImageError, match="empty"):
        backend.run(np.zeros((0, c, h, w), np.float32))


def test_wrong_channel_count_is_refused(backend: Backend):
    b, c, h, w = _good_shape(backend.input_shape_limits)
    with pytest.raises(InvalidImageError, match="channel"):
        backend.run(_input((b, c + 1, h, w)))


@pytest.mark.parametrize("rank", [3, 5])
def test_wrong_rank_is_refused(backend: Backend, rank: int):
    shape = _good_shape(backend.input_shape_limits)
    bad = shape[1:] if rank == 3 else (1, *shape)
    with pytest.raises(InvalidImageError, match="B x C x H x W"):
        backend.run(_input(bad))


def test_wrong_dtype_is_refused(backend: Backend):
    x = _input(_good_shape(backend.input_shape_limits))
    with pytest.raises(InvalidImageError, match="float32"):
        backend.run(x.astype(np.float64))


def test_metadata_and_description(backend: Backend):
    meta = backend.metadata
    assert {"config", "sigma"} <= set(meta)
    assert meta["sigma"] == 25.0 and meta["config"]["in_channels"] == backend.input_shape_limits.channels
    assert backend.name in BACKENDS and backend.precision in PRECISIONS
    assert backend.precision in get_backend(backend.name).precisions
    assert isinstance(backend.providers, list) and all(isinstance(p, str) for p in backend.providers)
    assert backend.name in repr(backend).lower() or type(backend).__name__ in repr(backend)


def test_limits_are_typed_and_enforced(backend: Backend):
    limits = backend.input_shape_limits
    assert isinstance(limits, InputShapeLimits)
    b, c, h, w = _good_shape(limits)
    if limits.is_dynamic:
        too_small = (b, c, limits.min_size - 1, w)
    else:
        too_small = (b, c, h - 1, w)
    with pytest.raises(InvalidImageError):
        backend.run(_input(too_small))


def test_a_batch_longer_than_one_engine_call_is_run_in_chunks(backend: Backend, monkeypatch):
    limits = backend.input_shape_limits
    step = limits.chunk
    if step is None:
        pytest.skip(f"{backend.name} takes any batch in one call (no fixed batch, no max_batch)")
    n = 2 * step if limits.batch else step + 1
    _, c, h, w = _good_shape(limits)
    x = _input((n, c, h, w))
    calls: list[int] = []
    engine = backend.run_impl
    monkeypatch.setattr(backend, "run_impl", lambda chunk: calls.append(chunk.shape[0]) or engine(chunk))
    out = backend.run(x)
    assert out.shape == x.shape and calls == [step, n - step]
    monkeypatch.undo()
    assert np.allclose(out[-1:], backend.run(x[-1:]), atol=1e-5)


def test_a_fixed_size_graph_declares_its_audited_max_batch(tiny_onnx):
    """A fixed-size graph exported with a symbolic batch was audited up to ``max_batch`` samples:
    the ONNX backends report it as ``InputShapeLimits.max_batch`` (what ``run`` chunks to;
    a TensorRT engine reports its profile's maximum, a server its ``max_batch_size``)."""
    from n3deploy.export.metadata import read_metadata

    spec = read_metadata(tiny_onnx.path).input_spec
    assert spec.batch is None and spec.max_batch == 8
    for name in ("onnxruntime", "openvino"):
        if get_backend(name).probe() is not None:
            continue
        limits = load_backend(tiny_onnx.path, name, threads=1).input_shape_limits
        assert (limits.batch, limits.max_batch, limits.chunk) == (None, 8, 8), name
        assert limits.describe().startswith("B<=8x1x64x64")
    assert InputShapeLimits(channels=1, batch=2).chunk == 2 and InputShapeLimits(channels=1).chunk is None
