/* GPU-vs-CPU parity harness shared by the CUDA tests (test_cuda*.c).
 *
 * A case is a builder that records some ops on a graph (parameters drawn
 * uniformly from [-1, 1], inputs listed in `in`). kl_parity_case builds it
 * on the CPU and on the GPU, adds loss = sum(y * r) for a random buffer r,
 * runs forward and backward once, and compares y, every gradient and every
 * buffer, relative to the largest CPU value, in f32 and (unless f32_only)
 * f64. Failures are counted in kl_test_failures with the first mismatches
 * printed. */
#ifndef KL_TEST_CUDA_PARITY_H
#define KL_TEST_CUDA_PARITY_H

#include "kiln/kiln.h"

typedef struct { kl_tensor *t; const void *data; size_t bytes; } kl_in_set;
typedef struct { kl_in_set v[4]; int n; } kl_in_list;
typedef kl_status (*kl_build_fn)(kl_graph *g, kl_dtype dt, int arg, kl_in_list *in, kl_tensor **y);

/* How a case runs in 16-bit storage (kl_parity_half_run). */
enum {
    KL_H16_EXACT = 0, /* one op after the parameters: on the CPU, its 16-bit output is its f32 output rounded */
    KL_H16_ROUNDED,   /* several ops, or 16-bit buffers: values rounded along the way, within tolerance */
    KL_H16_NONE       /* no 16-bit run (the case is about dtypes itself) */
};

typedef struct {
    const char *name;
    kl_build_fn build;
    int arg;
    double tol32, tol64;
    int f32_only;
    int h16; /* KL_H16_* */
} kl_parity_case;

/* U(-1, 1), the harness's parameter init. */
extern const kl_init kl_parity_u1;
/* Call first in main: f32 GEMMs and convolutions without TF32 (KILN_TF32=0)
 * unless the environment says otherwise. Parity at TF32's 1e-3 rounding is
 * not a test where an input sits near a ReLU kink (one flipped unit moves a
 * gradient by ~0.2) or a recurrence carries the rounding; gpu_check.sh runs
 * test_cuda once more with KILN_TF32=1, and training and benchmarks use TF32. */
void kl_parity_fp32_default(void);
/* A parameter initialised from kl_parity_u1 (_init: from init). */
kl_status kl_parity_param(kl_graph *g, const char *name, kl_dtype dt, int nd, const int64_t *ne, kl_tensor **out);
kl_status kl_parity_param_init(kl_graph *g, const char *name, kl_dtype dt, int nd, const int64_t *ne,
                               const kl_init *init, kl_tensor **out);
/* n values of dtype dt (f32, f64 or i32) as doubles. */
void kl_parity_to_double(const void *src, kl_dtype dt, int64_t n, double *dst);
/* max |gpu - cpu| relative to max |cpu| must be <= tol; prints the first mismatches. */
void kl_parity_compare(const char *cs, const char *what, const double *cpu, const double *gpu, int64_t n, double tol);
/* Every parameter and buffer of ctx b against ctx a (same layout): the rms
 * difference relative to a's rms must be <= tol_rms and the largest
 * absolute difference <= tol_max; prints the parameters off. */
void kl_parity_params(const char *cs, kl_ctx *a, kl_ctx *b, double tol_rms, double tol_max);
/* g, a GPU graph run at least twice, replays a captured CUDA graph (a
 * capture that fails reruns eagerly with only a note: a test says so). */
void kl_check_captured(const char *cs, const kl_graph *g);
/* Runs one case on the CPU and on gpu and compares (see above). */
void kl_parity_case_run(const kl_parity_case *c, kl_device gpu);

/* The case in 16-bit storage (half: f16 or bf16). Parameters stay f32 and
 * are seen through a cast to half (in the f32 reference too, so both read
 * the same values); the loss weights r likewise. On the CPU (dev) the
 * 16-bit run is compared with the f32 run: outputs and gradients within
 * tol relative to the largest value, and for KL_H16_EXACT the output bit
 * for bit with the f32 output rounded to half. On a GPU it is compared
 * with the CPU's 16-bit run, within tol. */
void kl_parity_half_run(const kl_parity_case *c, kl_device dev, kl_dtype half, double tol);
/* kl_parity_half_run in bf16 and in f16, each with its tolerance. */
void kl_parity_half_both(const kl_parity_case *c, kl_device dev);
/* Whether the test was asked (argument --half-cpu) for the CPU's 16-bit
 * runs only: they need no GPU, so that mode never reports skipped. */
int kl_parity_half_cpu_mode(int argc, char **argv);

#endif
