"""Training engine: end-to-end run, exact kill-and-resume, atomic checkpoints, schedule,
sampler, config files, fine-tuning from .pth, evaluation conventions.

Tiny models (8 features, 2 ResBlocks, 2 pyramid levels) on small crops of the photos
that ship with scikit-image, so the whole file runs in seconds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image
from tiny_model import TINY

from tri_panet.data import add_gaussian_noise, sample_generator
from tri_panet.evaluation import evaluate, prepare_eval_pairs
from tri_panet.models import build_model, create, load_weights, read_metadata, save_weights
from tri_panet.tasks import get_task, make_degradation
from tri_panet.training import StepBatchSampler, TrainConfig, Trainer, find_latest, lr_factor
from tri_panet.training import checkpoint as ckpt


def _photo(name: str, top: int, left: int, size: int) -> np.ndarray:
    from skimage import data

    return getattr(data, name)()[top : top + size, left : left + size, :3]


@pytest.fixture
def images(tmp_path):
    """Two 40x40 training photos and one 24x24 validation photo."""
    train, val = tmp_path / "train", tmp_path / "val"
    train.mkdir()
    val.mkdir()
    Image.fromarray(_photo("astronaut", 100, 150, 40)).save(train / "a.png")
    Image.fromarray(_photo("coffee", 60, 120, 40)).save(train / "c.png")
    Image.fromarray(_photo("chelsea", 50, 100, 24)).save(val / "v.png")
    return train, val


def _config(images, out, **kw) -> TrainConfig:
    train, val = images
    base = dict(
        task="denoise",
        model="tiny-denoise",
        model_args=dict(TINY),
        data=[str(train)],
        steps=4,
        batch_size=2,
        patch_size=16,
        lr=1e-3,
        warmup_steps=0,  # the tests' own schedule, not the library's defaults (tuned for long runs)
        grad_clip=0.0,
        ckpt_every=2,
        log_every=1,
        val_every=0,
        progress=False,
        out=str(out),
        threads=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_train_end_to_end(images, tmp_path):
    out = tmp_path / "run"
    cfg = _config(images, out, steps=3, val=str(images[1]), val_every=2)
    trainer = Trainer(cfg, command="pytest")
    result = trainer.fit()
    assert result["step"] == 3
    losses = [h["loss"] for h in trainer.history if "loss" in h]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    vals = [h for h in trainer.history if "val_psnr" in h]
    assert [v["step"] for v in vals] == [2, 3]  # every 2 steps and at the end
    assert all(math.isfinite(v["val_psnr"]) for v in vals)

    # final weights: loadable from their metadata alone, equal to the trained model
    weights = out / "model.safetensors"
    model = load_weights(weights)
    for k, v in trainer.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v.cpu(), rtol=0, atol=0)
    meta = read_metadata(weights)
    assert meta["tri_panet.model"] == "tiny-denoise"
    assert meta["tri_panet.train.steps"] == "3"
    assert meta["tri_panet.train.command"] == "pytest"
    assert json.loads(meta["tri_panet.train.config"])["patch_size"] == 16

    # checkpoints: step 2 and the final step 3, "latest" points at 3, each loadable
    latest = find_latest(out / "checkpoints")
    assert latest.name == "step_00000003"
    assert [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")] == [2, 3]
    load_weights(latest / "model.safetensors")
    # the run folder keeps its resolved config, which reads back to the same settings
    again = TrainConfig.from_toml(out / "config.toml")
    assert again.to_dict() == cfg.to_dict()
    # the log holds one JSON record per logged step and per validation
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert len(lines) == 5


def test_trainer_is_ready_before_fit(images, tmp_path):
    """The constructor prepares the run: validation and checkpoints work before fit()."""
    trainer = Trainer(_config(images, tmp_path / "run", steps=1, val=str(images[1])))
    assert trainer.step == 0 and trainer.wall_time() >= 0
    assert (tmp_path / "run" / "config.toml").is_file()
    assert math.isfinite(trainer.validate()["model_psnr"])
    assert trainer.save_checkpoint().name == "step_00000000"
    assert trainer.fit()["step"] == 1


def test_loss_decreases(images, tmp_path):
    """Strong noise on one image: the identity-initialised model learns to smooth it, so
    the L1 loss falls well below the noise's mean absolute value (0.8 sigma / 255)."""
    train = tmp_path / "one"
    train.mkdir()
    Image.fromarray(_photo("coffee", 100, 200, 16)).save(train / "flat.png")
    cfg = _config((train, None), tmp_path / "run", data=[str(train)], sigma=50.0, steps=12, lr=5e-3, ckpt_every=100)
    trainer = Trainer(cfg)
    trainer.fit()
    losses = [h["loss"] for h in trainer.history if "loss" in h]
    noise_l1 = math.sqrt(2 / math.pi) * 50 / 255  # E|n| of the identity model's error
    assert abs(losses[0] - noise_l1) < 0.02
    assert np.mean(losses[-3:]) < np.mean(losses[:2]) - 0.015  # measured: 0.024-0.029 over seeds 0-2


