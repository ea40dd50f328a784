"""Training: data sampling, lr schedule, exact resume, data-parallel (2 gloo processes), CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from n3deploy.checkpoint import load_checkpoint, read_checkpoint_header  # noqa: E402
from n3deploy.config import N3NetConfig  # noqa: E402
from n3deploy.errors import InvalidImageError, N3DeployError  # noqa: E402
from n3deploy.training import TrainConfig, learning_rate, train  # noqa: E402
from n3deploy.training.config import decay_start  # noqa: E402
from n3deploy.training.data import PatchSampler, load_folder, load_image, step_rng  # noqa: E402
from n3deploy.training.trainer import BEST_FILE, CURVE_FILE, HISTORY_FILE, LAST_FILE, STATE_FILE  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# A very small real N3Net (DnCNN blocks + N3 blocks) so each training step takes well under a second.
SMALL = dict(
    interm_channels=4, dncnn_features=8, dncnn_depth=3, embed_features=8, embed_depth=2, embed_channels=4, k=2, window=7
)


def small_config(channels: int = 1) -> N3NetConfig:
    return N3NetConfig(in_channels=channels, out_channels=channels, **SMALL)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """Four 48x48 grayscale crops of scikit-image's camera + one colour crop folder."""
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("images")
    cam = data.camera()
    for i in range(4):
        Image.fromarray(cam[60 * i : 60 * i + 48, 40 * i + 100 : 40 * i + 148]).save(root / f"cam{i}.png")
    return root


@pytest.fixture(scope="module")
def rgb_dir(tmp_path_factory) -> Path:
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("rgb")
    astro = data.astronaut()
    for i in range(2):
        Image.fromarray(astro[100 * i : 100 * i + 40, 150:190]).save(root / f"astro{i}.png")
    return root


def cfg_for(image_dir: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        data=image_dir, out=out, model_config=small_config(), crop=32, batch_size=2, steps=4,
        warmup_steps=1, val_every=2, val_split=1, threads=2,
    )
    base.update(kw)
    return TrainConfig(**base)


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


# ----------------------------------------------------------------------------- data


def test_load_image_gray_and_rgb(image_dir, rgb_dir):
    gray = load_image(image_dir / "cam0.png", 1)
    assert gray.shape == (1, 48, 48) and gray.dtype == np.float32
    assert 0.0 <= gray.min() and gray.max() <= 1.0
    rgb = load_image(rgb_dir / "astro0.png", 3)
    assert rgb.shape == (3, 40, 40)
    assert not np.allclose(rgb[0], rgb[2])  # real colour channels, not replicated gray


def test_sampler_crops_augments_and_noise(image_dir):
    images = load_folder(image_dir, 1)
    sampler = PatchSampler(images, crop=32, sigma=25)
    noisy, clean, sigmas = sampler.batch(step_rng(0, 7), 64)
    assert noisy.shape == clean.shape == (64, 1, 32, 32) and noisy.dtype == np.float32
    assert np.all(sigmas == 25)
    assert abs(float((noisy - clean).std()) - 25 / 255) < 0.002
    assert noisy.min() < 0 or noisy.max() > 1  # noisy input is not clipped
    # every clean patch is one of the 8 dihedral transforms of a crop of some image
    def is_crop(patch):
        for img in images:
            for k in range(4):
                for flip in (False, True):
                    p = np.rot90(patch, -k, axes=(1, 2)) if not flip else np.rot90(patch[:, :, ::-1], -k, axes=(1, 2))
                    p = np.ascontiguousarray(p)
                    for t in range(img.shape[1] - 31):
                        for l in range(img.shape[2] - 31):
                            if img[0, t, l] == p[0, 0, 0] and np.array_equal(img[:, t : t + 32, l : l + 32], p):
                                return True
        return False

    assert all(is_crop(c) for c in clean[:4])
    # augmentation really happens: some patches are not plain crops
    plain = PatchSampler(images, crop=32, sigma=25, augment=False).batch(step_rng(0, 7), 64)[1]
    assert not np.array_equal(plain, clean)


