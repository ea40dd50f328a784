"""Benchmark suite: FLOP counter, row table, an end-to-end tiny run (JSON + Markdown), scenarios, pausing."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from dataclasses import replace

import pytest
import torch
from torch import nn

from n3deploy.benchmarking.flops import conv_flops_per_pixel, model_flops_per_pixel
from n3deploy.benchmarking.report import render_markdown, write_report
from n3deploy.benchmarking.suite import BenchSettings, parse_size, paused, probe_rows, run_suite
from n3deploy.config import N3NetConfig
from n3deploy.model import N3Net


def _hooked_conv_flops(model: nn.Module, h: int, w: int) -> float:
    """Direct count: every Conv2d's multiply-adds (x2) plus one add per output for a bias or folded BN."""
    total = 0.0

    def hook(module: nn.Conv2d, _inputs, output) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += 2.0 * module.in_channels * kh * kw * output.numel()
        total += output.numel()  # bias, or the batch-norm folded into one

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(torch.rand(1, model.config.in_channels, h, w))
    finally:
        for handle in handles:
            handle.remove()
    return total


def test_conv_flops_one_layer() -> None:
    conv = nn.Conv2d(3, 5, 3, padding=1)
    out = conv(torch.rand(1, 3, 7, 9))
    assert conv_flops_per_pixel(3, 5, 3, bias=True) * 7 * 9 == 2 * 3 * 5 * 9 * out[0, 0].numel() + out.numel()


@pytest.mark.parametrize("config", [N3NetConfig.tiny(), N3NetConfig.paper(), N3NetConfig.tiny(channels=3)])
def test_conv_flops_match_a_direct_count(config: N3NetConfig) -> None:
    h, w = 24, 20
    counted = _hooked_conv_flops(N3Net(config).eval(), h, w)
    assert model_flops_per_pixel(config).conv * h * w == pytest.approx(counted, rel=1e-12)


def test_knn_flops_scale_with_config() -> None:
    base = N3NetConfig.paper()
    f = model_flops_per_pixel(base)
    wider = model_flops_per_pixel(replace(base, window=2 * base.window + 1))
    ratio = (2 * base.window + 1) ** 2 / base.window**2
    assert wider.knn == pytest.approx(f.knn * ratio)
    assert wider.conv == f.conv
    more_k = model_flops_per_pixel(replace(base, k=2 * base.k))
    assert more_k.knn_aggregation == pytest.approx(2 * f.knn_aggregation)
    assert more_k.knn_distance == f.knn_distance
    assert f.total == pytest.approx(f.dncnn + f.embed_temp + f.knn)
    assert 1e6 < f.total < 3e6  # paper preset: conv-dominated, a few MFLOP per pixel


def test_parse_size() -> None:
    assert parse_size("481x321") == (481, 321)
    assert parse_size("1920×1080") == (1920, 1080)
    with pytest.raises(ValueError):
        parse_size("12")


