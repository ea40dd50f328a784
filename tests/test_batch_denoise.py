"""``n3deploy denoise --engine local|ray``: same images, faults reported, nothing lost, nothing redone.

Real Ray: one local cluster (2 CPUs) per test session, started in this process and shut down at
the end; the driver-kill test runs the command in a subprocess with its own local cluster and kills
that process tree by PID. The model is the shipped tiny one (``tiny-sigma25``, torch backend);
images are small so the file stays within a couple of minutes on a busy 2-core machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from n3deploy.batch import DenoiseJob, DenoiseSettings, run_job  # noqa: E402
from n3deploy.batch.ray_engine import RayEngine, size_pool  # noqa: E402
from n3deploy.cli import main  # noqa: E402
from n3deploy.errors import N3DeployError, NoiseLevelWarning  # noqa: E402
from n3deploy.imageio import read_image  # noqa: E402

VALID = ("a_grey8.png", "b_grey16.tif", "c_rgb16.tif", "d_rgb.jpg", "e_rgba.png", "f_large.png")
BROKEN = ("0_truncated.png", "notes.png")


@pytest.fixture(scope="session")
def ray_cluster():
    """A local 2-CPU Ray cluster for the session; its GCS address."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _noisy(rng: np.random.Generator, shape: tuple[int, ...], peak: int) -> np.ndarray:
    """A smooth gradient plus sigma-25-like noise, as uint8 / uint16."""
    h, w = shape[:2]
    base = np.add.outer(np.linspace(0.2, 0.8, h), np.linspace(0.0, 0.2, w))
    if len(shape) == 3:
        base = np.repeat(base[..., None], shape[2], axis=2)
    img = np.clip(base + rng.normal(0, 25 / 255, shape), 0, 1) * peak
    return np.rint(img).astype(np.uint8 if peak == 255 else np.uint16)


