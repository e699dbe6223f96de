/* Minimal test harness: CHECK macros count failures; main returns the count. */
#ifndef KL_TESTUTIL_H
#define KL_TESTUTIL_H
#include <stdio.h>
#include <string.h>
#include <stdint.h>
#include "kiln/status.h"

extern int kl_test_failures;
extern int kl_test_checks;

#define CHECK(c)                                                              \
    do {                                                                      \
        kl_test_checks++;                                                     \
        if (!(c)) {                                                           \
            kl_test_failures++;                                               \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__,  \
                    #c);                                                      \
        }                                                                     \
    } while (0)

/* A call must succeed; on failure print the kiln message. */
#define CHECK_OK(call)                                                        \
    do {                                                                      \
        kl_test_checks++;                                                     \
        kl_status s_ = (call);                                                \
        if (s_ != KL_OK) {                                                    \
            kl_test_failures++;                                               \
            fprintf(stderr, "%s:%d: %s -> %s: %s\n", __FILE__, __LINE__,      \
                    #call, kl_status_str(s_), kl_last_error());               \
        }                                                                     \
    } while (0)

/* A call must fail with status st and a message containing substr. */
#define CHECK_ERR(call, st, substr)                                           \
    do {                                                                      \
        kl_test_checks++;                                                     \
        kl_status s_ = (call);                                                \
        if (s_ != (st) || !strstr(kl_last_error(), (substr))) {               \
            kl_test_failures++;                                               \
            fprintf(stderr,                                                   \
                    "%s:%d: %s -> %s '%s', expected %s with '%s'\n",          \
                    __FILE__, __LINE__, #call, kl_status_str(s_),             \
                    kl_last_error(), kl_status_str(st), (substr));            \
        }                                                                     \
    } while (0)

/* In a helper returning kl_status: returns a failing call's status. */
#define TRY(call)                                                             \
    do {                                                                      \
        kl_status s_ = (call);                                                \
        if (s_ != KL_OK) return s_;                                           \
    } while (0)

/* Every parameter and buffer of ctx (all f32: checked), concatenated
 * (malloc'd); *n values. With name_part, *abs_sum gets the sum of |v| over
 * the slots whose names contain it. */
struct kl_ctx;
float *kl_test_params(struct kl_ctx *ctx, int64_t *n, const char *name_part, double *abs_sum);

/* The model of a config text's model: section (name: the text's name in
 * messages). */
struct kl_model;
struct kl_model *kl_test_model(const char *yaml, const char *name);

/* Ends main: prints a summary line and returns the exit code. */
int kl_test_done(const char *name);

#endif
