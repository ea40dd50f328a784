"""The end-to-end demo: the shipped model on a bundled photo through every available backend.

Steps: load the shipped default model -> take scikit-image's ``camera`` photo -> add Gaussian
noise at the model's sigma, or at :data:`BLIND_DEMO_SIGMA` for a blind model (fixed seed;
clipped to [0, 1] like a real noisy photo) -> export
ONNX FP32 and mixed FP16 -> denoise with :class:`n3deploy.Denoiser` on PyTorch, ONNX Runtime
FP32/FP16 and TensorRT FP16 where present -> a parity/PSNR table, timings, a side-by-side PNG
(noisy | denoised | clean) and a JSON report.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .fileio import atomic_path

__all__ = ["DemoRow", "run_demo"]


@dataclass
class DemoRow:
    """One backend's result on the demo photo (errors vs the PyTorch FP32 output)."""

    backend: str
    model_file: str
    status: str = "ok"
    seconds: float | None = None
    psnr_db: float | None = None
    delta_psnr_db: float | None = None
    max_abs_err: float | None = None
    nan_inf: int | None = None


@dataclass
class DemoReport:
    sigma: float
    image: str
    shape: tuple[int, ...]
    noisy_psnr_db: float
    rows: list[DemoRow] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)


def _photo(size: int) -> np.ndarray:
    from skimage import data

    img = data.camera().astype(np.float32) / 255.0
    h, w = img.shape
    top, left = (h - size) // 2, (w - size) // 2
    return img[top : top + size, left : left + size]


CAPTION_PX = 22  # height of the caption strip above each panel
#: Noise level of the demo photo when the model is blind (trained over a range of sigma).
BLIND_DEMO_SIGMA = 25.0


def side_by_side(panels: list[np.ndarray], captions: list[str] | None = None) -> np.ndarray:
    """Panels (each H×W float in [0, 1]) next to each other with an 8 px gap -> H'×W' uint8.

    With ``captions`` (one per panel) a white strip of :data:`CAPTION_PX` rows above the panels
    carries each panel's caption (e.g. ``"noisy 20.2 dB"``), drawn with Pillow's ImageDraw.
    """
    from PIL import Image, ImageDraw

    gap = np.ones((panels[0].shape[0], 8), dtype=np.float32)
    row = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
    pixels = np.rint(np.clip(row, 0, 1) * 255).astype(np.uint8)
    if captions is None:
        return pixels
    if len(captions) != len(panels):
        raise ValueError(f"{len(captions)} captions for {len(panels)} panels")
    image = Image.new("L", (pixels.shape[1], pixels.shape[0] + CAPTION_PX), color=255)
    image.paste(Image.fromarray(pixels), (0, CAPTION_PX))
    draw = ImageDraw.Draw(image)
    left = 0
    for panel, caption in zip(panels, captions):
        draw.text((left + 4, 4), caption, fill=0)
        left += panel.shape[1] + gap.shape[1]
    return np.asarray(image)


def _write_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")


