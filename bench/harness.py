"""The benchmark harness: the cases, their runners and the timing, shared by ``report.py``
(one table per run) and the pytest-benchmark cases (``test_bench_op.py``, ``test_bench_models.py``).

- the op cases: a pyramid-attention block on one square image, as the functional op or the
  whole block, in one of two configurations (``OP_CONFIGS``): ``panet`` (PANet's block, C =
  64 -> query/key channels 32, value channels 64, five bicubic levels at scales 1.0 ... 0.6,
  patch 3: d_qk = 288, d_v = 576, 1728 FLOPs per query-key pair forward) or ``tiny`` (the
  tiny models' block, C = 32 -> Cq 16, Cv 32, same levels and patch: d_qk = 144, d_v = 288);
- the model cases (``ModelCase``): one optimiser step of a registered tiny model (forward,
  L1 loss, backward, Adam) at its training patch and batch (``train_step``), and
  ``tri_panet.inference.restore`` of one image with the CLI's default tiling (``restore``);
- the implementations compared: ``reference`` (naive, materialises the scores), ``torch``
  (tiled, memory-efficient), ``triton`` (CUDA only), all library backends, and ``sdpa`` /
  ``sdpa_pad``, the PyTorch alternative of ``sdpa.py`` (what a PyTorch user would write),
  which the harness calls itself: nothing is registered in the library.

Import it with this folder on ``sys.path`` (scripts run from here and pytest's rootdir
insertion do that; ``tests/test_benchmarking.py`` adds it).
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from sdpa import pyramid_attention_sdpa, sdpa_kernel_name

from tri_panet.inference import restore
from tri_panet.models import available_models, create, model_info
from tri_panet.nn import DEFAULT_SCALES, PyramidAttention, build_pyramid
from tri_panet.ops import available_backends, pyramid_attention
from tri_panet.training import TrainConfig

# ---------------------------------------------------------------------------------------
# The PANet configuration
# ---------------------------------------------------------------------------------------

CHANNELS = 64  #: block input channels (= value channels)
REDUCTION = 2  #: query/key channels = CHANNELS // REDUCTION
PATCH_SIZE = 3
SCALES = DEFAULT_SCALES
OP_OPTIONS = dict(patch_size=PATCH_SIZE, softmax_scale=10.0, key_eps=1e-4, fold_divisor=4.0)

D_QK = CHANNELS // REDUCTION * PATCH_SIZE**2  # 288
D_V = CHANNELS * PATCH_SIZE**2  # 576
#: Forward FLOPs per (query, key) pair: one d_qk dot product and one d_v weighted sum.
FLOPS_PER_PAIR = 2 * D_QK + 2 * D_V  # 1728
#: Backward FLOPs per forward FLOP (the FlashAttention convention): fwd+bwd counts 3.5x.
BACKWARD_FLOP_FACTOR = 2.5


@dataclass(frozen=True)
class OpConfig:
    """A pyramid-attention block configuration: input channels C (= value channels Cv),
    query/key channels C // reduction, ``SCALES``, patch ``PATCH_SIZE``."""

    name: str
    channels: int
    reduction: int = REDUCTION

    @property
    def query_channels(self) -> int:
        return self.channels // self.reduction

    @property
    def d_qk(self) -> int:
        return self.query_channels * PATCH_SIZE**2

    @property
    def d_v(self) -> int:
        return self.channels * PATCH_SIZE**2

    @property
    def flops_per_pair(self) -> int:
        """Forward FLOPs per (query, key) pair: one d_qk dot product and one d_v weighted sum."""
        return 2 * self.d_qk + 2 * self.d_v

    def describe(self) -> str:
        return (
            f"{self.name}: C={self.channels} -> Cq={self.query_channels}, Cv={self.channels}; scales "
            f"{', '.join(f'{s:g}' for s in SCALES)}; patch {PATCH_SIZE}; d_qk={self.d_qk}, d_v={self.d_v}; one image"
        )


#: ``panet``: the published PANet block; ``tiny``: the block of the tiny models (tiny-*, whose
#: n_feats is 32; the fast-* models run the panet widths, n_feats 64, at half resolution).
OP_CONFIGS = {"panet": OpConfig("panet", CHANNELS), "tiny": OpConfig("tiny", 32)}

IMPLEMENTATIONS = ("reference", "torch", "cpu_fused", "sdpa", "sdpa_pad", "triton")
KINDS = ("op", "block")
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
DEFAULT_SIZES = {"cpu": (32, 48, 64, 96), "cuda": (64, 96, 128, 256, 512)}
DEFAULT_DTYPES = {"cpu": ("float32",), "cuda": ("bfloat16", "float32")}
DEFAULT_MATMUL_SIZE = {"cpu": 2048, "cuda": 4096}
#: Side of the tiny case every memory child runs first, so lazily loaded libraries and
#: per-thread buffers of the math kernels are not counted as the case's memory.
WARMUP_SIZE = 8


