"""The command line as a new user meets it (issue 12): nothing lost, nothing half-done, one
line and exit status 2 for every user error, resources estimated before they are spent.

Temporary folders, 16-32 px images and 1-2 training steps of a tiny model keep it quick.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from test_cli import _one_line_error, _run
from tiny_model import TINY

from tri_panet.cli import main
from tri_panet.models import read_metadata

TRAIN = (
    "task = 'denoise'\nsteps = 2\nbatch_size = 2\npatch_size = 16\nlr = 1e-3\nthreads = 1\nprogress = false\n"
    "ckpt_every = 1\nlog_every = 1\nwarmup_steps = 0\ngrad_clip = 0.0\n"  # the tests' schedule, not the defaults
)
MODEL_ARGS = "[model_args]\nn_feats = 8\nn_resblocks = 2\nscales = [1.0, 0.5]\n"


def _photo(i: int, size: int = 24) -> np.ndarray:
    from skimage import data

    return [data.astronaut, data.coffee, data.chelsea][i]()[100 : 100 + size, 100 : 100 + size, :3]


@pytest.fixture
def photos(tmp_path):
    """A folder of two 24 x 24 photos."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, name in enumerate(("a.png", "b.png")):
        Image.fromarray(_photo(i)).save(folder / name)
    return folder


