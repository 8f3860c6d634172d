"""The ``"triton"`` implementation: prepares inputs for the fused kernels of ``tri_panet.kernels``
and launches them, forward and backward, as the custom ops ``tri_panet::triton_pyramid_attention_*``.

The forward is one FlashAttention-style kernel over all pyramid levels (``kernels/pyramid_fwd.py``,
docs/TRITON.md). This module packs every map channel-last into one buffer per role (query, keys
of all levels, values of all levels), channels zero-padded as :func:`triton_configs.channel_layout`
says so that every ``tl.dot`` dimension is legal on NVIDIA GPUs, and puts the per-level metadata
(offset into the packed key index space, height, width) in a small int32 table. Block sizes and
autotuning live in :mod:`tri_panet.ops.triton_configs`.

CUDA tensors run on the GPU. CPU tensors are accepted only when the kernels run in Triton's
interpreter (``TRITON_INTERPRET=1`` when ``tri_panet`` was imported; the tests). The folds add
float32 atomically in no fixed order, so results may differ in the last bits from run to run.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import torch
import triton

from ..kernels.pyramid_bwd import delta_kernel, dk_kernel, dq_kernel, dv_kernel
from ..kernels.pyramid_fwd import key_norm_kernel, pyramid_fwd_kernel
from . import triton_configs as configs
from .custom_op import define_op
from .torch_tiled import pyramid_attention_torch

LOG2E = 1.4426950408889634

#: Indices the kernels compute in 32-bit arithmetic must stay below this.
INT32_LIMIT = 2**31


def int32_index_bound(queries: int, keys: int, cv_block: int) -> int:
    """The largest index the kernels compute in int32 for a call with ``queries`` (H*W) query
    positions, ``keys`` key positions over all levels and ``cv_block`` value channels per
    forward program: a position in the query map or the key index space plus the masked
    overhang of a map's last block, or an offset inside one program's slice of the channel-major
    output (CV_BLOCK planes of H*W). Every other product of a position (with channels, with k*k
    for O) and every batch offset is 64-bit in the kernels (``kernels.common.row_offsets``)."""
    return max(max(queries, keys) + configs.LARGEST_BLOCK, cv_block * queries)


def check_index_range(queries: int, keys: int, cv_block: int) -> None:
    """Raise ValueError when :func:`int32_index_bound` reaches 2^31."""
    bound = int32_index_bound(queries, keys, cv_block)
    if bound >= INT32_LIMIT:
        raise ValueError(
            f"maps too large for the triton backend's int32 indexing ({keys} keys, {queries} queries, "
            f"{cv_block} value channels per program: index {bound} >= 2^31); split the image into tiles"
        )


def check_triton_device(query: torch.Tensor) -> None:
    """Raise unless ``query`` can run on the triton backend (CUDA, or any device when interpreting)."""
    if not query.is_cuda and not configs.INTERPRETING:
        raise ValueError(
            f"backend='triton' needs CUDA tensors, got tensors on {query.device}; use backend='torch' "
            "(or set TRITON_INTERPRET=1 before importing tri_panet to run the kernels in Triton's CPU interpreter)"
        )


#: Why the kernels are not deterministic (shown when deterministic algorithms are requested).
NONDETERMINISM = "its kernels fold patches with float32 atomic adds in no fixed order (last-bit differences run to run)"


def check_deterministic_mode() -> None:
    """Raise RuntimeError under ``torch.use_deterministic_algorithms(True)`` (warn with
    ``warn_only=True``), as torch does for its own nondeterministic kernels."""
    if not torch.are_deterministic_algorithms_enabled():
        return
    message = (
        f"backend='triton' is not deterministic: {NONDETERMINISM}, but torch.use_deterministic_algorithms(True) "
        "is set; use backend='torch' (deterministic), or backend='auto', which then picks it"
    )
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(message, stacklevel=3)
        return
    raise RuntimeError(message)


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


def unpack_levels(buf: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Inverse of :func:`pack_levels`: [B, N, padded] -> maps shaped and typed like ``like``."""
    out, offset = [], 0
    for x in like:
        batch, channels, h, w = x.shape
        chunk = buf[:, offset : offset + h * w, :channels]
        out.append(chunk.transpose(1, 2).reshape(batch, channels, h, w).to(x.dtype))
        offset += h * w
    return out


def level_table(levels: Sequence[torch.Tensor]) -> torch.Tensor:
    """int32 [L, 3] (offset into the packed key index space, height, width) on the maps' device."""
    rows, offset = [], 0
    for x in levels:
        rows.append((offset, x.shape[2], x.shape[3]))
        offset += x.shape[2] * x.shape[3]
    return torch.tensor(rows, dtype=torch.int32, device=levels[0].device)