def test_suite_end_to_end_tiny(tmp_path) -> None:
    settings = BenchSettings(
        # the shipped tiny model: its dynamic export is the one the graph-memory tests build (shared cache)
        preset="tiny", model="tiny-sigma25", sizes=((32, 32),), backends=("torch-static", "ort-cpu-fp32"), repeats=1, warmup=1,
        breakdown_repeats=1, breakdown_size=(32, 32), matmul_n=128, command="pytest",
        quiet_wait_s=0.0, contention_retry=1.0, denoiser_size=(80, 60),
    )
    json_path = tmp_path / "results.json"
    doc = run_suite(settings, json_path=json_path, log=lambda _msg: None)
    on_disk = json.loads(json_path.read_text())
    assert on_disk["results"] == json.loads(json.dumps(doc["results"]))
    assert [r["backend"] for r in on_disk["results"]] == ["torch-static", "ort-cpu-fp32"]
    for row in on_disk["results"]:
        assert row["status"] == "ok", row["note"]
        assert row["repeats"] == 1 and row["median_s"] > 0 and row["peak_rss_mb"] > row["base_rss_mb"] > 0
        assert row["gflops"] == pytest.approx(on_disk["flops_per_pixel"]["total"] * 32 * 32 / row["median_s"] / 1e9)
    peaks = on_disk["matmul_peaks"]
    assert set(peaks) == {"fp32", "bf16"} and all(p["gflops"] > 0 for p in peaks.values())
    for knn in ("static", "reference"):
        assert on_disk["breakdown"][knn]["ok"], on_disk["breakdown"][knn]
        assert 0 < on_disk["breakdown"][knn]["nonlocal_share"] < 1
    assert on_disk["breakdown"]["speedup_total"] > 0
    assert "criteria" not in on_disk
    assert on_disk["denoiser"]["ok"] and on_disk["denoiser"]["backend"] == "onnxruntime", on_disk["denoiser"]

    md_path, time_png, mem_png = write_report(on_disk, tmp_path / "BENCHMARKS.md", tmp_path / "docs")
    text = md_path.read_text()
    assert text == render_markdown(on_disk)
    for needle in ("## Machine and settings", "pytest", "32×32", "## Summary at 32×32", "static", "reference",
                   "(docs/bench_time.png)", "GFLOP/s", "weights of `tiny-sigma25`", "FP32 matmul peak", "BF16 matmul peak", "ONNX Runtime CPU FP32"):
        assert needle in text
    for word in ("bar", "criteria", "issue", "acceptance", "met**"):
        assert word not in text.lower().split(), word
    assert "Acceptance" not in text and "not met" not in text
    assert time_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and mem_png.stat().st_size > 0


def test_a_model_of_another_preset_is_refused() -> None:
    from n3deploy.benchmarking.artifacts import check_model

    check_model(BenchSettings(preset="tiny", model="tiny-sigma25"))
    with pytest.raises(ValueError, match="not a 'paper' preset network"):
        check_model(BenchSettings(preset="paper", model="tiny-sigma25"))
    with pytest.raises(ValueError, match="not a 'tiny' preset network"):  # wider DnCNN blocks than the preset
        check_model(BenchSettings(preset="tiny", model="tiny-blind"))


def test_random_weight_artifacts_are_built_once_and_a_models_checkpoint_is_its_own_file(tmp_path, monkeypatch) -> None:
    from n3deploy.benchmarking.artifacts import build_artifacts
    from n3deploy.benchmarking.machine import probe_rows
    from n3deploy.checkpoint import load_checkpoint
    from n3deploy.models import resolve_model

    monkeypatch.setenv("N3DEPLOY_EXPORT_CACHE", str(tmp_path))
    infos = probe_rows(("torch-static",))
    logged: list[str] = []
    files = build_artifacts(BenchSettings(preset="tiny", seed=3), infos, logged.append)
    assert load_checkpoint(files["checkpoint"]).config == N3NetConfig.tiny() and len(logged) == 1
    assert build_artifacts(BenchSettings(preset="tiny", seed=3), infos, logged.append) == files and len(logged) == 1
    model_files = build_artifacts(BenchSettings(preset="tiny", model="tiny-sigma25"), infos, logged.append)
    assert model_files == {"checkpoint": str(resolve_model("tiny-sigma25"))}


def test_every_row_opens_its_file_with_a_registry_backend() -> None:
    from n3deploy.backends import BACKENDS
    from n3deploy.benchmarking.rows import ROWS

    assert {"ov-cpu-fp32", "ov-cpu-bf16", "torch-cpu-bf16"} <= set(ROWS)
    for row in ROWS.values():
        spec = BACKENDS[row.backend]
        assert row.device in spec.devices and row.precision in spec.precisions, row
        opened = ".safetensors" if row.opens == "checkpoint" else ".onnx"
        assert opened in spec.suffixes, row
        assert row.peak in (("fp32", "bf16") if row.device == "cpu" else (None,)), row
    assert ROWS["ov-cpu-bf16"].peak == "bf16" and ROWS["ort-cpu-fp16"].peak == "fp32"  # ORT CPU computes FP16 in FP32


def test_unavailable_rows_carry_the_reason() -> None:
    from n3deploy.backends import available_backends

    reasons = available_backends()
    for info in probe_rows():
        assert info.available == (not info.reason), info
        if reasons[info.backend]:  # the registry's probe reason is the row's
            assert not info.available and info.reason == reasons[info.backend]


