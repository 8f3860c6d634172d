/* Pyramid attention of one image on the CPU, forward and backward, fully fused and key-chunked.

Driven by tri_panet/ops/cpu_fused.py (ctypes), which compiles this file at first use with the channel
counts as constants (tri_panet/ops/cpu_build.py). Both entry points return 0, or 1 where a work buffer
could not be allocated (nothing was written then).

No [window, all keys] buffer exists (unlike the experiment bench/experiments/fused_cpu/kernels.c): per query tile and per chunk of key rows of a
level, the Gram block, the patch scores, the paste and the value product are computed on buffers
that stay in L2. The tile's scores over all keys (one [R C, n_slots] buffer) are the only large
buffer: written once, exponentiated once, read once by the paste.

Layouts as in cpu_common.h: keys side by side [CQ, n_cols] (every level zero padded by 1,
two zero columns at the end), values the same transposed [n_cols, CV], key slots [n_slots] with
scale and bias (-1e30 on the two slots per row that are not keys). query_padded [(H + 2) (W + 2), CQ]
and out [(H + 2) (W + 2), CV] are channel-last maps padded by 1; out is accumulated into.

Compiled with -DREAL=float|double -DSUFFIX=... -DCQ=.. -DCV=.. (channel counts fixed at compile time
so that the inner products unroll into registers; both multiples of the vector length). */

#include "cpu_common.h"

#ifdef TIMING /* seconds per phase, for tuning: NAME(phase_seconds)[i] accumulates phase i */
#include <time.h>
double NAME(phase_seconds)[16];
static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}
#define PHASE(i, stmt) do { const double t_ = now(); stmt; NAME(phase_seconds)[i] += now() - t_; } while (0)
static void phase_add(int i, double t0) { NAME(phase_seconds)[i] += now() - t0; }
#else
#define PHASE(i, stmt) do { stmt; } while (0)
static double now(void) { return 0; }
static void phase_add(int i, double t0) { (void)i, (void)t0; }
#endif

/* VBYTES-byte vectors of REAL, loadable from any REAL-aligned address: 64 where the target has AVX-512
   (its registers), else 32 (AVX2). 64 on an AVX2 machine made the kernel 4x slower than the torch path
   (Zen 1): gcc splits every vector in two and the register blocks below spill. */
#ifndef VBYTES
#ifdef __AVX512F__
#define VBYTES 64
#else
#define VBYTES 32
#endif
#endif
typedef REAL vec __attribute__((vector_size(VBYTES), aligned(sizeof(REAL)), may_alias));
#define VL ((int)(VBYTES / sizeof(REAL)))
#define MAXNV (((CV > CQ) ? CV : CQ) / VL) /* vectors per row of the widest product operand */
#define JB (2 * VL) /* Gram columns per register block */
#define NV (CV / VL) /* vectors per value row (CV a multiple of VL) */

/* Register blocks, sized to the 32 (AVX-512) or 16 (AVX2) vector registers. */
#ifndef UB
#define UB (VBYTES == 64 ? 8 : 6) /* window pixels per Gram block: UB x 2 accumulators hide the FMA latency */
#endif
#ifndef UP
#define UP (VBYTES == 64 ? UB : 3) /* window pixels per row_product block (UP x width / VL accumulators) */
#endif

/* G[u, j] = <win[u], maps[:, col0 + j]> for u < n_win, j < gw, over `depth` channels (win [n_win, depth],
   maps [depth, stride]; gw a multiple of JB, maps has JB zero columns past its last level). UB window
   pixels x JB columns of accumulators stay in registers while the channels stream past. */
static inline __attribute__((always_inline)) void NAME(gram)(const REAL *restrict win, long n_win, int depth,
                                                             const REAL *restrict maps, long stride, long col0,
                                                             long gw, REAL *restrict G) {
    for (long u = 0; u < n_win; u += UB) {
        const int nu = n_win - u < UB ? (int)(n_win - u) : UB;
        REAL q[UB][depth];
        memset(q, 0, sizeof(q));
        memcpy(q, win + u * depth, sizeof(REAL) * depth * nu);
        for (long j = 0; j < gw; j += JB) {
            vec a[UB][2] = {{{0}}};
            for (int c = 0; c < depth; c++) {
                const vec k0 = *(const vec *)(maps + c * stride + col0 + j);
                const vec k1 = *(const vec *)(maps + c * stride + col0 + j + VL);
                for (int i = 0; i < UB; i++) a[i][0] += q[i][c] * k0, a[i][1] += q[i][c] * k1;
            }
            for (int i = 0; i < nu; i++) {
                *(vec *)(G + (u + i) * gw + j) = a[i][0];
                *(vec *)(G + (u + i) * gw + j + VL) = a[i][1];
            }
        }
    }
}