def level_sizes(size: int) -> list[tuple[int, int]]:
    """Spatial sizes of the five pyramid levels of a size x size map, exactly as the block
    computes them (``build_pyramid`` run on a shape-only "meta" tensor)."""
    x = torch.empty(1, 1, size, size, device="meta")
    return [tuple(level.shape[2:]) for level in build_pyramid(x, SCALES)]


def query_key_pairs(size: int) -> tuple[int, int]:
    """(queries, keys) of one size x size image: H*W and the sum of H_l*W_l over levels."""
    return size * size, sum(h * w for h, w in level_sizes(size))


def case_flops(size: int, backward: bool, config: str = "panet") -> float:
    """FLOPs of one call: 2 d_qk + 2 d_v per query-key pair forward (1728 for panet, 864 for
    tiny), 3.5x that for forward+backward.

    The block's 1x1 convolutions and bicubic resampling are not counted (under 1 % of the
    attention's FLOPs at 32 px, less above)."""
    n_q, n_k = query_key_pairs(size)
    return n_q * n_k * OP_CONFIGS[config].flops_per_pair * (1 + BACKWARD_FLOP_FACTOR if backward else 1)


# ---------------------------------------------------------------------------------------
# Cases and runners
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One benchmark case: ``impl`` on ``kind`` ("op" or "block") at ``size`` x ``size``
    pixels, one image, inputs of ``dtype`` on ``device``, forward or forward+backward, in the
    block configuration ``config`` (a key of ``OP_CONFIGS``)."""

    impl: str
    kind: str
    size: int
    dtype: str = "float32"
    backward: bool = False
    device: str = "cpu"
    config: str = "panet"

    @property
    def pass_name(self) -> str:
        return "fwd+bwd" if self.backward else "fwd"

    @property
    def op_config(self) -> OpConfig:
        return OP_CONFIGS[self.config]

    @property
    def name(self) -> str:
        prefix = "" if self.config == "panet" else f"{self.config}-"  # panet names as before
        return f"{prefix}{self.kind}-{self.impl}-{self.size}px-{self.dtype}-{self.pass_name}-{self.device}"


def triton_available(device: str) -> bool:
    """True when the library's "triton" backend imported and ``device`` is a usable CUDA device."""
    return device == "cuda" and torch.cuda.is_available() and "triton" in available_backends()


def unavailable(impl: str, device: str) -> str | None:
    """Why ``impl`` cannot be benchmarked on ``device`` here (a library backend this machine lacks,
    or one for the other device), or None."""
    if impl == "triton" and not triton_available(device):
        return "triton: benchmarked on CUDA only, with the 'triton' backend registered"
    if impl == "cpu_fused" and (device != "cpu" or "cpu_fused" not in available_backends()):
        return "cpu_fused: CPU tensors only, with a C compiler to build the kernel"
    return None


def op_function(impl: str) -> Callable[..., torch.Tensor]:
    """The functional op of ``impl`` (signature of ``pyramid_attention`` without backend): a
    library backend, or this folder's SDPA alternative (which the library does not know)."""
    if impl in ("sdpa", "sdpa_pad"):
        return functools.partial(pyramid_attention_sdpa, pad_qk=impl == "sdpa_pad")
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
    return functools.partial(pyramid_attention, backend=impl)


def sdpa_kernel(case: Case) -> str:
    """The SDPA kernel torch picks for an "sdpa" / "sdpa_pad" case (sdpa_pad's q/k are d_v wide)."""
    cfg = case.op_config
    d_qk = cfg.d_v if case.impl == "sdpa_pad" else cfg.d_qk
    return sdpa_kernel_name(d_qk, cfg.d_v, DTYPES[case.dtype], case.device, case.backward)


def make_block(seed: int = 0, config: str = "panet") -> PyramidAttention:
    """The block of ``config`` (panet: channels 64, reduction 2, 5 levels); its weights depend
    on ``seed`` only (default init drawn under a private RNG state). Runners pick the op."""
    cfg = OP_CONFIGS[config]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PyramidAttention(cfg.channels, cfg.reduction, SCALES, PATCH_SIZE)


def block_forward(block: PyramidAttention, x: torch.Tensor, impl: str) -> torch.Tensor:
    """The block's forward with the op of ``impl``: ``block.embed`` (1x1 embeddings of x and its
    pyramid), the op, the residual, as ``PyramidAttention.forward`` does with a backend name."""
    return op_function(impl)(*block.embed(x), **OP_OPTIONS) + block.res_scale * x


