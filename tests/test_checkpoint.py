"""n3deploy checkpoints: one .safetensors file, weights + config + metadata, safe and atomic."""

from __future__ import annotations

import pytest
import torch

from n3deploy import N3Net, N3NetConfig, load_checkpoint, save_checkpoint
from n3deploy.checkpoint import read_checkpoint_header
from n3deploy.errors import ModelFileError


def test_round_trip_restores_weights_config_and_metadata(tmp_path):
    torch.manual_seed(0)
    model = N3Net(N3NetConfig.tiny()).eval()
    path = save_checkpoint(model, tmp_path / "m.safetensors", sigma=25, provenance="test")
    loaded = load_checkpoint(path)
    assert loaded.config == model.config
    assert loaded.metadata == {"sigma": 25, "provenance": "test"}
    x = torch.rand(1, 1, 32, 40)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not loaded.training
    config, meta = read_checkpoint_header(path)
    assert config == model.config and meta["sigma"] == 25


def test_truncated_file_gives_one_clear_error(tmp_path):
    path = save_checkpoint(N3Net(N3NetConfig.tiny()), tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="m.safetensors"):
        load_checkpoint(path)


def test_other_files_are_refused(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(ModelFileError, match="no such"):
        load_checkpoint(missing)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ModelFileError):
        load_checkpoint(junk)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ModelFileError, match="not an n3deploy checkpoint"):
        load_checkpoint(foreign)


def test_failed_write_leaves_nothing_behind(tmp_path):
    model = N3Net(N3NetConfig.tiny())
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(model, tmp_path / "m.safetensors", bad=object())
    assert list(tmp_path.iterdir()) == []


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    """Files written through atomic_path get 0666 & ~umask, like open(), not mkstemp's 0600."""
    import os

    from n3deploy.fileio import atomic_path

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "out.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o644
