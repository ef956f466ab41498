/* GEMMs through cuBLAS, and the CUDA engine's error reporting.
 *
 * Row-major data, column-major cuBLAS: a row-major (M,N) matrix is a column-major (N,M) one, so
 * out = inp @ w^T becomes out^T = w^T' ... written below with llm.c's argument order (see
 * karpathy/llm.c train_gpt2.cu, matmul_forward/backward), which these calls follow.
 *
 * The precision mode picks cuBLAS's compute type: float32, TF32 tensor cores, or bf16 tensor
 * cores with float32 accumulation. Operands and results stay float32 in memory in every mode.
 */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdio.h>

#include "pv_cuda.h"

extern "C" int pv_cuda_fail(const char *call, int code, const char *file, int line) {
    cudaError_t e = (cudaError_t)code;
    /* a sticky error (illegal address, ...) poisons the context: say so, the model is lost */
    const char *hint = (e == cudaErrorIllegalAddress || e == cudaErrorLaunchFailure ||
                        e == cudaErrorIllegalInstruction || e == cudaErrorMisalignedAddress)
                           ? " (the CUDA context is now unusable; restart the process)"
                           : "";
    const char *base = file;
    for (const char *p = file; *p; p++)
        if (*p == '/') base = p + 1;
    return pv_set_error(e == cudaErrorMemoryAllocation ? PV_ERR_NOMEM : PV_ERR_RUNTIME,
                        "%s: %s (%s) at %s:%d%s", call, cudaGetErrorString(e),
                        cudaGetErrorName(e), base, line, hint);
}

extern "C" int pv_cublas_fail(const char *call, int status, const char *file, int line) {
    cublasStatus_t s = (cublasStatus_t)status;
    const char *base = file;
    for (const char *p = file; *p; p++)
        if (*p == '/') base = p + 1;
    return pv_set_error(s == CUBLAS_STATUS_ALLOC_FAILED ? PV_ERR_NOMEM : PV_ERR_RUNTIME,
                        "%s: %s (%s) at %s:%d", call, cublasGetStatusString(s),
                        cublasGetStatusName(s), base, line);
}

extern "C" int pv_cuda_last_launch_error(const char *kernel) {
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        pv_set_error(e == cudaErrorMemoryAllocation ? PV_ERR_NOMEM : PV_ERR_RUNTIME,
                     "kernel %s: %s (%s)", kernel, cudaGetErrorString(e), cudaGetErrorName(e));
    return (int)e;
}

static cublasComputeType_t compute_type(int precision) {
    switch (precision) {
    case PV_PREC_TF32: return CUBLAS_COMPUTE_32F_FAST_TF32;
    case PV_PREC_BF16: return CUBLAS_COMPUTE_32F_FAST_16BF;
    default: return CUBLAS_COMPUTE_32F;
    }
}

/* C(m,n) = alpha op(A) op(B) + beta C, column-major, float32 in memory */
static int gemm(pv_cuda_model *cm, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                float alpha, const float *A, int lda, const float *B, int ldb, float beta, float *C,
                int ldc) {
    PV_CUBLAS_CHECK(cublasGemmEx((cublasHandle_t)cm->blas, ta, tb, m, n, k, &alpha, A, CUDA_R_32F,
                                 lda, B, CUDA_R_32F, ldb, &beta, C, CUDA_R_32F, ldc,
                                 compute_type(cm->precision), CUBLAS_GEMM_DEFAULT));
    return PV_OK;
}

extern "C" int cu_gemm_strided_batched(pv_cuda_model *cm, int ta, int tb, int m, int n, int k,
                                       float alpha, const float *A, int lda, long long sA,
                                       const float *B, int ldb, long long sB, float beta,
                                       float *C, int ldc, long long sC, int batch) {
    PV_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        (cublasHandle_t)cm->blas, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
        m, n, k, &alpha, A, CUDA_R_32F, lda, sA, B, CUDA_R_32F, ldb, sB, &beta, C, CUDA_R_32F,
        ldc, sC, batch, compute_type(cm->precision), CUBLAS_GEMM_DEFAULT));
    return PV_OK;
}

extern "C" int cu_matmul_forward(pv_cuda_model *cm, float *out, const float *inp, const float *w,
                                 const float *bias, const float *residual, int M, int K, int N) {
    /* out^T (N,M) = w (N,K; column-major K x N, transposed) x inp^T (K,M) */
    int rc = gemm(cm, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, 1.0f, w, K, inp, K, 0.0f, out, N);
    if (rc) return rc;
    if (!bias && !residual) return PV_OK;
    return cu_bias_residual(out, bias, residual, M, N, (pv_stream)cm->stream);
}

extern "C" int cu_matmul_backward(pv_cuda_model *cm, float *dinp, float *dw, float *dbias,
                                  const float *dout, const float *inp, const float *w, int M,
                                  int K, int N, int accumulate) {
    int rc;
    if (dinp) {
        /* dinp^T (K,M) = w^T (K,N) x dout^T (N,M) */
        rc = gemm(cm, CUBLAS_OP_N, CUBLAS_OP_N, K, M, N, 1.0f, w, K, dout, N,
                  accumulate ? 1.0f : 0.0f, dinp, K);
        if (rc) return rc;
    }
    /* dw^T (K,N) = inp^T (K,M) x dout (M,N) */
    rc = gemm(cm, CUBLAS_OP_N, CUBLAS_OP_T, K, N, M, 1.0f, inp, K, dout, N, 0.0f, dw, K);
    if (rc) return rc;
    if (dbias) return cu_bias_backward(dbias, dout, M, N, cm->scratch, (pv_stream)cm->stream);
    return PV_OK;
}