def _doc_with_rows(*rows: dict) -> dict:
    return {
        "settings": {"breakdown_size": [481, 321]}, "matmul_peaks": {"fp32": {"gflops": 100.0}, "bf16": {"gflops": 400.0}},
        "backends": [{"name": r["backend"], "label": r["backend"], "device": "cpu", "available": True} for r in rows],
        "results": list(rows),
    }


def _row(backend: str, w: int, h: int, median: float, gflops: float, rss: float = 500.0) -> dict:
    return dict(backend=backend, width=w, height=h, status="ok", median_s=median, peak_rss_mb=rss, gflops=gflops,
                megapixels=w * h / 1e6, repeats=3, mpix_per_s=w * h / 1e6 / median, base_rss_mb=100.0, gpu_mem_mb=None)


def test_each_row_is_compared_with_the_peak_of_its_precision() -> None:
    from n3deploy.benchmarking.report import _results_section, _summary_section

    doc = _doc_with_rows(_row("ort-cpu-fp32", 481, 321, 1.0, 50.0), _row("ov-cpu-bf16", 481, 321, 0.5, 100.0),
                         _row("ort-cpu-fp16", 481, 321, 2.0, 25.0))
    lines = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")] for line in _summary_section(doc)
             if line.startswith("| ") and "median" not in line}
    assert lines["ov-cpu-bf16"][4] == "25 (BF16)" and lines["ort-cpu-fp32"][4] == "50 (FP32)"
    assert lines["ort-cpu-fp16"][4] == "25 (FP32)"
    assert lines["ov-cpu-bf16"][5] == "1.00" and lines["ort-cpu-fp32"][5] == "2.00"  # fastest first
    assert list(lines) == ["ov-cpu-bf16", "ort-cpu-fp32", "ort-cpu-fp16"]
    table = [line for line in _results_section(doc) if line.startswith("| ov-cpu-bf16")]
    assert table and "25 (BF16)" in table[0] and "| 500 |" in table[0]  # peak RSS for every row


def _state(pid: int) -> str:
    import psutil

    return psutil.Process(pid).status()


def test_pause_resumes_even_when_the_block_raises() -> None:
    import psutil

    child = subprocess.Popen(["sleep", "30"])
    handler_before = signal.getsignal(signal.SIGTERM)  # whatever an earlier test left installed
    try:
        with pytest.raises(RuntimeError):
            with paused(child.pid, log=lambda _msg: None) as was_paused:
                assert was_paused
                deadline = time.monotonic() + 5
                while _state(child.pid) != psutil.STATUS_STOPPED and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert _state(child.pid) == psutil.STATUS_STOPPED
                raise RuntimeError("bench failed")
        deadline = time.monotonic() + 5
        while _state(child.pid) == psutil.STATUS_STOPPED and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _state(child.pid) in (psutil.STATUS_SLEEPING, psutil.STATUS_RUNNING)
        # the previous signal handlers are back
        assert signal.getsignal(signal.SIGTERM) == handler_before
    finally:
        child.kill()
        child.wait()


def test_pause_of_a_missing_process_is_harmless() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    with paused(child.pid, log=lambda _msg: None) as was_paused:
        assert not was_paused


