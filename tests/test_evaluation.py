"""Evaluation with classical baselines: each baseline runs on exactly the model's degraded
inputs with the same drawn parameters, is scored like the model (SR: same size, same border
crop), and ``tri-panet eval --baseline`` prints and writes every column (tiny images and
untrained tiny models, NLM / bilinear rather than the slow CBM3D)."""

from __future__ import annotations

import json
import re
import sys

import pytest
import torch
from PIL import Image
from tiny_model import TINY as TINY_DENOISER

from tri_panet import baselines
from tri_panet.cli import main
from tri_panet.data.degradations import GaussianNoise
from tri_panet.evaluation import evaluate, prepare_eval_pairs
from tri_panet.metrics import psnr
from tri_panet.models import create, describe, save_weights
from tri_panet.tasks import get_task

# the reference backend: the fastest on images this small
TINY = {**TINY_DENOISER, "backend": "reference"}


@pytest.fixture
def photos(tmp_path):
    """Two 16 x 16 colour crops of scikit-image photos."""
    from skimage import data

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(data.astronaut()[100:116, 150:166]).save(folder / "a.png")
    Image.fromarray(data.coffee()[60:76, 120:136]).save(folder / "b.png")
    return folder


def test_baselines_get_the_models_inputs_and_drawn_parameters(photos, monkeypatch):
    """Blind sigma: every image draws its own; the baseline sees that draw and that very input."""
    seen = []

    def spy(degraded, params):
        seen.append((degraded, dict(params)))
        return degraded.clamp(0, 1)

    monkeypatch.setitem(baselines.BASELINES, "spy", baselines.Baseline("spy", "denoise", "Spy", None, spy))
    pairs = prepare_eval_pairs(sorted(photos.iterdir()), GaussianNoise(sigma_range=(5.0, 50.0)), seed=1)
    res = evaluate(create("tiny-denoise", **TINY), pairs, "denoise", baselines=["spy", "nlm"])
    assert [s[1] for s in seen] == [p.params for p in pairs]
    assert len({p.params["sigma"] for p in pairs}) == 2
    assert all(s[0] is p.degraded for s, p in zip(seen, pairs))
    for row, pair in zip(res["rows"], pairs):
        expected = baselines.nlm(pair.degraded, pair.params)
        assert row["nlm_psnr"] == pytest.approx(float(psnr(expected[None], pair.target[None])[0]))
        assert row["nlm_seconds"] > 0 and 0 < row["nlm_ssim"] <= 1
    # the mean has every column of the rows
    assert list(res["mean"]) == [k for k in res["rows"][0] if k != "image"]
    assert res["mean"]["nlm_psnr"] == pytest.approx(sum(r["nlm_psnr"] for r in res["rows"]) / 2)


@pytest.mark.parametrize(("task", "baseline"), [("sr", "bicubic"), ("demosaic", "bilinear"), ("jpeg", "jpeg")])
def test_baseline_is_scored_like_the_input_view(photos, task, baseline):
    """These baselines are the task's own view of the degraded input, so with the same
    alignment (SR: the target's size, border crop = scale; JPEG: Y) their scores are equal."""
    spec = get_task(task)
    model = create(spec.default_model(2), **TINY)
    degradation = spec.make_degradation(**spec.fixed_params(scale=2 if spec.scaled else None))
    pairs = prepare_eval_pairs(sorted(photos.iterdir()), degradation, color=describe(model).n_colors == 3)
    res = evaluate(model, pairs, task, baselines=[baseline])
    for row in res["rows"]:
        assert row[f"{baseline}_psnr"] == pytest.approx(row["input_psnr"], abs=1e-9)
        assert row[f"{baseline}_ssim"] == pytest.approx(row["input_ssim"], abs=1e-9)
    assert res["convention"] == spec.metric_convention(2 if spec.scaled else 1)


def test_evaluate_refuses_a_baseline_of_another_task(photos):
    pairs = prepare_eval_pairs([photos / "a.png"], GaussianNoise(sigma=10.0))
    with pytest.raises(ValueError, match="is for sr, not denoise"):
        evaluate(create("tiny-denoise", **TINY), pairs, "denoise", baselines=["bicubic"])