def saved_output_shape(query: torch.Tensor, values: Sequence[torch.Tensor], patch_size: int) -> tuple[int, ...]:
    """Shape of the unfolded output O the forward keeps for the backward: [B, H*W, k*k, CVP],
    CVP the padded value channels of :func:`triton_configs.channel_layout` (the allocation in
    :func:`_forward` and the custom op's fake both use this)."""
    batch, _, height, width = query.shape
    cvp = configs.channel_layout(query, values[0].shape[1], patch_size).cvp
    return (batch, height * width, patch_size**2, cvp)


def _on_device(t: torch.Tensor):
    """Context making ``t``'s GPU current (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


class _Packed(NamedTuple):
    """The kernels' view of one call: packed maps, level table, key-patch norms and sizes."""

    q: torch.Tensor  # [B, HW, CQP]
    k: torch.Tensor  # [B, NK, CQP]
    v: torch.Tensor  # [B, NK, CVP]
    levels: torch.Tensor  # int32 [L, 3]
    norms: torch.Tensor  # float32 [B, NK] key-patch norms
    kinv: torch.Tensor  # float32 [B, NK] 1 / max(norm, key_eps)
    sizes: list  # keys per level
    layout: configs.ChannelLayout


def _prepare(query, keys, values, patch_size: int, key_eps: float) -> _Packed:
    """Pack the maps, check the index range and run the key-norm pre-pass."""
    check_triton_device(query)
    height, width = query.shape[2:]
    layout = configs.channel_layout(query, values[0].shape[1], patch_size)
    sizes = [x.shape[2] * x.shape[3] for x in keys]
    n_keys = sum(sizes)
    check_index_range(height * width, n_keys, layout.cv_block)
    k = pack_levels(keys, layout.cqp)
    levels = level_table(keys)
    norms = torch.empty(k.shape[0], n_keys, dtype=torch.float32, device=k.device)
    kinv = torch.empty_like(norms)
    grid = (triton.cdiv(max(sizes), configs.NORM_BLOCK), len(sizes), k.shape[0])
    with _on_device(k):
        key_norm_kernel[grid](
            k, norms, kinv, levels, n_keys, key_eps, CQP=layout.cqp, PATCH=patch_size, BLOCK=configs.NORM_BLOCK
        )
    q, v = pack_levels([query], layout.cqp), pack_levels(values, layout.cvp)
    return _Packed(q, k, v, levels, norms, kinv, sizes, layout)


def _forward(pk: _Packed, query, values, patch_size, softmax_scale, fold_divisor, store_o: bool):
    """Launch the fused forward: (out [B, Cv, H, W] float32, lse [B, H*W] float32, O or None)."""
    batch, _, height, width = query.shape
    hw, cv, layout = height * width, values[0].shape[1], pk.layout
    out = torch.zeros(batch, cv, height, width, dtype=torch.float32, device=query.device)
    lse = torch.empty(batch, hw, dtype=torch.float32, device=query.device)
    # Without STORE_O the kernel never touches O: an empty tensor, not a buffer it could clobber.
    o = query.new_empty(saved_output_shape(query, values, patch_size) if store_o else (0,))
    args = (pk.q, pk.k, pk.v, pk.kinv, pk.levels, out, lse, o, height, width, pk.k.shape[1], cv, len(pk.sizes))
    scalars = (softmax_scale * LOG2E, 1.0 / fold_divisor)
    meta = dict(
        CQP=layout.cqp,
        CVP=layout.cvp,
        CV_BLOCK=layout.cv_block,
        PATCH=patch_size,
        PRECISION=configs.dot_precision(query.dtype),
        STORE_O=store_o,
    )
    n_slices = layout.cvp // layout.cv_block
    if layout.family is None:
        block_m, block_n, _, _ = configs.INTERPRET_CONFIG
        pyramid_fwd_kernel[(triton.cdiv(hw, block_m), n_slices, batch)](
            *args, *scalars, **meta, BLOCK_M=block_m, BLOCK_N=block_n
        )
    else:
        kernel = configs.forward_autotuner(layout.family, configs.size_class(batch, hw, pk.k.shape[1]))
        with _on_device(query):
            kernel[lambda m: (triton.cdiv(hw, m["BLOCK_M"]), n_slices, batch)](*args, *scalars, **meta)
    return out, lse, (o if store_o else None)


