"""The ``"triton"`` backend: launchers of the fused kernels in ``tri_panet.kernels`` and autograd.

The forward is one FlashAttention-style kernel over all pyramid levels (see
``kernels/pyramid_fwd.py`` and docs/TRITON.md). This module prepares its inputs: every map is
packed channel-last into one buffer per role (query, keys of all levels, values of all
levels), channels zero-padded to a power of two >= 16 so that every ``tl.dot`` dimension is
legal on NVIDIA GPUs, and the per-level metadata (offset into the packed key index space,
height, width) goes in a small int32 table.

CUDA tensors run on the GPU with autotuned block sizes. CPU tensors are accepted only when
``TRITON_INTERPRET=1`` (Triton's interpreter, used by the tests), with one pinned config.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import NamedTuple

import torch
import triton

from .kernels.pyramid_bwd import delta_kernel, dk_kernel, dq_kernel, dv_kernel
from .kernels.pyramid_fwd import key_norm_kernel, pyramid_fwd_kernel
from .library import pyramid_attention_op, register_implementation
from .torch_backend import pyramid_attention_torch

LOG2E = 1.4426950408889634

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


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


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


#: Largest shared memory per block by family when the device cannot be asked (A100, H100).
SHARED_LIMIT = {"sm80": 166_912, "sm90": 232_448}


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


def _autotuned(fam: str):
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


_FWD_AUTOTUNED = {fam: _autotuned(fam) for fam in GPU_CONFIGS}


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input_precision: float32 dots follow ``torch.backends.cuda.matmul.allow_tf32``."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def pack_levels(levels: Sequence[torch.Tensor], padded: int) -> torch.Tensor:
    """Maps [B, C, H_l, W_l] -> one channel-last buffer [B, sum H_l*W_l, padded], zero-padded."""
    batch, channels = levels[0].shape[:2]
    n = sum(x.shape[2] * x.shape[3] for x in levels)
    alloc = torch.zeros if channels < padded else torch.empty
    buf = alloc(batch, n, padded, dtype=levels[0].dtype, device=levels[0].device)
    offset = 0
    for x in levels:
        size = x.shape[2] * x.shape[3]
        buf[:, offset : offset + size, :channels].copy_(x.flatten(2).transpose(1, 2))
        offset += size
    return buf


def level_table(levels: Sequence[torch.Tensor]) -> torch.Tensor:
    """int32 [L, 3] (offset into the packed key index space, height, width) on the maps' device."""
    rows, offset = [], 0
    for x in levels:
        rows.append((offset, x.shape[2], x.shape[3]))
        offset += x.shape[2] * x.shape[3]
    return torch.tensor(rows, dtype=torch.int32, device=levels[0].device)


def _on_device(t: torch.Tensor):
    """Context making ``t``'s GPU current (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def check_triton_device(query: torch.Tensor) -> None:
    """Raise unless ``query`` can run on the triton backend (CUDA, or any device when interpreting)."""
    if not query.is_cuda and not interpreting():
        raise ValueError(
            f"backend='triton' needs CUDA tensors, got tensors on {query.device}; use backend='torch' "
            "(or set TRITON_INTERPRET=1 before importing triton to run the kernels in Triton's CPU interpreter)"
        )


class _Packed(NamedTuple):
    """The kernels' view of one call: packed maps, level table, key-patch norms and sizes."""

    q: torch.Tensor  # [B, HW, CQP]
    k: torch.Tensor  # [B, NK, CQP]
    v: torch.Tensor  # [B, NK, CVP]
    levels: torch.Tensor  # int32 [L, 3]
    norms: torch.Tensor  # float32 [B, NK] key-patch norms
    kinv: torch.Tensor  # float32 [B, NK] 1 / max(norm, key_eps)
    sizes: list  # keys per level
    cv_block: int  # value channels per forward program (and dP chunk, dV slice)
    cq_block: int  # query channels per dQ / dK program
    family: str | None  # GPU tuning family, None under the interpreter


def _max_columns(query: torch.Tensor) -> tuple[str | None, int]:
    if interpreting():
        return None, INTERPRET_VALUE_COLUMNS
    fam = family(torch.cuda.get_device_capability(query.device))
    return fam, VALUE_COLUMNS[fam][query.element_size()]


