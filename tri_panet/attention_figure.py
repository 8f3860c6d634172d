"""The attention-map picture: where queries attend across the pyramid, drawn with Pillow.

One row per query, one panel per pyramid level. A panel shows the level's image (the
image resized to the level's feature-map size, then enlarged for display: every level by
the same factor, so the pyramid shrinks from left to right) under the query's attention
weights as a heat map, the query's patch as a cyan square (at the corresponding place on
every level) and its ``top_k`` strongest keys over all levels as numbered green circles.
Its title gives the level's scale and the share of the query's total weight on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = ["GAP", "HEADER", "TITLE", "figure_size", "render_attention_map"]

GAP = 8  # px between and around panels
HEADER = 18  # px of the line above each row (the query)
TITLE = 18  # px of the title line above each panel

_BACKGROUND = (32, 32, 32)
_TEXT = (235, 235, 235)
_QUERY = (0, 230, 255)
_MATCH = (60, 255, 90)
# A few stops of matplotlib's "inferno" (perceptually uniform, dark = little weight).
_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLOURS = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], dtype=np.float64)


def figure_size(feature_size: tuple[int, int], n_levels: int, n_queries: int, panel: int) -> tuple[int, int]:
    """(width, height) in px of the picture: ``n_queries`` rows of ``n_levels`` panels, each
    panel a box of the first level's size scaled so its longer side is ``panel`` px."""
    box_h, box_w = _box(feature_size, panel)
    return GAP + n_levels * (box_w + GAP), GAP + n_queries * (HEADER + TITLE + box_h + GAP)


def _zoom(feature_size: tuple[int, int], panel: int) -> float:
    """Display px per feature cell, on every level: the first level's longer side is ``panel`` px."""
    return panel / max(feature_size)


def _box(feature_size: tuple[int, int], panel: int) -> tuple[int, int]:
    """(height, width) px of a panel: the first level's display size."""
    zoom = _zoom(feature_size, panel)
    return round(feature_size[0] * zoom), round(feature_size[1] * zoom)


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow >= 10.1)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _heat(values: np.ndarray) -> np.ndarray:
    """``values`` [H, W] in [0, 1] -> RGBA uint8 [H, W, 4]: inferno colours, opacity rising with the value."""
    rgb = np.stack([np.interp(values, _STOPS, _COLOURS[:, c]) for c in range(3)], axis=-1)
    alpha = 255 * 0.9 * values  # no weight: the image shows through
    return np.concatenate([rgb, alpha[..., None]], axis=-1).round().astype(np.uint8)


def _grey(image: torch.Tensor) -> Image.Image:
    """``image`` [C, H, W] in [0, 1] as a dimmed grey picture, so that the heat map's colours stand out."""
    arr = (image.detach().float().cpu().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    pic = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).convert("L")
    return Image.eval(pic, lambda v: int(v * 0.8))


def _level_picture(grey: Image.Image, size: tuple[int, int], display: tuple[int, int]) -> Image.Image:
    """``grey`` resized to the level's ``size`` (h, w) (what the level holds), then to ``display``."""
    pic = grey.resize(size[::-1], Image.Resampling.BICUBIC).resize(display[::-1], Image.Resampling.BICUBIC)
    return pic.convert("RGBA")


def render_attention_map(
    image: torch.Tensor,
    weights: Sequence[torch.Tensor],
    scales: Sequence[float],
    queries: Sequence[tuple[int, int]],
    *,
    labels: Sequence[str] | None = None,
    top_k: int = 5,
    panel: int = 256,
    patch_size: int = 3,
) -> Image.Image:
    """The picture (RGB) of ``weights``.

    Args:
        image: [C, H, W] in [0, 1], C = 1 or 3: what the panels show (resized to each level).
        weights: :func:`~tri_panet.attention_map.attention_weights` of the queries, per
            level [n_queries, H_l, W_l], the first level the full-size feature map.
        scales: the levels' scales (the titles).
        queries: the n (y, x) feature-map cells of the queries, in first-level coordinates.
        labels: one line per query above its row (default: its cell).
        top_k: strongest keys marked per query, over all levels together.
        panel: display size (px) of the first level's longer side.
        patch_size: side of the query patch (cells), the size of the markers.

    The heat map is normalised per query by its largest weight over all levels (and shown
    through a square root, so that weaker matches stay visible): colours compare levels.
    """
    h0, w0 = weights[0].shape[-2:]
    n = len(queries)
    box_h, box_w = _box((h0, w0), panel)
    zoom = _zoom((h0, w0), panel)
    fig = Image.new("RGB", figure_size((h0, w0), len(weights), n, panel), _BACKGROUND)
    draw = ImageDraw.Draw(fig)
    font, small = _font(12), _font(10)
    grey = _grey(image)
    flat = torch.cat([w.detach().float().cpu().flatten(1) for w in weights], dim=1)  # [n, keys]
    offsets = np.cumsum([0] + [w[0].numel() for w in weights])
    top = flat.topk(min(top_k, flat.shape[1]), dim=1).indices
    for q, (qy, qx) in enumerate(queries):
        y0 = GAP + q * (HEADER + TITLE + box_h + GAP)
        label = labels[q] if labels is not None else f"query at feature cell (y {qy}, x {qx})"
        draw.text((GAP, y0 + 2), f"{label}; {len(top[q])} strongest keys numbered", fill=_TEXT, font=font)
        peak = float(flat[q].max())
        for level, (w, scale) in enumerate(zip(weights, scales)):
            h, w_ = w.shape[-2:]
            display = (round(h * zoom), round(w_ * zoom))
            x0, top_y = GAP + level * (box_w + GAP), y0 + HEADER + TITLE
            share = float(w[q].sum())
            draw.text((x0, y0 + HEADER + 2), f"x{scale:g}: {share:.1%} of the weight", fill=_TEXT, font=font)
            values = np.sqrt(w[q].detach().float().cpu().numpy() / peak)
            heat = Image.fromarray(_heat(values), "RGBA")
            # NEAREST keeps each key cell a crisp block; BOX averages when the panel is smaller than the map
            heat = heat.resize(display[::-1], Image.Resampling.NEAREST if zoom >= 1 else Image.Resampling.BOX)
            fig.paste(Image.alpha_composite(_level_picture(grey, (h, w_), display), heat).convert("RGB"), (x0, top_y))
            # the query's patch, at the same relative place on every level
            cy, cx = (qy + 0.5) * h / h0 * zoom, (qx + 0.5) * w_ / w0 * zoom
            half = max(patch_size * zoom / 2, 3)
            square = (x0 + cx - half, top_y + cy - half, x0 + cx + half, top_y + cy + half)
            draw.rectangle(square, outline=_QUERY, width=2)
            for rank, index in enumerate(top[q].tolist(), start=1):
                if not offsets[level] <= index < offsets[level + 1]:
                    continue
                ky, kx = divmod(index - int(offsets[level]), w_)
                my, mx = top_y + (ky + 0.5) * zoom, x0 + (kx + 0.5) * zoom
                draw.ellipse((mx - half, my - half, mx + half, my + half), outline=_MATCH, width=2)
                draw.text((mx + half + 1, my - half - 2), str(rank), fill=_MATCH, font=small)
    return fig
