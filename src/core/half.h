/* f16 and bf16 conversions (round to nearest even), shared by CPU and CUDA,
 * and element i of an array of any dtype read as a double. */
#ifndef KL_HALF_H
#define KL_HALF_H

#include <stdint.h>
#include <string.h>
#include "core/philox.h" /* KL_HD */
#include "kiln/tensor.h"  /* kl_dtype */

KL_HD static inline uint32_t kl_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
KL_HD static inline float kl_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

KL_HD static inline uint16_t kl_f32_to_bf16(float f)
{
    uint32_t u = kl_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

KL_HD static inline float kl_bf16_to_f32(uint16_t h) { return kl_bits_f32((uint32_t)h << 16); }

KL_HD static inline uint16_t kl_f32_to_f16(float f)
{
    uint32_t u = kl_f32_bits(f), sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);         /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);        /* overflow -> inf */
    if (a < 0x38800000u) {                                         /* subnormal or zero */
        float v = kl_bits_f32(a) * 16777216.0f;                     /* scale by 2^24 */
        uint32_t m = (uint32_t)v;
        float rem = v - (float)m;
        if (rem > 0.5f || (rem == 0.5f && (m & 1))) m++;
        return (uint16_t)(sign | m);
    }
    uint32_t e = ((a >> 23) - 112) << 10, m = (a >> 13) & 0x3ffu;
    uint32_t h = e | m, r = a & 0x1fffu;
    if (r > 0x1000u || (r == 0x1000u && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

KL_HD static inline float kl_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {
        float v = (float)m * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    if (e == 31) return kl_bits_f32(sign | 0x7f800000u | (m << 13));
    return kl_bits_f32(sign | ((e + 112) << 23) | (m << 13));
}

/* Element i of p (kl_dtype dt) as a double. */
KL_HD static inline double kl_load_double(const void *p, int dt, int64_t i)
{
    switch (dt) {
    case KL_F32: return ((const float *)p)[i];
    case KL_F64: return ((const double *)p)[i];
    case KL_F16: return kl_f16_to_f32(((const uint16_t *)p)[i]);
    case KL_BF16: return kl_bf16_to_f32(((const uint16_t *)p)[i]);
    case KL_I32: return ((const int32_t *)p)[i];
    case KL_I64: return (double)((const int64_t *)p)[i];
    default /* KL_U8 */: return ((const uint8_t *)p)[i];
    }
}

#endif
