/* Storage types of the CUDA kernels that read and write f16/bf16 themselves
 * (kl_op_def.half_native): a kernel is a template on its storage type S and
 * computes in kl_cu_calc<S>::T (float for 16-bit storage), loading with
 * kl_cu_load and storing with kl_cu_store, so the per-element math is the
 * f32 (or f64) math the CPU runs (to rounding: nvcc and GCC contract
 * multiply-adds at their own places), and 16-bit values are rounded once,
 * on store, as the CPU's widened path does (core/widen.c). The conversions
 * are core/half.h's (round to nearest even). */
#ifndef KL_CUDA_STORAGE_CUH
#define KL_CUDA_STORAGE_CUH

#include "core/half.h"

#include <stdint.h>

typedef struct kl_cu_bf16 { uint16_t bits; } kl_cu_bf16;
typedef struct kl_cu_f16 { uint16_t bits; } kl_cu_f16;

template <typename S> struct kl_cu_calc { typedef S T; };
template <> struct kl_cu_calc<kl_cu_bf16> { typedef float T; };
template <> struct kl_cu_calc<kl_cu_f16> { typedef float T; };

__device__ __forceinline__ float kl_cu_load(const float *p, int64_t i) { return p[i]; }
__device__ __forceinline__ double kl_cu_load(const double *p, int64_t i) { return p[i]; }
__device__ __forceinline__ float kl_cu_load(const kl_cu_bf16 *p, int64_t i) { return kl_bf16_to_f32(p[i].bits); }
__device__ __forceinline__ float kl_cu_load(const kl_cu_f16 *p, int64_t i) { return kl_f16_to_f32(p[i].bits); }

__device__ __forceinline__ void kl_cu_store(float *p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void kl_cu_store(double *p, int64_t i, double v) { p[i] = v; }
__device__ __forceinline__ void kl_cu_store(kl_cu_bf16 *p, int64_t i, float v) { p[i].bits = kl_f32_to_bf16(v); }
__device__ __forceinline__ void kl_cu_store(kl_cu_f16 *p, int64_t i, float v) { p[i].bits = kl_f32_to_f16(v); }

/* Runs the statements after `bad` with S the storage type of float dtype dt
 * (f32, f64, f16 or bf16); any other dtype runs `bad` (a statement). */
#define KL_CU_FLOAT_SWITCH(dt, bad, ...)                                                            \
    switch (dt) {                                                                                  \
    case KL_F32: { typedef float S; __VA_ARGS__; } break;                                          \
    case KL_F64: { typedef double S; __VA_ARGS__; } break;                                         \
    case KL_BF16: { typedef kl_cu_bf16 S; __VA_ARGS__; } break;                                    \
    case KL_F16: { typedef kl_cu_f16 S; __VA_ARGS__; } break;                                      \
    default: bad;                                                                                  \
    }

#endif
