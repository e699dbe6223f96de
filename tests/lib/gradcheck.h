/* Finite-difference gradient checks in double precision.
 *
 * A case lists its inputs (shape, and whether each is a float parameter
 * whose gradient is checked or an integer input with values in [0, imax))
 * and a build function that applies the op under test. The checker builds
 * loss = sum(op(inputs) * R) for a random R, runs backward, and compares
 * every analytic gradient element (a random sample of 64 per input above
 * 4096) with the central difference (f(x+h) - f(x-h)) / 2h. */
#ifndef KL_GRADCHECK_H
#define KL_GRADCHECK_H

#include "kiln/kiln.h"

#define GC_MAX_IN 8

typedef struct gc_input {
    int ndim;
    int64_t ne[KL_MAX_DIMS];
    int imax;    /* > 0: an i32 input with values in [0, imax) */
    double lo, hi; /* float range; both 0 means [-1, 1] */
} gc_input;

typedef kl_status (*gc_build)(kl_graph *g, kl_tensor **in, void *user, kl_tensor **out);

/* Returns the number of mismatching elements (0 = pass); prints the first
 * few with op name, input, index, analytic and numeric values. */
int gradcheck(const char *name, int n_in, const gc_input *in, gc_build build, void *user);

/* In a build function: returns the status of a failing call. */
#define KL_TRY_T(call)                                                                             \
    do {                                                                                           \
        kl_status s_ = (call);                                                                     \
        if (s_ != KL_OK) return s_;                                                                \
    } while (0)

/* Shorthand for shapes: GC_IN(2, 3, 4) is a float input of shape [2,3,4]. */
#define GC_IN(...) ((gc_input){.ndim = sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t), .ne = {__VA_ARGS__}})

#endif
