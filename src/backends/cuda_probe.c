/* Whether a CUDA device can be used. Without the CUDA backend compiled in,
 * the answer is a clear "no" naming the build; with it, the CUDA runtime
 * decides (src/backends/cuda/cuda_backend.cu). */
#include "backends/backend.h"
#include "core/error.h"

#ifndef KILN_HAVE_CUDA
#define NO_CUDA "this kiln was built without CUDA (rebuild with nvcc available and -DKILN_CUDA=ON)"

kl_status kl_cuda_available(int index)
{
    return kl_fail(KL_EUNSUPPORTED, "cuda:%d requested but " NO_CUDA, index);
}

kl_status kl_cuda_use(int index) { return kl_cuda_available(index); }

const char *kl_cuda_conv_engine(void) { return "none"; }
long long kl_cuda_conv_cudnn_runs(void) { return 0; }
size_t kl_cuda_embedding_bwd_scratch(int64_t P, int64_t V, int64_t D, size_t es)
{
    (void)P, (void)V, (void)D, (void)es;
    return 0;
}

kl_status kl_cuda_device_count(int *n)
{
    if (n) *n = 0;
    return kl_fail(KL_EUNSUPPORTED, NO_CUDA);
}

kl_status kl_cuda_device_info_get(int index, kl_cuda_device_info *out)
{
    (void)out;
    return kl_cuda_available(index);
}
#endif
