/* Backends behind one interface. The core asks a backend for memory, copies
 * and synchronisation; kernels are per op in the op table (kl_op_def.fwd).
 * The CUDA backend registers only in CUDA builds; core never includes a
 * CUDA header. */
#ifndef KL_BACKEND_H
#define KL_BACKEND_H

#include "kiln/status.h"
#include <stddef.h>

typedef struct kl_backend {
    const char *name;
    /* Memory: 256-byte aligned; free(NULL) is a no-op. */
    kl_status (*alloc)(void **p, size_t bytes);
    void (*free)(void *p);
    kl_status (*h2d)(void *dst, const void *src, size_t bytes);
    kl_status (*d2h)(void *dst, const void *src, size_t bytes);
    kl_status (*d2d)(void *dst, const void *src, size_t bytes);
    kl_status (*memset0)(void *p, size_t bytes);
    kl_status (*sync)(void);
    /* Called before a graph runs: thread counts, streams. */
    void (*begin_run)(int threads);
} kl_backend;

extern const kl_backend kl_backend_cpu;

/* The backend of a ctx: kl_backends[ctx->backend]; NULL where not built. */
extern const kl_backend *const kl_backends[];

/* Number of CPU cores available to this process. */
int kl_cpu_cores(void);
/* KL_OK if cuda:index can be used; otherwise a message saying why (no CUDA
 * in this build, no driver, no such device). */
kl_status kl_cuda_available(int index);

#endif
