/* What cpu_pyramid.c (the library's CPU kernel) and bench/experiments/fused_cpu/kernels.c share:
   REAL-suffixed names, the clamped exp, the tile layout. Compiled with -DREAL=float|double
   -DSUFFIX=_f32|_f64.

One tile of R x C queries, 3 x 3 patches, maps zero padded by 1.

  Window pixels: u = y (C + 2) + x for y < R + 2, x < C + 2, the tile's queries with their halo;
  query t = i C + j is the patch of window pixels (i .. i + 2, j .. j + 2).
  Gram matrix G [window, n_cols]: <window pixel, padded key-map pixel> channel dot products, level l's
  padded map ((h_l + 2) x (w_l + 2) pixels, row-major) from column pad_off[l]. Two zero columns
  follow the last level, so that the shifted reads below stay inside a row.
  Key slots [R C, n_slots]: level l's keys from column slot_off[l], slot p (w_l + 2) + q for key (p, q);
  slots with q >= w_l are not keys (their score is the bias -1e30, their weight 0). Slots rather than
  a compact h_l x w_l layout make every loop below one contiguous run per level, which vectorises.

  Patch score of query t and slot v of level l: sum over a, b < 3 of
  G[u(t) + a (C + 2) + b, pad_off[l] + v + a (w_l + 2) + b],   u(t) = i (C + 2) + j. */

#include <stdlib.h>
#include <string.h>
#include <tgmath.h> /* exp and log of REAL: expf, logf for float */

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define NAME(base) CAT(base, SUFFIX)

/* exp(x), or 0 where x < -80 (exp(-80) = 2e-35: far below what a sum of weights >= 1 can tell apart).
   Clamping first keeps the vector exp off its slow path for huge negative arguments (the bias) and
   off subnormal results, without flushing subnormals process-wide as linking with -ffast-math would. */
#define EXP_OR_ZERO(x) ((x) < -80 ? (REAL)0 : exp((x) < -80 ? (REAL)-80 : (x)))

typedef struct {
    int R, C, n_levels;
    long n_cols, n_slots;
    const long *w, *n_level_slots, *pad_off, *slot_off; /* per level */
} NAME(tile_layout);
