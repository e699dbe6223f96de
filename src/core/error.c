/* Thread-local error messages and allocation wrappers. */
#include "core/error.h"

#include <stdarg.h>
#include <string.h>

static _Thread_local char tl_msg[2048];
static kl_error_handler g_handler;
static void *g_handler_user;

const char *kl_status_str(kl_status s)
{
    static const char *names[KL_STATUS_COUNT] = {
        "KL_OK", "KL_EINVAL", "KL_EMISUSE", "KL_ENOMEM", "KL_EDEVMEM",
        "KL_EIO", "KL_EFORMAT", "KL_EUNSUPPORTED", "KL_EDEVICE",
        "KL_ENUMERIC", "KL_EINTERNAL"};
    if ((unsigned)s >= KL_STATUS_COUNT) return "KL_UNKNOWN";
    return names[s];
}

const char *kl_last_error(void) { return tl_msg; }
void kl_clear_error(void) { tl_msg[0] = 0; }
void kl_error_restore(const char *msg) { snprintf(tl_msg, sizeof tl_msg, "%s", msg); }

void kl_set_error_handler(kl_error_handler fn, void *user)
{
    g_handler = fn;
    g_handler_user = user;
}

kl_status kl_fail(kl_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tl_msg, sizeof tl_msg, fmt, ap);
    va_end(ap);
    if (g_handler) g_handler(s, tl_msg, g_handler_user);
    return s;
}

kl_status kl_fail_prefix(kl_status s, const char *fmt, ...)
{
    char prefix[512], old[sizeof tl_msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, tl_msg, sizeof old);
    int k = snprintf(tl_msg, sizeof tl_msg, "%s: ", prefix);
    if (k > 0 && (size_t)k < sizeof tl_msg) memcpy(tl_msg + k, old, strnlen(old, sizeof tl_msg - (size_t)k - 1) + 1), tl_msg[sizeof tl_msg - 1] = 0;
    /* again, with the context: the handler's last message is kl_last_error's */
    if (g_handler) g_handler(s, tl_msg, g_handler_user);
    return s;
}

static long g_fail_at; /* test hook: fail the n-th allocation from now */

void kl_test_fail_alloc(long n) { g_fail_at = n; }

static int should_fail(void)
{
    if (g_fail_at <= 0) return 0;
    return --g_fail_at == 0;
}

void *kl_malloc(size_t n)
{
    void *p = should_fail() ? NULL : malloc(n ? n : 1);
    if (!p) kl_fail(KL_ENOMEM, "out of host memory allocating %zu bytes", n);
    return p;
}

void *kl_calloc(size_t count, size_t size)
{
    void *p = should_fail() ? NULL : calloc(count ? count : 1, size ? size : 1);
    if (!p)
        kl_fail(KL_ENOMEM, "out of host memory allocating %zu x %zu bytes",
                count, size);
    return p;
}

void *kl_realloc(void *p, size_t n)
{
    void *q = should_fail() ? NULL : realloc(p, n ? n : 1);
    if (!q) kl_fail(KL_ENOMEM, "out of host memory growing to %zu bytes", n);
    return q;
}

void kl_free(void *p) { free(p); }

char *kl_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = kl_malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}
