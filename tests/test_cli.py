"""The ``tri-panet`` command line: --help everywhere, restore (files, folders, overwrite
rules), eval --json, train/finetune/resume, demo, and the bad-input cases (exit status 2
with a one-line message, no traceback)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tri_panet.cli import main
from tri_panet.data import add_gaussian_noise, sample_generator
from tri_panet.data.io import load_image
from tri_panet.metrics import psnr

SUBCOMMANDS = ("restore", "eval", "train", "finetune", "demo", "models", "attention-map")


@pytest.fixture
def photos(tmp_path):
    from skimage import data

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(data.astronaut()[100:132, 150:182]).save(folder / "a.png")
    Image.fromarray(data.coffee()[60:92, 120:152]).save(folder / "b.png")
    return folder


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_error(err: str, *needles: str) -> None:
    lines = [x for x in err.splitlines() if "error:" in x]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_of_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_train_help_states_the_config_defaults(command):
    """Every "(default N)" in train's and finetune's help is TrainConfig's default (finetune's lr
    its own), so that changing a default cannot leave the help behind."""
    import dataclasses
    import re

    from tri_panet.cli import build_parser
    from tri_panet.cli.train import FINETUNE_LR
    from tri_panet.training import TrainConfig

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    if command == "finetune":
        defaults["lr"] = FINETUNE_LR
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    checked = 0
    for action in sub.choices[command]._actions:
        stated = re.search(r"default (-?[0-9.e+-]+|[a-z0-9]+)(?=[;)])", action.help or "")
        if stated is None or action.dest not in defaults:
            continue
        value, text = defaults[action.dest], stated.group(1)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            assert float(text) == value, (action.option_strings, text, value)
        else:
            assert text == str(value), (action.option_strings, text, value)
        checked += 1
    assert checked >= 15  # the regex still finds the stated defaults


def test_top_level_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for c in SUBCOMMANDS:
        assert c in text


def test_restore_file_overwrite_rules(photos, weights, tmp_path, capsys):
    src, dst = photos / "a.png", tmp_path / "out.png"
    code, _, _ = _run(["restore", src, "-o", dst, "--weights", weights], capsys)
    assert code == 0 and dst.is_file()
    restored = load_image(dst)
    assert restored.shape == load_image(src).shape
    before = dst.read_bytes()

    code, _, err = _run(["restore", src, "-o", dst, "--weights", weights], capsys)
    assert code == 2
    _one_line_error(err, "exists", "--force")
    assert dst.read_bytes() == before

    code, _, _ = _run(["restore", src, "-o", dst, "--weights", weights, "--force"], capsys)
    assert code == 0

    original = src.read_bytes()
    code, _, err = _run(["restore", src, "-o", src, "--weights", weights, "--force"], capsys)
    assert code == 2
    _one_line_error(err, "input")
    assert src.read_bytes() == original


def test_restore_with_a_grey_model_keeps_the_colours(photos, tmp_path, capsys):
    """The bundled grey fast-jpeg on a colour JPEG: a colour result, Y better than the JPEG's."""
    clean = photos / "a.png"
    compressed = tmp_path / "a_q10.jpg"
    Image.open(clean).save(compressed, quality=10)
    out = tmp_path / "restored.png"
    code, _, err = _run(["restore", compressed, "-o", out, "--model", "fast-jpeg", "--threads", "1"], capsys)
    assert code == 0, err
    assert "luma (JFIF Y) restored, their chroma kept" in err and "converted to grey" not in err
    restored, original, jpeg = (load_image(p) for p in (out, clean, compressed))
    assert restored.shape == original.shape == (3, 32, 32)
    assert restored.std(0).mean() > 0.5 * original.std(0).mean()  # not grey: the channels differ
    assert psnr(restored, original, y_channel=True) > psnr(jpeg, original, y_channel=True) + 0.3


def test_restore_folder_and_degrade(photos, weights, tmp_path, capsys):
    out = tmp_path / "restored"
    code, text, _ = _run(["restore", photos, "-o", out, "--weights", weights, "--degrade", "--sigma", 30], capsys)
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    assert text.count("PSNR degraded") == 2
    code, _, err = _run(["restore", photos, "-o", photos, "--weights", weights, "--force"], capsys)
    assert code == 2
    _one_line_error(err, "input folder")
    code, _, err = _run(
        ["restore", photos / "a.png", "-o", tmp_path / "x.png", "--weights", weights, "--sigma", 5], capsys
    )
    assert code == 2
    _one_line_error(err, "--degrade")