# ------------------------------------------------------------------------- tri-panet eval


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(1)
    return save_weights(create("tiny-denoise", **TINY), tmp_path_factory.mktemp("w") / "tiny.safetensors")


def _eval(argv, capsys):
    code = main(["eval", "--task", "denoise", "--backend", "reference", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _right_edges(line: str) -> list[int]:
    """Where each run of non-spaces ends in ``line``."""
    return [m.end() for m in re.finditer(r"\S+", line)]


def test_eval_baseline_columns_line_up_with_the_json(photos, weights, tmp_path, capsys):
    report = tmp_path / "r.json"
    code, text, _ = _eval(["--data", photos, "--weights", weights, "--baseline", "nlm", "--json", report], capsys)
    assert code == 0
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("image"))
    header, a, b, rule, mean = lines[head : head + 5]
    assert set(rule) == {"-"} and len(rule) == len(header)
    assert header.split() == [
        "image",
        "noisy",
        "PSNR",
        "SSIM",
        "NLM",
        "PSNR",
        "SSIM",
        "s/img",
        "model",
        "PSNR",
        "SSIM",
        "s/img",
    ]
    data = json.loads(report.read_text())
    assert data["baselines"] == ["nlm"] and data["baseline"] == "noisy"
    keys = ["input_psnr", "input_ssim", "nlm_psnr", "nlm_ssim", "nlm_seconds", "model_psnr", "model_ssim", "seconds"]
    title_edges = [e for e in _right_edges(header) if header[e - 4 : e] in ("PSNR", "SSIM", "/img")]
    for line, row in ((a, data["rows"][0]), (b, data["rows"][1]), (mean, data["mean"])):
        cells = line.split()
        assert len(cells) == 1 + len(keys) and len(line) == len(header)
        assert _right_edges(line)[1:] == title_edges  # every value ends under its title
        for cell, key in zip(cells[1:], keys):
            assert float(cell) == pytest.approx(row[key], abs=0.0011)  # printed with 3-4 decimals


def test_eval_without_baselines(photos, weights, tmp_path, capsys):
    report = tmp_path / "r.json"
    argv = ["--data", photos, "--weights", weights, "--baseline", "none", "--limit", 1, "--json", report]
    code, text, _ = _eval(argv, capsys)
    assert code == 0 and "baselines: none" in text
    data = json.loads(report.read_text())
    assert data["baselines"] == [] and set(data["rows"][0]) == {
        "image",
        "input_psnr",
        "input_ssim",
        "model_psnr",
        "model_ssim",
        "seconds",
    }


def _one_line_error(err: str, *needles: str) -> None:
    lines = [x for x in err.splitlines() if "error:" in x]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_eval_baseline_errors(photos, weights, capsys, monkeypatch):
    code, _, err = _eval(["--data", photos, "--weights", weights, "--baseline", "none", "nlm"], capsys)
    assert code == 2
    _one_line_error(err, "--baseline none")
    code, _, err = _eval(["--data", photos, "--weights", weights, "--baseline", "bicubic"], capsys)
    assert code == 2
    _one_line_error(err, "for denoise: cbm3d, nlm")
    monkeypatch.setitem(sys.modules, "bm3d", None)  # what an absent package looks like to import
    code, out, err = _eval(["--data", photos, "--weights", weights, "--baseline", "cbm3d"], capsys)
    assert code == 2 and "image" not in out  # refused before any work
    _one_line_error(err, "cbm3d", 'pip install "tri_panet[baselines]"')


def test_eval_default_baselines_skip_the_missing_ones(photos, weights, tmp_path, capsys, monkeypatch):
    """Without ``bm3d`` the denoising default is NLM alone, with a note naming the extra."""
    monkeypatch.setitem(sys.modules, "bm3d", None)
    report = tmp_path / "r.json"
    code, text, err = _eval(["--data", photos, "--weights", weights, "--limit", 1, "--json", report], capsys)
    assert code == 0 and "baselines: NLM (nlm)" in text
    assert "note: baseline 'cbm3d'" in err and 'pip install "tri_panet[baselines]"' in err
    assert json.loads(report.read_text())["baselines"] == ["nlm"]
