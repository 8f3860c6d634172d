"""How the Triton kernels are launched: block sizes, value-channel split and autotuning per GPU.

Every number here was chosen with the compiler on a CPU machine (``tests/test_triton_compile.py``
compiles each config for sm_80 and sm_90 and reads shared memory, registers and spills) and is
explained in docs/TRITON.md. Under Triton's CPU interpreter (``TRITON_INTERPRET=1``, the tests)
one config is pinned instead.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
from triton.runtime.jit import JITFunction

from ..kernels.pyramid_fwd import pyramid_fwd_kernel

#: Whether the kernels run in Triton's CPU interpreter. Triton decides that once, when the
#: kernels are decorated (``TRITON_INTERPRET`` at the import of ``tri_panet.kernels``), by
#: returning an interpreter wrapper instead of a JITFunction; this asks the kernel itself, so
#: changing the environment variable later changes neither.
INTERPRETING = not isinstance(pyramid_fwd_kernel, JITFunction)

#: GPU families with their own tuning: "sm90" (Hopper and newer, wgmma) and "sm80" (Ampere, mma.sync).
FAMILIES = ("sm80", "sm90")

#: Value columns (k*k * value channels) one forward program may accumulate, by family and input
#: element size. A program keeps its k*k query tiles and its [BLOCK_M, columns] float32 value
#: accumulator in registers; wider values are split over grid axis 1, recomputing the scores
#: per slice. These caps are the widest that compile without register spills (see
#: tests/test_triton_compile.py and docs/TRITON.md): PANet's 576 columns run as 2 slices
#: on sm90 and 4 on sm80.
VALUE_COLUMNS = {"sm90": {2: 288, 4: 144}, "sm80": {2: 144, 4: 144}}

#: At most this many value channels per program (1x1 patches: 256 channels spill on sm90).
MAX_VALUE_BLOCK = 128

#: Value columns under the interpreter: small, so that the tests cover the channel split.
INTERPRET_VALUE_COLUMNS = 144

#: (BLOCK_M, BLOCK_N, num_warps, num_stages) the autotuner tries per family, the default first.
#: With two chained dots Triton gives every warp whole rows of the [BLOCK_M, columns]
#: accumulator, so rows per warp times columns bounds the registers. Only configs that spill
#: no or few registers at PANet shapes are listed (tests/test_triton_compile.py).
GPU_CONFIGS = {
    "sm90": ((64, 32, 8, 1), (64, 64, 8, 1), (64, 32, 8, 2)),
    "sm80": ((128, 32, 8, 1), (64, 16, 4, 1), (64, 32, 4, 1)),
}

#: Pinned config under the interpreter: each program instance costs ~1 ms there and the cost
#: is per operation, not per element, so large blocks are cheapest.
INTERPRET_CONFIG = (64, 64, 4, 1)

#: Block sizes of the light kernels: key-norm pre-pass and the backward's row statistics.
NORM_BLOCK = 64
DELTA_BLOCK = 64

#: (BLOCK_M, BLOCK_N, num_warps, num_stages) of the backward kernels per family: configs that
#: compile without register spills at PANet shapes (tests/test_triton_compile.py); not autotuned.
BWD_CONFIGS = {
    "sm90": {"dq": (64, 64, 8, 1), "dk": (64, 64, 8, 1), "dv": (64, 64, 8, 1)},
    "sm80": {"dq": (64, 32, 8, 1), "dk": (32, 64, 8, 1), "dv": (32, 64, 8, 1)},
}

#: The largest block of positions any kernel walks: its last block overhangs the end of a map
#: by less than this (masked), which the int32 index bound must allow for.
LARGEST_BLOCK = max(
    NORM_BLOCK,
    DELTA_BLOCK,
    *INTERPRET_CONFIG[:2],
    *(size for configs in GPU_CONFIGS.values() for config in configs for size in config[:2]),
    *(size for kernels in BWD_CONFIGS.values() for config in kernels.values() for size in config[:2]),
)

#: Largest shared memory per block by family when the device cannot be asked (A100, H100).
SHARED_LIMIT = {"sm80": 166_912, "sm90": 232_448}


def interpreting() -> bool:
    """True when the kernels run in Triton's CPU interpreter (fixed at import: :data:`INTERPRETING`)."""
    return INTERPRETING


def family(capability: tuple[int, int]) -> str:
    """Tuning family of a CUDA compute capability: "sm90" from 9.0 on, else "sm80"."""
    return "sm90" if capability[0] >= 9 else "sm80"


def padded_channels(channels: int) -> int:
    """Channels rounded up to a power of two >= 16 (``tl.arange`` and ``tl.dot`` need it)."""
    return max(16, triton.next_power_of_2(channels))


def value_block(value_channels: int, patch_size: int, max_columns: int) -> int:
    """Value channels per forward program: the widest power of two in [16, MAX_VALUE_BLOCK]
    whose k*k columns fit ``max_columns`` (at least 16); more channels are split over the grid."""
    kk = patch_size * patch_size
    block = min(padded_channels(value_channels), MAX_VALUE_BLOCK)
    while block > 16 and kk * block > max_columns:
        block //= 2
    return block