/* acc[u, :] += sum_j P[u, j] rows[j, :] for u < n_win, j < gw (rows [gw, width], width a multiple of VL,
   at most MAXNV VL); UP window pixels at a time. */
static inline __attribute__((always_inline)) void NAME(row_product)(const REAL *restrict P, long n_win, long gw,
                                                                    const REAL *restrict rows, int width,
                                                                    REAL *restrict acc) {
    const int nv = width / VL;
    for (long u = 0; u < n_win; u += UP) {
        const int nu = n_win - u < UP ? (int)(n_win - u) : UP;
        vec a[UP][MAXNV] = {{{0}}};
        const REAL *p[UP];
        for (int i = 0; i < UP; i++) p[i] = P + (u + (i < nu ? i : 0)) * gw;
        for (long j = 0; j < gw; j++) {
            const REAL *v = rows + j * width;
            for (int n = 0; n < nv; n++) {
                const vec vn = *(const vec *)(v + n * VL);
                for (int i = 0; i < UP; i++) a[i][n] += p[i][j] * vn;
            }
        }
        for (int i = 0; i < nu; i++)
            for (int n = 0; n < nv; n++) *(vec *)(acc + (u + i) * width + n * VL) += a[i][n];
    }
}

/* out[j, :] += sum_u P[u, j] x[u, :] for j < gw (a multiple of TB), u < n_win (x [n_win, width], width a
   multiple of VL, at most MAXNV VL): the transposed product, TB columns of P at a time. */
#ifndef TB
#define TB (VBYTES == 64 ? 8 : 4) /* columns per column_product block; divides JB */
#endif
static inline __attribute__((always_inline)) void NAME(column_product)(const REAL *restrict P, long n_win, long gw,
                                                                       const REAL *restrict x, int width,
                                                                       REAL *restrict out) {
    const int nv = width / VL;
    for (long j = 0; j < gw; j += TB) {
        vec a[TB][MAXNV] = {{{0}}};
        for (long u = 0; u < n_win; u++) {
            const REAL *p = P + u * gw + j;
            for (int n = 0; n < nv; n++) {
                const vec xn = *(const vec *)(x + u * width + n * VL);
                for (int i = 0; i < TB; i++) a[i][n] += p[i] * xn;
            }
        }
        for (int i = 0; i < TB; i++)
            for (int n = 0; n < nv; n++) *(vec *)(out + (j + i) * width + n * VL) += a[i][n];
    }
}

/* Raw patch sums of query t (window pixel u) with the chunk's nv slots from its Gram block G [*, gw]:
   out[v] = sum_{a, b < 3} G[u + a wc + b, v + a wp + b]. */
static inline __attribute__((always_inline)) void NAME(patch_sums)(const REAL *G, long gw, long wc, long wp, long u,
                                                                   long nv, REAL *restrict out) {
    const REAL *g = G + u * gw;
    const REAL *restrict g0 = g, *restrict g1 = g + gw + 1, *restrict g2 = g + 2 * (gw + 1);
    const REAL *restrict g3 = g + wc * gw + wp, *restrict g4 = g3 + gw + 1, *restrict g5 = g3 + 2 * (gw + 1);
    const REAL *restrict g6 = g + 2 * (wc * gw + wp), *restrict g7 = g6 + gw + 1, *restrict g8 = g6 + 2 * (gw + 1);
#pragma omp simd
    for (long v = 0; v < nv; v++) out[v] = g0[v] + g1[v] + g2[v] + g3[v] + g4[v] + g5[v] + g6[v] + g7[v] + g8[v];
}

/* The paste (adjoint of patch_sums), first half: A [R wc, nv + 2] rows (i, x) = sum_b weight[t] tile[t, s0 + v - b]
   over the queries t = (i, x - b) of the tile [R C, n_slots] (weight NULL: 1). */
