"""Triton forward kernels of pyramid attention (the op of ``tri_panet.ops.pyramid_attention``).

Data layout (prepared by ``tri_panet.ops.triton_launcher``): every map is packed channel-last
and zero-padded in channels, so that one key/query/value position is one contiguous row:

- ``Q``  [B, H*W, CQP]        query positions, row-major
- ``K``  [B, NK, CQP]         keys of all levels, level 0 first, row-major inside a level
- ``V``  [B, NK, CVP]         values, same key index space as ``K``
- ``LEVELS`` int32 [L, 3]     per level: (offset into the key index space, height, width)

Patches are never formed in memory (implicit im2col): the k x k patch inner product
<q_q, k_j> is the sum over the k*k offsets d of the channel inner products
<Q[q + d], K[j + d]>, where a position outside its map reads zero (the op's zero padding).
The k*k query tiles and the k*k value accumulators of a program are carried as tuples,
unrolled at compile time with ``tl.static_range``.

Index widths: positions are int32 (the launcher checks they fit: ``int32_index_bound``);
batch offsets and every product of a position with a row length (``row_offsets``) are int64.
"""

import triton
import triton.language as tl

from .common import LN2, block_positions, level_geometry, row_offsets, shifted


@triton.jit
def key_norm_kernel(
    K,  # [B, NK, CQP] keys, channel-last
    NORM,  # [B, NK] float32 out: ||key patch||_2 (the backward needs it for the floor)
    KINV,  # [B, NK] float32 out: 1 / max(||key patch||_2, key_eps)
    LEVELS,  # int32 [L, 3]: offset, height, width
    NK,
    key_eps,
    CQP: tl.constexpr,
    PATCH: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Pre-pass: L2 norm of every key patch and its floored inverse. Grid: (key blocks of the largest level, L, B)."""
    pid = tl.program_id(0)
    level = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    off, h, w = level_geometry(LEVELS, level)
    n, valid, py, px = block_positions(pid * BLOCK, h * w, w, BLOCK)
    offs_c = tl.arange(0, CQP)
    k_base = K + b * NK * CQP
    sq = tl.zeros([BLOCK], dtype=tl.float32)
    for d in tl.static_range(PATCH * PATCH):
        idx, inside = shifted(py, px, valid, h, w, d, PATCH)
        k = tl.load(k_base + row_offsets(off + idx, CQP)[:, None] + offs_c[None, :], mask=inside[:, None], other=0.0)
        k = k.to(tl.float32)
        sq += tl.sum(k * k, axis=1)
    norm = tl.sqrt(sq)
    tl.store(NORM + b * NK + off + n, norm, mask=valid)
    tl.store(KINV + b * NK + off + n, 1.0 / tl.maximum(norm, key_eps), mask=valid)


@triton.jit
def pyramid_fwd_kernel(
    Q,  # [B, H*W, CQP]
    K,  # [B, NK, CQP]
    V,  # [B, NK, CVP]
    KINV,  # [B, NK] float32 inverse key-patch norms 1 / max(||k||, key_eps)
    LEVELS,  # int32 [L, 3]
    OUT,  # [B, Cv, H, W] float32, zero-initialised: the fold accumulates into it atomically
    LSE,  # [B, H*W] float32 out: natural-log sum_j exp(softmax_scale * <q, k_hat_j>)
    O,  # [B, H*W, k*k, CVP] out when STORE_O: attention output per query before the fold
    H,
    W,
    NK,
    CV,  # true number of value channels (<= CVP)
    n_levels,
    qk_scale,  # softmax_scale * log2(e): the softmax runs in base 2
    out_scale,  # 1 / fold_divisor
    CQP: tl.constexpr,
    CVP: tl.constexpr,  # padded value channels: a multiple of CV_BLOCK
    CV_BLOCK: tl.constexpr,  # value channels handled by one program (grid axis 1 splits CVP)
    PATCH: tl.constexpr,
    PRECISION: tl.constexpr,  # tl.dot input_precision for float32 operands ("tf32" or "ieee")
    STORE_O: tl.constexpr,  # keep the unfolded output for the backward (training)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Fused forward: scores, online softmax over all levels, P @ V and the fold.

    Grid: (cdiv(H*W, BLOCK_M), CVP // CV_BLOCK, B). A program owns BLOCK_M query positions
    of one image and CV_BLOCK value channels; with several channel slices the scores are
    recomputed per slice (only when the value width does not fit one program).
    """
    KK: tl.constexpr = PATCH * PATCH
    pid_m = tl.program_id(0)
    pid_v = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    HW = H * W

    offs_m, qvalid, qy, qx = block_positions(pid_m * BLOCK_M, HW, W, BLOCK_M)
    offs_cq = tl.arange(0, CQP)
    offs_cv = pid_v * CV_BLOCK + tl.arange(0, CV_BLOCK)
    q_base = Q + b * HW * CQP
    k_base = K + b * NK * CQP
    v_base = V + b * NK * CVP
    kinv_base = KINV + b * NK

    # The k*k shifted query tiles stay on chip for the whole key loop.
    qs = ()
    accs = ()
    for d in tl.static_range(KK):
        qidx, qin = shifted(qy, qx, qvalid, H, W, d, PATCH)
        q = tl.load(q_base + row_offsets(qidx, CQP)[:, None] + offs_cq[None, :], mask=qin[:, None], other=0.0)
        qs = qs + (q,)
        accs = accs + (tl.zeros([BLOCK_M, CV_BLOCK], dtype=tl.float32),)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for level in range(n_levels):
        off, hl, wl = level_geometry(LEVELS, level)
        for n0 in range(0, hl * wl, BLOCK_N):
            offs_n, kvalid, py, px = block_positions(n0, hl * wl, wl, BLOCK_N)
            # Rows of the k*k shifted key positions; -1 marks zero padding (and keys past the level).
            rows = ()
            s = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for d in tl.static_range(KK):
                kidx, kin = shifted(py, px, kvalid, hl, wl, d, PATCH)
                rows = rows + (tl.where(kin, off + kidx, -1),)
                # scores: sum over the k*k offsets of channel inner products (implicit im2col)
                kt = tl.load(
                    k_base + row_offsets(rows[d], CQP)[None, :] + offs_cq[:, None], mask=kin[None, :], other=0.0
                )
                s = tl.dot(qs[d], kt, s, input_precision=PRECISION)
            # a per-key multiply: a division here costs registers (spills on sm_80)
            kinv = tl.load(kinv_base + off + offs_n, mask=kvalid, other=0.0)
            s = s * (kinv * qk_scale)[None, :]
            s = tl.where(kvalid[None, :], s, float("-inf"))
            # online softmax (base 2); every key block holds >= 1 valid key, so m_new is finite
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.math.exp2(m_i - m_new)
            p = tl.math.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            m_i = m_new
            p = p.to(V.dtype.element_ty)
            new_accs = ()
            for d in tl.static_range(KK):
                v_ptrs = v_base + row_offsets(rows[d], CVP)[:, None] + offs_cv[None, :]
                v = tl.load(v_ptrs, mask=(rows[d] >= 0)[:, None], other=0.0)
                new_accs = new_accs + (tl.dot(p, v, accs[d] * alpha[:, None], input_precision=PRECISION),)
            accs = new_accs

    # Fold (col2im): query q adds its offset-d accumulator to output position q + d.
    inv_l = 1.0 / l_i
    # The output is channel-major: the slice's first channel plane is a 64-bit scalar offset,
    # the [BLOCK_M, CV_BLOCK] offsets inside the slice stay int32 (< CV_BLOCK * H * W, checked by
    # the launcher), which spares registers: 64-bit ones here spill on sm_80.
    out_base = OUT + (b * CV + pid_v * CV_BLOCK) * HW
    offs_slice = tl.arange(0, CV_BLOCK)
    cmask = offs_cv < CV
    for d in tl.static_range(KK):
        o = accs[d] * inv_l[:, None]
        oidx, oin = shifted(qy, qx, qvalid, H, W, d, PATCH)
        ptrs = out_base + offs_slice[None, :] * HW + oidx[:, None]
        tl.atomic_add(ptrs, o * out_scale, mask=oin[:, None] & cmask[None, :], sem="relaxed")
        if STORE_O:
            o_ptrs = O + ((b * HW + offs_m) * KK + d)[:, None] * CVP + offs_cv[None, :]
            tl.store(o_ptrs, o.to(O.dtype.element_ty), mask=qvalid[:, None])
    if pid_v == 0:  # every value slice computes the same statistics
        lse = (m_i + tl.math.log2(l_i)) * LN2
        tl.store(LSE + b * HW + offs_m, lse, mask=qvalid)
