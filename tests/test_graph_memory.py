"""Exported graphs stay lean under ONNX Runtime's default SessionOptions (each run a fresh process)."""

from __future__ import annotations

import onnx
import pytest

from n3deploy.benchmarking.graph_memory import measure_peak

SIZE = 400  # tiny preset: large enough that the held buffers dominate the process's baseline


def peak(runtime: str, graph) -> int:
    """Peak RSS (bytes) of one SIZE x SIZE denoise of ``graph`` on ``runtime`` in a fresh process."""
    result = measure_peak(runtime, graph, SIZE, SIZE)
    assert "error" not in result, result
    return result["peak_rss_bytes"]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """The tiny model's dynamic export, and the same graph with the block separation undone
    (every ``@nls.<i>`` dim name back to the shared one: what exports looked like before)."""
    from n3deploy.export.cache import cached_export

    root = tmp_path_factory.mktemp("graph_memory")
    lean = cached_export("tiny-sigma25")  # the graph the quick scenario measures too
    model = onnx.load(str(lean))
    undone = 0
    for vi in model.graph.value_info:
        for dim in vi.type.tensor_type.shape.dim:
            if "@nls." in dim.dim_param:
                dim.dim_param = dim.dim_param.split("@nls.")[0]
                undone += 1
    assert undone > 0
    shared = root / "shared_dims.onnx"
    onnx.save(model, str(shared))
    return lean, shared


def test_default_session_options_peak_within_1_5x_of_the_tuned_backend(graphs):
    lean, shared = graphs
    tuned, bare, before = peak("onnxruntime", lean), peak("ort-default", lean), peak("ort-default", shared)
    assert bare <= 1.5 * tuned, (bare, tuned)
    # the measurement sees the effect: with the blocks' dims shared the same bare session holds far more
    assert before > 1.5 * bare, (before, bare)


def test_graph_memory_scenario_quick_run_and_report():
    from n3deploy.benchmarking.graph_memory import render, run
    from n3deploy.benchmarking.scenarios import ScenarioOptions, get_scenario

    assert get_scenario("graph_memory").run is run
    results = run(ScenarioOptions(quick=True, threads=1))
    rows = results["rows"]
    assert {r["runtime"] for r in rows} == {"ort-default", "onnxruntime", "openvino", "torch"}
    for row in rows:
        assert "peak_rss_bytes" in row or row.get("skipped"), row
    measured = {r["runtime"]: r["peak_rss_bytes"] for r in rows if "peak_rss_bytes" in r}
    assert measured["ort-default"] <= 1.5 * measured["onnxruntime"]
    text = render(results)
    assert text.startswith("## ") and "default `SessionOptions`" in text and "481x321" in text


def test_fixed_size_default_export_is_lean_and_a_fully_static_one_is_not(tmp_path_factory):
    """A fixed H x W export names its batch axis by default (concrete shapes everywhere would let
    ONNX Runtime's planner pair the N3 blocks' equal-sized buffers); ``batch=1`` is the control."""
    from n3deploy.export.cache import cached_export

    root = tmp_path_factory.mktemp("fixed_graphs")
    named = cached_export("tiny-sigma25", cache_dir=root, height=SIZE, width=SIZE)
    static = cached_export("tiny-sigma25", cache_dir=root, height=SIZE, width=SIZE, batch=1)
    dims = [d.dim_param or d.dim_value for d in onnx.load(str(named)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, SIZE, SIZE]
    tuned, bare, bare_static = peak("onnxruntime", named), peak("ort-default", named), peak("ort-default", static)
    assert bare <= 1.5 * tuned, (bare, tuned)
    assert bare_static > 1.5 * bare, (bare_static, bare)


def test_report_gives_each_graph_form_its_own_row():
    """Variant rows (other graph forms) are labelled with their form; a report without them has none."""
    from n3deploy.benchmarking.graph_memory import render

    def row(runtime, graph, gb):
        return {"runtime": runtime, "graph": graph, "height": 321, "width": 481, "peak_rss_bytes": gb * 1e9, "seconds": 1.0}

    plain = render({"model": "m", "rows": [row("ort-default", "dynamic", 0.6), row("onnxruntime", "dynamic", 0.5)]})
    assert "fixed-size" not in plain and plain.count("\n| ONNX Runtime") == 2
    text = render({"model": "m", "rows": [row("ort-default", "dynamic", 0.6), row("ort-default", "fixed", 0.7),
                                          row("onnxruntime", "fixed-fp16", 0.4)]})
    assert "| ONNX Runtime, default `SessionOptions`, fixed-size FP32 graph | 0.70 (1.00 s) |" in text
    assert "| ONNX Runtime, n3deploy backend, fixed-size FP16 graph | 0.40 (1.00 s) |" in text
    assert "dynamic FP16" not in text.split("\n\n")[2]  # no row for a form that was not measured
