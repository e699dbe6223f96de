/* Per-element math shared by the CPU loops and the CUDA kernels, so CPU
 * tests cover the arithmetic. Written once with a type parameter and
 * instantiated for float and double (tgmath in C, overloads in CUDA C++). */
#ifndef KL_OPS_ELEM_H
#define KL_OPS_ELEM_H

#include "core/philox.h" /* KL_HD */
#include "kiln/ops.h"     /* kl_act */
#include <stdint.h>
#include <string.h> /* memcpy: kl_pow2i_float */
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

/* The unary op of a fused activation (matmul, conv2d, batchnorm); -1 for
 * KL_ACT_NONE. */
KL_HD static inline int kl_act_unary(int act)
{
    switch (act) {
    case KL_ACT_RELU: return KL_UN_RELU;
    case KL_ACT_GELU: return KL_UN_GELU;
    case KL_ACT_TANH: return KL_UN_TANH;
    case KL_ACT_SIGMOID: return KL_UN_SIGMOID;
    default: return -1;
    }
}

/* Whether unary_bwd reads the op's output y (else its input x). */
KL_HD static inline int kl_unary_bwd_uses_y(int kind)
{
    return kind == KL_UN_RELU || kind == KL_UN_TANH || kind == KL_UN_SIGMOID;
}

#define KL_GELU_C 0.7978845608028654 /* sqrt(2/pi) */

/* tanh for float as a rational function (an odd polynomial of degree 13
 * over an even one of degree 6, on x clamped to +-7.9053111, where it
 * reaches 1 in float; x itself below 4e-4): within 4e-7 of tanh (about 6
 * ulp, tests/test_unary_math.c), branch-free, so CPU loops vectorise it
 * (libm's tanhf is a call per value: GPT's GELU passes were 29 % of a CPU
 * step); the GPU evaluates the same function. double keeps libm's tanh. */
KL_HD static inline float kl_tanh_float(float x)
{
    /* one select each (a NaN goes through both, and through r): loops vectorise */
    float c = x > 7.90531110763549805f ? 7.90531110763549805f : x;
    c = c < -7.90531110763549805f ? -7.90531110763549805f : c;
    float c2 = c * c;
    float p = c2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
    p = p * c2 + -8.60467152213735e-11f;
    p = p * c2 + 5.12229709037114e-08f;
    p = p * c2 + 1.48572235717979e-05f;
    p = p * c2 + 6.37261928875436e-04f;
    p = p * c2 + 4.89352455891786e-03f;
    float q = c2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
    q = q * c2 + 2.26843463243900e-03f;
    q = q * c2 + 4.89352518554385e-03f;
    float r = c * p / q;
    /* at the clamp the rational gives 1 - 2.4e-7 with fused multiply-adds;
     * GELU's gradient takes 1 - t^2 from it, times s^3: saturate exactly */
    r = fabs(x) >= 7.90531110763549805f ? copysign(1.0f, x) : r;
    return fabs(x) < 4e-4f ? x : r;
}
KL_HD static inline double kl_tanh_double(double x) { return tanh(x); }

/* exp for float, branch-free so CPU loops vectorise it (libm's expf is a
 * call per value: attention's probabilities were most of its CPU time):
 * 2^n exp(r) with n = round(x log2 e), r = x - n ln 2 (ln 2 in two parts),
 * exp(r) by Cephes' degree-6 polynomial, 2^n as two exponent-field
 * factors so results down to the subnormals are scaled exactly; 0 below
 * -104, inf above ln(FLT_MAX), NaN kept. Within 1.2e-7 relative of exp
 * (tests/test_unary_math.c); the GPU evaluates the same function. */
KL_HD static inline float kl_pow2i_float(int32_t e) /* 2^e for e in [-126, 127] */
{
    int32_t bits = (e + 127) << 23;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}
KL_HD static inline float kl_exp_float(float x)
{
    float c = x < -104.0f ? -104.0f : x;
    c = c > 88.7228394f ? 88.7228394f : c;
    c = c == c ? c : 0.0f; /* NaN: a finite n (converting NaN to int is undefined); NaN is returned below */
    float n = floor(c * 1.44269504088896341f + 0.5f);
    float r = c - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t ni = (int32_t)n, h = ni / 2;
    float y = p * kl_pow2i_float(h) * kl_pow2i_float(ni - h);
    y = x > 88.7228394f ? (float)INFINITY : y;
    y = x < -104.0f ? 0.0f : y;
    return x == x ? y : x;
}
KL_HD static inline double kl_exp_double(double x) { return exp(x); }

/* ReLU keeps NaN (as PyTorch does), so an overflow upstream stays visible to
 * the loss and the NaN watch; its gradient passes dy where y is NaN. */
#define KL_DEF_ELEM(T)                                                                     \
    KL_HD static inline T kl_relu_##T(T x) { return x > 0 || x != x ? x : (T)0; }          \
    KL_HD static inline T kl_relu_grad_##T(T s, T dy) { return s > 0 || s != s ? dy : (T)0; } \
    KL_HD static inline T kl_unary_##T(int kind, T x, T alpha)                             \
    {                                                                                      \
        switch (kind) {                                                                    \
        case KL_UN_RELU: return kl_relu_##T(x);                                            \
        case KL_UN_GELU: return (T)0.5 * x * ((T)1 + kl_tanh_##T((T)KL_GELU_C * (x + (T)0.044715 * x * x * x))); \
        case KL_UN_TANH: return kl_tanh_##T(x);                                            \
        case KL_UN_SIGMOID: return (T)1 / ((T)1 + exp(-x));                                \
        case KL_UN_SCALE: return alpha * x;                                                \
        default: return x * x;                                                             \
        }                                                                                  \
    }                                                                                      \
    /* dx from dy and the saved value s (y or x, see kl_unary_bwd_uses_y) */               \
    KL_HD static inline T kl_unary_grad_##T(int kind, T s, T dy, T alpha)                  \
    {                                                                                      \
        switch (kind) {                                                                    \
        case KL_UN_RELU: return kl_relu_grad_##T(s, dy);                                   \
        case KL_UN_GELU: {                                                                 \
            T u = (T)KL_GELU_C * (s + (T)0.044715 * s * s * s);                            \
            T t = kl_tanh_##T(u);                                                          \
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
