/* Per-element math shared by the CPU loops and the CUDA kernels, so CPU
 * tests cover the arithmetic. Written once with a type parameter and
 * instantiated for float and double (tgmath in C, overloads in CUDA C++). */
#ifndef KL_OPS_ELEM_H
#define KL_OPS_ELEM_H

#include "core/philox.h" /* KL_HD */
#ifdef __CUDACC__
#include <cmath>
#else
#include <tgmath.h>
#endif

typedef enum kl_unary_kind {
    KL_UN_RELU = 0,
    KL_UN_GELU,
    KL_UN_TANH,
    KL_UN_SIGMOID,
    KL_UN_SCALE,  /* alpha * x */
    KL_UN_SQUARE,
    KL_UN_COUNT
} kl_unary_kind;

typedef enum kl_binary_kind { KL_BIN_ADD = 0, KL_BIN_SUB, KL_BIN_MUL, KL_BIN_DIV, KL_BIN_COUNT } kl_binary_kind;

/* Whether unary_bwd reads the op's output y (else its input x). */
KL_HD static inline int kl_unary_bwd_uses_y(int kind)
{
    return kind == KL_UN_RELU || kind == KL_UN_TANH || kind == KL_UN_SIGMOID;
}

#define KL_GELU_C 0.7978845608028654 /* sqrt(2/pi) */

#define KL_DEF_ELEM(T)                                                                     \
    KL_HD static inline T kl_unary_##T(int kind, T x, T alpha)                             \
    {                                                                                      \
        switch (kind) {                                                                    \
        case KL_UN_RELU: return x > 0 ? x : (T)0;                                          \
        case KL_UN_GELU: return (T)0.5 * x * ((T)1 + tanh((T)KL_GELU_C * (x + (T)0.044715 * x * x * x))); \
        case KL_UN_TANH: return tanh(x);                                                   \
        case KL_UN_SIGMOID: return (T)1 / ((T)1 + exp(-x));                                \
        case KL_UN_SCALE: return alpha * x;                                                \
        default: return x * x;                                                             \
        }                                                                                  \
    }                                                                                      \
    /* dx from dy and the saved value s (y or x, see kl_unary_bwd_uses_y) */               \
    KL_HD static inline T kl_unary_grad_##T(int kind, T s, T dy, T alpha)                  \
    {                                                                                      \
        switch (kind) {                                                                    \
        case KL_UN_RELU: return s > 0 ? dy : (T)0;                                         \
        case KL_UN_GELU: {                                                                 \
            T u = (T)KL_GELU_C * (s + (T)0.044715 * s * s * s);                            \
            T t = tanh(u);                                                                 \
            T du = (T)KL_GELU_C * ((T)1 + (T)3 * (T)0.044715 * s * s);                     \
            return dy * ((T)0.5 * ((T)1 + t) + (T)0.5 * s * ((T)1 - t * t) * du);          \
        }                                                                                  \
        case KL_UN_TANH: return dy * ((T)1 - s * s);                                       \
        case KL_UN_SIGMOID: return dy * s * ((T)1 - s);                                    \
        case KL_UN_SCALE: return dy * alpha;                                               \
        default: return dy * (T)2 * s;                                                     \
        }                                                                                  \
    }                                                                                      \
    KL_HD static inline T kl_binary_##T(int kind, T a, T b)                                \
    {                                                                                      \
        switch (kind) {                                                                    \
        case KL_BIN_ADD: return a + b;                                                     \
        case KL_BIN_SUB: return a - b;                                                     \
        case KL_BIN_MUL: return a * b;                                                     \
        default: return a / b;                                                             \
        }                                                                                  \
    }

KL_DEF_ELEM(float)
KL_DEF_ELEM(double)

/* Index of the first largest of x[0..n) (NaN never wins: `>` is false). */
#define KL_DEF_ARGMAX(T)                                                                   \
    KL_HD static inline int64_t kl_argmax_##T(const T *x, int64_t n)                       \
    {                                                                                      \
        int64_t best = 0;                                                                  \
        for (int64_t i = 1; i < n; i++)                                                    \
            if (x[i] > x[best]) best = i;                                                  \
        return best;                                                                       \
    }
KL_DEF_ARGMAX(float)
KL_DEF_ARGMAX(double)

#endif