def test_restore_bad_inputs(photos, weights, tmp_path, capsys, monkeypatch):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    code, _, err = _run(["restore", broken, "-o", tmp_path / "o.png", "--weights", weights], capsys)
    assert code == 2
    _one_line_error(err, "cannot read image", "broken.png")

    code, _, err = _run(
        ["restore", photos / "a.png", "-o", tmp_path / "o.png", "--weights", tmp_path / "nope.safetensors"], capsys
    )
    assert code == 2
    _one_line_error(err, "nope.safetensors")

    # no bundled weights (an empty package folder): the message names the missing file
    import tri_panet.models.weights as wmod

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(wmod, "_bundled_dir", lambda: empty)
    code, _, err = _run(["restore", photos / "a.png", "-o", tmp_path / "o.png", "--model", "tiny-denoise"], capsys)
    assert code == 2
    _one_line_error(err, "tiny-denoise.safetensors")

    # a grey file for a colour model is replicated to RGB, as eval and train do, and said so
    grey = tmp_path / "grey.png"
    Image.open(photos / "a.png").convert("L").save(grey)
    code, _, err = _run(["restore", grey, "-o", tmp_path / "g.png", "--weights", weights], capsys)
    assert code == 0 and "warning: grey, replicated to 3 channels for a colour model: grey.png" in err

    code, _, err = _run(["restore", tmp_path / "missing.png", "-o", tmp_path / "o.png", "--weights", weights], capsys)
    assert code == 2
    _one_line_error(err, "does not exist")
    assert not (tmp_path / "o.png").exists()


def test_bad_input_exit_status_in_a_real_process(weights, tmp_path):
    """The console entry point: status 2, one line on stderr, no traceback."""
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG garbage")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tri_panet.cli",
            "restore",
            str(broken),
            "-o",
            str(tmp_path / "o.png"),
            "--weights",
            str(weights),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "cannot read image" in proc.stderr


def test_eval_json(photos, weights, tmp_path, capsys):
    report = tmp_path / "r.json"
    code, text, _ = _run(
        [
            "eval",
            "--task",
            "denoise",
            "--data",
            photos,
            "--weights",
            weights,
            "--sigma",
            20,
            "--seed",
            3,
            "--json",
            report,
            "--baseline",
            "nlm",
        ],  # not the default CBM3D: seconds per image even on tiny ones
        capsys,
    )
    assert code == 0
    data = json.loads(report.read_text())
    assert [r["image"] for r in data["rows"]] == ["a.png", "b.png"]
    assert data["convention"] == {"crop_border": 0, "y_channel": False}
    assert data["mean"]["model_psnr"] == pytest.approx(np.mean([r["model_psnr"] for r in data["rows"]]))
    # the input PSNR is that of the seeded noisy image, recomputed here independently
    for i, row in enumerate(data["rows"]):
        clean = load_image(photos / row["image"])
        noisy = add_gaussian_noise(clean, 20.0, generator=sample_generator(3, 0, i))
        mse = float(((noisy.double() - clean.double()) ** 2).mean())
        assert row["input_psnr"] == pytest.approx(10 * np.log10(1 / mse), abs=1e-6)
        assert 0 < row["model_ssim"] <= 1
    assert "mean" in text and "a.png" in text
    # refuses to overwrite the report; --limit keeps the first N images
    code, _, err = _run(["eval", "--task", "denoise", "--data", photos, "--weights", weights, "--json", report], capsys)
    assert code == 2
    _one_line_error(err, "exists")
    code, _, _ = _run(
        [
            "eval",
            "--task",
            "denoise",
            "--data",
            photos,
            "--weights",
            weights,
            "--json",
            report,
            "--force",
            "--limit",
            1,
            "--baseline",
            "none",
        ],
        capsys,
    )
    assert code == 0 and len(json.loads(report.read_text())["rows"]) == 1
    code, _, err = _run(["eval", "--task", "sr", "--data", photos, "--weights", weights], capsys)
    assert code == 2
    _one_line_error(err, "task")