def _prepare(query, keys, values, patch_size: int, key_eps: float) -> _Packed:
    check_triton_device(query)
    _, cq, height, width = query.shape
    cv = values[0].shape[1]
    fam, max_columns = _max_columns(query)
    cqp = padded_channels(cq)
    cv_block = value_block(cv, patch_size, max_columns)
    cvp = triton.cdiv(cv, cv_block) * cv_block
    sizes = [x.shape[2] * x.shape[3] for x in keys]
    n_keys = sum(sizes)
    if max(n_keys, height * width) * patch_size**2 * max(cqp, cvp) >= 2**31:
        raise ValueError(
            f"maps too large for the triton backend's int32 indexing ({n_keys} keys, {height * width} queries, "
            f"{max(cqp, cvp)} padded channels); split the image into tiles"
        )
    k = pack_levels(keys, cqp)
    levels = level_table(keys)
    norms = torch.empty(k.shape[0], n_keys, dtype=torch.float32, device=k.device)
    kinv = torch.empty_like(norms)
    grid = (triton.cdiv(max(sizes), NORM_BLOCK), len(sizes), k.shape[0])
    with _on_device(k):
        key_norm_kernel[grid](k, norms, kinv, levels, n_keys, key_eps, CQP=cqp, PATCH=patch_size, BLOCK=NORM_BLOCK)
    return _Packed(
        pack_levels([query], cqp), k, pack_levels(values, cvp), levels, norms, kinv, sizes,
        cv_block, value_block(cq, patch_size, max_columns), fam,
    )


def _forward(pk: _Packed, query, cv: int, patch_size, softmax_scale, key_eps, fold_divisor, store_o: bool):
    batch, _, height, width = query.shape
    hw = height * width
    cqp, cvp = pk.q.shape[2], pk.v.shape[2]
    out = torch.zeros(batch, cv, height, width, dtype=torch.float32, device=query.device)
    lse = torch.empty(batch, hw, dtype=torch.float32, device=query.device)
    o = torch.empty(batch, hw, patch_size**2, cvp, dtype=query.dtype, device=query.device) if store_o else out
    args = (pk.q, pk.k, pk.v, pk.kinv, pk.levels, out, lse, o, height, width, pk.k.shape[1], cv, len(pk.sizes))
    scalars = (softmax_scale * LOG2E, 1.0 / fold_divisor)
    meta = dict(CQP=cqp, CVP=cvp, CV_BLOCK=pk.cv_block, PATCH=patch_size, PRECISION=dot_precision(query.dtype),
                STORE_O=store_o)
    n_slices = cvp // pk.cv_block
    if pk.family is None:
        block_m, block_n, _, _ = INTERPRET_CONFIG
        pyramid_fwd_kernel[(triton.cdiv(hw, block_m), n_slices, batch)](
            *args, *scalars, **meta, BLOCK_M=block_m, BLOCK_N=block_n
        )
    else:
        with _on_device(query):
            _FWD_AUTOTUNED[pk.family][lambda m: (triton.cdiv(hw, m["BLOCK_M"]), n_slices, batch)](
                *args, *scalars, **meta
            )
    return out.to(query.dtype), lse, (o if store_o else None)


