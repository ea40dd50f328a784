"""Benchmark scenario ``graph_memory``: peak RSS of one denoise per runtime, each in a fresh process.

What a user gets when they take the exported graph elsewhere: ONNX Runtime with its *default*
``SessionOptions`` (a bare ``onnxruntime.InferenceSession(path)``, what Triton's onnxruntime
backend and most tools open), next to n3deploy's tuned ONNX Runtime backend
(``load_backend(graph, "onnxruntime")``: memory pattern and reuse off), OpenVINO
(``load_backend(graph, "openvino")``, FP32) and PyTorch (the checkpoint, ``load_backend(ckpt, "torch")``).

Every measurement is one child process (``python -m n3deploy.benchmarking.graph_memory --worker``)
that loads the model, runs one random ``1 x C x H x W`` input and reports its ``VmHWM`` (peak
resident memory of the whole process, Python and libraries included) and the run's seconds, so no
measurement inherits another's heap. Paper model at 481x321, 1024x1024, 1920x1080 (``quick``: the
tiny model at 481x321 only, a smoke run). The other graph forms a user exports (:data:`VARIANTS`: the
dynamic FP16 graph, and the fixed-size FP32 and FP16 graphs exported at each measured size) are
measured with ONNX Runtime's default ``SessionOptions`` against n3deploy's backend too (full run only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any, NamedTuple, Optional

from .scenarios import Scenario, ScenarioOptions, register_scenario

__all__ = ["RUNTIMES", "GraphForm", "VARIANTS", "VARIANT_RUNTIMES", "SIZES", "QUICK_SIZES", "measure_peak", "run", "render"]

RUNTIMES = ("ort-default", "onnxruntime", "openvino", "torch")


class GraphForm(NamedTuple):
    """Another exported form of the model: its row label, FP16 or FP32, fixed at the measured size or dynamic."""

    label: str
    fp16: bool
    fixed_size: bool


VARIANTS: dict[str, GraphForm] = {
    "dynamic-fp16": GraphForm("dynamic FP16 graph", fp16=True, fixed_size=False),
    "fixed": GraphForm("fixed-size FP32 graph", fp16=False, fixed_size=True),
    "fixed-fp16": GraphForm("fixed-size FP16 graph", fp16=True, fixed_size=True),
}
VARIANT_RUNTIMES = ("ort-default", "onnxruntime")
SIZES = ((321, 481), (1024, 1024), (1080, 1920))  # (height, width)
QUICK_SIZES = ((321, 481),)
MODEL = "paper-sigma25"
QUICK_MODEL = "tiny-sigma25"


def _worker(runtime: str, model: str, height: int, width: int, threads: int) -> dict[str, Any]:
    """Inside the child: load ``model`` on ``runtime``, denoise one random input, report peak RSS."""
    import resource
    import time

    import numpy as np

    if runtime == "ort-default":
        import onnxruntime as ort

        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])  # default SessionOptions
        inp = session.get_inputs()[0]
        channels = inp.shape[1] if isinstance(inp.shape[1], int) else 1

        def infer(x: np.ndarray) -> np.ndarray:
            return session.run(None, {inp.name: x})[0]
    else:
        from ..backends import load_backend

        opts: dict[str, Any] = {"threads": threads} if threads and runtime in ("onnxruntime", "openvino", "torch") else {}
        backend = load_backend(model, runtime, **opts)
        channels = backend.input_shape_limits.channels
        infer = backend.run
    x = np.random.default_rng(0).random((1, channels, height, width), dtype=np.float32)
    start = time.perf_counter()
    infer(x)
    seconds = time.perf_counter() - start
    # VmHWM: this process image's own peak (ru_maxrss keeps a larger parent's peak across fork/exec)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    try:
        with open("/proc/self/status") as status:
            peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        pass
    return {"peak_rss_bytes": int(peak_kb) * 1024, "seconds": seconds}


def measure_peak(runtime: str, model: "str | os.PathLike", height: int, width: int, *, threads: int = 0,
                 timeout_s: float = 900.0) -> dict[str, Any]:
    """Peak RSS (bytes) and run seconds of one ``height x width`` denoise on ``runtime`` in a fresh process.

    ``runtime``: ``ort-default`` (bare ``InferenceSession``, default ``SessionOptions``) or a backend
    name (``onnxruntime``, ``openvino``, ``torch``). Returns ``{"peak_rss_bytes", "seconds"}`` or
    ``{"error": "..."}`` when the child failed or ran out of time.
    """
    cmd = [sys.executable, "-m", "n3deploy.benchmarking.graph_memory", "--worker", runtime, str(model),
           str(height), str(width), str(threads)]
    # a plain environment: settings a parent set for itself (allocator, threads) must not skew the peak
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PYTHONUNBUFFERED"] = "1"
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {done.returncode}: {tail[:300]}"}
    return json.loads(lines[-1])


def _openvino_skip() -> Optional[str]:
    """Why the OpenVINO backend cannot be measured here (``None`` when it can)."""
    try:
        from ..backends import available_backends
    except ImportError:
        return "the backend registry is not available"
    reasons = available_backends()
    if "openvino" not in reasons:
        return "no openvino backend registered"
    return reasons["openvino"]


def run(options: ScenarioOptions) -> dict[str, Any]:
    """Every runtime x size, each in a fresh process; a runtime that cannot run here is skipped with its reason."""
    from tqdm.auto import tqdm

    from ..export.cache import cached_export
    from ..models import resolve_model

    name = QUICK_MODEL if options.quick else MODEL
    checkpoint = resolve_model(name)
    graph = cached_export(checkpoint)  # the dynamic FP32 graph a user exports by default
    sizes = QUICK_SIZES if options.quick else SIZES
    skipped = {"openvino": _openvino_skip()}
    models = {"ort-default": graph, "onnxruntime": graph, "openvino": graph, "torch": checkpoint}
    jobs: list[tuple[str, str, int, int]] = [(rt, "dynamic", h, w) for h, w in sizes for rt in RUNTIMES]
    if not options.quick:
        jobs += [(rt, v, h, w) for v in VARIANTS for h, w in sizes for rt in VARIANT_RUNTIMES]
    rows = []
    for rt, variant, h, w in tqdm(jobs, desc="graph memory", unit="run"):
        base = {"runtime": rt, "graph": variant, "height": h, "width": w}
        if skipped.get(rt):
            rows.append({**base, "skipped": skipped[rt]})
            continue
        model: "str | os.PathLike" = models[rt]
        if variant != "dynamic":
            form = VARIANTS[variant]
            model = cached_export(checkpoint, fp16=form.fp16, **({"height": h, "width": w} if form.fixed_size else {}))
        result = measure_peak(rt, model, h, w, threads=options.threads, timeout_s=max(options.max_job_s, 60.0) * 10)
        rows.append({**base, **result})
    return {"model": name, "graph": graph.name, "threads": options.threads, "quick": options.quick, "rows": rows}


_LABELS = {
    "ort-default": "ONNX Runtime, default `SessionOptions`",
    "onnxruntime": "ONNX Runtime, n3deploy backend",
    "openvino": "OpenVINO (FP32)",
    "torch": "PyTorch",
}


def render(results: dict[str, Any]) -> str:
    """Markdown: one row per runtime, one column per size (peak RSS in GB, seconds in brackets)."""
    rows = results.get("rows", [])
    sizes = sorted({(r["height"], r["width"]) for r in rows}, key=lambda s: s[0] * s[1])
    head = "| runtime | " + " | ".join(f"{w}x{h}" for h, w in sizes) + " |"
    lines = [
        "## Graph memory in other runtimes",
        "",
        f"Peak RSS of one denoise of the {results.get('model', MODEL)} model (dynamic FP32 graph unless the row says otherwise), each "
        "measurement a fresh process (`n3deploy bench --scenarios graph_memory`); GB (seconds).",
        "",
        head,
        "|" + "---|" * (len(sizes) + 1),
    ]
    forms = [("dynamic", rt, _LABELS[rt]) for rt in RUNTIMES]
    forms += [(v, rt, f"{_LABELS[rt]}, {form.label}") for v, form in VARIANTS.items() for rt in VARIANT_RUNTIMES]
    for variant, rt, label in forms:
        mine = [r for r in rows if r["runtime"] == rt and r.get("graph", "dynamic") == variant]
        if not mine:
            continue
        cells = []
        for h, w in sizes:
            row = next((r for r in mine if (r["height"], r["width"]) == (h, w)), None)
            if row is None:
                cells.append("-")
            elif "peak_rss_bytes" in row:
                cells.append(f"{row['peak_rss_bytes'] / 1e9:.2f} ({row['seconds']:.2f} s)")
            else:
                cells.append(f"skipped: {row.get('skipped') or row.get('error')}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if any(r.get("graph", "dynamic") != "dynamic" for r in rows):
        lines += ["", "Fixed-size graphs are exported at each measured size with n3deploy's default batch axis "
                  "(symbolic); the FP16 graphs are the mixed-precision ones (`export --fp16`)."]
    return "\n".join(lines) + "\n"


register_scenario(Scenario(name="graph_memory", title="Graph memory in other runtimes", run=run, render=render,
                           needs=("onnxruntime",), min_timeout_s=2400.0))


def _main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="one graph-memory measurement (used by the graph_memory scenario)")
    parser.add_argument("--worker", nargs=5, metavar=("RUNTIME", "MODEL", "HEIGHT", "WIDTH", "THREADS"), required=True)
    args = parser.parse_args(argv)
    runtime, model, h, w, threads = args.worker
    print(json.dumps(_worker(runtime, model, int(h), int(w), int(threads))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
