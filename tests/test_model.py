"""N3Net: the authors' semantics (golden vectors), shapes, input checks, presets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from n3deploy import N3Net, N3NetConfig
from n3deploy.official import load_official

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden"
needs_golden = pytest.mark.skipif(
    not (GOLDEN / "random_official_layout.t7").is_file(),
    reason=f"golden vectors of the authors' code not present at {GOLDEN} (they live in the project's shared/ folder)",
)


@needs_golden
@pytest.mark.parametrize(
    "knn, case", [("static", "camera_crop_sigma25"), ("static", "odd_97x123"), ("reference", "odd_97x123")]
)
def test_matches_the_authors_code_in_float64(knn, case):
    model = load_official(GOLDEN / "random_official_layout.t7", knn=knn).double()
    x = torch.from_numpy(np.load(GOLDEN / f"{case}_input.npy")).double()
    expected = np.load(GOLDEN / f"{case}_output_f64.npy")
    with torch.no_grad():
        out = model(x).numpy()
    assert out.shape == expected.shape
    assert np.abs(out - expected).max() <= 1e-6


@needs_golden
def test_first_n3_block_matches_in_float64():
    model = load_official(GOLDEN / "random_official_layout.t7").double()
    x = torch.from_numpy(np.load(GOLDEN / "odd_97x123_input.npy")).double()
    with torch.no_grad():
        out = model.nls[0](model.blocks[0](x)).numpy()
    assert np.abs(out - np.load(GOLDEN / "odd_97x123_n3block0_f64.npy")).max() <= 1e-6


@needs_golden
def test_float32_static_is_close_to_the_authors_float32_output():
    model = load_official(GOLDEN / "random_official_layout.t7")
    x = torch.from_numpy(np.load(GOLDEN / "camera_crop_sigma25_input.npy"))
    with torch.no_grad():
        out = model(x).numpy()
    # the random golden network is numerically sharp: float32 summation order moves outputs ~1e-2
    assert np.abs(out - np.load(GOLDEN / "camera_crop_sigma25_output.npy")).max() < 5e-2


@pytest.mark.parametrize("size", [(15, 15), (40, 40), (17, 300), (33, 47)])
def test_any_size_from_the_minimum_keeps_its_shape(size):
    torch.manual_seed(0)
    model = N3Net(N3NetConfig.tiny()).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, *size))
    assert out.shape == (2, 1, *size)
    assert torch.isfinite(out).all()


def test_static_and_reference_agree_on_the_whole_model():
    torch.manual_seed(0)
    model = N3Net(N3NetConfig.tiny()).eval()
    x = torch.rand(1, 1, 64, 71)
    with torch.no_grad():
        a = model.set_knn("static")(x)
        b = model.set_knn("reference")(x)
    assert (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize(
    "shape, message",
    [((1, 3, 32, 32), "expects B x 1 x H x W"), ((1, 1, 14, 40), "height >= 15"), ((1, 1, 40, 9), "width >= 15"), ((32, 32), "expects")],
)
def test_bad_inputs_raise_clear_errors(shape, message):
    model = N3Net(N3NetConfig.tiny()).eval()
    with pytest.raises((ValueError, RuntimeError), match=message):
        model(torch.rand(*shape))


def test_presets_and_json_round_trip():
    paper = N3NetConfig.paper()
    assert (paper.k, paper.patch_size, paper.stride, paper.window, paper.num_dncnn) == (7, 10, 5, 15, 3)
    assert paper.n3_channels == 64
    assert N3NetConfig.from_json(paper.to_json()) == paper
    assert N3NetConfig.preset("tiny") == N3NetConfig.tiny()
    with pytest.raises(ValueError, match="unknown preset"):
        N3NetConfig.preset("huge")
    with pytest.raises(ValueError, match="patch_size must equal 2\\*stride"):
        N3NetConfig(patch_size=10, stride=4)
    with pytest.raises(ValueError, match="must be positive"):
        N3NetConfig(k=0)


def test_paper_model_has_the_authors_parameter_layout():
    model = N3Net(N3NetConfig.paper())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["blocks.0.conv1.weight"] == (64, 1, 3, 3)
    assert shapes["blocks.1.conv1.weight"] == (64, 64, 3, 3)
    assert shapes["blocks.2.conv2.weight"] == (1, 64, 3, 3)
    assert shapes["nls.0.embedcnn.6.weight"] == (8, 64, 3, 3)
    assert shapes["nls.1.tempcnn.6.weight"] == (1, 64, 3, 3)
    assert shapes["nls.0.aggregation.distance_bn.running_var"] == (1,)