static void NAME(paste_across)(const REAL *tile, long n_slots, long s0, const REAL *weight, long R, long C, long nv,
                               REAL *A) {
    const long wc = C + 2, na = nv + 2;
    for (long i = 0; i < R; i++)
        for (long x = 0; x < wc; x++) {
            REAL *restrict a = A + (i * wc + x) * na;
            memset(a, 0, sizeof(REAL) * na);
            for (int b = 0; b < 3; b++) {
                if (x - b < 0 || x - b >= C) continue;
                const long t = i * C + x - b;
                const REAL *restrict src = tile + t * n_slots + s0, wt = weight != NULL ? weight[t] : 1;
                REAL *restrict dst = a + b;
#pragma omp simd
                for (long v = 0; v < nv; v++) dst[v] += wt * src[v];
            }
        }
}

/* Second half, for window pixels u0 .. u0 + nu: out [nu, gw] rows (y, x) = sum_a A[(y - a, x), j - a wp]. */
static void NAME(paste_down)(const REAL *A, long R, long wc, long nv, long wp, long gw, long u0, long nu, REAL *out) {
    const long na = nv + 2;
    for (long u = u0; u < u0 + nu; u++) {
        const long y = u / wc, x = u % wc;
        REAL *restrict g = out + (u - u0) * gw;
        memset(g, 0, sizeof(REAL) * gw);
        for (int a = 0; a < 3; a++) {
            if (y - a < 0 || y - a >= R) continue;
            const REAL *restrict src = A + ((y - a) * wc + x) * na;
            REAL *restrict dst = g + a * wp;
#pragma omp simd
            for (long v = 0; v < na; v++) dst[v] += src[v];
        }
    }
}

/* One chunk of key rows p0 .. p0 + P - 1 of level l: the level's padded width wp, its Gram / paste
   block width gw (the chunk's rows and two more, rounded up to JB), its nv key slots from slot s0
   and its block's first padded-map column col0. */
typedef struct {
    long wp, P, gw, nv, s0, col0;
} NAME(chunk);

/* Width of the Gram / paste block of P key rows of a level of padded width wp. */
static long block_width(long P, long wp) { return ((P + 2) * wp + 2 + JB - 1) / JB * JB; }

static NAME(chunk) NAME(chunk_at)(const NAME(tile_layout) * L, int l, long p0, long chunk_rows) {
    const long wp = L->w[l] + 2, h = L->n_level_slots[l] / wp, P = h - p0 < chunk_rows ? h - p0 : chunk_rows;
    return (NAME(chunk)){wp, P, block_width(P, wp), P * wp, L->slot_off[l] + p0 * wp,
                         L->pad_off[l] + p0 * wp};
}

/* Loop over every chunk of every level (ch: the chunk, in order). */
#define FOR_EACH_CHUNK(L, chunk_rows, ch)                                                   \
    for (int l_ = 0; l_ < (L)->n_levels; l_++)                                              \
        for (long p0_ = 0; p0_ < (L)->n_level_slots[l_] / ((L)->w[l_] + 2); p0_ += (chunk_rows)) \
            for (NAME(chunk) ch = NAME(chunk_at)((L), l_, p0_, (chunk_rows)), *once_ = &ch; once_; once_ = NULL)

