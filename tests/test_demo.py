"""The demo: captioned side-by-side picture, and console messages printed verbatim (no rich markup)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from n3deploy import shipped_model_path
from n3deploy.demo import CAPTION_PX, run_demo, side_by_side


def test_captions_are_drawn_in_a_strip_above_the_panels() -> None:
    rng = np.random.default_rng(0)
    panels = [rng.random((40, 30), dtype=np.float32) for _ in range(3)]
    plain = side_by_side(panels)
    labelled = side_by_side(panels, ["noisy 20.17 dB", "denoised 29.80 dB", "clean"])
    assert labelled.shape == (plain.shape[0] + CAPTION_PX, plain.shape[1])
    np.testing.assert_array_equal(labelled[CAPTION_PX:], plain)  # the pictures themselves are untouched
    strip = labelled[:CAPTION_PX]
    for i in range(3):  # every panel's caption has dark (text) pixels on the white strip
        left = i * (30 + 8)
        assert (strip[:, left : left + 30] < 128).sum() > 10, f"no caption above panel {i}"
    with pytest.raises(ValueError, match="captions"):
        side_by_side(panels, ["one"])


def test_demo_writes_a_captioned_picture_and_prints_messages_verbatim(tmp_path) -> None:
    console = Console(record=True, width=300)
    # the PyTorch and TensorRT rows only: no ONNX export (minutes on a busy 2-core machine); TensorRT,
    # where it cannot run, is a row with its reason
    report = run_demo(tmp_path, size=48, repeats=1, console=console, model_path=shipped_model_path("tiny-sigma25"),
                      backends=("torch fp32", "tensorrt fp16"))
    text = console.export_text()
    with Image.open(report.files["side_by_side"]) as im:
        picture = np.asarray(im)
    assert picture.shape[0] == 48 + CAPTION_PX and (picture[:CAPTION_PX] < 128).any()
    assert [r.backend for r in report.rows] == ["torch fp32", "tensorrt fp16"]
    assert report.rows[0].status == "ok" and report.rows[0].psnr_db is not None
    assert f"{report.rows[0].psnr_db:.2f}" in text
    for row in report.rows:
        if row.status != "ok":  # e.g. TensorRT's hint with its pip extra in brackets
            assert row.status in text.replace("\n", "")
    assert "[bold]" not in text and "n3deploy demo" in text


def test_bracketed_text_survives_the_console() -> None:
    """What the demo does with every message: rich would swallow ``[gpu]`` as a markup tag."""
    from rich.markup import escape

    message = 'TensorRT is missing: pip install "n3deploy[gpu]"'
    console = Console(record=True, width=200)
    console.print(message)
    assert "n3deploy[gpu]" not in console.export_text()  # the defect: the extra disappears
    console.print(escape(message))
    assert "n3deploy[gpu]" in console.export_text()