def block_input(size: int, seed: int = 0, config: str = "panet") -> torch.Tensor:
    """The block's input: N(0, 1) features [1, C, size, size] (C = 64 for panet), float32, CPU."""
    channels = OP_CONFIGS[config].channels
    return torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(seed))


def op_inputs(
    size: int, seed: int = 0, config: str = "panet"
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """(query [1, Cq, S, S], keys, values) of the op: the block's own embeddings of
    ``block_input(size, seed, config)`` (so scores have PANet's realistic spread), float32, CPU."""
    with torch.no_grad():
        return make_block(seed, config).embed(block_input(size, seed, config))


def output_gradient(size: int, seed: int = 1, config: str = "panet") -> torch.Tensor:
    """The upstream gradient of fwd+bwd cases: N(0, 1), [1, C, size, size], float32, CPU."""
    channels = OP_CONFIGS[config].channels
    return torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(seed))


def build_runner(case: Case, seed: int = 0) -> Callable[[], list[torch.Tensor]]:
    """A closure that runs ``case`` once and returns what it computed: the output (fwd), or
    the gradients of the inputs (fwd+bwd: op -> query, keys..., values...; block -> x).

    Inputs, weights and the upstream gradient are created here, once, so the closure
    times only the computation. Forward runs under ``torch.no_grad`` (inference).
    """
    dtype, device = DTYPES[case.dtype], torch.device(case.device)
    if case.kind == "op":
        query, keys, values = op_inputs(case.size, seed, case.config)
        query = query.to(device, dtype).requires_grad_(case.backward)
        keys = [k.to(device, dtype).requires_grad_(case.backward) for k in keys]
        values = [v.to(device, dtype).requires_grad_(case.backward) for v in values]
        fn = op_function(case.impl)
        leaves = [query, *keys, *values]
        params: list[torch.Tensor] = []

        def forward() -> torch.Tensor:
            return fn(query, keys, values, **OP_OPTIONS)

    elif case.kind == "block":
        block = make_block(seed, case.config).to(device, dtype)
        x = block_input(case.size, seed, case.config).to(device, dtype).requires_grad_(case.backward)
        leaves, params = [x], list(block.parameters())
        block.requires_grad_(case.backward)

        def forward() -> torch.Tensor:
            return block_forward(block, x, case.impl)

    else:
        raise ValueError(f"kind must be one of {KINDS}, got {case.kind!r}")

    if not case.backward:

        def run() -> list[torch.Tensor]:
            with torch.no_grad():
                return [forward()]

        return run

    grad_out = output_gradient(case.size, config=case.config).to(device, dtype)

    def run_backward() -> list[torch.Tensor]:
        for t in leaves + params:
            t.grad = None
        forward().backward(grad_out)
        return [t.grad for t in leaves]

    return run_backward


# ---------------------------------------------------------------------------------------
# Model cases: one optimiser step, one restore
# ---------------------------------------------------------------------------------------

MODEL_KINDS = ("train_step", "restore")
#: Image side (input pixels) of the ``restore`` cases unless given. The CLI's ``--tile auto``
#: picks the tile from the image size too (on a CPU the tiny models get the same 64 x 64 tiles
#: at 256 px as at 500 px, but 48 x 48 at 128 px); whole-image attention grows as (H W)^2.
DEFAULT_RESTORE_SIZE = 256


def tiny_models() -> tuple[str, ...]:
    """The registered tiny models (tiny-* and fast-*: classes TinyPANet / TinySR), registry order."""
    return tuple(n for n in available_models() if model_info(n)["class"] in ("TinyPANet", "TinySR"))


def training_defaults() -> tuple[int, int]:
    """(patch side, batch) of a training run with default settings: ``TrainConfig``'s own
    defaults (the patch is the input side, so the LR side for sr)."""
    defaults = TrainConfig()
    return defaults.patch_size, defaults.batch_size


def cli_default_tiling(model: torch.nn.Module, size: int, device: str = "cpu") -> dict:
    """How ``tri-panet restore`` without tiling flags restores one ``size`` x ``size`` image
    with ``model`` on ``device``: {"flag": the --tile default, "tile": the tile side it
    resolves to (None: the whole image), "tile_overlap"}.

    Nothing is copied here: the defaults are the CLI parser's own (``build_parser``), and the
    tile is resolved by the CLI's own ``plan_tile`` (``--tile auto`` picks the tile per model,
    image size and device; imported lazily so that a CLI being edited cannot break the op
    benchmarks)."""
    from tri_panet.cli import build_parser
    from tri_panet.cli.common import plan_tile

    name = getattr(model, "model_name", None) or "tiny-denoise"
    args = build_parser().parse_args(["restore", "IN.png", "-o", "OUT.png", "--model", name])
    tile = plan_tile(args, model, torch.device(device), [(size, size)])
    return {"flag": args.tile, "tile": tile, "tile_overlap": args.tile_overlap}


