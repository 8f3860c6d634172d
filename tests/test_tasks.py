"""The task table: every entry is consistent with the registry, the degradations and the
metric conventions, and the model descriptor reports what the models are."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tri_panet.baselines import BASELINES
from tri_panet.models import ModelInfo, create, describe, get_spec
from tri_panet.tasks import LEVELS, SCALES, TASKS, get_task, make_degradation


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_is_consistent(name):
    task = get_task(name)
    for scale in task.scales or (None,):
        assert get_spec(task.default_model(scale)).task == name  # the default model exists and fits
    degradation = task.make_degradation(**task.fixed_params(scale=2 if task.scaled else None))
    assert degradation.task == name
    clean = torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(0))
    degraded, params = degradation.apply(clean, torch.Generator().manual_seed(1))
    assert len(params) == 1
    if task.level is not None:
        assert params[0] == {task.level.name: task.level.fixed}
    scale = 2 if task.scaled else 1
    assert degraded.shape == (3, 12 // scale, 12 // scale)
    assert task.input_view(degraded, scale).shape == clean.shape
    assert task.baselines and all(BASELINES[b].task == name for b in task.baselines)  # eval's defaults exist
    assert task.metric_convention(scale)["crop_border"] == (scale if task.scaled else 0)


def test_training_and_fixed_parameters():
    denoise, jpeg, sr = get_task("denoise"), get_task("jpeg"), get_task("sr")
    assert denoise.training_params() == {"sigma_range": (0.0, 55.0), "clip": False}
    assert denoise.training_params(10) == {"sigma": 10.0, "clip": False}
    assert jpeg.training_params(level_range=[5, 9]) == {"quality_range": (5, 9)}
    assert jpeg.fixed_params() == {"quality": 20}
    assert sr.fixed_params(scale=3) == {"scale": 3}
    assert [level.name for level in LEVELS] == ["sigma", "quality"] and SCALES == (2, 3, 4)
    assert denoise.options == ("sigma",) and sr.options == ("scale",) and get_task("demosaic").options == ()
    with pytest.raises(ValueError, match="task must be one of"):
        get_task("deblur")
    with pytest.raises(ValueError, match="quantize does not apply"):
        make_degradation("denoise", sigma=5, quantize=True)


def test_describe():
    assert describe(create("tiny-sr-x3", n_feats=8, n_resblocks=2)) == ModelInfo("tiny-sr-x3", "sr", 3, 3, 1, 64)
    assert describe(create("tiny-jpeg", n_feats=8, n_resblocks=2)) == ModelInfo("tiny-jpeg", "jpeg", 1, 1, 1, 64)
    built = get_spec("panet-denoise").cls(n_feats=8, n_resblocks=2)  # from its class: no registry name
    assert describe(built) == ModelInfo(None, None, 1, 3, 1)
    assert describe(nn.Conv2d(3, 3, 1)) == ModelInfo() and describe(lambda x: x) == ModelInfo()