def forward(
    query: torch.Tensor,
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    *,
    patch_size: int,
    softmax_scale: float,
    key_eps: float,
    fold_divisor: float,
    save_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused forward: (out [B, Cv, H, W] in query's dtype, lse [B, H*W] float32, state).

    ``lse`` follows the custom-op convention (natural-log sum over all keys of
    exp(softmax_scale * <q, k_hat>)), so the torch path's backward could consume it too.
    ``state`` is the unfolded output O, :func:`saved_output_shape`, when ``save_state``
    (for the backward), else empty.
    """
    pk = _prepare(query, keys, values, patch_size, key_eps)
    out, lse, o = _forward(pk, query, values, patch_size, softmax_scale, fold_divisor, save_state)
    return out.to(query.dtype), lse, (o if save_state else query.new_empty(0))


def backward(
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
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Fused backward from the saved ``lse`` [B, H*W]: (grad_query, grad_keys, grad_values).

    ``state`` is the forward's unfolded output (:func:`saved_output_shape`); when missing or
    empty the forward kernel runs once more to rebuild it. Gradients are accumulated in float32
    (atomically, in no fixed order) and returned in the inputs' dtypes.
    """
    pk = _prepare(query, keys, values, patch_size, key_eps)
    layout = pk.layout
    batch, _, height, width = query.shape
    hw, n_keys, n_levels = height * width, pk.k.shape[1], len(pk.sizes)
    cqp, cvp, cq_block, cv_block = layout.cqp, layout.cvp, layout.cq_block, layout.cv_block
    o = state if state is not None and state.numel() else None
    if o is None:
        _, _, o = _forward(pk, query, values, patch_size, softmax_scale, fold_divisor, True)
    g = pack_levels([grad_out.to(query.dtype)], cvp)
    lse = lse.float().contiguous()
    precision = configs.dot_precision(query.dtype)
    delta = torch.empty(batch, hw, dtype=torch.float32, device=query.device)
    dq = torch.zeros(batch, hw, cqp, dtype=torch.float32, device=query.device)
    dk = torch.zeros(batch, n_keys, cqp, dtype=torch.float32, device=query.device)
    dv = torch.zeros(batch, n_keys, cvp, dtype=torch.float32, device=query.device)
    qk_scale, out_scale = softmax_scale * LOG2E, 1.0 / fold_divisor
    q_slices, v_slices = cqp // cq_block, cvp // cv_block

    def key_blocks(block_n: int) -> int:
        return triton.cdiv(max(pk.sizes), block_n)

    with _on_device(query):
        delta_kernel[(triton.cdiv(hw, configs.DELTA_BLOCK), batch)](
            g,
            o,
            delta,
            height,
            width,
            out_scale,
            CVP=cvp,
            CV_BLOCK=cv_block,
            PATCH=patch_size,
            BLOCK_M=configs.DELTA_BLOCK,
        )
        block_m, block_n, launch = configs.backward_launch(layout.family, "dq")
        dq_kernel[(triton.cdiv(hw, block_m), q_slices, batch)](
            pk.q,
            pk.k,
            pk.v,
            pk.kinv,
            pk.levels,
            g,
            lse,
            delta,
            dq,
            height,
            width,
            n_keys,
            n_levels,
            qk_scale,
            softmax_scale,
            out_scale,
            CQP=cqp,
            CQ_BLOCK=cq_block,
            CVP=cvp,
            CV_BLOCK=cv_block,
            PATCH=patch_size,
            PRECISION=precision,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            **launch,
        )
        block_m, block_n, launch = configs.backward_launch(layout.family, "dk")
        dk_kernel[(key_blocks(block_n), n_levels, batch * q_slices)](
            pk.q,
            pk.k,
            pk.v,
            pk.norms,
            pk.kinv,
            pk.levels,
            g,
            lse,
            delta,
            dk,
            height,
            width,
            n_keys,
            key_eps,
            qk_scale,
            softmax_scale,
            out_scale,
            N_SLICES=q_slices,
            CQP=cqp,
            CQ_BLOCK=cq_block,
            CVP=cvp,
            CV_BLOCK=cv_block,
            PATCH=patch_size,
            PRECISION=precision,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            **launch,
        )
        block_m, block_n, launch = configs.backward_launch(layout.family, "dv")
        dv_kernel[(key_blocks(block_n), n_levels, batch * v_slices)](
            pk.q,
            pk.k,
            pk.kinv,
            pk.levels,
            g,
            lse,
            dv,
            height,
            width,
            n_keys,
            qk_scale,
            out_scale,
            N_SLICES=v_slices,
            CQP=cqp,
            CVP=cvp,
            CV_BLOCK=cv_block,
            PATCH=patch_size,
            PRECISION=precision,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            **launch,
        )
    (grad_query,) = unpack_levels(dq, [query])
    return grad_query, unpack_levels(dk, keys), unpack_levels(dv, values)


#: tri_panet::triton_pyramid_attention_forward / _backward; O is the saved state.
_OP = define_op("triton", forward, backward, state_shape=saved_output_shape)


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
    float64 (which the kernels do not implement) is computed by the torch path. Raises
    ValueError for non-CUDA tensors unless the kernels run in the interpreter, and RuntimeError
    under ``torch.use_deterministic_algorithms(True)`` (the folds use float32 atomics).
    """
    check_triton_device(query)
    if query.dtype == torch.float64:
        return pyramid_attention_torch(
            query,
            keys,
            values,
            patch_size=patch_size,
            softmax_scale=softmax_scale,
            key_eps=key_eps,
            fold_divisor=fold_divisor,
        )
    check_deterministic_mode()
    return _OP(
        query,
        keys,
        values,
        patch_size=patch_size,
        softmax_scale=softmax_scale,
        key_eps=key_eps,
        fold_divisor=fold_divisor,
    )
