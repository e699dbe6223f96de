/* Whether a CUDA device can be used. Without the CUDA backend compiled in,
 * the answer is a clear "no" naming the build; with it, the CUDA runtime
 * decides (src/backends/cuda). */
#include "backends/backend.h"
#include "core/error.h"

#ifndef KILN_HAVE_CUDA
kl_status kl_cuda_available(int index)
{
    return kl_fail(KL_EUNSUPPORTED, "cuda:%d requested but this kiln was built without CUDA (rebuild with nvcc "
                   "available and -DKILN_CUDA=ON)", index);
}
#endif