def _png_header(path, width: int, height: int) -> None:
    """A PNG that declares width x height RGB pixels but holds almost no data: its header
    reads, its decode fails (nothing that refuses it from the header allocates the image)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _train(tmp_path, capsys, *extra, config: str = TRAIN + MODEL_ARGS, data=None):
    cfg = tmp_path / "c.toml"
    cfg.write_text(config)
    return _run(["train", "--config", cfg, "--data", data, *extra], capsys)


# --------------------------------------------------------------------------- 1-2: folder runs


def test_folder_output_name_collision_is_refused_before_any_work(tmp_path, weights, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    Image.fromarray(_photo(0)).save(folder / "x.png")
    Image.fromarray(_photo(1)).save(folder / "x.jpg")
    for force in ([], ["--force"]):
        code, _, err = _run(["restore", folder, "-o", out, "--weights", weights, *force], capsys)
        assert code == 2
        _one_line_error(err, "x.jpg", "x.png", "both")
        assert not out.exists()


def test_unreadable_image_in_a_folder_fails_before_any_output(tmp_path, weights, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for i, name in enumerate(("a.png", "b.png", "c.png")):
        Image.fromarray(_photo(i)).save(folder / name)
    _truncate(folder / "b.png")
    code, _, err = _run(["restore", folder, "-o", out, "--weights", weights], capsys)
    assert code == 2
    _one_line_error(err, "b.png", "truncated")
    assert not out.exists()  # no result, no empty folder


def test_skip_existing_resumes_a_folder_run_and_stale_temporaries_go(photos, tmp_path, weights, capsys):
    out = tmp_path / "out"
    assert _run(["restore", photos, "-o", out, "--weights", weights], capsys)[0] == 0
    kept = (out / "a.png").read_bytes()
    (out / "b.png").unlink()  # as if killed before b.png was written, its temporary left behind
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / f".b.png.{dead.pid}.x1y2.tmp"
    stale.write_bytes(b"half an image")
    code, text, err = _run(["restore", photos, "-o", out, "--weights", weights, "--skip-existing"], capsys)
    assert code == 0 and "skipping 1 image" in err and "b.png" in text
    assert (out / "a.png").read_bytes() == kept and (out / "b.png").is_file()
    assert not stale.exists()
    code, _, err = _run(["restore", photos, "-o", out, "--weights", weights], capsys)
    assert code == 2
    _one_line_error(err, "--force", "--skip-existing")


# --------------------------------------------------------------------------- 3-5: training runs


def test_resume_falls_back_from_a_damaged_latest_checkpoint(photos, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tmp_path, capsys, "--out", out, data=photos)[0] == 0
    _truncate(out / "checkpoints" / "step_00000002" / "state.safetensors")
    code, text, _ = _train(tmp_path, capsys, "--out", out, "--resume", "--steps", 3, data=photos)
    assert code == 0
    assert "skipping damaged checkpoint" in text and "step_00000002" in text
    assert "resumed from" in text and "step_00000001 at step 1" in text


def test_unreadable_training_image_fails_before_step_one(photos, tmp_path):
    from tri_panet.training import TrainConfig, Trainer

    Image.fromarray(_photo(2)).save(photos / "c.png")
    _truncate(photos / "c.png")
    cfg = TrainConfig(
        model_args=dict(TINY),
        data=[str(photos)],
        steps=2,
        batch_size=1,
        patch_size=16,
        out=str(tmp_path / "run"),
        progress=False,
        threads=1,
    )
    with pytest.raises(ValueError, match=r"1 of 3 training images cannot be read: .*c\.png"):
        Trainer(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resume_cuts_the_log_back_and_a_used_folder_needs_resume_or_force(photos, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tmp_path, capsys, "--out", out, "--steps", 3, "--ckpt-every", 2, data=photos)[0] == 0
    # as if killed after step 3 had been logged but before its checkpoint
    import shutil

    shutil.rmtree(out / "checkpoints" / "step_00000003")
    (out / "checkpoints" / "latest").write_text("step_00000002\n")
    (out / "model.safetensors").unlink()
    assert _train(tmp_path, capsys, "--out", out, "--steps", 3, "--ckpt-every", 2, "--resume", data=photos)[0] == 0
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]

    # a run killed before its first checkpoint leaves a log and a config: no silent append
    young = tmp_path / "young"
    young.mkdir()
    (young / "log.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    code, _, err = _train(tmp_path, capsys, "--out", young, data=photos)
    assert code == 2
    _one_line_error(err, "--resume", "--force")
    broken = tmp_path / "broken"
    broken.mkdir()
    Image.fromarray(_photo(0)).save(broken / "a.png")
    _truncate(broken / "a.png")
    assert _train(tmp_path, capsys, "--out", young, "--force", data=broken)[0] == 2
    assert (young / "log.jsonl").is_file()  # a failed check deletes nothing, even with --force
    assert _train(tmp_path, capsys, "--out", young, "--force", data=photos)[0] == 0
    assert [json.loads(x)["step"] for x in (young / "log.jsonl").read_text().splitlines()] == [1, 2]


# --------------------------------------------------------------------------- 6-11: one line, status 2


def _bad_weights(tmp_path, weights) -> dict:
    """Weights files a user may hand over by mistake, by what is wrong with them."""
    tensors, meta = load_file(str(weights)), read_metadata(weights)
    files = {"random": os.urandom(1000), "empty": b"", "truncated": weights.read_bytes()[:500]}
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name}.safetensors"
        paths[name].write_bytes(data)
    for name, config in (
        ("config-not-json", "{n_feats: 8"),
        ("config-a-list", "[8]"),
        ("config-wrong-type", '{"n_feats": "wide"}'),
    ):
        paths[name] = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(paths[name]), metadata={**meta, "tri_panet.config": config})
    paths["random-pth"] = tmp_path / "random.pth"
    paths["random-pth"].write_bytes(os.urandom(1000))
    paths["folder"] = tmp_path
    return paths


NEEDLES = {
    "random": "not a readable .safetensors",
    "empty": "not a readable .safetensors",
    "truncated": "not a readable .safetensors",
    "config-not-json": "tri_panet.config is not JSON",
    "config-a-list": "tri_panet.config must be a JSON object",
    "config-wrong-type": "n_feats",
    "random-pth": "not a PyTorch checkpoint",
    "folder": "is a folder",
}


def test_bad_weights_files_are_one_line_errors(photos, tmp_path, weights, capsys):
    paths = _bad_weights(tmp_path, weights)
    for kind, path in paths.items():
        model = ["--model", "tiny-denoise"] if kind == "random-pth" else []
        code, _, err = _run(["restore", photos / "a.png", "-o", tmp_path / "o.png", "--weights", path, *model], capsys)
        assert code == 2, kind
        _one_line_error(err, NEEDLES[kind], path.name)
    bad = paths["truncated"]
    for argv in (
        ["eval", "--task", "denoise", "--data", photos, "--baseline", "none"],
        ["demo", "-o", tmp_path, "--size", 32],
        ["finetune", "--data", photos, "--out", tmp_path / "ft", "--steps", 1],
    ):
        code, _, err = _run([*argv, "--weights", bad], capsys)
        assert code == 2, argv[0]
        _one_line_error(err, "not a readable .safetensors", "truncated.safetensors")


def test_decompression_bomb_header_is_refused_with_its_size(tmp_path, weights, capsys, monkeypatch):
    bomb = tmp_path / "bomb.png"
    for width, height in ((20000, 20000), (10000, 9000)):  # far above the 89.5 Mpx guard, and just above it
        _png_header(bomb, width, height)
        code, _, err = _run(["restore", bomb, "-o", tmp_path / "o.png", "--weights", weights], capsys)
        assert code == 2
        _one_line_error(err, f"{width} x {height}", "decompression", "--allow-large-images")
    # allowed on purpose (and memory to spare), the header passes: what fails now is the missing data
    monkeypatch.setattr("tri_panet.cost.available_memory", lambda device: 2**40)
    code, _, err = _run(
        ["restore", bomb, "-o", tmp_path / "o.png", "--weights", weights, "--allow-large-images"], capsys
    )
    assert code == 2
    _one_line_error(err, "truncated")


@pytest.mark.parametrize("device", ["tpu", "mps", "meta", "cuda:7"])
def test_devices_the_machine_lacks_are_one_line_errors(photos, tmp_path, weights, device, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with one GPU, whatever runs this
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    code, _, err = _run(
        ["restore", photos / "a.png", "-o", tmp_path / "o.png", "--weights", weights, "--device", device], capsys
    )
    assert code == 2
    _one_line_error(err, device)


@pytest.mark.parametrize(
    "setting, needle",
    [
        ('[model_args]\nn_feats = "wide"\n', "n_feats"),
        ("[model_args]\nn_fets = 8\n", "n_fets"),
        ("val = 5\n", "val must be a string"),
        ('betas = ["a", "b"]\n', "betas[0] must be a number"),
        ('resume = "no"\n', "resume must be true or false"),
        ('clip_noise = "false"\n', "clip_noise must be true or false"),
    ],
)
def test_config_types_are_checked_strictly(photos, tmp_path, setting, needle, capsys):
    code, _, err = _train(tmp_path, capsys, "--out", tmp_path / "run", config=TRAIN + setting, data=photos)
    assert code == 2
    _one_line_error(err, needle)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_divergence_is_one_line_saying_what_was_saved_and_what_to_try(photos, tmp_path, capsys):
    code, _, err = _train(tmp_path, capsys, "--out", tmp_path / "run", "--lr", 1e6, "--steps", 4, data=photos)
    assert code == 2
    _one_line_error(err, "diverged", "at step", "step_00000002", "--lr")


def test_outputs_that_cannot_be_used_fail_before_the_work(photos, tmp_path, weights, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, _, err = _train(tmp_path, capsys, "--out", afile, data=photos)
    assert code == 2
    _one_line_error(err, "afile", "not a folder")

    # a folder that refuses new files: the message names the user's path, and nothing ran
    import tempfile

    import tri_panet.cli.restore as restore_cli

    locked = tmp_path / "locked"
    locked.mkdir()
    mkstemp = tempfile.mkstemp

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and os.path.samefile(dir, locked):
            raise PermissionError(13, "Permission denied", os.path.join(dir, ".o.png.tmp"))
        return mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(restore_cli, "restore", lambda *a, **k: pytest.fail("restored before checking the output"))
    code, _, err = _run(["restore", photos / "a.png", "-o", locked / "o.png", "--weights", weights], capsys)
    assert code == 2
    _one_line_error(err, str(locked / "o.png"), "Permission denied")
    assert ".tmp" not in err


@pytest.mark.parametrize("flag, value", [("--crop", 0), ("--limit", -1), ("--limit", 0)])
def test_eval_refuses_non_positive_sizes(photos, weights, flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--task", "denoise", "--data", str(photos), "--weights", str(weights), flag, str(value)])
    assert e.value.code == 2
    assert f"argument {flag}: must be >= 1" in capsys.readouterr().err


# --------------------------------------------------------------------------- 12-16: resources, honesty


def test_huge_image_is_refused_from_its_header_with_the_tile_to_use(tmp_path, weights, capsys, monkeypatch):
    monkeypatch.setattr("tri_panet.cost.available_memory", lambda device: 8 * 2**30)  # the same on every machine
    big = tmp_path / "big.png"
    _png_header(big, 6000, 6000)
    code, _, err = _run(["restore", big, "-o", tmp_path / "o.png", "--weights", weights, "--tile", 0], capsys)
    assert code == 2
    _one_line_error(err, "6000x6000", "whole image", "GiB", "more than the 8.0 GiB", "(what --tile auto picks)")
    assert not (tmp_path / "o.png").exists()


def test_training_patch_size_is_guarded_by_the_same_estimate(photos, tmp_path):
    from tri_panet.training import TrainConfig, Trainer

    cfg = TrainConfig(
        model_args=dict(TINY), data=[str(photos)], patch_size=1000, out=str(tmp_path / "run"), progress=False, threads=1
    )
    with pytest.raises(ValueError, match="patch size 1000 with batch size 8: one training step needs about"):
        Trainer(cfg)


def test_threads_flag_and_the_default_from_free_cores(photos, tmp_path, weights, capsys, monkeypatch):
    import tri_panet.cli.restore as restore_cli
    from tri_panet import device as dev

    seen, real = [], restore_cli.restore

    def restore(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(restore_cli, "restore", restore)
    before = torch.get_num_threads()
    argv = ["restore", photos / "a.png", "-o", tmp_path / "o.png", "--weights", weights, "--threads", 1]
    assert _run(argv, capsys)[0] == 0
    assert seen == [1] and torch.get_num_threads() == before  # put back after the command
    for command in (
        ["eval", "--task", "denoise", "--data", photos, "--baseline", "none"],
        ["demo", "-o", tmp_path, "--size", 32],
    ):
        assert _run([*command, "--weights", weights, "--threads", 1], capsys)[0] == 0

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    for load, free in ((0.2, 4), (1.4, 3), (3.9, 1), (9.0, 1)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert dev.free_cores() == free
        assert dev.choose_threads() == free
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert dev.choose_threads() == 2 and dev.choose_threads(3) == 3


def test_resume_with_a_new_learning_rate_follows_the_new_schedule(photos, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tmp_path, capsys, "--out", out, "--lr", 1e-3, "--lr-min", 1e-6, data=photos)[0] == 0
    code, text, _ = _train(
        tmp_path, capsys, "--out", out, "--resume", "--steps", 4, "--lr", 1e-4, "--lr-min", 1e-6, data=photos
    )
    assert code == 0 and "lr" in text
    last = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 4 and last["lr"] == pytest.approx(1e-6)  # the cosine floor of the new schedule


def test_eval_json_stays_json_when_a_psnr_is_infinite(photos, tmp_path, weights, capsys):
    report = tmp_path / "r.json"
    code, _, _ = _run(
        [
            "eval",
            "--task",
            "denoise",
            "--data",
            photos,
            "--weights",
            weights,
            "--sigma",
            0,
            "--baseline",
            "none",
            "--json",
            report,
        ],
        capsys,
    )
    assert code == 0

    def refuse(name):
        raise AssertionError(f"{name} in the JSON")

    data = json.loads(report.read_text(), parse_constant=refuse)
    assert data["rows"][0]["input_psnr"] is None
    assert "input_psnr" in data["notes"][0] and "not finite" in data["notes"][0]


def test_checkpoints_and_outputs_follow_the_umask(photos, tmp_path, weights, capsys):
    old = os.umask(0o027)
    try:
        assert _train(tmp_path, capsys, "--out", tmp_path / "run", data=photos)[0] == 0
        assert _run(["restore", photos / "a.png", "-o", tmp_path / "o.png", "--weights", weights], capsys)[0] == 0
    finally:
        os.umask(old)
    step = tmp_path / "run" / "checkpoints" / "step_00000002"
    assert oct(step.stat().st_mode & 0o777) == oct(0o750)
    for f in (step / "model.safetensors", step / "state.safetensors", tmp_path / "o.png"):
        assert oct(f.stat().st_mode & 0o777) == oct(0o640), f


# --------------------------------------------------------------------------- 17: one rule each


def test_tile_zero_is_the_whole_image_in_restore_as_in_demo(photos, tmp_path, weights, capsys):
    for argv in (["restore", photos / "a.png", "-o", tmp_path / "o.png"], ["demo", "-o", tmp_path, "--size", 32]):
        assert _run([*argv, "--weights", weights, "--tile", 0], capsys)[0] == 0


def test_what_reading_loses_is_said_once_per_kind(photos, tmp_path, weights, capsys):
    folder = tmp_path / "odd"
    folder.mkdir()
    rgb = Image.fromarray(_photo(0))
    rgb.convert("L").save(folder / "grey.png")
    rgb.convert("RGBA").save(folder / "alpha.png")
    Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257).save(folder / "deep.png")
    rgb.save(folder / "frames.tif", save_all=True, append_images=[Image.fromarray(_photo(1))])
    code, _, err = _run(["restore", folder, "-o", tmp_path / "out", "--weights", weights], capsys)
    assert code == 0
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: alpha channel dropped (not composited): alpha.png",
        "warning: grey, replicated to 3 channels for a colour model: deep.png, grey.png",
        "warning: 16-bit, the result is written with 8 bits: deep.png",
        "warning: several frames, only the first is read: frames.tif",
    ]
    # eval and train read grey files by the same rule, and say so
    code, _, err = _run(
        ["eval", "--task", "denoise", "--data", folder, "--weights", weights, "--baseline", "none"], capsys
    )
    assert code == 0 and "warning: grey, replicated to 3 channels for a colour model: deep.png, grey.png" in err
    code, text, _ = _train(tmp_path, capsys, "--out", tmp_path / "run", data=folder)
    assert code == 0 and "warning: grey, replicated to 3 channels" in text


def test_json_into_a_missing_folder_is_refused_as_restore_does(photos, tmp_path, weights, capsys):
    for argv in (
        ["eval", "--task", "denoise", "--data", photos, "--json", tmp_path / "new" / "r.json"],
        ["restore", photos / "a.png", "-o", tmp_path / "new" / "o.png"],
    ):
        code, _, err = _run([*argv, "--weights", weights], capsys)
        assert code == 2
        _one_line_error(err, "does not exist")
    assert not (tmp_path / "new").exists()


def test_stored_config_holds_absolute_paths(photos, tmp_path, capsys, monkeypatch):
    from tri_panet.training import TrainConfig

    monkeypatch.chdir(tmp_path)
    assert _train(tmp_path, capsys, "--out", "run", data="photos")[0] == 0
    monkeypatch.chdir(photos)  # elsewhere: the stored settings still name the same folders
    stored = TrainConfig.from_toml(tmp_path / "run" / "config.toml")
    assert stored.data == [str(photos)] and stored.out == str(tmp_path / "run")
