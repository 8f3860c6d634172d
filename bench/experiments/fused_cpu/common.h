/* What kernels.c and chunked.c share: REAL-suffixed names, the clamped exp, the tile layout
   (see kernels.c for the layout). Compiled with -DREAL=float|double -DSUFFIX=_f32|_f64. */

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
