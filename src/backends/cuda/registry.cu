/* The CUDA kernel table: kl_cuda_kernels[op] is the CUDA kernel of op, used
 * by kl_backend_kernel (src/core/exec.c) when the op's kl_op_def has none.
 * Adding a CUDA kernel: write `extern "C" kl_status kl_cuda_<op>(const
 * kl_exec *, const kl_tensor *)` in a .cu file here and add the op to
 * KL_CUDA_KERNELS below. Ops not listed fail at run with KL_EUNSUPPORTED
 * naming the op, its shape and dtype, and the device. */
#include "backends/cuda/cuda_internal.cuh"

#define KL_CUDA_KERNELS(X)                                                     \
    X(fill) X(copy) X(cast) X(unary) X(unary_bwd) X(binary) X(reduce)          \
    X(matmul) X(softmax) X(softmax_bwd) X(softmax_ce) X(softmax_ce_bwd)        \
    X(conv2d) X(conv2d_bwd_data) X(conv2d_bwd_filter) X(pool2d) X(pool2d_bwd)  \
    X(batchnorm) X(batchnorm_bwd) X(layernorm) X(layernorm_bwd) X(dropout)     \
    X(embedding) X(embedding_bwd) X(concat) X(slice_bwd) X(optim) X(loss_scale)            \
    X(gather_rows) X(argmax_match) X(record)                                  \
    X(lstm) X(lstm_bwd) X(gru) X(gru_bwd) X(attention) X(attention_bwd)       \
    X(rmsnorm) X(rmsnorm_bwd) X(rope)

#define DECLARE(op) extern "C" kl_status kl_cuda_##op(const kl_exec *ex, const kl_tensor *t);
KL_CUDA_KERNELS(DECLARE)
#undef DECLARE

/* kernel<op>::fn: the kernel of op, NULL unless listed */
template <int op> struct kernel {
    static constexpr kl_kernel_fn fn = nullptr;
};
#define KL_CUDA_KERNEL(op)                                                     \
    template <> struct kernel<KL_OP_##op> {                                    \
        static constexpr kl_kernel_fn fn = kl_cuda_##op;                       \
    };
KL_CUDA_KERNELS(KL_CUDA_KERNEL)
#undef KL_CUDA_KERNEL

/* one entry per line of ops.def, in its order */
extern "C" const kl_kernel_fn kl_cuda_kernels[KL_OP_COUNT] = {
#define KL_OP(name) kernel<KL_OP_##name>::fn,
#include "ops/ops.def"
#undef KL_OP
};