/* One image. tile_rows x tile_cols query tiles, chunks of chunk_rows key rows. */
int NAME(image_forward)(const NAME(tile_layout) * L, int H, int W, int tile_rows, int tile_cols, int chunk_rows,
                         const REAL *query_padded, const REAL *keys, const REAL *values, const REAL *scale,
                         const REAL *bias, REAL *out, REAL *lse) {
    const long key_stride = L->n_cols, n_slots = L->n_slots;
    long max_wp = 0;
    for (int l = 0; l < L->n_levels; l++) max_wp = L->w[l] + 2 > max_wp ? L->w[l] + 2 : max_wp;
    const long max_win = (long)(tile_rows + 2) * (tile_cols + 2), max_gw = block_width(chunk_rows, max_wp);
    REAL *win = malloc(sizeof(REAL) * max_win * CQ), *S = malloc(sizeof(REAL) * tile_rows * tile_cols * n_slots);
    REAL *G = malloc(sizeof(REAL) * max_win * max_gw), *A = malloc(sizeof(REAL) * max_win * max_gw);
    REAL *acc = malloc(sizeof(REAL) * max_win * CV), *rs = malloc(sizeof(REAL) * tile_rows * tile_cols);
    long n_chunks = 0;
    for (int l = 0; l < L->n_levels; l++) n_chunks += (L->n_level_slots[l] / (L->w[l] + 2) + chunk_rows - 1) / chunk_rows;
    /* running max and sum per query; the max each chunk's weights were taken against */
    REAL *m = malloc(sizeof(REAL) * tile_rows * tile_cols), *sum = malloc(sizeof(REAL) * tile_rows * tile_cols);
    REAL *chunk_max = malloc(sizeof(REAL) * tile_rows * tile_cols * n_chunks), *weight = malloc(sizeof(REAL) * tile_rows * tile_cols);
    if (!win || !S || !G || !A || !acc || !rs || !m || !sum || !chunk_max || !weight) {
        free(win), free(S), free(G), free(A), free(acc), free(rs), free(m), free(sum), free(chunk_max), free(weight);
        return 1;
    }
    for (int y0 = 0; y0 < H; y0 += tile_rows)
        for (int x0 = 0; x0 < W; x0 += tile_cols) {
            const int R = H - y0 < tile_rows ? H - y0 : tile_rows, C = W - x0 < tile_cols ? W - x0 : tile_cols;
            const long wc = C + 2, n_win = (R + 2) * wc, n_q = (long)R * C;
            for (long y = 0; y < R + 2; y++)
                memcpy(win + y * wc * CQ, query_padded + ((y0 + y) * (W + 2) + x0) * CQ, sizeof(REAL) * wc * CQ);
            for (long t = 0; t < n_q; t++) m[t] = -1e30, sum[t] = 0;
            /* pass 1: per chunk, patch scores, then exp(score - running max) into S (online softmax) */
            long ci = 0;
            FOR_EACH_CHUNK(L, chunk_rows, ch) {
                const long wp = ch.wp, gw = ch.gw, nv = ch.nv, s0 = ch.s0;
                NAME(gram)(win, n_win, CQ, keys, key_stride, ch.col0, gw, G);
                const REAL *restrict sc = scale + s0, *restrict bi = bias + s0;
                for (long t = 0; t < n_q; t++) {
                    const long u = (t / C) * wc + t % C;
                    const REAL *g = G + u * gw;
                    const REAL *restrict g0 = g, *restrict g1 = g + gw + 1, *restrict g2 = g + 2 * (gw + 1);
                    const REAL *restrict g3 = g + wc * gw + wp, *restrict g4 = g3 + gw + 1, *restrict g5 = g3 + 2 * (gw + 1);
                    const REAL *restrict g6 = g + 2 * (wc * gw + wp), *restrict g7 = g6 + gw + 1, *restrict g8 = g6 + 2 * (gw + 1);
                    REAL *restrict o = S + t * n_slots + s0;
                    REAL mt = m[t], chunk_sum = 0;
#pragma omp simd reduction(max : mt)
                    for (long v = 0; v < nv; v++) {
                        const REAL s = sc[v] * (g0[v] + g1[v] + g2[v] + g3[v] + g4[v] + g5[v] + g6[v] + g7[v] + g8[v]) + bi[v];
                        o[v] = s;
                        mt = s > mt ? s : mt;
                    }
#pragma omp simd reduction(+ : chunk_sum)
                    for (long v = 0; v < nv; v++) {
                        o[v] = EXP_OR_ZERO(o[v] - mt);
                        chunk_sum += o[v];
                    }
                    sum[t] = sum[t] * EXP_OR_ZERO(m[t] - mt) + chunk_sum;
                    m[t] = mt;
                    chunk_max[t * n_chunks + ci] = mt;
                }
                ci++;
            }
            for (long t = 0; t < n_q; t++) {
                rs[t] = 1 / sum[t];
                lse[(y0 + t / C) * W + x0 + t % C] = m[t] + log(sum[t]);
            }
            /* pass 3: per chunk, paste the weights (separably: over b into A, over a into G) and multiply by the values */
            memset(acc, 0, sizeof(REAL) * n_win * CV);
            ci = 0;
            FOR_EACH_CHUNK(L, chunk_rows, ch) {
                const long wp = ch.wp, gw = ch.gw, nv = ch.nv, s0 = ch.s0;
                for (long t = 0; t < n_q; t++) weight[t] = rs[t] * EXP_OR_ZERO(chunk_max[t * n_chunks + ci] - m[t]);
                NAME(paste_across)(S, n_slots, s0, weight, R, C, nv, A);
                /* UB window pixels at a time: their pasted rows (in L1), then their value product */
                for (long u0 = 0; u0 < n_win; u0 += UB) {
                    const long nu = n_win - u0 < UB ? n_win - u0 : UB;
                    NAME(paste_down)(A, R, wc, nv, wp, gw, u0, nu, G);
                    NAME(row_product)(G, nu, gw, values + ch.col0 * CV, CV, acc + u0 * CV);
                }
                ci++;
            }
            for (long y = 0; y < R + 2; y++) {
                REAL *restrict o = out + ((y0 + y) * (W + 2) + x0) * CV;
                const REAL *restrict s = acc + y * wc * CV;
#pragma omp simd
                for (long i = 0; i < wc * CV; i++) o[i] += s[i];
            }
        }
    free(win), free(S), free(G), free(A), free(acc), free(rs), free(m), free(sum), free(chunk_max), free(weight);
    return 0;
}