class _Killed(Exception):
    pass


def test_kill_and_resume_is_exact(images, tmp_path):
    """Run A: 4 steps. Run B: killed after step 3 (its last checkpoint is step 2), then
    resumed to step 4. Their final parameters are bit-identical."""
    a = Trainer(_config(images, tmp_path / "a"))
    a.fit()

    def kill(trainer, step):
        if step == 3:
            raise _Killed

    b = Trainer(_config(images, tmp_path / "b"), hooks=[kill])
    with pytest.raises(_Killed):
        b.fit()
    assert find_latest(tmp_path / "b" / "checkpoints").name == "step_00000002"
    assert not (tmp_path / "b" / "model.safetensors").exists()
    after_kill = _params(b.model)

    c = Trainer(_config(images, tmp_path / "b", resume=True))
    c.fit()
    assert c.history[0]["step"] == 3  # continued, did not start over
    pa, pc = _params(a.model), _params(c.model)
    assert pa.keys() == pc.keys()
    for k in pa:
        assert torch.equal(pa[k], pc[k]), k
    # the oracle can fail: the state at the kill differs from the end state
    assert any(not torch.equal(after_kill[k], pa[k]) for k in pa)


def test_a_run_in_stages_equals_one_run(images, tmp_path):
    """--stop-at: a run of 5 steps stopped after step 3 (off the checkpoint grid) and
    resumed ends bit-identical to one uninterrupted run, validation included."""
    staged = dict(steps=5, val=str(images[1]), val_every=2)
    a = Trainer(_config(images, tmp_path / "a", **staged))
    a.fit()
    first = Trainer(_config(images, tmp_path / "b", stop_at=3, **staged)).fit()
    assert first["step"] == 3 and first["weights"] is None
    assert Path(first["checkpoint"]).name == "step_00000003"
    assert not (tmp_path / "b" / "model.safetensors").exists()
    done = Trainer(_config(images, tmp_path / "b", resume=True, **staged)).fit()
    assert done["step"] == 5 and Path(done["weights"]).exists()
    pa, pb = _params(a.model), load_weights(done["weights"]).state_dict()
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    with pytest.raises(ValueError, match="stop_at must be at most steps"):
        _config(images, tmp_path / "c", steps=4, stop_at=5).validate()


def test_resume_without_checkpoint_starts_fresh_and_refuses_mixing(images, tmp_path):
    out = tmp_path / "run"
    Trainer(_config(images, out, steps=2, resume=True)).fit()  # nothing to resume: starts at 0
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(_config(images, out, steps=2)).fit()


