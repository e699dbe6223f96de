/* kiln tensors: dtypes, devices and shapes.
 *
 * A kl_tensor is a node of a kl_graph: its value exists after kl_graph_run.
 * Shapes have up to KL_MAX_DIMS dims; strides are in elements.
 *
 *   int64_t dims[2] = {256, 784};
 *   kl_tensor *x;
 *   kl_input(g, "x", KL_F32, 2, dims, &x);
 *   ...
 *   kl_tensor_set(x, host_data, 256 * 784 * sizeof(float));
 */
#ifndef KILN_TENSOR_H
#define KILN_TENSOR_H

#include <stddef.h>
#include <stdint.h>
#include "kiln/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KL_MAX_DIMS 8

typedef enum kl_dtype {
    KL_F32 = 0,
    KL_F16,
    KL_BF16,
    KL_I32,
    KL_U8,
    KL_F64, /* for gradient checks; CPU only */
    KL_I64, /* read from files only (e.g. safetensors); not a compute dtype */
    KL_DTYPE_COUNT
} kl_dtype;

typedef enum kl_device_type { KL_DEVICE_CPU = 0, KL_DEVICE_CUDA, KL_DEVICE_TYPE_COUNT } kl_device_type;

typedef struct kl_device {
    kl_device_type type;
    int index; /* cuda:N; 0 for the CPU (kl_ctx_new refuses another) */
} kl_device;

/* Bytes per element; 0 for an unknown dtype. */
KL_API size_t kl_dtype_size(kl_dtype dt);
/* "f32", "bf16", ...; "?" when unknown. */
KL_API const char *kl_dtype_name(kl_dtype dt);
/* Parses "f32", "F32", "float32" ... (safetensors names too); KL_EINVAL if unknown. */
KL_API kl_status kl_dtype_parse(const char *s, kl_dtype *out);

/* Parses "cpu", "cuda", "cuda:1". */
KL_API kl_status kl_device_parse(const char *s, kl_device *out);

/* Writes "[128,784]" into buf (always NUL-terminated); returns buf. */
KL_API char *kl_shape_str(char *buf, size_t n, int ndim, const int64_t *dims);

#ifdef __cplusplus
}
#endif
#endif