def test_merge_keeps_old_rows_and_replaces_remeasured_ones() -> None:
    from n3deploy.benchmarking.merge import merge_results

    def row(backend: str, status: str, median: float | None) -> dict:
        return dict(backend=backend, width=64, height=64, status=status, median_s=median, peak_rss_mb=1.0, gflops=1.0)

    old = {"command": "first", "results": [row("torch-static", "ok", 2.0), row("ort-cpu-fp32", "ok", 1.0)],
           "breakdown": {"static": {"ok": True}}, "matmul_peak": {"gflops": 90.0},
           "backends": [{"name": "torch-static", "label": "old"}, {"name": "ort-cpu-fp32", "label": "ORT"}],
           "denoiser": {"ok": True, "peak_rss_mb": 1000.0},
           "scenarios": {"a": {"ok": True, "results": {"v": 1}}, "b": {"ok": True, "results": {"v": 2}}}}
    new = {"command": "second", "results": [row("torch-static", "ok", 1.5), row("ort-cpu-fp32", "failed", None)],
           "breakdown": {}, "matmul_peaks": {"fp32": {"gflops": 100.0}, "bf16": {"gflops": 300.0}},
           "backends": [{"name": "torch-static", "label": "new"}],
           "scenarios": {"a": {"ok": False, "error": "x"}, "b": {"ok": True, "results": {"v": 3}}, "c": {"ok": True}}}
    merged = merge_results(old, new)
    assert [r["median_s"] for r in merged["results"]] == [1.5, 1.0]
    # every backend keeps its label, a re-probed one the new one; the measured Denoiser is kept
    assert {b["name"]: b["label"] for b in merged["backends"]} == {"torch-static": "new", "ort-cpu-fp32": "ORT"}
    assert merged["denoiser"]["peak_rss_mb"] == 1000.0
    assert merged["breakdown"] == old["breakdown"] and merged["commands"] == ["first", "second"]
    # a schema-1 document's single peak is the FP32 one
    assert merged["matmul_peaks"]["fp32"]["gflops"] == 100.0 and merged["matmul_peaks"]["bf16"]["gflops"] == 300.0
    # scenarios by name: a failed re-run keeps the stored result
    assert merged["scenarios"]["a"]["results"] == {"v": 1} and merged["scenarios"]["b"]["results"] == {"v": 3}
    assert set(merged["scenarios"]) == {"a", "b", "c"}


def test_denoiser_job_measures_an_rgb_image_through_onnx_runtime(tiny_onnx) -> None:
    """The suite's Denoiser job: one RGB uint8 image through Denoiser + ORT, time and peak RSS."""
    from n3deploy.benchmarking.worker import TASKS

    res = TASKS["denoiser"]({"onnx": str(tiny_onnx.path), "width": 100, "height": 70, "seed": 0, "threads": 1})
    assert res["backend"] == "onnxruntime" and res["seconds"] > 0
    # in this (reused) process ru_maxrss can trail the current RSS by a page-accounting step
    assert res["peak_rss_mb"] > 0 and res["base_rss_mb"] > 0
    assert res["tile"] == [64, 64]  # the fixed-shape graph's size


def test_gpu_results_render_as_their_own_section_without_a_cpu_peak_share() -> None:
    """A document measured on a GPU machine becomes its own section (its machine, its command)."""
    cpu_doc = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "results.json").read_text())
    gpu_doc = json.loads(json.dumps(cpu_doc))
    gpu_doc["machine"]["gpu"] = "Some GPU 80GB"
    gpu_doc["commands"] = ["runtime/bench.py --backends torch-cuda-fp32 torch-cuda-fp16 --json results_gpu.json"]
    row = dict(next(r for r in gpu_doc["results"] if r["status"] == "ok"), backend="torch-cuda-fp16", gpu_mem_mb=321.0)
    gpu_doc["results"] = [row]
    text = render_markdown(cpu_doc, gpu_doc=gpu_doc)
    head, gpu_part = text.split("# On a GPU: Some GPU 80GB", 1)
    assert "| PyTorch CUDA, static KNN (FP16 plan) |" not in head and "results_gpu.json" in gpu_part
    (line,) = [x for x in gpu_part.splitlines() if x.startswith("| PyTorch CUDA, static KNN (FP16 plan)")]
    cells = [c.strip() for c in line.split("|")]
    assert cells[8] == "–" and cells[11] == "321"  # no share of the CPU's matmul peak; GPU memory shown
    assert "### Latency, throughput and memory" in gpu_part  # demoted under the GPU heading
    assert "bench_time.png" in head and "bench_time.png" not in gpu_part  # the plots are the CPU's


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without a GPU")
def test_cuda_backends_say_why_they_cannot_run_here() -> None:
    infos = {i.name: i for i in probe_rows(("torch-cuda-fp32", "torch-cuda-fp16", "torch-static"))}
    assert infos["torch-static"].available
    for name in ("torch-cuda-fp32", "torch-cuda-fp16"):
        assert not infos[name].available and infos[name].reason == "no CUDA GPU visible to PyTorch"
    assert infos["torch-cuda-fp16"].precision == "fp16"