def test_train_resume_and_finetune(photos, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        "task = 'denoise'\nsteps = 1\nbatch_size = 2\npatch_size = 16\nlr = 1e-3\nthreads = 1\nprogress = false\n"
        "[model_args]\nn_feats = 8\nn_resblocks = 2\nscales = [1.0, 0.5]\n"
    )
    base = ["--config", cfg, "--data", photos, "--out", out]
    code, text, _ = _run(["train", *base], capsys)
    assert code == 0 and (out / "model.safetensors").is_file()
    code, _, err = _run(["train", *base], capsys)  # the folder holds a run
    assert code == 2
    _one_line_error(err, "--resume")
    code, text, _ = _run(["train", *base, "--resume", "--steps", 2], capsys)  # flags override the file
    assert code == 0 and "resumed" in text and "trained 2 steps" in text

    staged = tmp_path / "staged"
    code, text, _ = _run(["train", *base[:-1], staged, "--steps", 3, "--stop-at", 2], capsys)
    assert code == 0 and "stopped at step 2" in text and "--resume" in text
    assert not (staged / "model.safetensors").exists()
    code, text, _ = _run(["train", *base[:-1], staged, "--steps", 3, "--resume"], capsys)
    assert code == 0 and "trained 3 steps" in text and (staged / "model.safetensors").is_file()
    code, _, err = _run(["train", *base[:-1], tmp_path / "bad", "--steps", 3, "--stop-at", 4], capsys)
    assert code == 2
    _one_line_error(err, "stop_at must be at most steps")

    ft = tmp_path / "ft"
    code, text, _ = _run(
        [
            "finetune",
            "--data",
            photos,
            "--weights",
            out / "model.safetensors",
            "--steps",
            1,
            "--batch-size",
            2,
            "--patch-size",
            16,
            "--out",
            ft,
            "--no-progress",
            "--threads",
            1,
        ],
        capsys,
    )
    assert code == 0
    from tri_panet.models import read_metadata

    meta = read_metadata(ft / "model.safetensors")
    assert json.loads(meta["tri_panet.config"])["n_feats"] == 8
    assert json.loads(meta["tri_panet.train.config"])["lr"] == 5e-5  # finetune's default
    assert meta["tri_panet.train.command"].startswith("tri-panet finetune")
    with pytest.raises(SystemExit) as e:  # argparse type errors: status 2 as well
        main(["train", "--steps", "x"])
    assert e.value.code == 2


def test_demo(weights, tmp_path, capsys, monkeypatch):
    code, text, _ = _run(["demo", "-o", tmp_path, "--weights", weights, "--size", 32, "--sigma", 30], capsys)
    assert code == 0
    picture = tmp_path / "tri_panet_demo.png"
    with Image.open(picture) as im:
        assert im.size == (3 * 32 + 2 * 4, 32)
    assert "PSNR noisy" in text and "restored" in text
    # the printed noisy PSNR is that of the seeded noisy photo
    from tri_panet.demo import demo_image

    clean = demo_image("astronaut", 32)
    noisy = add_gaussian_noise(clean, 30.0, generator=torch.Generator().manual_seed(0))
    assert f"{float(psnr(noisy, clean)[0]):.2f} dB" in text

    code, _, err = _run(["demo", "-o", tmp_path, "--weights", weights, "--size", 32], capsys)
    assert code == 2
    _one_line_error(err, "exists", "--force")
    code, _, _ = _run(["demo", "-o", tmp_path, "--weights", weights, "--size", 32, "--force"], capsys)
    assert code == 0

    import tri_panet.models.weights as wmod

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(wmod, "_bundled_dir", lambda: empty)
    code, _, err = _run(["demo", "-o", empty], capsys)
    assert code == 2
    _one_line_error(err, "tri_panet/weights/fast-denoise.safetensors")


def test_restore_eval_and_demo_load_no_training_code(photos, weights, tmp_path):
    """The inference commands import nothing from tri_panet.training (checked in a fresh
    process: this one has imported it)."""
    a, out = str(photos / "a.png"), str(tmp_path / "r.png")
    script = f"""
import sys
from tri_panet.cli import main
assert main(["restore", {a!r}, "-o", {out!r}, "--weights", {str(weights)!r}]) == 0
assert main(["eval", "--task", "denoise", "--data", {str(photos)!r}, "--weights", {str(weights)!r}, "--limit", "1",
             "--baseline", "nlm"]) == 0
assert main(["demo", "-o", {str(tmp_path)!r}, "--weights", {str(weights)!r}, "--size", "32"]) == 0
loaded = sorted(m for m in sys.modules if m.startswith("tri_panet.training"))
assert not loaded, loaded
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
