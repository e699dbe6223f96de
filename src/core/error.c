/* Thread-local error messages and allocation wrappers. */
#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
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
static void set_msg(const char *msg, size_t n);
void kl_error_restore(const char *msg) { set_msg(msg, strlen(msg)); }

void kl_set_error_handler(kl_error_handler fn, void *user)
{
    g_handler = fn;
    g_handler_user = user;
}

/* msg (n bytes) into tl_msg; one too long (long paths) keeps its start and
 * its end, where the reason is, and shortens the middle to "...", cutting
 * between UTF-8 characters. */
static void set_msg(const char *msg, size_t n)
{
    enum { TAIL = 768 };
    if (n < sizeof tl_msg) {
        memmove(tl_msg, msg, n + 1);
        return;
    }
    size_t head = sizeof tl_msg - TAIL - 4, tail = n - TAIL;
    while (head > 0 && ((unsigned char)msg[head] & 0xC0) == 0x80) head--;
    while (tail < n && ((unsigned char)msg[tail] & 0xC0) == 0x80) tail++;
    memmove(tl_msg, msg, head);
    memcpy(tl_msg + head, "...", 3);
    memmove(tl_msg + head + 3, msg + tail, n - tail + 1);
}

/* The message of fmt and ap into tl_msg (set_msg). */
static void format_msg(const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int k = vsnprintf(tl_msg, sizeof tl_msg, fmt, ap);
    char *big = k >= (int)sizeof tl_msg ? malloc((size_t)k + 1) : NULL;
    if (big) {
        vsnprintf(big, (size_t)k + 1, fmt, ap2);
        set_msg(big, (size_t)k);
        free(big);
    }
    va_end(ap2);
}

kl_status kl_fail(kl_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    format_msg(fmt, ap);
    va_end(ap);
    if (g_handler) g_handler(s, tl_msg, g_handler_user);
    return s;
}

kl_status kl_fail_prefix(kl_status s, const char *fmt, ...)
{
    char prefix[512], both[sizeof prefix + 2 + sizeof tl_msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    int k = snprintf(both, sizeof both, "%s: %s", prefix, tl_msg);
    set_msg(both, k < 0 ? 0 : (size_t)k < sizeof both ? (size_t)k : sizeof both - 1);
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
