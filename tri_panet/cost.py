"""What a restoration or a training step will cost, known before it runs: time and memory
estimates, the tile that ``--tile auto`` picks, and the guards that refuse what cannot fit.

Pyramid attention's cost follows from the sizes alone. On an h x w map each of the h*w
queries meets every key of the pyramid, keys = the sum over levels of h_l * w_l (about
3.3 h*w for the official five levels, :func:`tri_panet.resize.level_size`), so its FLOPs
grow like (h*w)^2; its memory grows with the keys: the embeddings of every level, their
padded copies and, on the CPU path, score tiles of a fixed budget (at least one query's
row of keys). The convolutions grow like h*w. So a large image is restored in tiles, and
the cost of a tile size is known in advance.

The estimates are deliberately rough (a guard and a choice, not a benchmark):

- time: the nominal FLOPs (:func:`tri_panet.models.model_complexity`: convolutions, and
  the attention at 2 d_qk + 2 d_v FLOPs per query-key pair) at a conservative throughput
  per device (:data:`FLOPS_PER_SECOND`); a busy machine is slower;
- memory: the feature maps a forward holds at once (the largest convolution's input and
  output, or a few maps around the attention plus its inputs and score tiles), plus the
  whole-image buffers of ``restore``; for training, the maps the backward keeps. On the
  project's CPU the estimates were 10-60 % above the measured peaks (extra RSS) of
  tiny-denoise (whole images of 64-192 px; training batches of 8 patches of 48 and 96 px),
  and the two phases (the convolutions; the attention's inputs), measured with the op
  itself left out, matched tiny-denoise at 500 and 1000 px, PANet at 500 px and PA-EDSR x2
  at 300 px to within 11 % (before the fixed allowance for the allocator).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from .inference import check_tile, tile_starts
from .models import describe, model_complexity
from .models.complexity import attention_flops
from .nn import PyramidAttention
from .ops import resolve_backend
from .ops.torch_tiled import BACKWARD_TILES, FORWARD_TILES, current_tile_bytes, query_tile_shape
from .resize import level_size

__all__ = [
    "AUTO_FLOPS_PER_PIXEL",
    "CostModel",
    "Estimate",
    "FLOPS_PER_SECOND",
    "available_memory",
    "format_bytes",
    "format_seconds",
    "plan_restore",
    "tile_text",
]

#: Nominal FLOP/s assumed per device (per thread on a CPU), on the low side: the bundled
#: demo (25 tiles of 64 x 64, tiny-denoise) ran at 226 nominal GFLOP/s on 2 quiet cores of
#: the project's machines (113 per thread). The GPU figure is a guess (the Triton kernels
#: have not been timed on a GPU yet).
FLOPS_PER_SECOND = {"cpu": 50e9, "cuda": 20e12}

#: ``--tile auto`` takes the largest tile (or the whole image) whose nominal FLOPs per
#: restored pixel stay within this, per device: on a CPU 25 MFLOP/px admits 64 x 64 tiles
#: of the tiny models (21 MFLOP/px with a 16 px overlap; about 3.5 min per megapixel on 2
#: cores at FLOPS_PER_SECOND) but not 96 x 96 (38 MFLOP/px); on a GPU 2 GFLOP/px admits
#: the whole image up to about 0.7 Mpx (tiny models) or 0.35 Mpx (PANet). Per pixel, so
#: that the choice does not depend on the image's size, nor on the load of the machine.
#: The fast family (attention on a half-side map) would be admitted 192 px tiles (19
#: MFLOP/px; 64 px: 3.2) but gains nothing from them: the model's ``tile`` caps the choice.
AUTO_FLOPS_PER_PIXEL = {"cpu": 25e6, "cuda": 2e9}

#: Tile sides ``--tile auto`` considers, largest first (after the whole image).
AUTO_TILES = (1024, 768, 512, 384, 256, 192, 128, 96, 64, 48)

#: Share of the available memory an estimate may take (the rest: the process, the system).
MEMORY_SHARE = 0.8

#: Training steps estimated to take longer than this are refused (a patch size that cannot
#: be meant: ``--patch-size 1000`` would take days per step on a CPU).
MAX_STEP_SECONDS = 3600.0

_BYTES = 4  # float32
_LIVE_MAPS = 3  # feature maps held around the attention block (its input, the skip, the head's)
_SAVED_PER_CONV_INPUT = 1.25  # training: each conv keeps its input, activations add about a quarter
_OVERHEAD = 64 * 2**20  # allocator and thread pools


def format_seconds(seconds: float) -> str:
    """``12 s``, ``3.2 min``, ``2.1 h`` or ``3.4 days``."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s" if seconds >= 1 else f"{seconds:.1f} s"


