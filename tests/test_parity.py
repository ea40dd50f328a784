"""`n3deploy parity`: one table over PyTorch / ONNX Runtime FP32 / FP16, non-zero exit on failure."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from n3deploy.backends import load_backend
from n3deploy.cli import main as cli_main
from n3deploy.evaluate import add_noise, image_rng
from n3deploy.parity import Tolerances, load_cases, noisy_cases, onnxrt_runner, run_parity


def test_parity_command_passes_and_writes_the_report(tiny_checkpoint, tiny_onnx, tiny_onnx_fp16, photo_dir, tmp_path, capsys):
    report_path = tmp_path / "parity.json"
    rc = cli_main([
        "parity", "--checkpoint", str(tiny_checkpoint), "--onnx", str(tiny_onnx.path),
        "--onnx-fp16", str(tiny_onnx_fp16.path), "--images", str(photo_dir), "--sigma", "25",
        "--json", str(report_path),
    ])
    out = capsys.readouterr().out
    assert rc == 0, out
    for needle in ("torch", "onnxruntime-fp32", "onnxruntime-fp16", "ΔPSNR", "NaN/Inf", "PASS"):
        assert needle in out
    report = json.loads(report_path.read_text())
    assert report["ok"] and report["sigma"] == 25 and len(report["images"]) == 3
    assert report["image_shapes"] == [[1, 64, 64]] * 3  # 80x80 photos center-cropped to the fixed graph
    by_name = {b["name"]: b for b in report["backends"]}
    assert by_name["onnxruntime-fp32"]["summary"]["max_abs"] <= 1e-4
    fp16 = by_name["onnxruntime-fp16"]
    assert fp16["precision"] == "fp16" and abs(fp16["summary"]["delta_psnr"]) <= 0.02
    assert fp16["summary"]["nonfinite"] == 0 and 0 < fp16["summary"]["max_abs"] < 1e-2
    assert by_name["torch"]["summary"]["delta_psnr"] == 0.0


def test_parity_fails_when_a_tolerance_is_exceeded(tiny_checkpoint, tiny_onnx, photo_dir, capsys):
    rc = cli_main(["parity", "--checkpoint", str(tiny_checkpoint), "--onnx", str(tiny_onnx.path),
                   "--images", str(photo_dir), "--fp32-atol", "1e-12", "--limit", "1"])
    out = capsys.readouterr().out
    assert rc == 1 and "FAIL: max abs error" in out


def test_float64_row_measures_float32_itself_without_judging_it(tiny_checkpoint, tiny_onnx, photo_dir, capsys):
    rc = cli_main(["parity", "--checkpoint", str(tiny_checkpoint), "--onnx", str(tiny_onnx.path),
                   "--float64", "--torch-fp16", "--images", str(photo_dir), "--limit", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    (row,) = [line for line in out.splitlines() if line.startswith("torch-fp64")]
    own = float(row.split()[2])  # max abs of float64 vs the float32 reference: float32's own rounding
    assert 0 < own < 1e-4 and row.rstrip().endswith("ok")
    assert f"float32 reference itself is {own:.2e}" in out
    (fp16,) = [line for line in out.splitlines() if line.startswith("torch-fp16")]
    assert fp16.split()[1] == "fp16" and "FP16 plan" in out


def test_parity_catches_a_graph_of_other_weights(tiny_onnx, photos, tmp_path):
    """A graph exported from different weights is flagged: large errors, not within tolerance."""
    import torch

    from n3deploy.backends.torch_backend import TorchBackend
    from n3deploy.config import N3NetConfig
    from n3deploy.model import N3Net

    torch.manual_seed(99)
    other = TorchBackend.from_model(N3Net(N3NetConfig.tiny()).eval())
    cases = noisy_cases([c for _, c in photos], [n for n, _ in photos], sigma=25)
    report = run_parity(other, [("onnxruntime-fp32", onnxrt_runner(load_backend(tiny_onnx.path)))], cases, sigma=25)
    assert not report.ok
    fp32 = report.backends[1]
    assert fp32.summary()["max_abs"] > 1e-2 and any("max abs error" in f for f in fp32.failures)


def test_parity_noise_follows_the_evaluation_protocol(photo_dir):
    cases = load_cases(photo_dir, sigma=25, channels=1, seed=3)
    assert [c.name for c in cases] == ["camera.png", "coins.png", "moon.png"]
    for i, case in enumerate(cases):
        assert np.array_equal(case.noisy, add_noise(case.clean, 25, image_rng(3, i)))


def test_tolerances_judge_fp16_by_delta_psnr(tiny_checkpoint, tiny_onnx_fp16, photos):
    ref = load_backend(tiny_checkpoint)
    cases = noisy_cases([c for _, c in photos], [n for n, _ in photos], sigma=25)
    fp16 = [("onnxruntime-fp16", onnxrt_runner(load_backend(tiny_onnx_fp16.path)))]
    loose = run_parity(ref, fp16, cases, sigma=25)
    assert loose.ok and loose.backends[1].summary()["max_abs"] > 1e-4  # FP16 is not held to the FP32 bound
    strict = run_parity(ref, fp16, cases, sigma=25, tolerances=Tolerances(fp16_delta_psnr=0.0))
    assert not strict.ok and "ΔPSNR" in strict.backends[1].failures[0]


@pytest.mark.skipif(shutil.which("polygraphy", path=str(Path(sys.executable).parent)) is None, reason="polygraphy CLI not installed")
def test_polygraphy_cli_runs_the_same_file(tiny_onnx):
    """The documented `polygraphy run model.onnx --onnxrt` works on n3deploy's exports."""
    exe = shutil.which("polygraphy", path=str(Path(sys.executable).parent))
    result = subprocess.run([exe, "run", str(tiny_onnx.path), "--onnxrt"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED" in result.stdout + result.stderr
