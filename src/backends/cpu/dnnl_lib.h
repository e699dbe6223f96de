/* oneDNN (Debian's libdnnl2), loaded at run time for the CPU kernels that
 * use it (conv_dnnl.c, gemm_rep.c, gemm_half.c, blas.c): the functions kiln calls,
 * one engine, one stream and a primitive cache. Absent library, builds without <dnnl.h> and
 * AddressSanitizer builds (LeakSanitizer cannot see the library's JIT
 * buffers) have no oneDNN: KL_HAVE_DNNL is undefined there, or kl_dnnl()
 * returns NULL. */
#ifndef KL_CPU_DNNL_LIB_H
#define KL_CPU_DNNL_LIB_H

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KL_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define KL_ASAN 1
#endif
#if defined(__has_include) && !defined(KL_ASAN)
#if __has_include(<dnnl.h>)
#define KL_HAVE_DNNL 1
#endif
#endif

#ifdef KL_HAVE_DNNL
#include <dnnl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#define KL_DNNL_FUNCS(X)                                                                           \
    X(dnnl_engine_create) X(dnnl_stream_create) X(dnnl_stream_wait) X(dnnl_memory_desc_init_by_tag) \
    X(dnnl_memory_desc_init_by_strides) X(dnnl_memory_desc_equal) X(dnnl_memory_desc_get_size)     \
    X(dnnl_dilated_convolution_forward_desc_init) X(dnnl_dilated_convolution_backward_data_desc_init) \
    X(dnnl_dilated_convolution_backward_weights_desc_init) X(dnnl_matmul_desc_init)                \
    X(dnnl_primitive_attr_create) X(dnnl_primitive_attr_destroy) X(dnnl_post_ops_create)           \
    X(dnnl_post_ops_destroy) X(dnnl_post_ops_append_eltwise) X(dnnl_post_ops_append_sum)           \
    X(dnnl_primitive_attr_set_post_ops) X(dnnl_primitive_attr_set_scratchpad_mode)                 \
    X(dnnl_primitive_desc_create) X(dnnl_primitive_desc_destroy)                                   \
    X(dnnl_primitive_desc_query_md) X(dnnl_primitive_create) X(dnnl_primitive_destroy)             \
    X(dnnl_primitive_execute) X(dnnl_memory_create) X(dnnl_memory_destroy)                         \
    X(dnnl_memory_set_data_handle) X(dnnl_reorder_primitive_desc_create) X(dnnl_get_effective_cpu_isa) X(dnnl_sgemm)

typedef struct kl_dnnl_lib {
#define KL_DNNL_PTR(f) __typeof__(f) *f;
    KL_DNNL_FUNCS(KL_DNNL_PTR)
#undef KL_DNNL_PTR
    dnnl_engine_t eng;
    dnnl_stream_t st;
} kl_dnnl_lib;

/* The library, loaded on first use (thread-safe); NULL when it cannot be. */
const kl_dnnl_lib *kl_dnnl(void);

/* Primitives made once per geometry and kept for the process. A cache's
 * entry type embeds kl_dnnl_entry as its first member; mu is held by a run
 * while it points the entry's memory objects at its buffers. */
#define KL_DNNL_KEY 24
typedef struct kl_dnnl_entry {
    struct kl_dnnl_entry *next;
    int64_t key[KL_DNNL_KEY];
    bool failed; /* oneDNN refused the geometry: the caller's other path runs it */
    pthread_mutex_t mu;
} kl_dnnl_entry;
typedef struct kl_dnnl_cache {
    pthread_mutex_t mu;
    kl_dnnl_entry *head;
} kl_dnnl_cache;
#define KL_DNNL_CACHE_INIT {PTHREAD_MUTEX_INITIALIZER, NULL}
/* The entry of key (nkey <= KL_DNNL_KEY values; the thread count belongs
 * in it), allocated zeroed with size bytes and made by make(e, arg) the
 * first time, with OpenMP set to threads (oneDNN sizes its blocking by the
 * threads it will have). NULL: out of memory, or make failed (a half-made
 * entry is kept, marked failed and leaked, so it is not tried again). */
kl_dnnl_entry *kl_dnnl_cached(kl_dnnl_cache *c, const int64_t *key, int nkey, size_t size, int threads,
                              bool (*make)(kl_dnnl_entry *e, const void *arg), const void *arg);
#endif

#endif
