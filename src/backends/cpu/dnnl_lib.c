/* Loading oneDNN (see dnnl_lib.h). */
#include "backends/cpu/dnnl_lib.h"

#ifdef KL_HAVE_DNNL
#include <dlfcn.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>

static kl_dnnl_lib g_lib;
static const kl_dnnl_lib *g_ok;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void load(void)
{
    void *h = dlopen("libdnnl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!h) return;
    bool ok = true;
#define KL_DNNL_SYM(f)                                                                             \
    {                                                                                              \
        void *p = dlsym(h, #f);                                                                    \
        ok &= p != NULL;                                                                           \
        memcpy(&g_lib.f, &p, sizeof p); /* object-to-function pointer through memcpy (ISO C) */    \
    }
    KL_DNNL_FUNCS(KL_DNNL_SYM)
#undef KL_DNNL_SYM
    if (!ok || g_lib.dnnl_engine_create(&g_lib.eng, dnnl_cpu, 0) != dnnl_success) return;
    if (g_lib.dnnl_stream_create(&g_lib.st, g_lib.eng, dnnl_stream_default_flags) != dnnl_success) return;
    g_ok = &g_lib;
}

const kl_dnnl_lib *kl_dnnl(void)
{
    pthread_once(&g_once, load);
    return g_ok;
}

kl_dnnl_entry *kl_dnnl_cached(kl_dnnl_cache *c, const int64_t *key, int nkey, size_t size, int threads,
                              bool (*make)(kl_dnnl_entry *e, const void *arg), const void *arg)
{
    int64_t k[KL_DNNL_KEY] = {0};
    memcpy(k, key, sizeof *k * (size_t)(nkey < KL_DNNL_KEY ? nkey : KL_DNNL_KEY));
    pthread_mutex_lock(&c->mu);
    kl_dnnl_entry *e = c->head;
    while (e && memcmp(e->key, k, sizeof k)) e = e->next;
    if (!e && (e = calloc(1, size))) {
        memcpy(e->key, k, sizeof k);
        pthread_mutex_init(&e->mu, NULL);
        int prev = omp_get_max_threads();
        omp_set_num_threads(threads);
        e->failed = !make(e, arg);
        omp_set_num_threads(prev);
        e->next = c->head;
        c->head = e;
    }
    pthread_mutex_unlock(&c->mu);
    return e && !e->failed ? e : NULL;
}
#endif
