"""The model registry: every shipped entry loads, exports to ONNX and denoises; names work everywhere."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

import n3deploy
from n3deploy import N3NetConfig
from n3deploy.config import PRESETS, preset_names
from n3deploy.errors import ModelFileError
from n3deploy.evaluate import add_noise, image_rng, psnr
from n3deploy.models import get_model, list_models, load_model, model_home, resolve_model

SHIPPED = [m.name for m in list_models(shipped_only=True)]
OFFICIAL = [m.name for m in list_models() if m.official]
CARD = Path(__file__).resolve().parents[1] / "docs" / "model_card.md"


@pytest.fixture(scope="module")
def noisy_photo() -> tuple[np.ndarray, np.ndarray]:
    from skimage import data

    clean = data.camera()[160:224, 200:264].astype(np.float32)[None] / 255  # 1 x 64 x 64
    return clean, add_noise(clean, 25.0, image_rng(0, 0))


def test_registry_names():
    assert SHIPPED == ["tiny-sigma25", "paper-sigma25", "tiny-blind"]
    assert OFFICIAL == ["official-sigma25", "official-sigma50", "official-sigma70"]
    assert [m.name for m in n3deploy.list_models()] == SHIPPED + OFFICIAL
    assert all(m.preset in PRESETS for m in list_models())
    assert get_model("tiny-blind").blind and get_model("tiny-blind").noise == "σ∈[0, 55]"
    assert [get_model(n).sigma for n in OFFICIAL] == [25.0, 50.0, 70.0]


def test_shipped_models_and_default_are_views_of_the_registry():
    from n3deploy.assets import DEFAULT_MODEL, SHIPPED_MODELS, default_model_path

    assert list(SHIPPED_MODELS) == SHIPPED
    assert default_model_path() == get_model(DEFAULT_MODEL).path
    for name in SHIPPED:
        assert n3deploy.shipped_model_path(name) == resolve_model(name) == get_model(name).path


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_entry_loads_exports_and_denoises(name, noisy_photo, tmp_path):
    from n3deploy.backends import load_backend
    from n3deploy.export.onnx_export import export_onnx

    entry = get_model(name)
    model = n3deploy.load_model(name)
    assert model.config == entry.model_config()
    assert model.config == dataclasses.replace(N3NetConfig.preset(entry.preset, entry.channels), **entry.config)
    assert model.metadata["sigma"] == entry.sigma
    assert model.metadata.get("sigma_range") == (list(entry.sigma_range) if entry.blind else None)
    assert entry.parameters == sum(p.numel() for p in model.parameters())
    assert entry.file_size == entry.path.stat().st_size > 0
    clean, noisy = noisy_photo
    onnx = export_onnx(model, tmp_path / f"{name}.onnx", height=64, width=64, verify=False).path
    out = load_backend(onnx, "onnxruntime").run(noisy[None])[0]
    assert psnr(clean, out) > psnr(clean, noisy) + 5
    denoised = n3deploy.Denoiser(name, backend="torch").denoise(clean[0])  # by name, any size/dtype
    assert denoised.shape == (64, 64) and denoised.dtype == np.float32


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_entry_tells_how_to_convert_it_and_then_resolves(name, tmp_path, monkeypatch):
    monkeypatch.setenv("N3DEPLOY_HOME", str(tmp_path))
    entry = get_model(name)
    with pytest.raises(ModelFileError, match=rf"convert-official CHECKPOINT\.t7 --sigma {entry.sigma:g} -o"):
        resolve_model(name)
    with pytest.raises(ModelFileError, match="does not download"):
        n3deploy.Denoiser(name)
    converted = model_home() / entry.file  # where the printed command writes it
    assert str(converted) in entry.instructions()
    converted.parent.mkdir(parents=True)
    converted.write_bytes(n3deploy.shipped_model_path("tiny-sigma25").read_bytes())
    assert resolve_model(name) == converted and entry.available


def test_paths_pass_through_and_unknown_names_are_explained(tmp_path):
    assert resolve_model(tmp_path / "m.onnx") == tmp_path / "m.onnx"
    assert resolve_model("runs/x/best.safetensors") == Path("runs/x/best.safetensors")
    assert resolve_model(Path("tiny-sigma25")) == n3deploy.shipped_model_path("tiny-sigma25")
    with pytest.raises(ModelFileError, match="neither a model file nor a registry name; names: tiny-sigma25"):
        resolve_model("tiny-sigma15")
    with pytest.raises(ModelFileError, match="load_model reads n3deploy .safetensors"):
        load_model(tmp_path / "m.onnx")


def test_presets_registry_drives_config_and_train_choices():
    import argparse

    from n3deploy.commands import train

    assert preset_names() == ["tiny", "paper"]
    assert N3NetConfig.preset("tiny", 3) == N3NetConfig.tiny(3)
    with pytest.raises(ValueError, match=r"choose one of \['tiny', 'paper'\]"):
        N3NetConfig.preset("huge")
    parser = argparse.ArgumentParser()
    train.register(parser.add_subparsers())
    action = next(a for sp in parser._subparsers._group_actions for p in sp.choices.values() for a in p._actions
                  if a.dest == "preset")
    assert list(action.choices) == preset_names()


def test_models_command_prints_every_entry(capsys):
    from n3deploy.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for entry in list_models():
        row = next(line for line in out.splitlines() if line.startswith(entry.name + " "))
        assert entry.preset in row and entry.noise in row
        if entry.available:
            assert f"{entry.parameters:,}" in row
    assert main(["models", "official-sigma50", "--json"]) == 0
    assert '"sigma": 50.0' in capsys.readouterr().out


def test_model_flags_take_registry_names(capsys, tmp_path):
    from n3deploy.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["export", "--checkpoint", "official-sigma70", "-o", str(tmp_path / "x.onnx")])
    assert exc.value.code == 2 and "convert-official" in capsys.readouterr().err
    from n3deploy.models import model_arg

    assert model_arg("tiny-blind") == get_model("tiny-blind").path
    assert model_arg("http://127.0.0.1:8000") == "http://127.0.0.1:8000"


def test_model_card_states_the_registry_figures():
    card = CARD.read_text(encoding="utf-8")
    for entry in list_models():
        assert f"`{entry.name}`" in card, entry.name
        for sigma, value in entry.set12_psnr.items():
            assert re.search(rf"\b{value:.2f}\b", card), (entry.name, sigma, value)
