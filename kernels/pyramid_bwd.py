"""Triton backward kernels of pyramid attention (FlashAttention-2 recipe, implicit im2col).

Same packed layout as ``pyramid_fwd`` (see its docstring), plus
- ``G``  [B, H*W, CVP]     the upstream gradient of the output map, channel-last
- ``O``  [B, H*W, k*k, CVP] the forward's attention output per query (before the fold)
- ``LSE``, ``DELTA`` [B, H*W] float32: log-sum-exp of the forward (natural log) and
  D_i = sum_j P_ij dP_ij = <g_i, o_i>.

With s_ij = scale * <q_i, k^_j>, P = exp(s - lse), g_i(d) = G[i + d] / fold_divisor
(the gradient of the fold is the unfold), dP_ij = <g_i, v_j> and dS = P * (dP - D):
- dq_i  = scale * sum_j dS_ij k^_j                               (``dq_kernel``)
- dk^_j = scale * sum_i dS_ij q_i, and through k^ = k / max(||k||, eps):
  dk_j  = (dk^_j - k^_j <k^_j, dk^_j>) / ||k_j||  (no radial term where the floor is active),
  with <k^_j, dk^_j> = sum_i dS_ij s_ij                          (``dk_kernel``)
- dv_j  = sum_i P_ij g_i                                          (``dv_kernel``)
Each patch gradient is folded back onto its map with float32 atomics (position + d).
Scores are recomputed from ``LSE``; no [queries, keys] matrix exists. Every kernel may split
the channels it accumulates over a grid axis (recomputing the scores per slice), like the
forward, to bound the accumulator registers.
"""

import triton
import triton.language as tl

from .common import LN2, LOG2E, block_positions, level_geometry, row_offsets, shifted