def triton_forward(
    query: torch.Tensor,
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    *,
    patch_size: int,
    softmax_scale: float,
    key_eps: float,
    fold_divisor: float,
    tile_bytes: int | None = None,
    save_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused forward: (out [B, Cv, H, W] in query's dtype, lse [B, H*W] float32, state).

    ``lse`` follows ``torch_backend.tiled_forward``: the natural-log sum over all keys of
    exp(softmax_scale * <q, k_hat>), so either backward can consume it. ``state`` is the
    unfolded output [B, H*W, k*k, padded Cv] (FlashAttention's O) when ``save_state``, for
    the backward; else empty. ``tile_bytes`` is accepted for interface compatibility and ignored.
    """
    pk = _prepare(query, keys, values, patch_size, key_eps)
    out, lse, o = _forward(
        pk, query, values[0].shape[1], patch_size, softmax_scale, key_eps, fold_divisor, save_state
    )
    return out, lse, (o if save_state else query.new_empty(0))


def state_shape(query: torch.Tensor, values: Sequence[torch.Tensor], patch_size: int) -> tuple[int, ...]:
    """Shape of the saved unfolded output: [B, H*W, k*k, padded value channels]."""
    batch, _, height, width = query.shape
    return (batch, height * width, patch_size**2, padded_channels(values[0].shape[1]))


def unpack_levels(buf: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Inverse of :func:`pack_levels`: [B, N, padded] -> maps shaped and typed like ``like``."""
    out, offset = [], 0
    for x in like:
        batch, channels, h, w = x.shape
        chunk = buf[:, offset : offset + h * w, :channels]
        out.append(chunk.transpose(1, 2).reshape(batch, channels, h, w).to(x.dtype))
        offset += h * w
    return out


def triton_backward(
    grad_out: torch.Tensor,
    query: torch.Tensor,
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    lse: torch.Tensor,
    *,
    patch_size: int,
    softmax_scale: float,
    key_eps: float,
    fold_divisor: float,
    state: torch.Tensor | None = None,
    tile_bytes: int | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Fused backward from the saved ``lse`` [B, H*W]: (grad_query, grad_keys, grad_values).

    ``state`` is the forward's unfolded output ([B, H*W, k*k, CVP]); when missing or empty
    the forward kernel runs once more to rebuild it. Gradients are accumulated in float32
    and returned in the inputs' dtypes. ``tile_bytes`` is ignored.
    """
    o = state if state is not None and state.numel() else None
    pk = _prepare(query, keys, values, patch_size, key_eps)
    batch, cq, height, width = query.shape
    hw, n_keys = height * width, pk.k.shape[1]
    cqp, cvp = pk.q.shape[2], pk.v.shape[2]
    if o is None:
        _, _, o = _forward(pk, query, values[0].shape[1], patch_size, softmax_scale, key_eps, fold_divisor, True)
    g = pack_levels([grad_out.to(query.dtype)], cvp)
    lse = lse.float().contiguous()
    precision = dot_precision(query.dtype)
    delta = torch.empty(batch, hw, dtype=torch.float32, device=query.device)
    dq = torch.zeros(batch, hw, cqp, dtype=torch.float32, device=query.device)
    dk = torch.zeros(batch, n_keys, cqp, dtype=torch.float32, device=query.device)
    dv = torch.zeros(batch, n_keys, cvp, dtype=torch.float32, device=query.device)
    qk_scale, out_scale = softmax_scale * LOG2E, 1.0 / fold_divisor
    q_slices, v_slices = cqp // pk.cq_block, cvp // pk.cv_block

    def config(kernel: str):
        """(block constexprs, launch options, key-block count) of a backward kernel."""
        if pk.family is None:
            block_m, block_n, _, _ = INTERPRET_CONFIG
            launch = {}
        else:
            block_m, block_n, warps, stages = BWD_CONFIGS[pk.family][kernel]
            launch = dict(num_warps=warps, num_stages=stages)
        return dict(BLOCK_M=block_m, BLOCK_N=block_n, **launch), block_m, triton.cdiv(max(pk.sizes), block_n)

    with _on_device(query):
        delta_kernel[(triton.cdiv(hw, DELTA_BLOCK), batch)](
            g, o, delta, height, width, out_scale, CVP=cvp, CV_BLOCK=pk.cv_block, PATCH=patch_size, BLOCK_M=DELTA_BLOCK
        )
        meta, block_m, _ = config("dq")
        dq_kernel[(triton.cdiv(hw, block_m), q_slices, batch)](
            pk.q, pk.k, pk.v, pk.kinv, pk.levels, g, lse, delta, dq, height, width, n_keys, len(pk.sizes),
            qk_scale, softmax_scale, out_scale,
            CQP=cqp, CQ_BLOCK=pk.cq_block, CVP=cvp, CV_BLOCK=pk.cv_block, PATCH=patch_size, PRECISION=precision, **meta,
        )
        meta, _, key_blocks = config("dk")
        dk_kernel[(key_blocks, len(pk.sizes), batch * q_slices)](
            pk.q, pk.k, pk.v, pk.norms, pk.kinv, pk.levels, g, lse, delta, dk, height, width, n_keys, key_eps,
            qk_scale, softmax_scale, out_scale,
            N_SLICES=q_slices, CQP=cqp, CQ_BLOCK=pk.cq_block, CVP=cvp, CV_BLOCK=pk.cv_block, PATCH=patch_size,
            PRECISION=precision, **meta,
        )
        meta, _, key_blocks = config("dv")
        dv_kernel[(key_blocks, len(pk.sizes), batch * v_slices)](
            pk.q, pk.k, pk.kinv, pk.levels, g, lse, dv, height, width, n_keys, qk_scale, out_scale,
            N_SLICES=v_slices, CQP=cqp, CVP=cvp, CV_BLOCK=pk.cv_block, PATCH=patch_size, PRECISION=precision, **meta,
        )
    (grad_query,) = unpack_levels(dq, [query])
    return grad_query, unpack_levels(dk, keys), unpack_levels(dv, values)


register_implementation("triton", triton_forward, triton_backward, state_shape)


def pyramid_attention_triton(
    query: torch.Tensor,
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    *,
    patch_size: int = 3,
    softmax_scale: float = 10.0,
    key_eps: float = 1e-4,
    fold_divisor: float = 4.0,
) -> torch.Tensor:
    """Pyramid attention with the fused Triton kernels; same contract as the reference.

    query [B, Cq, H, W], keys[l] [B, Cq, H_l, W_l], values[l] [B, Cv, H_l, W_l] -> [B, Cv, H, W].
    float16/bfloat16/float32 run in Triton with float32 accumulation, forward and backward;
    float64 (which the kernels do not implement) is computed by the torch backend. Raises
    ValueError for non-CUDA tensors unless ``TRITON_INTERPRET=1``.
    """
    check_triton_device(query)
    if query.dtype == torch.float64:
        return pyramid_attention_torch(
            query, keys, values, patch_size=patch_size, softmax_scale=softmax_scale,
            key_eps=key_eps, fold_divisor=fold_divisor,
        )
    return pyramid_attention_op(
        query, keys, values, patch_size=patch_size, softmax_scale=softmax_scale, key_eps=key_eps,
        fold_divisor=fold_divisor, tile_bytes=0, implementation="triton",
    )


__all__ = ["pyramid_attention_triton", "triton_forward", "triton_backward"]
