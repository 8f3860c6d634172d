/* The element-wise part of a query tile of pyramid attention on the CPU, fused (driven by fused_cpu.py beside it).

One tile of R x C queries, 3 x 3 patches, maps zero padded by 1. REAL is float or double.

  Layouts: see kernels/cpu_common.h.

Compiled by fused_cpu.py (cc -O3 -march=native -ffast-math -fopenmp; -ffast-math lets the compiler
call the vector math library for exp and vectorise the max and sum reductions; the bias keeps
every value finite, as -ffinite-math-only needs). */

#include "cpu_common.h" /* in kernels/ */

/* Patch scores of query t with every slot: out[v] = scale[v] * (patch sum) + bias[v], and their max;
   with scale NULL the raw patch sums (and 0). */
static REAL NAME(patch_scores)(const NAME(tile_layout) * L, const REAL *gram, long t, const REAL *scale,
                               const REAL *bias, REAL *out) {
    const long u = (t / L->C) * (L->C + 2) + t % L->C;
    REAL m = -1e30;
    for (int l = 0; l < L->n_levels; l++) {
        const long wp = L->w[l] + 2, n = L->n_level_slots[l], off = L->slot_off[l];
        const REAL *g = gram + u * L->n_cols + L->pad_off[l]; /* window pixel u, the level's first column */
        const long dr = L->n_cols + 1, da = (L->C + 2) * L->n_cols + wp;  /* shifts of b and of a */
        const REAL *restrict g0 = g, *restrict g1 = g + dr, *restrict g2 = g + 2 * dr;
        const REAL *restrict g3 = g + da, *restrict g4 = g + da + dr, *restrict g5 = g + da + 2 * dr;
        const REAL *restrict g6 = g + 2 * da, *restrict g7 = g + 2 * da + dr, *restrict g8 = g + 2 * da + 2 * dr;
        REAL *restrict o = out + off;
        if (scale == NULL) {
#pragma omp simd
            for (long v = 0; v < n; v++)
                o[v] = g0[v] + g1[v] + g2[v] + g3[v] + g4[v] + g5[v] + g6[v] + g7[v] + g8[v];
            continue;
        }
        const REAL *restrict sc = scale + off, *restrict bi = bias + off;
#pragma omp simd reduction(max : m)
        for (long v = 0; v < n; v++) {
            const REAL score = sc[v] * (g0[v] + g1[v] + g2[v] + g3[v] + g4[v] + g5[v] + g6[v] + g7[v] + g8[v]) + bi[v];
            o[v] = score;
            m = score > m ? score : m;
        }
    }
    return m;
}

/* Forward: exp(score - max) in probs [R C, n_slots] (unnormalised: the paste applies row_scale),
   row_scale [R C] = 1 / (sum of the row) and lse [R C] = log of the sum of exp(score) (natural).
   scale, bias [n_slots]: score = scale * raw + bias. */
void NAME(tile_softmax)(const NAME(tile_layout) * L, const REAL *gram, const REAL *scale, const REAL *bias,
                        REAL *probs, REAL *row_scale, REAL *lse, int threads) {
    const long n = L->n_slots;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long t = 0; t < (long)L->R * L->C; t++) {
        REAL *p = probs + t * n;
        const REAL m = NAME(patch_scores)(L, gram, t, scale, bias, p);
        REAL sum = 0;
#pragma omp simd reduction(+ : sum)
        for (long v = 0; v < n; v++) {
            p[v] = EXP_OR_ZERO(p[v] - m);
            sum += p[v];
        }
        row_scale[t] = 1 / sum;
        lse[t] = m + log(sum);
    }
}

/* Backward of the softmax and the scaling, from the Gram matrices of (queries, keys) and of
   (output gradient, values) and the saved lse: probs [R C, n_slots] (recomputed weights),
   grad_raw [R C, n_slots] (gradient of the raw patch sums) and grad_scale [n_slots] (accumulated). */
