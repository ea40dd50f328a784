"""``n3deploy doctor``: probes what runs here and says why the rest does not."""

from __future__ import annotations

import json

import pytest

from n3deploy.cli import main
from n3deploy.doctor import DoctorReport, _nodes_ran_on, format_report, run_doctor
from n3deploy.tensorrt.env import tensorrt_available


@pytest.fixture(scope="module")
def report() -> DoctorReport:
    return run_doctor()


def test_cpu_provider_is_probed_and_works(report):
    providers = {p.provider: p for p in report.providers}
    assert providers["CPUExecutionProvider"].works
    assert report.backends()["onnxruntime (CPU)"]
    assert report.onnxruntime.ok and "onnxruntime" in report.onnxruntime.detail


def test_listed_providers_that_do_not_run_the_graph_are_not_reported_as_working(report):
    for probe in report.providers:
        if probe.provider != "CPUExecutionProvider" and not probe.works:
            assert probe.detail  # a reason: fell back, failed, or ran elsewhere


def test_tensorrt_status_matches_importability(report):
    ok, reason = tensorrt_available()
    assert report.tensorrt.ok == ok
    assert report.tensorrt.detail.startswith(reason)
    if not ok:
        assert not report.backends()["tensorrt"] and "tensorrt" in report.tensorrt.detail
    if not report.gpus:
        assert report.gpu_detail and not report.backends()["tensorrt"]


def test_text_and_json_reports(report, capsys):
    text = format_report(report)
    for needle in ("CPUExecutionProvider", "tensorrt", "trtexec", "GPU:", "backends usable here:"):
        assert needle in text
    assert main(["doctor", "--json", "--no-probe"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) >= {"torch", "gpus", "onnxruntime", "providers", "tensorrt", "trtexec", "backends", "packages"}
    assert data["packages"]["onnxruntime"] or data["packages"]["onnxruntime-gpu"]


def test_node_placement_is_read_from_the_onnxruntime_profile(tmp_path):
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps([
        {"cat": "Session", "name": "session_initialization", "args": {}},
        {"cat": "Node", "name": "Add_0_kernel_time", "args": {"provider": "CPUExecutionProvider"}},
        {"cat": "Node", "name": "Conv_1_kernel_time", "args": {"provider": "CUDAExecutionProvider"}},
    ]))
    assert _nodes_ran_on(str(profile)) == {"CPUExecutionProvider", "CUDAExecutionProvider"}


def test_cpu_precision_support_and_the_registry_are_reported(report):
    from pathlib import Path

    from n3deploy.backends import BACKENDS, available_backends

    assert set(report.registry) == set(BACKENDS) and report.registry == available_backends()
    cpu = report.cpu
    assert cpu is not None and cpu.model
    if Path("/proc/cpuinfo").exists():
        flags = Path("/proc/cpuinfo").read_text().split()
        assert cpu.bf16 == ("avx512_bf16" in flags or "amx_bf16" in flags)
        assert cpu.vnni == any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
    text = format_report(report)
    assert "BF16 " in text and "VNNI " in text and "AMX " in text and "backend registry" in text
    if cpu.openvino_default is not None:
        assert f"picks {cpu.openvino_default} by default" in text
