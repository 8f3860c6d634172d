"""Every bundled weights file loads, has a model card, and restores better than its
degraded input on a photo it never saw (a crop of scikit-image's astronaut, the task's
default level). A wrong channel order, colour convention or a damaged file fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

import tri_panet
from tri_panet.data.io import save_image
from tri_panet.demo import demo_image
from tri_panet.evaluation import evaluate, prepare_eval_pairs
from tri_panet.models import bundled_weights, describe, load_pretrained
from tri_panet.tasks import get_task, make_degradation

WEIGHTS_DIR = Path(tri_panet.__file__).parent / "weights"


def test_bundled_weights_are_there():
    assert "fast-denoise" in bundled_weights() and "fast-demosaic" in bundled_weights()


@pytest.mark.parametrize("name", bundled_weights())
def test_bundled_model_beats_its_input(name, tmp_path):
    assert (WEIGHTS_DIR / f"{name}.md").is_file(), f"{name} has no model card"
    model = load_pretrained(name, backend="torch")
    info = describe(model)
    task = get_task(info.task)
    path = tmp_path / "astronaut.png"
    save_image(demo_image("astronaut", 96), path)
    degradation = make_degradation(info.task, **task.fixed_params(scale=info.scale if info.scale > 1 else None))
    pairs = prepare_eval_pairs([path], degradation, color=info.n_colors == 3)
    mean = evaluate(model, pairs, info.task, with_ssim=False)["mean"]
    assert mean["model_psnr"] > mean["input_psnr"] + 0.3, mean
