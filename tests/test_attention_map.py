"""Attention maps: the weights of a few queries equal the rows of the full reference score
matrix, sum to 1 over all levels, follow the block's settings (patch size, softmax scale,
key-norm floor), map image pixels to feature cells for models that unshuffle, and
``tri-panet attention-map`` draws one panel per level and query."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_model import TINY
from torch import nn

from tri_panet import attention_figure
from tri_panet.attention_map import attention_input, attention_weights, feature_position, find_attention
from tri_panet.cli import main
from tri_panet.models import RestorationModel, create, describe, save_weights
from tri_panet.nn import PyramidAttention


def _reference_attention(block: PyramidAttention, x: torch.Tensor) -> list[torch.Tensor]:
    """The full softmax [keys, H, W] of the reference path (tri_panet/ops/reference.py),
    split per level into [H_l, W_l, H, W]: every key patch unfolded, L2-normalised with the
    floor, matched against the zero-padded query by conv2d, one softmax over all keys."""
    query, keys, _ = block.embed(x)
    k = block.patch_size
    filters = torch.cat([F.unfold(key, k, padding=k // 2)[0].t().reshape(-1, key.shape[1], k, k) for key in keys])
    norms = torch.linalg.vector_norm(filters, dim=(1, 2, 3), keepdim=True).clamp_min(block.key_eps)
    scores = F.conv2d(query, filters / norms, padding=k // 2)[0]  # [keys, H, W]
    attention = F.softmax(scores * block.softmax_scale, dim=0)
    sizes = [key.shape[-2] * key.shape[-1] for key in keys]
    return [a.reshape(*key.shape[-2:], *x.shape[-2:]) for a, key in zip(attention.split(sizes), keys)]


@pytest.mark.parametrize(("patch_size", "softmax_scale"), [(3, 10.0), (5, 3.0)])
def test_weights_are_rows_of_the_reference_attention(patch_size, softmax_scale):
    torch.manual_seed(0)
    block = PyramidAttention(channels=8, scales=(1.0, 0.8, 0.5), patch_size=patch_size, softmax_scale=softmax_scale)
    x = torch.randn(1, 8, 9, 11)
    x[..., :4, :5] = 0  # with no bias the keys there are exactly zero: the 1e-4 norm floor applies
    with torch.no_grad():
        block.conv_match[0].bias.zero_()
        positions = [(0, 0), (4, 6), (8, 10), (2, 9)]
        weights = attention_weights(block, x, positions)
        reference = _reference_attention(block, x)
    assert [tuple(w.shape) for w in weights] == [(4, 9, 11), (4, 7, 8), (4, 4, 5)]
    for w, ref in zip(weights, reference):
        for q, (y, x_) in enumerate(positions):
            torch.testing.assert_close(w[q], ref[:, :, y, x_], atol=1e-6, rtol=1e-5)
    total = sum(w.sum(dim=(1, 2)) for w in weights)
    torch.testing.assert_close(total, torch.ones(4))


def test_weights_refuse_bad_queries():
    block = PyramidAttention(channels=8, scales=(1.0, 0.5))
    x = torch.randn(8, 6, 7)  # [C, H, W] is taken as one map
    assert [w.shape[0] for w in attention_weights(block, x, [(5, 6)])] == [1, 1]
    with pytest.raises(ValueError, match=r"\(6, 0\) is outside the 6x7 feature map"):
        attention_weights(block, x, [(6, 0)])
    with pytest.raises(ValueError, match="at least one"):
        attention_weights(block, x, [])
    with pytest.raises(ValueError, match="no PyramidAttention block"):
        find_attention(nn.Conv2d(3, 3, 1))


def test_an_unshuffling_model_maps_pixels_by_the_ratio_of_sizes():
    """A model that pixel-unshuffles by 2 attends on a half-size map; an odd image is padded first."""
    model = create("tiny-denoise", down=2, **TINY)
    block, features, seen = attention_input(model, torch.rand(3, 15, 17))
    assert block is model.attention
    assert seen == (16, 18) and tuple(features.shape) == (1, 8, 8, 9)
    assert feature_position((14, 16), seen, features.shape[-2:]) == (7, 8)
    assert feature_position((0, 1), seen, features.shape[-2:]) == (0, 0)
    assert feature_position((5, 5), (10, 10), (10, 10)) == (5, 5)


# ------------------------------------------------------------------------ tri-panet attention-map


@pytest.fixture
def image(tmp_path):
    from skimage import data

    path = tmp_path / "brick.png"
    Image.fromarray(data.brick()[:20, :24]).convert("RGB").save(path)
    return path


def _run(argv, capsys):
    code = main(["attention-map", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("down", [1, 2])
def test_cli_draws_one_panel_per_level_and_query(image, tmp_path, capsys, down):
    weights = save_weights(create("tiny-denoise", down=down, **TINY), tmp_path / "tiny.safetensors")
    out = tmp_path / "map.png"
    argv = [image, "--at", 3, 4, "--at", 19, 23, "--weights", weights, "-o", out, "--panel", 48]
    code, text, err = _run(argv, capsys)
    assert code == 0, err
    assert "2 queries over 2 levels" in text
    feature_size = (20 // down, 24 // down)
    box_h, box_w = round(feature_size[0] * 48 / max(feature_size)), 48
    gap, title = attention_figure.GAP, attention_figure.HEADER + attention_figure.TITLE
    row_height = title + box_h + gap
    with Image.open(out) as picture:
        assert picture.size == attention_figure.figure_size(feature_size, 2, 2, 48)
        pixels = picture.convert("RGB").load()
        for row in range(2):
            for level, scale in enumerate((1.0, 0.5)):
                left = gap + level * (box_w + gap)
                top = gap + row * row_height + title
                inside = (left + int(box_w * scale) // 2, top + int(box_h * scale) // 2)  # the level's picture
                beyond = (left + box_w - 1, top + box_h - 1)  # the box outside a smaller level
                assert pixels[inside] != attention_figure._BACKGROUND
                assert (pixels[beyond] == attention_figure._BACKGROUND) == (scale < 1)


def _one_line_error(err: str, *needles: str) -> None:
    lines = [x for x in err.splitlines() if "error:" in x]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


class _NoAttention(RestorationModel):
    scale, n_colors = 1, 3

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_cli_errors(image, tmp_path, capsys, monkeypatch):
    weights = save_weights(create("tiny-denoise", **TINY), tmp_path / "tiny.safetensors")
    out = tmp_path / "map.png"
    code, _, err = _run([image, "--at", 20, 0, "--weights", weights, "-o", out], capsys)
    assert code == 2 and not out.exists()
    _one_line_error(err, "--at 20 0 is outside the image (20 rows x 24 columns)")
    out.write_bytes(b"")
    code, _, err = _run([image, "--at", 0, 0, "--weights", weights, "-o", out], capsys)
    assert code == 2
    _one_line_error(err, "exists", "--force")
    code, _, err = _run([image, "--at", 0, 0, "--weights", weights, "-o", tmp_path / "map.jpg"], capsys)
    assert code == 2
    _one_line_error(err, ".png")
    from tri_panet.cli import attention_map as command

    model = _NoAttention()
    monkeypatch.setattr(command, "load_model", lambda args, device, task: (model, describe(model), "test"))
    code, _, err = _run([image, "--at", 0, 0, "--task", "denoise", "-o", tmp_path / "other.png"], capsys)
    assert code == 2
    _one_line_error(err, "no PyramidAttention block")
