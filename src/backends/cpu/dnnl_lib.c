/* Loading oneDNN (see dnnl_lib.h). */
#include "backends/cpu/dnnl_lib.h"

#ifdef KL_HAVE_DNNL
#include <dlfcn.h>
#include <pthread.h>
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
#endif