def test_sampler_is_stateless_and_rank_dependent(image_dir):
    sampler = PatchSampler(load_folder(image_dir, 1), crop=32, sigma=25)
    a = sampler.batch(step_rng(3, 5, 0), 4)
    b = sampler.batch(step_rng(3, 5, 0), 4)
    c = sampler.batch(step_rng(3, 5, 1), 4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_sampler_blind_sigma_range(image_dir):
    sampler = PatchSampler(load_folder(image_dir, 1), crop=32, sigma_range=(0, 55))
    noisy, clean, sigmas = sampler.batch(step_rng(0, 0), 256)
    assert sigmas.min() >= 0 and sigmas.max() <= 55 and sigmas.std() > 10
    per_patch = (noisy - clean).reshape(256, -1).std(axis=1) * 255
    assert np.corrcoef(per_patch, sigmas)[0, 1] > 0.99


def test_sampler_rejects_small_images(image_dir):
    with pytest.raises(InvalidImageError, match="smaller than the 64px crop"):
        PatchSampler(load_folder(image_dir, 1), crop=64)


# ----------------------------------------------------------------------- schedule


def test_learning_rate_schedule():
    cfg = TrainConfig(data=".", out=".", steps=100, lr=1e-3, lr_final=0.01, warmup_steps=10, decay_fraction=0.4)
    lrs = [learning_rate(cfg, s) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert decay_start(cfg) == 60 and all(v == 1e-3 for v in lrs[10:61])
    assert all(a >= b for a, b in zip(lrs[60:], lrs[61:]))
    assert learning_rate(cfg, 100) == pytest.approx(1e-5)


def test_train_config_validation():
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(data=".", out=".", batch_size=0)
    with pytest.raises(ValueError, match="either"):
        TrainConfig(data=".", out=".", val=".", val_split=2)


# --------------------------------------------------------------------- training


def test_train_writes_checkpoints_and_learns(image_dir, tmp_path):
    cfg = cfg_for(image_dir, tmp_path / "run", steps=4, lr=3e-3, val_every=2)
    result = train(cfg, progress=False)
    assert result["finished"] and result["step"] == 4
    for name in (LAST_FILE, BEST_FILE, STATE_FILE, HISTORY_FILE, CURVE_FILE):
        assert (cfg.out / name).is_file(), name
    assert (cfg.out / CURVE_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((cfg.out / HISTORY_FILE).read_text())
    assert [h["step"] for h in history] == list(range(1, 5))
    assert history[-1]["train_loss_ema"] < history[0]["train_loss"]
    vals = [h["val_psnr"] for h in history if "val_psnr" in h]
    assert len(vals) == 2 and result["best_val_psnr"] == max(vals)
    config, meta = read_checkpoint_header(cfg.out / LAST_FILE)
    assert config == small_config()
    assert meta["sigma"] == 25 and meta["step"] == 4 and meta["train"]["crop"] == 32
    model = load_checkpoint(cfg.out / BEST_FILE)
    assert model.metadata["val_psnr"] == max(vals)
    # refuses to silently overwrite a run
    with pytest.raises(N3DeployError, match="--resume"):
        train(cfg, progress=False)


def test_resume_is_bit_identical(image_dir, tmp_path):
    """Stop after 2 steps (of a longer planned run), resume with the final length: same weights."""
    full = cfg_for(image_dir, tmp_path / "full", steps=4, decay_fraction=0.5, val_every=2)
    train(full, progress=False)

    part = cfg_for(image_dir, tmp_path / "part", steps=6, decay_fraction=0.5, val_every=2, stop_after=2)
    first = train(part, progress=False)
    assert first["step"] == 2 and not first["finished"]
    assert not (part.out / CURVE_FILE).exists()
    at_stop = weights(part.out / LAST_FILE)
    resumed = cfg_for(image_dir, tmp_path / "part", steps=4, decay_fraction=0.5, val_every=2)
    assert train(resumed, resume=True, progress=False)["finished"]

    a, b = weights(full.out / LAST_FILE), weights(part.out / LAST_FILE)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the comparison is not vacuous: the resumed steps really changed the weights
    assert not torch.equal(at_stop["blocks.0.conv1.weight"], b["blocks.0.conv1.weight"])
    ha = json.loads((full.out / HISTORY_FILE).read_text())
    hb = json.loads((part.out / HISTORY_FILE).read_text())
    assert [h["train_loss"] for h in ha] == [h["train_loss"] for h in hb]
    assert [h["lr"] for h in ha] == [h["lr"] for h in hb]


def test_bf16_training_runs_the_plan_convolutions_bf16_and_every_knn_fp32(image_dir, tmp_path, monkeypatch):
    """--precision bf16: the forward pass under autocast, except the KNN aggregations (float32 in and out
    of them, whatever autocast would pick); weights and checkpoints stay float32."""
    from n3deploy.model import KNNAggregation

    seen: dict[str, set] = {"knn": set(), "conv": set()}
    original = KNNAggregation.forward

    def spy(self, x, embed, log_temp):
        out = original(self, x, embed, log_temp)
        seen["knn"].add(out.dtype)
        return out

    monkeypatch.setattr(KNNAggregation, "forward", spy)
    conv_forward = torch.nn.Conv2d.forward

    def conv_spy(self, x):
        out = conv_forward(self, x)
        seen["conv"].add(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Conv2d, "forward", conv_spy)
    cfg = cfg_for(image_dir, tmp_path / "bf16", precision="bf16", steps=2, val_every=2)
    result = train(cfg, progress=False)
    assert result["finished"]
    assert torch.bfloat16 in seen["conv"] and seen["knn"] == {torch.float32}
    trained = weights(cfg.out / LAST_FILE)
    floats = [t for t in trained.values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in floats)
    fp32 = cfg_for(image_dir, tmp_path / "fp32", steps=2, val_every=2)
    train(fp32, progress=False)
    assert not torch.equal(weights(fp32.out / LAST_FILE)["blocks.0.conv1.weight"], trained["blocks.0.conv1.weight"])
    with pytest.raises(ValueError, match="precision"):
        cfg_for(image_dir, tmp_path / "x", precision="fp16")


def test_sigint_stops_between_steps_and_resumes_exactly(image_dir, tmp_path, monkeypatch):
    """SIGINT during step 2 finishes that step, checkpoints, returns; --resume matches a clean run."""
    import signal

    from n3deploy.training import trainer

    full = cfg_for(image_dir, tmp_path / "full", steps=3, val_every=10)
    train(full, progress=False)

    calls = []

    def rng_then_sigint(seed, step, rank=0):
        calls.append(step)
        if step == 1:
            signal.raise_signal(signal.SIGINT)
        return step_rng(seed, step, rank)

    cfg = cfg_for(image_dir, tmp_path / "stopped", steps=3, val_every=10)
    monkeypatch.setattr(trainer, "step_rng", rng_then_sigint)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the test run itself was started in the background
    result = train(cfg, progress=False)
    monkeypatch.undo()
    assert result["step"] == 2 and not result["finished"] and calls == [0, 1]
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    train(cfg, resume=True, progress=False)
    a, b = weights(full.out / LAST_FILE), weights(cfg.out / LAST_FILE)
    assert all(torch.equal(a[k], b[k]) for k in a)


def _poison_step(monkeypatch, bad_steps: set[int]) -> None:
    """Make the noisy batch of the given (0-based) steps NaN, as a numerically broken step would."""
    from n3deploy.training import trainer

    real = trainer.step_rng

    class Sampler(PatchSampler):
        def batch(self, rng, batch_size):
            noisy, clean, sigma = super().batch(rng, batch_size)
            if rng.step in bad_steps:
                noisy = np.full_like(noisy, np.nan)
            return noisy, clean, sigma

    class Tagged:  # numpy Generators do not take attributes: wrap one
        def __init__(self, rng, step):
            self._rng, self.step = rng, step

        def __getattr__(self, name):
            return getattr(self._rng, name)

    monkeypatch.setattr(trainer, "step_rng", lambda seed, step, rank=0: Tagged(real(seed, step, rank), step))
    monkeypatch.setattr(trainer, "PatchSampler", Sampler)


def test_a_non_finite_step_is_skipped_and_training_goes_on(image_dir, tmp_path, monkeypatch):
    _poison_step(monkeypatch, {1})
    cfg = cfg_for(image_dir, tmp_path / "run", steps=4)
    result = train(cfg, progress=False)
    assert result["finished"] and result["skipped_steps"] == 1
    history = json.loads((cfg.out / HISTORY_FILE).read_text())
    assert [h.get("skipped", False) for h in history] == [False, True, False, False]
    assert all(torch.isfinite(w).all() for w in weights(cfg.out / LAST_FILE).values())


def test_a_run_of_non_finite_steps_stops_with_a_clear_error(image_dir, tmp_path, monkeypatch):
    _poison_step(monkeypatch, set(range(100)))
    with pytest.raises(N3DeployError, match="not finite for 21 steps in a row"):
        train(cfg_for(image_dir, tmp_path / "run", steps=30, val_every=100), progress=False)


def test_resume_refuses_changed_settings(image_dir, tmp_path):
    cfg = cfg_for(image_dir, tmp_path / "run", steps=6, stop_after=5, decay_fraction=0.5, val_every=3)
    train(cfg, progress=False)
    with pytest.raises(N3DeployError, match="lr"):
        train(cfg_for(image_dir, cfg.out, steps=6, decay_fraction=0.5, lr=5e-4), resume=True, progress=False)
    # steps 3 and 4 were taken on the cosine decay (it starts at step 3): the length can no longer change
    with pytest.raises(N3DeployError, match="before the learning-rate decay"):
        train(cfg_for(image_dir, cfg.out, steps=12, decay_fraction=0.5), resume=True, progress=False)
    with pytest.raises(N3DeployError, match="no train_state"):
        train(cfg_for(image_dir, tmp_path / "empty"), resume=True, progress=False)


def test_init_from_starts_a_new_run_from_a_checkpoints_weights(image_dir, tmp_path):
    first = cfg_for(image_dir, tmp_path / "first", steps=2)
    train(first, progress=False)
    start = weights(first.out / LAST_FILE)
    # zero steps are impossible, so check the starting point through a run that cannot move:
    # with lr 1e-30 one Adam step moves each weight by at most ~1e-30
    frozen = cfg_for(image_dir, tmp_path / "frozen", steps=1, lr=1e-30, init_from=first.out / LAST_FILE)
    train(frozen, progress=False)
    after = weights(frozen.out / LAST_FILE)
    for key, value in start.items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue  # batch-norm statistics do move in a training step
        torch.testing.assert_close(after[key], value, rtol=0, atol=1e-20, msg=key)
    _, meta = read_checkpoint_header(frozen.out / LAST_FILE)
    assert meta["train"]["init_from"] == str(first.out / LAST_FILE)
    other = dataclasses.replace(small_config(), dncnn_depth=4)
    with pytest.raises(N3DeployError, match="only a narrower dncnn_features"):
        train(cfg_for(image_dir, tmp_path / "mismatch", model_config=other, init_from=first.out / LAST_FILE), progress=False)


def test_widening_keeps_the_function_and_breaks_the_symmetry():
    from n3deploy.model import N3Net
    from n3deploy.training.widen import widen_dncnn

    torch.manual_seed(0)
    narrow = N3Net(small_config())
    for module in narrow.modules():  # trained-looking batch-norm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    wide = widen_dncnn(narrow, 13, seed=1)
    assert wide.config == dataclasses.replace(small_config(), dncnn_features=13)
    assert sum(p.numel() for p in wide.parameters()) > sum(p.numel() for p in narrow.parameters())
    x = torch.rand(2, 1, 24, 30)
    with torch.no_grad():
        for mode in (False, True):  # eval: running statistics; training: batch statistics
            narrow.train(mode), wide.train(mode)
            torch.testing.assert_close(wide(x), narrow(x), rtol=0, atol=1e-5)
    # a copied channel's outgoing weights differ from its source's: they can learn apart
    w = wide.blocks[0].conv2.weight[:, : small_config().dncnn_features]
    assert not torch.allclose(w, narrow.blocks[0].conv2.weight)
    with pytest.raises(ValueError, match="fewer"):
        widen_dncnn(narrow, 4)


def _started_from_a_trained_run(image_dir: Path, tmp_path: Path, model_config: N3NetConfig) -> tuple[Path, Path]:
    """A 2-step run of the small model, then a run of ``model_config`` ``--init-from`` it that
    cannot move (one step at lr 1e-30): the two runs' last checkpoints."""
    first = cfg_for(image_dir, tmp_path / "first", steps=2)
    train(first, progress=False)
    frozen = cfg_for(image_dir, tmp_path / "frozen", steps=1, lr=1e-30, model_config=model_config, init_from=first.out / LAST_FILE)
    train(frozen, progress=False)
    return first.out / LAST_FILE, frozen.out / LAST_FILE


def test_init_from_a_narrower_checkpoint_widens_it(image_dir, tmp_path):
    wide_config = dataclasses.replace(small_config(), dncnn_features=12)
    first, frozen = _started_from_a_trained_run(image_dir, tmp_path, wide_config)
    narrow, wide = load_checkpoint(first), load_checkpoint(frozen)
    assert wide.config == wide_config
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():  # batch statistics: the running ones moved in the one step
        torch.testing.assert_close(wide.train()(x), narrow.train()(x), rtol=0, atol=1e-5)


def test_init_from_a_checkpoint_of_another_search_window_carries_its_weights_over(image_dir, tmp_path):
    """The window has no weights: a window-7 checkpoint starts a window-5 run (and keeps its weights)."""
    first, frozen = _started_from_a_trained_run(image_dir, tmp_path, dataclasses.replace(small_config(), window=5))
    assert load_checkpoint(frozen).config.window == 5
    start, after = weights(first), weights(frozen)
    for key, value in start.items():
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            torch.testing.assert_close(after[key], value, rtol=0, atol=1e-20, msg=key)


def test_train_rgb(rgb_dir, tmp_path):
    cfg = TrainConfig(
        data=rgb_dir, out=tmp_path / "rgb", channels=3, model_config=small_config(3), crop=32, batch_size=2,
        steps=1, warmup_steps=0, threads=2,
    )
    train(cfg, progress=False)
    model = load_checkpoint(cfg.out / LAST_FILE)
    assert model.config.in_channels == 3
    assert not (cfg.out / BEST_FILE).exists()  # no validation data -> no "best"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_gloo_processes(image_dir, tmp_path):
    """`torchrun --nproc-per-node 2 -m n3deploy.cli train` on CPU: DDP over gloo, replicas in sync."""
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        "-m", "n3deploy.cli", "train", "--data", str(image_dir), "--out", str(out), "--preset", "tiny",
        "--crop", "32", "--batch-size", "2", "--steps", "2", "--warmup-steps", "1", "--val-split", "1",
        "--no-progress", "--threads", "1",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "finished at step 2" in proc.stdout
    _, meta = read_checkpoint_header(out / LAST_FILE)
    assert meta["world_size"] == 2 and meta["step"] == 2


def test_cli_train_help_has_example():
    proc = subprocess.run(
        [sys.executable, "-m", "n3deploy.cli", "train", "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0 and "torchrun" in proc.stdout and "--resume" in proc.stdout
    # shell continuation lines are shown as typed (a backslash, then the next line)
    assert "best.safetensors \\\n      --lr 5e-4" in proc.stdout


def _train_config_from_cli(*argv: str) -> TrainConfig:
    """The TrainConfig that ``n3deploy train --data d --out o ARGV...`` describes."""
    import argparse

    from n3deploy.commands import train as train_command

    parser = argparse.ArgumentParser()
    train_command.register(parser.add_subparsers())
    return train_command.config_from_args(parser.parse_args(["train", "--data", "d", "--out", "o", *argv]))


def test_cli_dncnn_features_widens_the_preset():
    cfg = _train_config_from_cli("--preset", "tiny", "--dncnn-features", "48")
    assert cfg.build_model_config() == dataclasses.replace(N3NetConfig.tiny(), dncnn_features=48)
    plain = _train_config_from_cli()
    assert plain.model_config is None and plain.build_model_config() == N3NetConfig.tiny()


def test_cli_window_changes_the_presets_search_window():
    cfg = _train_config_from_cli("--window", "11", "--dncnn-features", "48")
    assert cfg.build_model_config() == dataclasses.replace(N3NetConfig.tiny(), window=11, dncnn_features=48)