_SCENARIO_MODULE = """
from n3deploy.benchmarking.scenarios import Scenario, register_scenario


def run(options):
    import os
    return {"threads": options.threads, "quick": options.quick, "pid": os.getpid()}


def render(results):
    return "## Echo scenario\\n\\nran with %d threads, quick=%s" % (results["threads"], results["quick"])


register_scenario(Scenario(name="echo-test", title="Echo", run=run, render=render))
register_scenario(Scenario(name="needs-missing", title="Needs", run=run, render=render, needs=("no_such_module_x",)))
"""


def test_scenarios_run_in_their_own_process_are_stored_and_rendered(tmp_path, monkeypatch) -> None:
    import os
    import sys

    from n3deploy.benchmarking.merge import merge_results
    from n3deploy.benchmarking.suite import run_scenarios

    (tmp_path / "echo_scenario_mod.py").write_text(_SCENARIO_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    import echo_scenario_mod  # noqa: F401 - registers the scenarios

    settings = BenchSettings(threads=1, quick=True, quiet_wait_s=0.0, scenarios=("echo-test", "needs-missing"),
                             command="pytest")
    stored = run_scenarios(settings, log=lambda _msg: None)
    assert stored["echo-test"]["ok"], stored["echo-test"]
    assert stored["echo-test"]["results"]["quick"] is True and stored["echo-test"]["results"]["pid"] != os.getpid()
    assert not stored["needs-missing"]["ok"] and "no_such_module_x" in stored["needs-missing"]["error"]
    with pytest.raises(ValueError, match="unknown benchmark scenario"):
        run_scenarios(BenchSettings(scenarios=("nope",), quiet_wait_s=0.0), log=lambda _msg: None)

    cpu_doc = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "results.json").read_text())
    new = {**cpu_doc, "command": "bench --scenarios echo-test", "results": [], "scenarios": stored}
    text = render_markdown(merge_results(cpu_doc, new))
    assert "## Echo scenario" in text and "ran with 1 threads, quick=True" in text
    assert "## Needs" in text and "Not measured (`--scenarios needs-missing`)" in text
    del sys.modules["echo_scenario_mod"]


def test_bench_command_parses_rows_and_scenarios() -> None:
    import argparse

    from n3deploy.commands.bench import add_arguments, settings_from_args

    p = argparse.ArgumentParser()
    add_arguments(p)
    s = settings_from_args(p.parse_args(["--backends", "ov-cpu-bf16", "torch-cpu-bf16", "--scenarios", "all",
                                         "--quick"]), "x")
    assert s.backends == ("ov-cpu-bf16", "torch-cpu-bf16") and s.scenarios == ("all",) and s.quick
    with pytest.raises(SystemExit, match="unknown benchmark row"):
        settings_from_args(p.parse_args(["--backends", "ort"]), "x")
    with pytest.raises(SystemExit, match="unknown benchmark scenario"):
        settings_from_args(p.parse_args(["--scenarios", "nope"]), "x")


def test_update_refuses_results_of_another_machine(tmp_path, capsys) -> None:
    """One report describes one machine: --update onto another machine's results stops before measuring."""
    from n3deploy.benchmarking.machine import machine_info
    from n3deploy.benchmarking.merge import machine_mismatch
    from n3deploy.cli import main

    here = machine_info(1)
    assert machine_mismatch(here, dict(here, threads=7, os="other")) is None  # settings, not the machine
    assert "cpu" in machine_mismatch(dict(here, cpu="Some Other CPU"), here)
    results = tmp_path / "results.json"
    text = json.dumps({"machine": dict(here, cpu="Some Other CPU"), "results": []})
    results.write_text(text)
    assert main(["bench", "--update", "--json", str(results), "--sizes", "none", "--no-breakdown",
                 "--denoiser-size", "none"]) == 2
    assert "another machine" in capsys.readouterr().err and results.read_text() == text


def test_a_scenario_measured_on_another_machine_says_so() -> None:
    from n3deploy.benchmarking.report import _scenario_sections

    doc = {"scenarios": {"graph_memory": {"ok": True, "title": "Graph memory", "results": {"model": "m", "rows": []}, "wall_s": 3.0,
                                       "foreign_cpu_share": 0.0, "machine_cpu": "Other CPU", "command": "n3deploy bench",
                                       "note": "this machine's run: timed out"}}}
    text = "\n".join(_scenario_sections(doc))
    assert "Measured on Other CPU (another machine than the sections above; this machine's run: timed out" in text
