"""Benchmark suite: FLOP counter, an end-to-end tiny run (JSON + Markdown), pausing another process."""

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
from n3deploy.benchmarking.suite import BenchSettings, evaluate_criteria, parse_size, paused, probe_backends, run_suite
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
        preset="tiny", sizes=((32, 32),), backends=("torch-static",), repeats=1, warmup=1,
        breakdown_repeats=1, breakdown_size=(32, 32), matmul_n=128, command="pytest",
        quiet_wait_s=0.0, contention_retry=1.0,
    )
    json_path = tmp_path / "results.json"
    doc = run_suite(settings, json_path=json_path, log=lambda _msg: None)
    on_disk = json.loads(json_path.read_text())
    assert on_disk["results"] == json.loads(json.dumps(doc["results"]))
    (row,) = on_disk["results"]
    assert row["status"] == "ok", row["note"]
    assert row["repeats"] == 1 and row["median_s"] > 0 and row["peak_rss_mb"] > row["base_rss_mb"] > 0
    assert row["gflops"] == pytest.approx(on_disk["flops_per_pixel"]["total"] * 32 * 32 / row["median_s"] / 1e9)
    assert on_disk["matmul_peak"]["gflops"] > 0
    for knn in ("static", "reference"):
        assert on_disk["breakdown"][knn]["ok"], on_disk["breakdown"][knn]
        assert 0 < on_disk["breakdown"][knn]["nonlocal_share"] < 1
    assert on_disk["breakdown"]["speedup_total"] > 0
    assert set(on_disk["criteria"]) >= {"ort_rss_scaling", "cpu_efficiency"}
    assert on_disk["criteria"]["ort_rss_scaling"]["met"] is None  # not measured in this run

    md_path, time_png, mem_png = write_report(on_disk, tmp_path / "BENCHMARKS.md", tmp_path / "docs")
    text = md_path.read_text()
    assert text == render_markdown(on_disk)
    for needle in ("## Machine and settings", "pytest", "32×32", "## Acceptance bars", "static", "reference",
                   "(docs/bench_time.png)", "GFLOP/s"):
        assert needle in text
    assert time_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and mem_png.stat().st_size > 0


def test_criteria_from_rows() -> None:
    def row(backend: str, w: int, h: int, median: float, rss: float, gflops: float) -> dict:
        return dict(backend=backend, width=w, height=h, status="ok", median_s=median, peak_rss_mb=rss, gflops=gflops)

    doc = {
        "matmul_peak": {"gflops": 100.0},
        "results": [
            row("ort-cpu-fp32", 1024, 1024, 10.0, 1000.0, 40.0),
            row("ort-cpu-fp32", 1920, 1080, 20.0, 2600.0, 40.0),
            row("ort-cpu-fp32", 481, 321, 2.0, 500.0, 60.0),
            row("torch-static", 481, 321, 3.0, 600.0, 40.0),
        ],
    }
    c = evaluate_criteria(doc)
    assert c["ort_rss_scaling"]["ratio"] == pytest.approx(2.6) and c["ort_rss_scaling"]["met"] is False
    assert c["cpu_efficiency"]["backend"] == "ort-cpu-fp32" and c["cpu_efficiency"]["met"] is True
    assert c["ort_vs_torch_static"]["speedup"] == pytest.approx(1.5)


def _state(pid: int) -> str:
    import psutil

    return psutil.Process(pid).status()


def test_pause_resumes_even_when_the_block_raises() -> None:
    import psutil

    child = subprocess.Popen(["sleep", "30"])
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
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        child.kill()
        child.wait()


def test_pause_of_a_missing_process_is_harmless() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    with paused(child.pid, log=lambda _msg: None) as was_paused:
        assert not was_paused


def test_merge_keeps_old_rows_and_replaces_remeasured_ones() -> None:
    from n3deploy.benchmarking.suite import merge_results

    def row(backend: str, status: str, median: float | None) -> dict:
        return dict(backend=backend, width=64, height=64, status=status, median_s=median, peak_rss_mb=1.0, gflops=1.0)

    old = {"command": "first", "results": [row("torch-static", "ok", 2.0), row("ort-cpu-fp32", "ok", 1.0)],
           "breakdown": {"static": {"ok": True}}, "matmul_peak": {"gflops": 90.0},
           "backends": [{"name": "torch-static", "label": "old"}, {"name": "ort-cpu-fp32", "label": "ORT"}],
           "denoiser": {"ok": True, "peak_rss_mb": 1000.0}}
    new = {"command": "second", "results": [row("torch-static", "ok", 1.5), row("ort-cpu-fp32", "failed", None)],
           "breakdown": {}, "matmul_peak": {"gflops": 100.0}, "backends": [{"name": "torch-static", "label": "new"}]}
    merged = merge_results(old, new)
    assert [r["median_s"] for r in merged["results"]] == [1.5, 1.0]
    # every backend keeps its label, a re-probed one the new one; the measured Denoiser is kept
    assert {b["name"]: b["label"] for b in merged["backends"]} == {"torch-static": "new", "ort-cpu-fp32": "ORT"}
    assert merged["denoiser"]["peak_rss_mb"] == 1000.0
    assert merged["breakdown"] == old["breakdown"] and merged["commands"] == ["first", "second"]
    assert merged["matmul_peak"]["gflops"] == 100.0


def test_denoiser_job_measures_an_rgb_image_through_onnx_runtime(tiny_onnx) -> None:
    """The suite's Denoiser job: one RGB uint8 image through Denoiser + ORT, time and peak RSS."""
    from n3deploy.benchmarking.suite import _worker_denoiser

    res = _worker_denoiser({"onnx": str(tiny_onnx.path), "width": 100, "height": 70, "seed": 0, "threads": 1})
    assert res["backend"] == "onnxruntime" and res["seconds"] > 0
    # in this (reused) process ru_maxrss can trail the current RSS by a page-accounting step
    assert res["peak_rss_mb"] > 0 and res["base_rss_mb"] > 0
    assert res["tile"] == [64, 64]  # the fixed-shape graph's size
    doc = {"results": [], "denoiser": {"ok": True, "width": 100, "height": 70, **res}}
    crit = evaluate_criteria(doc)["denoiser_rss"]
    assert crit["met"] is (res["peak_rss_mb"] <= 3 * 1024) and crit["peak_rss_mb"] == res["peak_rss_mb"]


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
    infos = {i.name: i for i in probe_backends(("torch-cuda-fp32", "torch-cuda-fp16", "torch-static"))}
    assert infos["torch-static"].available
    for name in ("torch-cuda-fp32", "torch-cuda-fp16"):
        assert not infos[name].available and infos[name].reason == "no CUDA GPU visible to PyTorch"
    assert infos["torch-cuda-fp16"].precision == "fp16"