@pytest.fixture(scope="session")
def mixed_dir(tmp_path_factory) -> Path:
    """8-bit grey PNG 15x15, 16-bit grey and RGB TIFF, RGB JPEG, RGBA PNG, a 160x120 PNG; plus a
    truncated PNG (sorted first) and a text file named .png."""
    import tifffile
    from PIL import Image

    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("mixed")
    Image.fromarray(_noisy(rng, (15, 15), 255)).save(d / "a_grey8.png")
    tifffile.imwrite(d / "b_grey16.tif", _noisy(rng, (30, 40), 65535))
    tifffile.imwrite(d / "c_rgb16.tif", _noisy(rng, (20, 24, 3), 65535))
    Image.fromarray(_noisy(rng, (48, 64, 3), 255)).save(d / "d_rgb.jpg", quality=90)
    Image.fromarray(_noisy(rng, (32, 32, 4), 255)).save(d / "e_rgba.png")
    Image.fromarray(_noisy(rng, (120, 160), 255)).save(d / "f_large.png")
    data = (d / "f_large.png").read_bytes()
    (d / "0_truncated.png").write_bytes(data[: len(data) // 2])
    (d / "notes.png").write_text("this is not an image\n")
    return d


def _records(report: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    return {Path(r["input"]).name: r for r in rows}


def _denoise_cli(*args: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoiseLevelWarning)
        return main(["denoise", *args, "--no-progress"])


@pytest.fixture(scope="session")
def local_run(mixed_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out_local")
    return _denoise_cli(str(mixed_dir), "-o", str(out)), out


@pytest.fixture(scope="session")
def ray_run(mixed_dir, tmp_path_factory, ray_cluster):
    out = tmp_path_factory.mktemp("out_ray")
    return _denoise_cli(str(mixed_dir), "-o", str(out), "--engine", "ray", "--workers", "2"), out


def _assert_same_images(a: Path, b: Path, names) -> None:
    for name in names:
        x, y = read_image(a / name), read_image(b / name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        diff = np.abs(x.astype(np.int64) - y.astype(np.int64)).max()
        assert diff <= 1, f"{name}: {diff} levels apart"


def test_ray_writes_the_same_images_as_local(local_run, ray_run, mixed_dir):
    (_, local_out), (_, ray_out) = local_run, ray_run
    _assert_same_images(local_out, ray_out, VALID)
    for name in VALID:  # format, size and bit depth follow the input
        src, out = read_image(mixed_dir / name), read_image(ray_out / name)
        assert out.shape == src.shape and out.dtype == src.dtype, name
    pids = {r["pid"] for r in _records(ray_out / "denoise_report.jsonl").values() if r["status"] == "done"}
    assert os.getpid() not in pids  # denoised in Ray workers, not in the driver


@pytest.mark.parametrize("run", ["local_run", "ray_run"])
def test_broken_inputs_are_reported_and_the_rest_finish(run, request):
    rc, out = request.getfixturevalue(run)
    assert rc == 1
    records = _records(out / "denoise_report.jsonl")
    assert {n for n, r in records.items() if r["status"] == "done"} == set(VALID)
    assert "truncated" in records["0_truncated.png"]["error"]
    assert "not an image" in records["notes.png"]["error"]
    for name in BROKEN:
        assert records[name]["status"] == "failed" and not (out / name).exists()
    assert not list(out.glob(".*.tmp"))  # no temporaries left behind


def test_rerun_skips_current_outputs_and_overwrite_redoes_them(local_run, mixed_dir, tmp_path):
    rc, out = local_run
    report = tmp_path / "rerun.jsonl"
    before = {n: (out / n).stat().st_mtime_ns for n in VALID}
    assert _denoise_cli(str(mixed_dir), "-o", str(out), "--report", str(report)) == 1  # the broken ones fail again
    records = _records(report)
    assert {n for n, r in records.items() if r["status"] == "skipped"} == set(VALID)
    assert {n: (out / n).stat().st_mtime_ns for n in VALID} == before
    os.utime(mixed_dir / "a_grey8.png")  # an input newer than its output is redone
    assert _denoise_cli(str(mixed_dir / "a_grey8.png"), "-o", str(out), "--report", str(report)) == 0
    assert _records(report)["a_grey8.png"]["status"] == "done"


def test_pool_sizing_never_oversubscribes_cores():
    assert size_pool(8, 0, "onnxruntime", None, None).workers == 8
    assert size_pool(8, 0, "onnxruntime", 2, None).threads == 4
    assert size_pool(8, 0, "onnxruntime", None, 4).workers == 2
    gpu = size_pool(8, 2, "tensorrt", None, None)
    assert (gpu.workers, gpu.gpus) == (2, 1)
    with pytest.raises(N3DeployError, match="CPUs"):
        size_pool(2, 0, "onnxruntime", 2, 2)


def _job_dir(root: Path, n: int, size: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(n)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(_noisy(rng, (size, size), 255)).save(root / f"img_{i:02d}.png")
    return root


def test_a_killed_worker_is_replaced_and_every_file_written(ray_cluster, tmp_path):
    src = _job_dir(tmp_path / "in", 6, 48)
    killed: list[int] = []

    def kill_first_worker(rec) -> None:
        if not killed and rec.status == "done":
            killed.append(rec.pid)
            os.kill(rec.pid, signal.SIGKILL)

    job = DenoiseJob((src,), tmp_path / "out", DenoiseSettings(), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoiseLevelWarning)
        summary = run_job(job, RayEngine(workers=2), on_record=kill_first_worker)
    assert killed and summary.done == 6 and summary.failed == 0
    for i in range(6):
        assert read_image(tmp_path / "out" / f"img_{i:02d}.png").shape == (48, 48)


def _process_tree(pid: int) -> list[int]:
    import psutil

    try:
        proc = psutil.Process(pid)
        return [pid] + [c.pid for c in proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def test_a_killed_driver_resumes_on_rerun(ray_cluster, tmp_path):
    n = 10
    src = _job_dir(tmp_path / "in", n, 80)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "n3deploy.cli", "denoise", str(src), "-o", str(out), "--engine", "ray",
           "--workers", "1", "--threads-per-worker", "1", "--no-progress"]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONWARNINGS="ignore")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("img_*.png")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
    finally:
        tree = _process_tree(proc.pid)  # the command and its children (its own local Ray cluster)
        for pid in reversed(tree):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
    written = sorted(p.name for p in out.glob("img_*.png"))
    assert written, "the command wrote nothing before it was killed"
    for name in written:  # whatever was written is complete
        assert read_image(out / name).shape == (80, 80)

    assert _denoise_cli(str(src), "-o", str(out), "--engine", "ray", "--workers", "2") == 0
    records = _records(out / "denoise_report.jsonl")  # the killed run's half-written report is replaced
    assert {k for k, r in records.items() if r["status"] == "skipped"} == set(written)
    assert {k for k, r in records.items() if r["status"] == "done"} == {f"img_{i:02d}.png" for i in range(n)} - set(written)
    local = tmp_path / "local"
    assert _denoise_cli(str(src), "-o", str(local)) == 0
    _assert_same_images(local, out, [f"img_{i:02d}.png" for i in range(n)])
    assert not list(out.glob(".*.tmp"))


def test_ray_batch_scenario_quick_smoke():
    from n3deploy.benchmarking.ray_batch import render, run
    from n3deploy.benchmarking.scenarios import ScenarioOptions, get_scenario

    assert get_scenario("ray_batch").run is run
    results = run(ScenarioOptions(quick=True, max_job_s=240))
    jobs = {(j["engine"], j["workers"]): j for j in results["jobs"]}
    assert set(jobs) == {("local", 0), ("ray", 1)}
    for job in jobs.values():
        assert "error" not in job and job["images"] == 4 and job["images_per_s"] > 0 and job["driver_peak_rss_mb"] > 0
    assert jobs[("ray", 1)]["worker_peak_rss_mb"] > 0 and results["cluster_start_s"] > 0
    assert render(results).startswith("## Batch denoising")
