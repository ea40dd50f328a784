"""The authors' checkpoints: strict, safe loading and conversion."""

from __future__ import annotations

import pytest
import torch

from n3deploy import N3Net, N3NetConfig, load_checkpoint
from n3deploy.cli import main
from n3deploy.errors import ModelFileError
from n3deploy.official import load_official


def official_layout_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict in the authors' layout (bn1 present, no num_batches_tracked)."""
    torch.manual_seed(seed)
    model = N3Net(N3NetConfig.paper())
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        value = torch.randn_like(value) * 0.05 if value.dtype.is_floating_point else value
        if key.endswith("running_var"):
            value = value.abs() + 0.5
        state[key.replace("aggregation.distance_bn.", "n3aggregation.aggregation.nnn.bn.")] = value
    for n in range(3):
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            state[f"blocks.{n}.bn1.{suffix}"] = torch.rand(64)
    return state


def write_legacy(state, path):
    torch.save({"net": state, "epoch": 51}, path, _use_new_zipfile_serialization=False)
    return path


def test_loads_the_official_layout_exactly(tmp_path):
    state = official_layout_state()
    model = load_official(write_legacy(state, tmp_path / "051_ckpt.t7"))
    assert not model.training
    ours = model.state_dict()
    assert torch.equal(ours["nls.1.aggregation.distance_bn.running_var"], state["nls.1.n3aggregation.aggregation.nnn.bn.running_var"])
    assert torch.equal(ours["blocks.2.conv2.weight"], state["blocks.2.conv2.weight"])
    with torch.no_grad():
        assert torch.isfinite(model(torch.rand(1, 1, 40, 40))).all()


def test_subnormal_weights_are_flushed(tmp_path):
    state = official_layout_state()
    state["blocks.0.conv1.weight"][0, 0, 0, 0] = 1e-40
    model = load_official(write_legacy(state, tmp_path / "c.t7"))
    assert model.state_dict()["blocks.0.conv1.weight"][0, 0, 0, 0] == 0


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.pop("nls.0.tempcnn.6.bias"), "missing keys \\[nls.0.tempcnn.6.bias\\]"),
        (lambda s: s.update({"extra.weight": torch.zeros(1)}), "unexpected keys \\[extra.weight\\]"),
        (lambda s: s.update({"blocks.0.conv1.weight": torch.zeros(64, 3, 3, 3)}), "wrong shapes"),
    ],
)
def test_wrong_layouts_name_the_keys(tmp_path, mutate, message):
    state = official_layout_state()
    mutate(state)
    with pytest.raises(ModelFileError, match=message):
        load_official(write_legacy(state, tmp_path / "c.t7"))


def test_truncated_or_foreign_files_give_one_clear_error(tmp_path):
    path = write_legacy(official_layout_state(), tmp_path / "c.t7")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelFileError, match="cannot read"):
        load_official(path)
    text = tmp_path / "t.t7"
    text.write_text("hello")
    with pytest.raises(ModelFileError):
        load_official(text)
    with pytest.raises(ModelFileError, match="no such"):
        load_official(tmp_path / "absent.t7")


def test_pickled_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('executed')",))

    path = tmp_path / "evil.t7"
    torch.save({"net": Evil()}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(ModelFileError):
        load_official(path)


def test_convert_official_command(tmp_path, capsys):
    src = write_legacy(official_layout_state(), tmp_path / "051_ckpt.t7")
    out = tmp_path / "n3net_sigma25.safetensors"
    assert main(["convert-official", str(src), "--sigma", "25", "-o", str(out)]) == 0
    converted = load_checkpoint(out)
    assert converted.metadata["sigma"] == 25
    direct = load_official(src)
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(converted(x), direct(x))
    bad = tmp_path / "bad.t7"
    bad.write_bytes(b"\x00" * 10)
    assert main(["convert-official", str(bad), "-o", str(tmp_path / "x.safetensors")]) == 1
    assert "error" in capsys.readouterr().err