/* Backward of one image from the saved lse [H W], accumulating into grad_query [(H + 2) (W + 2), CQ],
   grad_keys [key_stride, CQ], grad_values [key_stride, CV] (padded maps, channel-last) and grad_scale
   [n_slots] (the gradient of the per-slot score scale). grad_out_padded [(H + 2) (W + 2), CV] is the
   output gradient divided by the fold divisor; keys_t [key_stride, CQ] the keys channel-last and
   values_t [CV, key_stride] the values channel-first. Per tile: pass 1 stores the raw patch scores and
   the weight gradients <grad_out patch, value patch> of every chunk and sums their product with the
   weights (the softmax backward's row dot); pass 2 turns them into the weights and the score
   gradients, pastes both and takes the three products per chunk. */
int NAME(image_backward)(const NAME(tile_layout) * L, int H, int W, int tile_rows, int tile_cols, int chunk_rows,
                          const REAL *query_padded, const REAL *grad_out_padded, const REAL *keys, const REAL *keys_t,
                          const REAL *values_t, const REAL *scale, const REAL *bias, const REAL *lse,
                          REAL *grad_query, REAL *grad_keys, REAL *grad_values, REAL *grad_scale) {
    const long key_stride = L->n_cols, n_slots = L->n_slots;
    long max_wp = 0;
    for (int l = 0; l < L->n_levels; l++) max_wp = L->w[l] + 2 > max_wp ? L->w[l] + 2 : max_wp;
    const long max_win = (long)(tile_rows + 2) * (tile_cols + 2), max_gw = block_width(chunk_rows, max_wp);
    const long max_q = (long)tile_rows * tile_cols;
    REAL *win = malloc(sizeof(REAL) * max_win * CQ), *dwin = malloc(sizeof(REAL) * max_win * CV);
    REAL *raw = malloc(sizeof(REAL) * max_q * n_slots), *dp = malloc(sizeof(REAL) * max_q * n_slots);
    REAL *G = malloc(sizeof(REAL) * max_win * max_gw), *A = malloc(sizeof(REAL) * max_win * max_gw);
    REAL *pasted_w = malloc(sizeof(REAL) * max_win * max_gw), *pasted_g = malloc(sizeof(REAL) * max_win * max_gw);
    REAL *gq = malloc(sizeof(REAL) * max_win * CQ), *dot = malloc(sizeof(REAL) * max_q), *tl = malloc(sizeof(REAL) * max_q);
    if (!win || !dwin || !raw || !dp || !G || !A || !pasted_w || !pasted_g || !gq || !dot || !tl) {
        free(win), free(dwin), free(raw), free(dp), free(G), free(A), free(pasted_w), free(pasted_g), free(gq), free(dot), free(tl);
        return 1;
    }
    for (int y0 = 0; y0 < H; y0 += tile_rows)
        for (int x0 = 0; x0 < W; x0 += tile_cols) {
            const int R = H - y0 < tile_rows ? H - y0 : tile_rows, C = W - x0 < tile_cols ? W - x0 : tile_cols;
            const long wc = C + 2, n_win = (R + 2) * wc, n_q = (long)R * C;
            for (long y = 0; y < R + 2; y++) {
                const long from = (y0 + y) * (W + 2) + x0;
                memcpy(win + y * wc * CQ, query_padded + from * CQ, sizeof(REAL) * wc * CQ);
                memcpy(dwin + y * wc * CV, grad_out_padded + from * CV, sizeof(REAL) * wc * CV);
            }
            for (long t = 0; t < n_q; t++) dot[t] = 0, tl[t] = lse[(y0 + t / C) * W + x0 + t % C];
            /* pass 1 */
            FOR_EACH_CHUNK(L, chunk_rows, ch) {
                const long wp = ch.wp, gw = ch.gw, nv = ch.nv, s0 = ch.s0, col0 = ch.col0;
                const REAL *restrict sc = scale + s0, *restrict bi = bias + s0;
                PHASE(0, NAME(gram)(win, n_win, CQ, keys, key_stride, col0, gw, G));
                PHASE(1, for (long t = 0; t < n_q; t++) NAME(patch_sums)(G, gw, wc, wp, (t / C) * wc + t % C, nv, raw + t * n_slots + s0));
                PHASE(2, NAME(gram)(dwin, n_win, CV, values_t, key_stride, col0, gw, G));
                const double t3 = now();
                for (long t = 0; t < n_q; t++) {
                    REAL *restrict d = dp + t * n_slots + s0;
                    const REAL *restrict r = raw + t * n_slots + s0;
                    NAME(patch_sums)(G, gw, wc, wp, (t / C) * wc + t % C, nv, d);
                    REAL sum = 0;
                    const REAL lt = tl[t];
#pragma omp simd reduction(+ : sum)
                    for (long v = 0; v < nv; v++) sum += EXP_OR_ZERO(sc[v] * r[v] + bi[v] - lt) * d[v];
                    dot[t] += sum;
                }
                phase_add(3, t3);
            }
            /* pass 2 */
            memset(gq, 0, sizeof(REAL) * n_win * CQ);
            FOR_EACH_CHUNK(L, chunk_rows, ch) {
                const long wp = ch.wp, gw = ch.gw, nv = ch.nv, s0 = ch.s0, col0 = ch.col0;
                const REAL *restrict sc = scale + s0, *restrict bi = bias + s0;
                REAL *restrict gs = grad_scale + s0;
                const double t4 = now();
                for (long t = 0; t < n_q; t++) {
                    REAL *restrict r = raw + t * n_slots + s0, *restrict d = dp + t * n_slots + s0;
                    const REAL lt = tl[t], dt = dot[t];
#pragma omp simd
                    for (long v = 0; v < nv; v++) {
                        const REAL p = EXP_OR_ZERO(sc[v] * r[v] + bi[v] - lt), ds = p * (d[v] - dt);
                        gs[v] += ds * r[v];
                        r[v] = p;
                        d[v] = ds * sc[v];
                    }
                }
                phase_add(4, t4);
                PHASE(5, NAME(paste_across)(raw, n_slots, s0, NULL, R, C, nv, A));
                PHASE(6, NAME(paste_down)(A, R, wc, nv, wp, gw, 0, n_win, pasted_w));
                PHASE(7, NAME(column_product)(pasted_w, n_win, gw, dwin, CV, grad_values + col0 * CV));
                PHASE(5, NAME(paste_across)(dp, n_slots, s0, NULL, R, C, nv, A));
                PHASE(6, NAME(paste_down)(A, R, wc, nv, wp, gw, 0, n_win, pasted_g));
                PHASE(8, NAME(row_product)(pasted_g, n_win, gw, keys_t + col0 * CQ, CQ, gq));
                PHASE(9, NAME(column_product)(pasted_g, n_win, gw, win, CQ, grad_keys + col0 * CQ));
            }
            for (long y = 0; y < R + 2; y++) {
                REAL *restrict o = grad_query + ((y0 + y) * (W + 2) + x0) * CQ;
                const REAL *restrict s = gq + y * wc * CQ;
#pragma omp simd
                for (long i = 0; i < wc * CQ; i++) o[i] += s[i];
            }
        }
    free(win), free(dwin), free(raw), free(dp), free(G), free(A), free(pasted_w), free(pasted_g), free(gq), free(dot), free(tl);
    return 0;
}