@triton.jit
def delta_kernel(
    G,  # [B, HW, CVP]
    O,  # [B, HW, KK, CVP]
    DELTA,  # [B, HW] float32 out
    H,
    W,
    out_scale,  # 1 / fold_divisor
    CVP: tl.constexpr,
    CV_BLOCK: tl.constexpr,  # channel chunk (a power of two dividing CVP)
    PATCH: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """D_i = sum_d <G[i + d], O_i(d)> / fold_divisor. Grid: (cdiv(H*W, BLOCK_M), B)."""
    KK: tl.constexpr = PATCH * PATCH
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    HW = H * W
    offs_m, qvalid, qy, qx = block_positions(pid_m * BLOCK_M, HW, W, BLOCK_M)
    offs_c = tl.arange(0, CV_BLOCK)
    total = tl.zeros([BLOCK_M], dtype=tl.float32)
    for d in tl.static_range(KK):
        gidx, gin = shifted(qy, qx, qvalid, H, W, d, PATCH)
        for c0 in tl.static_range(0, CVP, CV_BLOCK):
            g = tl.load(G + (b * HW + gidx)[:, None] * CVP + c0 + offs_c[None, :], mask=gin[:, None], other=0.0)
            o_ptrs = O + ((b * HW + offs_m) * KK + d)[:, None] * CVP + c0 + offs_c[None, :]
            o = tl.load(o_ptrs, mask=qvalid[:, None], other=0.0)
            total += tl.sum(g.to(tl.float32) * o.to(tl.float32), axis=1)
    tl.store(DELTA + b * HW + offs_m, total * out_scale, mask=qvalid)


@triton.jit
def _scores_probs(
    q_base,
    qy,
    qx,
    qvalid,
    H,
    W,
    k_base,
    py,
    px,
    kvalid,
    off,
    hl,
    wl,
    inv,
    lse2,
    qk_scale,
    CQP: tl.constexpr,
    PATCH: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """(s2, P): base-2 scores [BLOCK_M, BLOCK_N] and probabilities exp2(s2 - lse2), zero off the maps.

    The offsets are a runtime loop whose tiles are loaded where they are used: unrolled, the
    compiler hoists the k*k tiles that are invariant in the caller's loop into shared memory,
    which overflows it for wide values (PA-EDSR) and float32."""
    offs_c = tl.arange(0, CQP)
    s = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for d in range(PATCH * PATCH):
        qidx, qin = shifted(qy, qx, qvalid, H, W, d, PATCH)
        kidx, kin = shifted(py, px, kvalid, hl, wl, d, PATCH)
        q = tl.load(q_base + row_offsets(qidx, CQP)[:, None] + offs_c[None, :], mask=qin[:, None], other=0.0)
        kt = tl.load(k_base + row_offsets(off + kidx, CQP)[None, :] + offs_c[:, None], mask=kin[None, :], other=0.0)
        s = tl.dot(q, kt, s, input_precision=PRECISION)
    s2 = s * (inv * qk_scale)[None, :]
    p = tl.math.exp2(s2 - lse2[:, None])
    p = tl.where(qvalid[:, None] & kvalid[None, :], p, 0.0)
    return s2, p


@triton.jit
def _grad_probs(
    g_base,
    qy,
    qx,
    qvalid,
    H,
    W,
    v_base,
    py,
    px,
    kvalid,
    off,
    hl,
    wl,
    out_scale,
    CVP: tl.constexpr,
    CV_BLOCK: tl.constexpr,
    PATCH: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """dP [BLOCK_M, BLOCK_N] = <g_i, v_j>: value-patch inner products over the offsets and the
    channel chunks (runtime loops, for the reason given in ``_scores_probs``)."""
    offs_c = tl.arange(0, CV_BLOCK)
    dp = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for d in range(PATCH * PATCH):
        gidx, gin = shifted(qy, qx, qvalid, H, W, d, PATCH)
        vidx, vin = shifted(py, px, kvalid, hl, wl, d, PATCH)
        for c0 in range(0, CVP, CV_BLOCK):
            g = tl.load(g_base + row_offsets(gidx, CVP)[:, None] + c0 + offs_c[None, :], mask=gin[:, None], other=0.0)
            vt = tl.load(
                v_base + row_offsets(off + vidx, CVP)[None, :] + c0 + offs_c[:, None], mask=vin[None, :], other=0.0
            )
            dp = tl.dot(g, vt, dp, input_precision=PRECISION)
    return dp * out_scale


@triton.jit
def _dot_shifted(
    accs, weights, base, y, x, valid, h, w, offs_c, STRIDE: tl.constexpr, PATCH: tl.constexpr, PRECISION: tl.constexpr
):
    """accs[d] += weights @ rows (y, x) + d of the channel-last map at ``base`` (channels ``offs_c``),
    for every patch offset d: a patch-sized gradient, one accumulator per offset."""
    new_accs = ()
    for d in tl.static_range(PATCH * PATCH):
        idx, inside = shifted(y, x, valid, h, w, d, PATCH)
        rows = tl.load(base + row_offsets(idx, STRIDE)[:, None] + offs_c[None, :], mask=inside[:, None], other=0.0)
        new_accs = new_accs + (tl.dot(weights, rows, accs[d], input_precision=PRECISION),)
    return new_accs


@triton.jit
def dq_kernel(
    Q,
    K,
    V,
    KINV,
    LEVELS,
    G,
    LSE,
    DELTA,
    DQ,  # [B, HW, CQP] float32, zero-initialised: the fold accumulates into it atomically
    H,
    W,
    NK,
    n_levels,
    qk_scale,  # softmax_scale * log2(e)
    scale,  # softmax_scale
    out_scale,  # 1 / fold_divisor
    CQP: tl.constexpr,
    CQ_BLOCK: tl.constexpr,  # query channels accumulated by one program (grid axis 1 splits CQP)
    CVP: tl.constexpr,
    CV_BLOCK: tl.constexpr,  # channel chunk of the dP inner products
    PATCH: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """dQ: a program owns BLOCK_M queries and walks all keys. Grid: (cdiv(HW, BLOCK_M), CQP // CQ_BLOCK, B)."""
    KK: tl.constexpr = PATCH * PATCH
    pid_m = tl.program_id(0)
    cq0 = tl.program_id(1) * CQ_BLOCK
    b = tl.program_id(2).to(tl.int64)
    HW = H * W
    offs_m, qvalid, qy, qx = block_positions(pid_m * BLOCK_M, HW, W, BLOCK_M)
    q_base = Q + b * HW * CQP
    k_base = K + b * NK * CQP
    v_base = V + b * NK * CVP
    g_base = G + b * HW * CVP
    lse2 = tl.load(LSE + b * HW + offs_m, mask=qvalid, other=0.0) * LOG2E
    delta = tl.load(DELTA + b * HW + offs_m, mask=qvalid, other=0.0)
    offs_cb = cq0 + tl.arange(0, CQ_BLOCK)
    accs = ()
    for _ in tl.static_range(KK):
        accs = accs + (tl.zeros([BLOCK_M, CQ_BLOCK], dtype=tl.float32),)

    for level in range(n_levels):
        off, hl, wl = level_geometry(LEVELS, level)
        for n0 in range(0, hl * wl, BLOCK_N):
            offs_n, kvalid, py, px = block_positions(n0, hl * wl, wl, BLOCK_N)
            inv = tl.load(KINV + b * NK + off + offs_n, mask=kvalid, other=0.0)
            s2, p = _scores_probs(
                q_base,
                qy,
                qx,
                qvalid,
                H,
                W,
                k_base,
                py,
                px,
                kvalid,
                off,
                hl,
                wl,
                inv,
                lse2,
                qk_scale,
                CQP,
                PATCH,
                PRECISION,
                BLOCK_M,
                BLOCK_N,
            )
            dp = _grad_probs(
                g_base,
                qy,
                qx,
                qvalid,
                H,
                W,
                v_base,
                py,
                px,
                kvalid,
                off,
                hl,
                wl,
                out_scale,
                CVP,
                CV_BLOCK,
                PATCH,
                PRECISION,
                BLOCK_M,
                BLOCK_N,
            )
            ds = (p * (dp - delta[:, None])).to(Q.dtype.element_ty)
            new_accs = ()
            for d in tl.static_range(KK):
                kidx, kin = shifted(py, px, kvalid, hl, wl, d, PATCH)
                k = tl.load(
                    k_base + row_offsets(off + kidx, CQP)[:, None] + offs_cb[None, :], mask=kin[:, None], other=0.0
                )
                k_hat = (k.to(tl.float32) * inv[:, None]).to(K.dtype.element_ty)  # |k_hat| <= 1: safe in half
                new_accs = new_accs + (tl.dot(ds, k_hat, accs[d], input_precision=PRECISION),)
            accs = new_accs

    dq_base = DQ + b * HW * CQP
    for d in tl.static_range(KK):
        qidx, qin = shifted(qy, qx, qvalid, H, W, d, PATCH)
        tl.atomic_add(
            dq_base + row_offsets(qidx, CQP)[:, None] + offs_cb[None, :],
            accs[d] * scale,
            mask=qin[:, None],
            sem="relaxed",
        )


@triton.jit
def dk_kernel(
    Q,
    K,
    V,
    NORM,
    KINV,
    LEVELS,
    G,
    LSE,
    DELTA,
    DK,  # [B, NK, CQP] float32, zero-initialised
    H,
    W,
    NK,
    key_eps,
    qk_scale,
    scale,
    out_scale,
    N_SLICES: tl.constexpr,  # CQP // CQ_BLOCK
    CQP: tl.constexpr,
    CQ_BLOCK: tl.constexpr,
    CVP: tl.constexpr,
    CV_BLOCK: tl.constexpr,
    PATCH: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """dK: a program owns BLOCK_N keys of one level and walks all queries.
    Grid: (cdiv(largest level, BLOCK_N), L, B * N_SLICES)."""
    KK: tl.constexpr = PATCH * PATCH
    pid_n = tl.program_id(0)
    level = tl.program_id(1)
    b = (tl.program_id(2) // N_SLICES).to(tl.int64)
    cq0 = (tl.program_id(2) % N_SLICES) * CQ_BLOCK
    HW = H * W
    off, hl, wl = level_geometry(LEVELS, level)
    if pid_n * BLOCK_N < hl * wl:
        offs_n, kvalid, py, px = block_positions(pid_n * BLOCK_N, hl * wl, wl, BLOCK_N)
        k_base = K + b * NK * CQP
        v_base = V + b * NK * CVP
        q_base = Q + b * HW * CQP
        g_base = G + b * HW * CVP
        norm = tl.load(NORM + b * NK + off + offs_n, mask=kvalid, other=1.0)
        inv = tl.load(KINV + b * NK + off + offs_n, mask=kvalid, other=0.0)
        offs_cb = cq0 + tl.arange(0, CQ_BLOCK)
        accs = ()
        for _ in tl.static_range(KK):
            accs = accs + (tl.zeros([BLOCK_N, CQ_BLOCK], dtype=tl.float32),)
        radial = tl.zeros([BLOCK_N], dtype=tl.float32)
        for m0 in range(0, HW, BLOCK_M):
            offs_m, qvalid, qy, qx = block_positions(m0, HW, W, BLOCK_M)
            lse2 = tl.load(LSE + b * HW + offs_m, mask=qvalid, other=0.0) * LOG2E
            delta = tl.load(DELTA + b * HW + offs_m, mask=qvalid, other=0.0)
            s2, p = _scores_probs(
                q_base,
                qy,
                qx,
                qvalid,
                H,
                W,
                k_base,
                py,
                px,
                kvalid,
                off,
                hl,
                wl,
                inv,
                lse2,
                qk_scale,
                CQP,
                PATCH,
                PRECISION,
                BLOCK_M,
                BLOCK_N,
            )
            dp = _grad_probs(
                g_base,
                qy,
                qx,
                qvalid,
                H,
                W,
                v_base,
                py,
                px,
                kvalid,
                off,
                hl,
                wl,
                out_scale,
                CVP,
                CV_BLOCK,
                PATCH,
                PRECISION,
                BLOCK_M,
                BLOCK_N,
            )
            ds = p * (dp - delta[:, None])
            # <k^_j, dk^_j> = sum_i dS_ij s_ij (natural-log scores)
            radial += tl.sum(ds * s2, axis=0) * LN2
            accs = _dot_shifted(
                accs, tl.trans(ds.to(Q.dtype.element_ty)), q_base, qy, qx, qvalid, H, W, offs_cb, CQP, PATCH, PRECISION
            )

        # Through the normalisation; where the floor is active the norm passes no gradient.
        radial = tl.where(norm >= key_eps, radial, 0.0)
        dk_base = DK + b * NK * CQP
        for d in tl.static_range(KK):
            kidx, kin = shifted(py, px, kvalid, hl, wl, d, PATCH)
            ptrs = row_offsets(off + kidx, CQP)[:, None] + offs_cb[None, :]
            k_hat = tl.load(k_base + ptrs, mask=kin[:, None], other=0.0).to(tl.float32) * inv[:, None]
            dk = (accs[d] * scale - k_hat * radial[:, None]) * inv[:, None]
            tl.atomic_add(dk_base + ptrs, dk, mask=kin[:, None], sem="relaxed")


@triton.jit
def dv_kernel(
    Q,
    K,
    KINV,
    LEVELS,
    G,
    LSE,
    DV,  # [B, NK, CVP] float32, zero-initialised
    H,
    W,
    NK,
    qk_scale,
    out_scale,
    N_SLICES: tl.constexpr,  # CVP // CV_BLOCK
    CQP: tl.constexpr,
    CVP: tl.constexpr,
    CV_BLOCK: tl.constexpr,  # value channels accumulated by one program
    PATCH: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """dV: a program owns BLOCK_N keys of one level and CV_BLOCK value channels, and walks all
    queries. Grid: (cdiv(largest level, BLOCK_N), L, B * N_SLICES)."""
    KK: tl.constexpr = PATCH * PATCH
    pid_n = tl.program_id(0)
    level = tl.program_id(1)
    b = (tl.program_id(2) // N_SLICES).to(tl.int64)
    cv0 = (tl.program_id(2) % N_SLICES) * CV_BLOCK
    HW = H * W
    off, hl, wl = level_geometry(LEVELS, level)
    if pid_n * BLOCK_N < hl * wl:
        offs_n, kvalid, py, px = block_positions(pid_n * BLOCK_N, hl * wl, wl, BLOCK_N)
        k_base = K + b * NK * CQP
        q_base = Q + b * HW * CQP
        g_base = G + b * HW * CVP
        inv = tl.load(KINV + b * NK + off + offs_n, mask=kvalid, other=0.0)
        offs_cb = cv0 + tl.arange(0, CV_BLOCK)
        accs = ()
        for _ in tl.static_range(KK):
            accs = accs + (tl.zeros([BLOCK_N, CV_BLOCK], dtype=tl.float32),)
        for m0 in range(0, HW, BLOCK_M):
            offs_m, qvalid, qy, qx = block_positions(m0, HW, W, BLOCK_M)
            lse2 = tl.load(LSE + b * HW + offs_m, mask=qvalid, other=0.0) * LOG2E
            s2, p = _scores_probs(
                q_base,
                qy,
                qx,
                qvalid,
                H,
                W,
                k_base,
                py,
                px,
                kvalid,
                off,
                hl,
                wl,
                inv,
                lse2,
                qk_scale,
                CQP,
                PATCH,
                PRECISION,
                BLOCK_M,
                BLOCK_N,
            )
            accs = _dot_shifted(
                accs, tl.trans(p.to(G.dtype.element_ty)), g_base, qy, qx, qvalid, H, W, offs_cb, CVP, PATCH, PRECISION
            )

        dv_base = DV + b * NK * CVP
        for d in tl.static_range(KK):
            kidx, kin = shifted(py, px, kvalid, hl, wl, d, PATCH)
            tl.atomic_add(
                dv_base + row_offsets(off + kidx, CVP)[:, None] + offs_cb[None, :],
                accs[d] * out_scale,
                mask=kin[:, None],
                sem="relaxed",
            )
