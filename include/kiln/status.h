/* kiln status codes and error messages.
 *
 * Every fallible kiln call returns a kl_status; KL_OK is 0. On failure the
 * calling thread's last error message says where, what, and the values:
 *
 *   kl_tensor *y;
 *   if (kl_matmul(g, a, b, &y) != KL_OK)
 *       fprintf(stderr, "kiln: %s\n", kl_last_error());
 *       // matmul: inner dims differ: [128,784] f32 x [512,10] f32
 */
#ifndef KILN_STATUS_H
#define KILN_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define KL_API __declspec(dllexport)
#else
#define KL_API __attribute__((visibility("default")))
#endif

typedef enum kl_status {
    KL_OK = 0,
    KL_EINVAL,       /* bad argument, shape or dtype */
    KL_EMISUSE,      /* null handle, wrong call order */
    KL_ENOMEM,       /* host allocation failed */
    KL_EDEVMEM,      /* device allocation failed */
    KL_EIO,          /* file or system call failed */
    KL_EFORMAT,      /* malformed file */
    KL_EUNSUPPORTED, /* no kernel, backend or dtype for this */
    KL_EDEVICE,      /* CUDA or driver error */
    KL_ENUMERIC,     /* NaN or Inf where a finite value was needed */
    KL_EINTERNAL,    /* a bug in kiln */
    KL_STATUS_COUNT
} kl_status;

/* The fixed name of a status code ("KL_EINVAL"). Never NULL. */
KL_API const char *kl_status_str(kl_status s);

/* The last failure's message on this thread; "" if none. Borrowed: valid
 * until this thread's next failing kiln call. */
KL_API const char *kl_last_error(void);

/* Clears this thread's last error message. */
KL_API void kl_clear_error(void);

/* Optional hook called with every failure (status, message). NULL removes it.
 * A failure that gains context on its way out (the op or tensor it came
 * from) calls it again with the longer message: the last call of a failure
 * has the message kl_last_error returns. */
typedef void (*kl_error_handler)(kl_status s, const char *msg, void *user);
KL_API void kl_set_error_handler(kl_error_handler fn, void *user);

#ifdef __cplusplus
}
#endif
#endif