def format_bytes(n: float) -> str:
    """``512 MiB`` or ``1.9 GiB``."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _read_int(path: str) -> int | None:
    """The integer in a one-line file (a cgroup limit), None if absent or ``max``."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory(device: torch.device) -> int:
    """Bytes a new allocation on ``device`` can take: a GPU's free memory; on a CPU the
    system's available memory (Linux ``MemAvailable``), within the cgroup's limit."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    if available is None:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:
        available = min(available, max(limit - used, 0))
    return available


@dataclass(frozen=True)
class Estimate:
    """The cost of one job: ``seconds`` (nominal FLOPs at the device's throughput),
    ``peak_bytes`` (memory at the busiest moment), ``flops``, and the ``tile`` it assumes
    (None: the whole image; for training: the patch side)."""

    seconds: float
    peak_bytes: float
    flops: float
    tile: int | None = None

    def __add__(self, other: Estimate) -> Estimate:
        """Two jobs one after the other: times add, the peak is the larger."""
        return replace(
            self,
            seconds=self.seconds + other.seconds,
            flops=self.flops + other.flops,
            peak_bytes=max(self.peak_bytes, other.peak_bytes),
        )

    def describe(self) -> str:
        """``about 3.2 min and 1.1 GiB``."""
        return f"about {format_seconds(self.seconds)} and {format_bytes(self.peak_bytes)}"


def tile_text(tile: int | None) -> str:
    """``64x64 tiles`` or ``the whole image``."""
    return f"{tile}x{tile} tiles" if tile else "the whole image"


class CostModel:
    """Estimates for ``model`` on ``device`` with ``threads`` CPU threads (see the module
    docstring). The per-pixel costs of the convolutions are traced once (meta device), the
    attention's are computed from the sizes."""

    def __init__(self, model: nn.Module, device: torch.device, threads: int | None = None):
        self.device = device
        self.info = describe(model)
        ref = 64 + (-64) % self.info.multiple  # a size every model takes
        traced = model_complexity(model, (ref, ref))
        blocks = [m for m in model.modules() if isinstance(m, PyramidAttention)]
        # The blocks the forward calls, each with the stride of its map: the fast family
        # attends on a map of half the input's side, at an eighth of the cost.
        self.blocks = [b for b, size in zip(blocks, traced["attention_sizes"]) if size is not None]
        self.strides = [ref // size[0] for size in traced["attention_sizes"] if size is not None]
        pixels = ref * ref
        self.conv_flops = traced["conv_flops"] / pixels  # per input pixel
        self.conv_inputs = traced["conv_input_elements"] / pixels
        self.largest_conv = traced["largest_conv_elements"] / pixels
        self.in_channels = self.info.n_colors or 3
        per_second = FLOPS_PER_SECOND.get(device.type, FLOPS_PER_SECOND["cpu"])
        cpu = device.type == "cpu"
        self.flops_per_second = per_second * (threads or torch.get_num_threads()) if cpu else per_second
        probe = torch.empty(0, device=device)
        self.torch_path = [resolve_backend(b.backend, probe) == "torch" for b in self.blocks]

    # ------------------------------------------------------------------ one forward

    def _attention_maps(self, h: int, w: int) -> list[tuple[PyramidAttention, int, int, bool]]:
        """(block, map height, map width, runs the torch path) of every attention block
        for an h x w input."""
        return [
            (b, -(-h // s), -(-w // s), torch_path)
            for b, s, torch_path in zip(self.blocks, self.strides, self.torch_path)
        ]

    @staticmethod
    def _keys(block: PyramidAttention, h: int, w: int) -> int:
        """The keys of the block's pyramid on an h x w map (all levels)."""
        return sum(math.prod(level_size(h, w, s)) for s in block.scales)

    def _embedding_elements(self, block: PyramidAttention, h: int, w: int) -> float:
        """Elements (float32) of the attention block's inputs on an h x w map: the pyramid's
        resized levels, keys and values of every level, the queries, the op's padded copies
        of keys and values, and its output."""
        keys = self._keys(block, h, w)
        resized = sum(math.prod(level_size(h, w, s)) for s in block.scales if s != 1)
        cq, cv = block.conv_match[0].out_channels, block.conv_assembly[0].out_channels
        pad = 2 * (block.patch_size // 2)
        return block.channels * resized + 2 * (cq + cv) * keys + cq * h * w + 2 * cv * (h + pad) * (w + pad)

    def _tile_elements(self, block: PyramidAttention, h: int, w: int, buffers: int) -> float:
        """Elements of the CPU path's score tiles: ``buffers`` [rows, cols, keys] tiles
        sized for its budget (at least one query's row of keys), as the op sizes them."""
        keys = self._keys(block, h, w)
        rows, cols = query_tile_shape(h, w, keys, buffers, _BYTES, current_tile_bytes())
        return buffers * rows * cols * keys

    def forward_flops(self, h: int, w: int) -> float:
        """Nominal FLOPs of one forward of a [1, C, h, w] input."""
        attention = sum(attention_flops(b, (bh, bw)) for b, bh, bw, _ in self._attention_maps(h, w))
        return self.conv_flops * h * w + attention

    def forward_bytes(self, h: int, w: int) -> float:
        """Peak bytes of one forward (no gradients) of a [1, C, h, w] input: the larger of
        the busiest convolution (its input and output, and one more map) and the busiest
        attention block (its inputs and tiles, and the feature maps around it)."""
        convs = 2 * self.largest_conv * h * w
        attention = max(
            (
                _LIVE_MAPS * b.channels * bh * bw
                + self._embedding_elements(b, bh, bw)
                + (self._tile_elements(b, bh, bw, FORWARD_TILES) if torch_path else 0)
                for b, bh, bw, torch_path in self._attention_maps(h, w)
            ),
            default=0.0,
        )
        return max(convs, attention) * _BYTES + _OVERHEAD

    # ------------------------------------------------------------------ jobs

    def restore(
        self, size: tuple[int, int], tile: int | None, overlap: int = 16, *, self_ensemble: bool = False
    ) -> Estimate:
        """The cost of ``restore`` on an image of ``size`` = (H, W): whole (``tile`` None) or
        in ``tile`` x ``tile`` tiles overlapping by ``overlap``, as ``restore`` lays them."""
        m = self.info.multiple
        h, w = size[0] + (-size[0]) % m, size[1] + (-size[1]) % m
        if tile is None or tile >= max(h, w):
            th, tw, count, tile = h, w, 1, None
        else:
            th, tw = min(tile, h), min(tile, w)
            count = len(tile_starts(h, th, overlap, m)) * len(tile_starts(w, tw, overlap, m))
        flops = count * self.forward_flops(th, tw) * (8 if self_ensemble else 1)
        out = self.info.scale**2 * h * w * (self.info.n_colors or self.in_channels)
        buffers = (self.in_channels * h * w + (4 if self_ensemble else 3) * out + self.info.scale**2 * h * w) * _BYTES
        return Estimate(flops / self.flops_per_second, buffers + self.forward_bytes(th, tw), flops, tile)

    def restore_all(self, sizes: Sequence[tuple[int, int]], tile: int | None, overlap: int = 16, **kw) -> Estimate:
        """:meth:`restore` of several images one after the other (``sizes``: (H, W) each)."""
        estimates = [self.restore(s, tile, overlap, **kw) for s in sizes]
        total = estimates[0]
        for e in estimates[1:]:
            total = total + e
        return replace(total, tile=tile)

    def training_step(self, patch: int, batch: int) -> Estimate:
        """The cost of one training step on ``batch`` patches of ``patch`` x ``patch`` input
        pixels: forward and backward (3.5x the forward's FLOPs, as measured for the op), and
        the maps the backward keeps (every conv's input, the attention's inputs and tiles)."""
        flops = 3.5 * batch * self.forward_flops(patch, patch)
        kept = _SAVED_PER_CONV_INPUT * self.conv_inputs * patch * patch
        maps = self._attention_maps(patch, patch)
        kept += sum(self._embedding_elements(b, bh, bw) for b, bh, bw, _ in maps)
        tiles = max(
            (
                self._tile_elements(b, bh, bw, BACKWARD_TILES)  # one call's, whatever the batch
                for b, bh, bw, torch_path in maps
                if torch_path
            ),
            default=0.0,
        )
        return Estimate(flops / self.flops_per_second, (batch * kept + tiles) * _BYTES + _OVERHEAD, flops, patch)

    # ------------------------------------------------------------------ choices and guards

    def auto_tile(
        self, sizes: Sequence[tuple[int, int]], overlap: int = 16, *, self_ensemble: bool = False
    ) -> Estimate:
        """The estimate of the tile ``--tile auto`` picks for images of ``sizes``: the whole
        image, else the largest of :data:`AUTO_TILES`, whose FLOPs per pixel stay within
        :data:`AUTO_FLOPS_PER_PIXEL`, whose memory fits and which is no larger than the
        model's ``tile`` (:class:`~tri_panet.models.ModelInfo`: larger ones would only be
        slower); if none is that cheap, the cheapest that fits. ValueError (with the
        estimate) when nothing fits."""
        largest = max(max(s) for s in sizes)
        m = self.info.multiple
        cap = self.info.tile or largest
        sides = sorted(
            {t - t % m for t in AUTO_TILES if t - t % m > overlap and t < largest and t <= cap}, reverse=True
        )
        whole = [None] if largest <= cap else []
        pixels = sum(h * w for h, w in sizes)
        budget = AUTO_FLOPS_PER_PIXEL.get(self.device.type, AUTO_FLOPS_PER_PIXEL["cpu"])
        memory = MEMORY_SHARE * available_memory(self.device)
        fitting = [
            e
            for e in (self.restore_all(sizes, t, overlap, self_ensemble=self_ensemble) for t in [*whole, *sides])
            if e.peak_bytes <= memory
        ]
        if not fitting:
            smallest = self.restore_all(sizes, sides[-1] if sides else None, overlap, self_ensemble=self_ensemble)
            raise ValueError(
                f"restoring needs {smallest.describe()} even with {tile_text(smallest.tile)}, more than "
                f"the {format_bytes(memory / MEMORY_SHARE)} of memory available"
            )
        cheap = [e for e in fitting if e.flops / (8 if self_ensemble else 1) / pixels <= budget]
        return cheap[0] if cheap else min(fitting, key=lambda e: e.flops)

    def check_restore(
        self, sizes: Sequence[tuple[int, int]], tile: int | None, overlap: int = 16, *, self_ensemble: bool = False
    ) -> Estimate:
        """The estimate of restoring ``sizes`` with ``tile`` (None: whole images); ValueError
        saying it and the tile to use instead when it would not fit in memory."""
        estimate = self.restore_all(sizes, tile, overlap, self_ensemble=self_ensemble)
        available = available_memory(self.device)
        if estimate.peak_bytes > MEMORY_SHARE * available:
            h, w = max(sizes, key=lambda s: s[0] * s[1])
            suggestion = self.auto_tile(sizes, overlap, self_ensemble=self_ensemble)
            raise ValueError(
                f"restoring {h}x{w} with {tile_text(tile)} needs {estimate.describe()} "
                f"({self._attention_text(h, w, tile)}), "
                f"more than the {format_bytes(available)} of memory available on {self.device}; "
                f"--tile {suggestion.tile or 0} (what --tile auto picks) needs {suggestion.describe()}"
            )
        return estimate

    def check_training(self, patch: int, batch: int) -> Estimate:
        """The estimate of one training step; ValueError saying it when it would not fit in
        memory or would take more than :data:`MAX_STEP_SECONDS`."""
        estimate = self.training_step(patch, batch)
        available = available_memory(self.device)
        too_big = estimate.peak_bytes > MEMORY_SHARE * available
        if too_big or estimate.seconds > MAX_STEP_SECONDS:
            limit = f"more than the {format_bytes(available)} available" if too_big else "far too long for a step"
            raise ValueError(
                f"patch size {patch} with batch size {batch}: one training step needs {estimate.describe()} on "
                f"{self.device} ({limit}; the attention's cost grows with the 4th power of the patch side): "
                "use --patch-size 48 to 96 (or a smaller --batch-size)"
            )
        return estimate

    def _attention_text(self, h: int, w: int, tile: int | None) -> str:
        """``36,000,000 queries x 118,800,000 keys`` of the first attention block, per tile."""
        if not self.blocks:
            return "no attention"
        th, tw = (min(tile, h), min(tile, w)) if tile else (h, w)
        block, bh, bw, _ = self._attention_maps(th, tw)[0]
        keys = self._keys(block, bh, bw)
        return f"attention of {bh * bw:,} queries x {keys:,} keys{' per tile' if tile else ''}"


def plan_restore(
    model: nn.Module,
    device: torch.device,
    sizes: Sequence[tuple[int, int]],
    tile: int | str | None,
    overlap: int = 16,
    *,
    self_ensemble: bool = False,
) -> Estimate:
    """The estimate (and so the tile: ``.tile``, None for whole images) of restoring images
    of ``sizes`` with ``tile``: ``"auto"`` picks it (:meth:`CostModel.auto_tile`); a side or
    None (whole images) is checked to fit in memory (:meth:`CostModel.check_restore`).
    ValueError, with the estimate, for a tile ``restore`` refuses or one that cannot fit."""
    costs = CostModel(model, device)
    if tile == "auto":
        return costs.auto_tile(sizes, overlap, self_ensemble=self_ensemble)
    check_tile(tile, overlap, costs.info.multiple)
    return costs.check_restore(sizes, tile, overlap, self_ensemble=self_ensemble)