def test_checkpoint_write_is_atomic(images, tmp_path, monkeypatch):
    """A crash while writing a checkpoint leaves the previous one and `latest` intact."""
    out = tmp_path / "run"
    trainer = Trainer(_config(images, out, steps=2, ckpt_every=1))
    trainer.fit()
    root = out / "checkpoints"
    assert (root / "latest").read_text().strip() == "step_00000002"

    import safetensors.torch

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    trainer.step = 3
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint()
    assert (root / "latest").read_text().strip() == "step_00000002"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000001", "step_00000002"]
    assert find_latest(root).name == "step_00000002"


def test_checkpoint_state_roundtrip(images, tmp_path):
    """Optimiser, scheduler and RNG states come back exactly; no pickle involved."""
    model = create("tiny-denoise", **TINY)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s)
    model(torch.rand(1, 3, 8, 8)).abs().mean().backward()
    opt.step()
    sched.step()
    extra = {"nested": {1: (2.5, "x"), "t": torch.arange(3)}, "arr": np.arange(4, dtype=np.uint32)}
    folder = ckpt.save_checkpoint(tmp_path / "ck", 7, model, opt, sched, extra=extra)
    rng_before = torch.rand(5)  # advance the generator; loading must rewind it

    model2 = create("tiny-denoise", **TINY)
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-3)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 0.5**s)
    state = ckpt.load_checkpoint(folder, model2, opt2, sched2)
    assert state["step"] == 7
    assert torch.equal(torch.rand(5), rng_before)
    assert state["extra"]["nested"][1] == (2.5, "x")
    assert torch.equal(state["extra"]["nested"]["t"], torch.arange(3))
    assert state["extra"]["arr"].dtype == np.uint32 and state["extra"]["arr"].tolist() == [0, 1, 2, 3]
    assert sched2.state_dict()["last_epoch"] == 1 and opt2.param_groups[0]["lr"] == pytest.approx(5e-4)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for i in s1:
        for k in s1[i]:
            assert torch.equal(torch.as_tensor(s1[i][k]), torch.as_tensor(s2[i][k]))


def test_lr_schedule():
    cfg = TrainConfig(steps=100, lr=1e-3, lr_min=1e-5, warmup_steps=10)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    mid = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 45 / 90))
    assert lr_factor(55, cfg) == pytest.approx(mid)
    assert lr_factor(100, cfg) == pytest.approx(0.01)
    step = TrainConfig(steps=100, schedule="step", lr_step=30, lr_gamma=0.1, warmup_steps=0)
    assert [lr_factor(s, step) for s in (0, 29, 30, 61)] == pytest.approx([1, 1, 0.1, 0.01])
    assert lr_factor(150, TrainConfig(schedule="constant")) == 1.0
    assert lr_factor(49, TrainConfig()) == pytest.approx(0.5)  # the default: 100 warm-up steps


