/* The CPU kernel of an op on real dtypes: a function per dtype, picked by
 * the node's dtype (f32, else f64). */
#ifndef KL_OPS_CPU_KERNEL_H
#define KL_OPS_CPU_KERNEL_H

#include "ops/ops.h"

/* Defines the kl_op_def kernel `name` that runs fn_float or fn_double. */
#define KL_CPU_REAL_KERNEL(name, fn)                                                               \
    static kl_status name(const kl_exec *ex, const kl_tensor *t)                                   \
    {                                                                                              \
        if (t->dtype == KL_F32) fn##_float(ex, t);                                                 \
        else fn##_double(ex, t);                                                                   \
        return KL_OK;                                                                              \
    }

#endif
