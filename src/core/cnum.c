/* C-locale number text (core/cnum.h), whatever setlocale the host called:
 * strtod_l for reading, and the thread's locale switched to C around
 * vsnprintf for writing (glibc has no snprintf_l). */
#define _GNU_SOURCE
#include "core/cnum.h"

#include <locale.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static locale_t g_c_locale; /* (locale_t)0 if newlocale failed: the process's locale is used */
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void c_locale_init(void) { g_c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0); }

double kl_strtod(const char *s, char **end)
{
    pthread_once(&g_once, c_locale_init);
    return g_c_locale ? strtod_l(s, end, g_c_locale) : strtod(s, end);
}

int kl_snprintf_c(char *buf, size_t n, const char *fmt, ...)
{
    pthread_once(&g_once, c_locale_init);
    locale_t old = g_c_locale ? uselocale(g_c_locale) : (locale_t)0;
    va_list ap;
    va_start(ap, fmt);
    int r = vsnprintf(buf, n, fmt, ap);
    va_end(ap);
    if (old) uselocale(old);
    return r;
}