class ChannelLayout(NamedTuple):
    """How one call's channels are laid out for the kernels (all counts are channels)."""

    family: str | None  # GPU tuning family, None under the interpreter
    cqp: int  # query/key channels padded to a power of two >= 16
    cv_block: int  # value channels per forward program (and dP chunk, dV slice)
    cvp: int  # value channels padded to a multiple of cv_block (NOT always a power of two)
    cq_block: int  # query channels per dQ / dK program


def channel_layout(query: torch.Tensor, value_channels: int, patch_size: int) -> ChannelLayout:
    """The channel layout of a call with ``query`` [B, Cq, H, W] and ``value_channels``: the one
    rule the packing, the kernels' constexprs and the saved state's shape all follow.

    The value cap depends on where the kernels run: the interpreter's small cap, or the GPU
    family's for the element size of ``query``.
    """
    if INTERPRETING:
        fam, max_columns = None, INTERPRET_VALUE_COLUMNS
    else:
        fam = family(torch.cuda.get_device_capability(query.device))
        max_columns = VALUE_COLUMNS[fam][query.element_size()]
    cv_block = value_block(value_channels, patch_size, max_columns)
    return ChannelLayout(
        family=fam,
        cqp=padded_channels(query.shape[1]),
        cv_block=cv_block,
        cvp=triton.cdiv(value_channels, cv_block) * cv_block,
        cq_block=value_block(query.shape[1], patch_size, max_columns),
    )


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input_precision: float32 dots follow ``torch.backends.cuda.matmul.allow_tf32``."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def shared_estimate(config, patch_size: int, cqp: int, cv_block: int, element_size: int) -> int:
    """Upper estimate of a forward config's shared memory in bytes (checked against the compiler
    by tests/test_triton_compile.py): the k*k query tiles live in shared memory for the whole
    loop; a pipelined config (num_stages >= 2) also buffers the k*k key and value tiles and
    the probabilities of every stage, an unpipelined one stages one key and value tile. The
    fold's layout conversion of a float32 [BLOCK_M, CV_BLOCK] tile reuses that memory."""
    block_m, block_n, _, stages = config
    kk = patch_size * patch_size
    query = kk * block_m * cqp
    if stages >= 2:
        staging = stages * (kk * block_n * (cqp + cv_block) + block_m * block_n)
    else:
        staging = block_n * (cqp + cv_block)
    return max((query + staging) * element_size, block_m * cv_block * 4)


def fitting_configs(fam: str, patch_size: int, cqp: int, cv_block: int, element_size: int, limit: int):
    """The family's configs whose shared memory fits ``limit`` (the least hungry one if none does)."""
    configs = GPU_CONFIGS[fam]
    fits = [c for c in configs if shared_estimate(c, patch_size, cqp, cv_block, element_size) <= limit]
    return fits or [min(configs, key=lambda c: shared_estimate(c, patch_size, cqp, cv_block, element_size))]


def device_shared_limit(device: torch.device, fam: str) -> int:
    """Opt-in shared memory per block of ``device`` (the family's table value if unknown)."""
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "shared_memory_per_block_optin", 0) or SHARED_LIMIT[fam])


def size_class(batch: int, queries: int, keys: int) -> tuple[int, int]:
    """The problem-size class the forward's tuning is kept per: (bits of batch x queries, bits of
    keys), i.e. powers of two. The number of query programs decides how well a config fills
    the GPU and the keys decide the length of each program's loop, so the best config changes
    with both; Triton's own autotune key sees only kernel arguments (not the batch, which is a
    grid axis), and exact sizes would retune for every new image size."""
    return (max(1, batch * queries) - 1).bit_length(), (max(1, keys) - 1).bit_length()


@functools.cache
def forward_autotuner(fam: str, size: tuple[int, int]):
    """The autotuned forward kernel of GPU family ``fam`` for the :func:`size_class` ``size``.

    One ``triton.autotune`` wrapper per (family, size class), all around the same compiled
    kernel; each keys its tuning on the channel layout, patch and precision. Configs whose
    shared memory does not fit the device are pruned before timing.
    """

    def prune(configs, named_args, **kwargs):
        q = named_args["Q"]
        limit = device_shared_limit(q.device, fam)
        fits = fitting_configs(fam, kwargs["PATCH"], kwargs["CQP"], kwargs["CV_BLOCK"], q.element_size(), limit)
        return [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in fits]

    return triton.autotune(
        configs=[
            triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in GPU_CONFIGS[fam]
        ],
        key=["CQP", "CVP", "CV_BLOCK", "PATCH", "PRECISION"],
        prune_configs_by={"early_config_prune": prune},
        reset_to_zero=["OUT"],  # the fold accumulates atomically: every timed run starts from zero
    )(pyramid_fwd_kernel)


def backward_launch(fam: str | None, kernel: str) -> tuple[int, int, dict]:
    """(BLOCK_M, BLOCK_N, launch options) of backward kernel "dq", "dk" or "dv" for a family
    (None: the interpreter's pinned blocks, no launch options)."""
    if fam is None:
        block_m, block_n, _, _ = INTERPRET_CONFIG
        return block_m, block_n, {}
    block_m, block_n, warps, stages = BWD_CONFIGS[fam][kernel]
    return block_m, block_n, dict(num_warps=warps, num_stages=stages)