def run_demo(
    outdir: Path, *, size: int = 384, seed: int = 0, repeats: int = 3, console=None, model_path: Path | None = None,
    backends: tuple[str, ...] | None = None,
) -> DemoReport:
    """Run the demo, writing ``demo.onnx``, ``demo_fp16.onnx``, ``side_by_side.png`` and
    ``report.json`` into ``outdir``; returns the report. ``model_path``: an n3deploy checkpoint
    instead of the shipped default model; ``backends``: a subset of the rows (``"torch fp32"``,
    ``"onnxruntime fp32"``, ``"onnxruntime fp16"``, ``"tensorrt fp16"``; default all). The ONNX
    graphs are exported only when a selected row opens them."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from .assets import default_model_path
    from .checkpoint import load_checkpoint
    from .denoiser import Denoiser
    from .evaluate import add_noise, image_rng, psnr
    from .export import export_onnx

    # outside a terminal (CI logs, pipes) rich assumes 80 columns and truncates the table
    console = console or (Console() if sys.stdout.isatty() else Console(width=140))
    outdir.mkdir(parents=True, exist_ok=True)
    ckpt = Path(model_path) if model_path is not None else default_model_path()
    model = load_checkpoint(ckpt)
    trained_sigma = model.metadata.get("sigma")  # None: a blind model
    sigma = BLIND_DEMO_SIGMA if trained_sigma is None else float(trained_sigma)
    clean = _photo(size)
    noisy = np.clip(add_noise(clean, sigma, image_rng(seed, 0)), 0.0, 1.0).astype(np.float32)
    report = DemoReport(sigma=sigma, image="skimage.data.camera (centre crop)", shape=clean.shape,
                        noisy_psnr_db=psnr(clean, noisy))
    trained = f"sigma {sigma:g}" if trained_sigma is not None else f"blind, {model.metadata.get('sigma_range')}"
    console.print(f"[bold]n3deploy demo[/]: model {escape(ckpt.name)} ({escape(trained)}), photo "
                  f"{clean.shape[1]}x{clean.shape[0]} with noise sigma {sigma:g}")

    onnx32, onnx16 = outdir / "demo.onnx", outdir / "demo_fp16.onnx"
    candidates: list[tuple[str, Path, str]] = [
        ("torch fp32", ckpt, "torch"),
        ("onnxruntime fp32", onnx32, "onnxruntime"),
        ("onnxruntime fp16", onnx16, "onnxruntime"),
        ("tensorrt fp16", onnx16, "tensorrt"),
    ]
    if backends is not None:
        unknown = set(backends) - {label for label, _, _ in candidates}
        if unknown:
            raise ValueError(f"unknown demo rows {sorted(unknown)}; choose from {[c[0] for c in candidates]}")
        candidates = [c for c in candidates if c[0] in backends]
    from .backends import available_backends

    reasons = available_backends()  # a backend that cannot run here is a row with the reason, no export for it
    if any(path.suffix == ".onnx" and reasons.get(backend) is None for _, path, backend in candidates):
        with console.status("exporting ONNX FP32 and mixed FP16 ..."):
            export_onnx(model, onnx32, sigma=trained_sigma)
            export_onnx(model, onnx16, sigma=trained_sigma, fp16=True)
        report.files.update(onnx_fp32=str(onnx32), onnx_fp16=str(onnx16))
    reference = None
    outputs: dict[str, np.ndarray] = {}
    for label, path, backend in candidates:
        row = DemoRow(backend=label, model_file=path.name)
        if reasons.get(backend) is not None:
            row.status = f"the {backend} backend cannot run here: {reasons[backend]}"
            report.rows.append(row)
            continue
        try:
            denoiser = Denoiser(path, backend=backend)
        except Exception as exc:  # a backend this machine cannot run is a row, not a crash
            row.status = str(exc).splitlines()[0]
            report.rows.append(row)
            continue
        with console.status(escape(f"denoising with {label} ...")):
            denoiser.denoise(noisy)  # warm-up (session/engine set-up, allocator)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                out = denoiser.denoise(noisy)
                times.append(time.perf_counter() - t0)
        outputs[label] = out
        reference = out if reference is None else reference
        row.seconds = float(np.median(times))
        row.psnr_db = psnr(clean, out)
        row.nan_inf = int((~np.isfinite(out)).sum())
        row.max_abs_err = float(np.abs(out - reference).max())
        row.delta_psnr_db = row.psnr_db - report.rows[0].psnr_db if report.rows and report.rows[0].psnr_db else 0.0
        report.rows.append(row)

    best = outputs.get("onnxruntime fp32", next(iter(outputs.values())))
    png = outdir / "side_by_side.png"
    best_label = "onnxruntime fp32" if "onnxruntime fp32" in outputs else next(iter(outputs))
    captions = [f"noisy {report.noisy_psnr_db:.2f} dB", f"denoised ({best_label}) {psnr(clean, best):.2f} dB", "clean"]
    _write_png(png, side_by_side([noisy, best, clean], captions))
    report.files["side_by_side"] = str(png)

    table = Table(title=escape(f"camera {clean.shape[1]}x{clean.shape[0]}, sigma {sigma:g}: noisy {report.noisy_psnr_db:.2f} dB"))
    for col in ("backend", "PSNR dB", "ΔPSNR dB", "max |Δ| vs torch", "NaN/Inf", "time (s)", "status"):
        table.add_column(col, justify="left" if col in ("backend", "status") else "right", no_wrap=True)
    notes = []
    for r in report.rows:
        fmt = lambda v, f: "-" if v is None else format(v, f)
        status = r.status
        if status != "ok":
            notes.append(f"{r.backend}: {status}")
            status = f"unavailable [{len(notes)}]"
        table.add_row(escape(r.backend), fmt(r.psnr_db, ".2f"), fmt(r.delta_psnr_db, "+.4f"), fmt(r.max_abs_err, ".2e"),
                      fmt(r.nan_inf, "d"), fmt(r.seconds, ".3f"), escape(status))
    console.print(table)
    for i, note in enumerate(notes, 1):
        console.print(escape(f"[{i}] {note}"), soft_wrap=True)
    json_path = outdir / "report.json"
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(asdict(report), indent=2))
    report.files["report"] = str(json_path)
    console.print(escape(f"wrote {png} (noisy | denoised | clean, captioned with PSNR) and {json_path}"))
    return report