def test_step_batch_sampler():
    full = StepBatchSampler(12, 4, seed=3, start=0, end=6)
    r0 = StepBatchSampler(12, 2, seed=3, start=0, end=6, rank=0, world_size=2)
    r1 = StepBatchSampler(12, 2, seed=3, start=0, end=6, rank=1, world_size=2)
    for s, (b, x, y) in enumerate(zip(full, r0, r1)):
        assert b == x + y  # the ranks split the global batch
        assert all(e == s // 3 for e, _ in b)
    epoch0 = [i for b in list(full)[:3] for _, i in b]
    assert sorted(epoch0) == list(range(12))  # every sample once per epoch
    assert list(StepBatchSampler(12, 4, seed=3, start=4, end=6)) == list(full)[4:]  # resumable
    assert list(StepBatchSampler(12, 4, seed=4, start=0, end=3)) != list(full)[:3]
    with pytest.raises(ValueError, match="multiple"):
        StepBatchSampler(10, 4, seed=0, start=0, end=1)


def test_config_toml_and_validation(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('task = "denoise"\nsteps = 7\nsigma_range = [5, 50]\n[model_args]\nn_feats = 16\n')
    cfg = TrainConfig.from_toml(path, {"steps": 9})
    assert cfg.steps == 9 and cfg.sigma_range == [5, 50] and cfg.model_args == {"n_feats": 16}
    assert cfg.degradation_kwargs() == {"sigma_range": (5.0, 50.0), "clip": False}
    written = tmp_path / "written.toml"
    written.write_text(cfg.to_toml())
    assert TrainConfig.from_toml(written).to_dict() == cfg.to_dict()
    with pytest.raises(ValueError, match="unknown setting"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(TypeError, match="steps"):
        TrainConfig(steps="3").validate()
    with pytest.raises(ValueError, match="does not apply"):
        TrainConfig(task="jpeg", sigma=25).validate()
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = = 3")
    with pytest.raises(ValueError, match="not valid TOML"):
        TrainConfig.from_toml(bad)


def test_charbonnier_loss_is_a_smooth_l1():
    from tri_panet.training.losses import CHARBONNIER_EPS, LOSSES

    out, target = torch.tensor([0.0, 0.5, 0.1]), torch.tensor([0.0, 0.2, 0.1])
    assert LOSSES["l1"](out, target).item() == pytest.approx(0.1)
    want = (2 * CHARBONNIER_EPS + math.sqrt(0.09 + CHARBONNIER_EPS**2)) / 3  # eps at d = 0, ~|d| elsewhere
    assert LOSSES["charbonnier"](out, target).item() == pytest.approx(want)
    out.requires_grad_(True)
    LOSSES["charbonnier"](out, target).backward()
    assert out.grad[0] == 0 and torch.isfinite(out.grad).all()  # smooth at 0, where L1 has a kink
    with pytest.raises(ValueError, match="loss must be one of l1, charbonnier"):
        TrainConfig(loss="l2").validate()


def test_build_model_from_official_pth(tmp_path):
    """An official-style .pth (a state dict, maybe under "state_dict" with a "module."
    prefix) initialises the model; a .pth holding other objects is refused."""
    src = create("tiny-denoise", **TINY)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))
    pth = tmp_path / "official.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, pth)
    with pytest.raises(ValueError, match="--model"):
        build_model(None, weights=pth)
    model = build_model("tiny-denoise", weights=pth, model_args=TINY)
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": src.state_dict(), "obj": _Killed()}, evil)
    with pytest.raises(ValueError, match="refusing"):
        build_model("tiny-denoise", weights=evil, model_args=TINY)
    with pytest.raises(ValueError, match="task"):
        build_model("tiny-denoise", model_args=TINY, task="sr")


def test_init_from_warm_starts_sr_x3_from_x2(images, tmp_path, capsys):
    """``init_from`` copies every tensor whose name and shape fit (an x2 SR body into x3),
    leaves the rest (the upsampler) as initialised and logs their names; it refuses a
    file with nothing that fits and a config that also gives ``weights``."""
    torch.manual_seed(3)
    x2 = create("tiny-sr-x2", **TINY)
    with torch.no_grad():
        for p in x2.parameters():
            p.add_(torch.randn_like(p))
    src = save_weights(x2, tmp_path / "x2.safetensors")
    cfg = _config(images, tmp_path / "run", task="sr", model="tiny-sr-x3", init_from=str(src), steps=1, patch_size=6)
    trainer = Trainer(cfg)
    own, file = trainer.model.state_dict(), x2.state_dict()
    kept = [k for k in own if k not in file or file[k].shape != own[k].shape]
    assert kept and all(k.startswith("tail") for k in kept)
    for k in own:
        if k not in kept:
            assert torch.equal(own[k], file[k]), k
    assert all(k in trainer.warm_start for k in kept)
    trainer.fit()
    assert "warm start from" in capsys.readouterr().out
    other = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"head.0.weight": torch.zeros(1)}, str(other))
    with pytest.raises(ValueError, match="no tensor fits"):
        Trainer(_config(images, tmp_path / "r2", init_from=str(other)))
    with pytest.raises(ValueError, match="init_from"):
        _config(images, tmp_path / "r3", init_from=str(src), weights=str(src)).validate()