def tiling_label(tiling: dict) -> str:
    """Short text of a tiling: "--tile auto: 64x64 tiles, overlap 16", "--tile auto: whole image"."""
    flag = "0" if tiling["flag"] is None else tiling["flag"]
    tile = tiling["tile"]
    what = "whole image" if tile is None else f"{tile}x{tile} tiles, overlap {tiling['tile_overlap']}"
    return f"--tile {flag}: {what}"


@dataclass(frozen=True)
class ModelCase:
    """One model case: ``kind`` "train_step" (one optimiser step on a batch of ``batch``
    patches of ``size`` x ``size`` input pixels) or "restore" (``restore`` of ``batch``
    images of ``size`` x ``size`` input pixels with the CLI's default tiling) of the
    registered ``model``, float32 on ``device``, attention backend ``backend``."""

    model: str
    kind: str
    size: int
    batch: int = 1
    device: str = "cpu"
    backend: str = "auto"

    @property
    def name(self) -> str:
        backend = "" if self.backend == "auto" else f"-{self.backend}"
        return f"{self.kind}-{self.model}-{self.size}px-b{self.batch}-{self.device}{backend}"

    @property
    def scale(self) -> int:
        return model_info(self.model)["scale"]

    @property
    def output_pixels(self) -> int:
        """Output pixels of one call (all images of the batch)."""
        return self.batch * (self.size * self.scale) ** 2


def make_model(name: str, seed: int = 0, backend: str = "auto") -> torch.nn.Module:
    """The registered model ``name`` with default-initialised weights drawn from ``seed``
    (under a private RNG state): timings do not depend on the weights' values."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create(name, backend=backend)


def build_model_runner(case: ModelCase, seed: int = 0) -> Callable[[], object]:
    """A closure that runs ``case`` once: "train_step" returns the step's L1 loss (detached),
    "restore" the restored images. Model, optimiser and data are made here, once.

    The step is what ``tri_panet.training.Trainer`` does per step (without its learning-rate
    schedule): zero the gradients, forward, ``F.l1_loss`` against a target of the output's
    size (``size * scale`` for sr), backward, ``Adam.step`` with ``TrainConfig``'s lr and betas.
    Inputs are uniform random in [0, 1] (the cost does not depend on the content).
    """
    if case.kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}, got {case.kind!r}")
    device = torch.device(case.device)
    model = make_model(case.model, seed, case.backend).to(device)
    n_colors, scale = model_info(case.model)["n_colors"], case.scale
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(case.batch, n_colors, case.size, case.size, generator=g).to(device)
    if case.kind == "restore":
        tiling = cli_default_tiling(model, case.size, case.device)

        def run_restore() -> torch.Tensor:
            return restore(model, x, tile=tiling["tile"], tile_overlap=tiling["tile_overlap"])

        run_restore.tiling = tiling  # what the report and the benchmark cases print
        return run_restore

    target = torch.rand(case.batch, n_colors, case.size * scale, case.size * scale, generator=g).to(device)
    defaults = TrainConfig()
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=defaults.lr, betas=tuple(defaults.betas))

    def run_step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = F.l1_loss(model(x), target)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return run_step


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


#: A case whose warm-up call takes longer than this many seconds is timed once only.
LONG_CALL_SECONDS = 10.0


def time_runs(
    run: Callable[[], object], device: str, min_repeats: int = 3, min_time: float = 1.0, max_repeats: int = 50
) -> tuple[list[float], object]:
    """(seconds of each timed call, result of the last call) of ``run`` after one warm-up
    call: at least ``min_repeats`` calls (1 when the warm-up took over LONG_CALL_SECONDS),
    more until ``min_time`` seconds are spent (at most ``max_repeats``)."""
    start = time.perf_counter()
    result = run()
    _synchronize(device)
    if time.perf_counter() - start > LONG_CALL_SECONDS:
        min_repeats = 1
    times: list[float] = []
    while len(times) < min_repeats or (sum(times) < min_time and len(times) < max_repeats):
        del result  # free the previous output before the next call
        start = time.perf_counter()
        result = run()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return times, result


def matmul_flops(dtype: torch.dtype, n: int, device: str, min_repeats: int = 5, min_time: float = 1.0) -> float:
    """FLOP/s of ``torch.matmul`` on two n x n matrices of ``dtype`` (median of repeats)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    times, _ = time_runs(lambda: a @ b, device, min_repeats, min_time)
    return 2 * n**3 / statistics.median(times)