void NAME(tile_softmax_backward)(const NAME(tile_layout) * L, const REAL *gram, const REAL *grad_gram,
                                 const REAL *scale, const REAL *bias, const REAL *lse, REAL *probs, REAL *grad_raw,
                                 REAL *grad_scale, int threads) {
    const long n = L->n_slots;
#pragma omp parallel num_threads(threads)
    {
        REAL *raw = malloc(sizeof(REAL) * n);
#pragma omp for schedule(static) reduction(+ : grad_scale[:n])
        for (long t = 0; t < (long)L->R * L->C; t++) {
            REAL *p = probs + t * n, *g = grad_raw + t * n;
            NAME(patch_scores)(L, gram, t, NULL, NULL, raw);
            NAME(patch_scores)(L, grad_gram, t, NULL, NULL, g); /* gradient of the weights: <grad_out patch, value patch> */
            REAL dot = 0;
#pragma omp simd reduction(+ : dot)
            for (long v = 0; v < n; v++) {
                p[v] = EXP_OR_ZERO(scale[v] * raw[v] + bias[v] - lse[t]);
                dot += p[v] * g[v];
            }
#pragma omp simd
            for (long v = 0; v < n; v++) {
                const REAL ds = p[v] * (g[v] - dot); /* gradient of the score */
                grad_scale[v] += ds * raw[v];
                g[v] = ds * scale[v];
            }
        }
        free(raw);
    }
}

/* Paste, the adjoint of the patch sums: out [window, n_cols] (overwritten),
   out[u + a (C + 2) + b, pad_off[l] + v + a (w_l + 2) + b] += row_scale[t] tile[t, slot_off[l] + v] over
   queries t (u = u(t)), a, b < 3 and slots v (row_scale NULL: 1). Slots that are not keys hold 0 in
   `tile`. Separably, through rows [R (C + 2), n_cols] of `across` (the sum over b), then over a; each
   output row is a gather, so that threads never write the same row. */
void NAME(tile_paste)(const NAME(tile_layout) * L, const REAL *tile, const REAL *row_scale, REAL *across, REAL *out,
                      int threads) {
    const int R = L->R, C = L->C;
    const long n_cols = L->n_cols, n_slots = L->n_slots;
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (long r = 0; r < (long)R * (C + 2); r++) { /* across[(i, x)] = sum_b tile[(i, x - b)] shifted by b */
            const int i = (int)(r / (C + 2)), x = (int)(r % (C + 2));
            REAL *o = across + r * n_cols;
            memset(o, 0, sizeof(REAL) * n_cols);
            for (int b = 0; b < 3; b++) {
                if (x - b < 0 || x - b >= C) continue;
                const long t = (long)i * C + (x - b);
                const REAL *src = tile + t * n_slots, weight = row_scale != NULL ? row_scale[t] : 1;
                for (int l = 0; l < L->n_levels; l++) {
                    const long n = L->n_level_slots[l];
                    REAL *restrict dst = o + L->pad_off[l] + b;
                    const REAL *restrict s = src + L->slot_off[l];
#pragma omp simd
                    for (long v = 0; v < n; v++) dst[v] += weight * s[v];
                }
            }
        }
#pragma omp for schedule(static)
        for (long u = 0; u < (long)(R + 2) * (C + 2); u++) { /* out[(y, x)] = sum_a across[(y - a, x)] shifted by a */
            const int y = (int)(u / (C + 2)), x = (int)(u % (C + 2));
            REAL *o = out + u * n_cols;
            memset(o, 0, sizeof(REAL) * n_cols);
            for (int a = 0; a < 3; a++) {
                if (y - a < 0 || y - a >= R) continue;
                const REAL *src = across + ((long)(y - a) * (C + 2) + x) * n_cols;
                for (int l = 0; l < L->n_levels; l++) {
                    const long n = L->n_level_slots[l] + 2, shift = a * (L->w[l] + 2);
                    REAL *restrict dst = o + L->pad_off[l] + shift;
                    const REAL *restrict s = src + L->pad_off[l];
#pragma omp simd
                    for (long v = 0; v < n; v++) dst[v] += s[v];
                }
            }
        }
    }
}
