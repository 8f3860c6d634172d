"""Cost estimates before a run (tri_panet.cost): the sizes that drive them, the tile that
``--tile auto`` picks, the refusals and the notice of a long run. Nothing here runs a model
on an image: the estimates come from the sizes (and one meta-device trace)."""

from __future__ import annotations

import argparse
from dataclasses import replace

import pytest
import torch

from tri_panet.cli.common import CLIError, plan_tile
from tri_panet.cost import CostModel, plan_restore
from tri_panet.models import create

GiB = 2**30


@pytest.fixture(scope="module")
def tiny():
    """The bundled model's architecture (32 features, the official five levels), untrained."""
    return create("tiny-denoise").eval()


@pytest.fixture
def memory(monkeypatch):
    """Available memory as the test says, the same on every machine."""

    def set_to(n_bytes):
        monkeypatch.setattr("tri_panet.cost.available_memory", lambda device: n_bytes)

    set_to(16 * GiB)
    return set_to


def test_the_attention_cost_follows_from_the_sizes(tiny):
    costs = CostModel(tiny, torch.device("cpu"), threads=2)
    assert costs._keys(costs.blocks[0], 48, 48) == 7470  # SPEC: 7,470 keys for a 48 x 48 patch
    small, large = costs.restore((64, 64), None), costs.restore((128, 128), None)
    assert 14 < large.flops / small.flops < 16.5  # the attention's (H W)^2 dominates
    whole, tiled = costs.restore((6000, 6000), None), costs.restore((6000, 6000), 64)
    assert whole.peak_bytes > 50 * GiB and whole.seconds > 100 * 86400  # months, and more memory than most have
    assert tiled.peak_bytes < 3 * GiB and tiled.seconds < 6 * 3600


def test_a_model_that_attends_on_a_reduced_map_is_costed_on_that_map(tiny, memory):
    # fast-denoise attends on a map of half the input's side: 1/16 of the pairs, twice the
    # channels, so 1/8 of tiny-denoise's attention FLOPs at the same tile, and bigger
    # tiles at the same budget (it was costed at the input size and got smaller tiles).
    fast = CostModel(create("fast-denoise").eval(), torch.device("cpu"))
    slow = CostModel(tiny, torch.device("cpu"))
    assert fast.strides == [2] and slow.strides == [1]
    att = [c.forward_flops(96, 96) - c.conv_flops * 96 * 96 for c in (fast, slow)]
    assert att[1] / att[0] == pytest.approx(8, rel=0.05)
    assert fast.auto_tile([(512, 512)]).tile == slow.auto_tile([(512, 512)]).tile == 64  # the models' cap
    fast.info = replace(fast.info, tile=None)  # without it, the budget alone: bigger tiles than tiny-denoise's
    assert fast.auto_tile([(512, 512)]).tile == 192
    assert fast.auto_tile([(60, 60)]).tile is None and slow.auto_tile([(60, 60)]).tile is None  # within the cap: whole


def test_auto_tile_is_the_whole_image_or_the_largest_cheap_tile(tiny, memory, monkeypatch):
    cpu = CostModel(tiny, torch.device("cpu"))
    assert cpu.auto_tile([(32, 32)]).tile is None  # small: whole, as restore did before
    assert cpu.auto_tile([(256, 256)]).tile == 64  # the demo's tiles, on a CPU
    assert cpu.auto_tile([(6000, 6000)]).tile == 64
    assert cpu.auto_tile([(32, 32), (512, 512)]).tile == 64  # one tile for a folder: its largest image decides
    memory(100 * 2**20)  # 100 MiB: even the cheap tile does not fit
    with pytest.raises(ValueError, match="even with 48x48 tiles"):
        cpu.auto_tile([(256, 256)])
    memory(16 * GiB)
    gpu = CostModel(tiny, torch.device("cpu"))
    gpu.device = torch.device("cuda")  # the GPU's budget, without a GPU
    assert gpu.auto_tile([(512, 512)]).tile == 64  # the model's cap holds on every device
    gpu.info = replace(gpu.info, tile=None)  # a model without one: the GPU's budget alone
    assert gpu.auto_tile([(512, 512)]).tile is None and gpu.auto_tile([(4000, 3000)]).tile in (512, 768, 1024)


def test_whole_image_on_purpose_is_checked_and_bad_tiles_refused(tiny, memory):
    cpu = torch.device("cpu")
    memory(8 * GiB)
    with pytest.raises(ValueError, match=r"restoring 6000x6000 with the whole image needs about .* --tile 64 \(what"):
        plan_restore(tiny, cpu, [(6000, 6000)], None)
    assert plan_restore(tiny, cpu, [(32, 32)], None).tile is None
    with pytest.raises(ValueError, match="tile_overlap"):
        plan_restore(tiny, cpu, [(256, 256)], 16, 16)


def test_a_long_restoration_prints_its_estimate_first(tiny, memory, capsys):
    args = argparse.Namespace(tile="auto", tile_overlap=16, self_ensemble=False)
    assert plan_tile(args, tiny, torch.device("cpu"), [(32, 32)]) is None
    assert capsys.readouterr().err == ""
    assert plan_tile(args, tiny, torch.device("cpu"), [(2000, 3000)]) == 64
    err = capsys.readouterr().err
    assert err.startswith("note: estimated about ") and "64x64 tiles, --tile auto, on cpu" in err
    args.tile = 8
    with pytest.raises(CLIError, match="tile"):
        plan_tile(args, tiny, torch.device("cpu"), [(64, 64)])


def test_training_estimate_guards_the_patch_size(tiny, memory):
    costs = CostModel(tiny, torch.device("cpu"), threads=2)
    assert costs.check_training(48, 8).peak_bytes < 1 * GiB  # the default patch: fine
    with pytest.raises(ValueError, match="patch size 1000 with batch size 8"):
        costs.check_training(1000, 8)
    memory(1024 * GiB)  # plenty of memory: still refused, for the time a step would take
    with pytest.raises(ValueError, match="far too long"):
        costs.check_training(1000, 8)
