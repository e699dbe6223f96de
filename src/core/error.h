/* Internal error helpers: set the thread's message and return a status. */
#ifndef KL_CORE_ERROR_H
#define KL_CORE_ERROR_H

#include "kiln/status.h"
#include <stdio.h>
#include <stdlib.h>

/* Records a formatted message for this thread and returns s. */
kl_status kl_fail(kl_status s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prefixes the current message with "prefix: " (adds context on the way up). */
kl_status kl_fail_prefix(kl_status s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Puts back a message saved before a clean-up step that may fail (the
 * error handler is not called again). */
void kl_error_restore(const char *msg);

/* Propagate a failure: KL_TRY(kl_something(...)); */
#define KL_TRY(call)                                                          \
    do {                                                                      \
        kl_status kl_try_s_ = (call);                                         \
        if (kl_try_s_ != KL_OK) return kl_try_s_;                             \
    } while (0)

/* Invariants no input can break; checked in debug and sanitizer builds. */
#ifdef KL_DEBUG
#define KL_ASSERT(c)                                                          \
    do {                                                                      \
        if (!(c)) {                                                           \
            fprintf(stderr, "kiln internal error %s:%d: %s\n", __FILE__,      \
                    __LINE__, #c);                                            \
            abort();                                                          \
        }                                                                     \
    } while (0)
#else
#define KL_ASSERT(c) ((void)0)
#endif

/* Allocation wrappers that record KL_ENOMEM with the size asked for. In test
 * builds kl_test_fail_alloc(n) makes the n-th allocation fail. */
void *kl_malloc(size_t n);
void *kl_calloc(size_t count, size_t size);
void *kl_realloc(void *p, size_t n);
void  kl_free(void *p);
char *kl_strdup(const char *s);
void  kl_test_fail_alloc(long n); /* 0 disables; counts from the call */

#endif