def test_resolve_paths_makes_every_path_setting_absolute(tmp_path, monkeypatch):
    """data, val, weights, init_from and out (its default too) become absolute against the
    working folder; unset ones stay None."""
    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(data=["d"], val="v", init_from="x2.safetensors", out="o")
    cfg.resolve_paths()
    assert cfg.data == [str(tmp_path / "d")] and cfg.val == str(tmp_path / "v")
    assert cfg.init_from == str(tmp_path / "x2.safetensors") and cfg.out == str(tmp_path / "o")
    assert cfg.weights is None
    default = TrainConfig(data=["d"], model="fast-jpeg", weights="w.pth")
    default.resolve_paths()
    assert default.weights == str(tmp_path / "w.pth") and default.out == str(tmp_path / "runs" / "fast-jpeg")


def test_evaluate_identity_model_matches_skimage(images):
    """An untrained tiny model is the identity (zero-initialised tail), so its PSNR equals
    the noisy input's, which equals skimage's PSNR of the same noisy image."""
    from skimage.metrics import peak_signal_noise_ratio

    from tri_panet.data.io import list_images, load_image

    train, _ = images
    paths = list_images(train)
    deg = make_degradation("denoise", sigma=30.0)
    pairs = prepare_eval_pairs(paths, deg, seed=5)
    model = create("tiny-denoise", **TINY)
    res = evaluate(model, pairs, "denoise")
    for i, (p, row) in enumerate(zip(paths, res["rows"])):
        clean = load_image(p)
        noisy = add_gaussian_noise(clean, 30.0, generator=sample_generator(5, 0, i))
        # restore() clamps to [0, 1]; the model's output is the clamped noisy image
        want_model = peak_signal_noise_ratio(clean.double().numpy(), noisy.clamp(0, 1).double().numpy(), data_range=1)
        want_input = peak_signal_noise_ratio(clean.double().numpy(), noisy.double().numpy(), data_range=1)
        assert row["model_psnr"] == pytest.approx(want_model, abs=1e-4)
        assert row["input_psnr"] == pytest.approx(want_input, abs=1e-6)
    assert res["mean"]["model_psnr"] == pytest.approx(np.mean([r["model_psnr"] for r in res["rows"]]))
    assert get_task("sr").metric_convention(3) == {"crop_border": 3, "y_channel": True}
    assert get_task("jpeg").metric_convention() == {"crop_border": 0, "y_channel": True}
    assert get_task("demosaic").metric_convention() == {"crop_border": 0, "y_channel": False}


def test_bf16_autocast_and_grad_clip_on_cpu(images, tmp_path):
    trainer = Trainer(_config(images, tmp_path / "run", steps=2, amp="bf16", grad_clip=0.01))
    trainer.fit()
    assert all(math.isfinite(h["loss"]) for h in trainer.history)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # autocast keeps fp32 master weights
    with pytest.raises(ValueError, match="CUDA"):
        Trainer(_config(images, tmp_path / "fp16", amp="fp16", device="cpu")).fit()


@pytest.mark.cuda
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_on_gpu(images, tmp_path, amp):
    """fp16 goes through the GradScaler (and unscale_ before clipping); both stay finite,
    write a checkpoint whose scaler state resumes."""
    cfg = _config(
        images, tmp_path / amp, steps=2, amp=amp, grad_clip=1.0, device="cuda", val=str(images[1]), val_every=0
    )
    trainer = Trainer(cfg)
    result = trainer.fit()
    assert math.isfinite(result["loss"]) and math.isfinite(result["val"]["val_psnr"])
    resumed = Trainer(_config(images, tmp_path / amp, steps=3, amp=amp, grad_clip=1.0, device="cuda", resume=True))
    assert resumed.fit()["step"] == 3
