/* GEMMs through cuBLAS, and the CUDA engine's error reporting.
 *
 * Row-major data, column-major cuBLAS: every transpose, leading dimension and stride is decided
 * in gemm_plan.h (and checked there on the host), not here.
 *
 * The precision mode picks cuBLAS's compute type: float32, TF32 tensor cores, or bf16 tensor
 * cores with float32 accumulation. Activations, weights and results stay float32 in memory in
 * every mode. In bf16 mode the linear layers' operands are first rounded to bf16 into scratch
 * (one pass each, cu_to_bf16): cuBLAS's FAST_16BF kernels on float32 storage ran at 250-335
 * TFLOP/s on an H100 at ViT-B/16's shapes, its bf16-operand kernels at 630-760
 * (bench/gpu_probe.py, bench/results/gpu-h100-2026-11-26/run1-initial/gpu_probe-h100.json);
 * in the training step this halved the linear layers' backward (fc1 33.6 -> 16.0 ms, fc2
 * 30.4 -> 14.8, qkv 21.3 -> 12.9 at ViT-B/16, batch 256, run2-...). The rounding is the one FAST_16BF
 * applies inside (to nearest even), so the numbers are those of the float32-storage path up to
 * cuBLAS's accumulation order. Attention's batched products (197 x 64 x 197 at ViT-B) ran at
 * ~30 TFLOP/s either way and keep float32 storage.
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

/* one planned product: the plan (gemm_plan.h) holds every transpose, leading dimension and
 * stride; this only hands it to cuBLAS in the model's precision */
extern "C" int cu_gemm(pv_cuda_model *cm, const pv_gemm_plan *p, const float *A, const float *B,
                       float *C) {
    cublasOperation_t ta = p->ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb = p->tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (p->batch == 1) {
        PV_CUBLAS_CHECK(cublasGemmEx((cublasHandle_t)cm->blas, ta, tb, p->m, p->n, p->k, &p->alpha,
                                     A, CUDA_R_32F, p->lda, B, CUDA_R_32F, p->ldb, &p->beta, C,
                                     CUDA_R_32F, p->ldc, compute_type(cm->precision),
                                     CUBLAS_GEMM_DEFAULT));
        return PV_OK;
    }
    PV_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        (cublasHandle_t)cm->blas, ta, tb, p->m, p->n, p->k, &p->alpha, A, CUDA_R_32F, p->lda, p->sA,
        B, CUDA_R_32F, p->ldb, p->sB, &p->beta, C, CUDA_R_32F, p->ldc, p->sC, p->batch,
        compute_type(cm->precision), CUBLAS_GEMM_DEFAULT));
    return PV_OK;
}

/* bf16 mode, with its scratch allocated and large enough for this product */
static int bf16_fits(const pv_cuda_model *cm, size_t in_n, size_t w_n, size_t dout_n) {
    return cm->precision == PV_PREC_BF16 && cm->bf16_mem && in_n <= cm->bf16_in_n &&
           w_n <= cm->bf16_w_n && dout_n <= cm->bf16_dout_n;
}

/* a planned product on bf16 operands, float32 accumulation and float32 output */
static int gemm_bf16(pv_cuda_model *cm, const pv_gemm_plan *p, const uint16_t *A,
                     const uint16_t *B, float *C) {
    cublasOperation_t ta = p->ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb = p->tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    PV_CUBLAS_CHECK(cublasGemmEx((cublasHandle_t)cm->blas, ta, tb, p->m, p->n, p->k, &p->alpha, A,
                                 CUDA_R_16BF, p->lda, B, CUDA_R_16BF, p->ldb, &p->beta, C,
                                 CUDA_R_32F, p->ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return PV_OK;
}

extern "C" int cu_matmul_forward(pv_cuda_model *cm, float *out, const float *inp, const float *w,
                                 const float *bias, const float *residual, int M, int K, int N) {
    pv_gemm_plan p = pv_plan_linear_forward(M, K, N);
    pv_stream s = (pv_stream)cm->stream;
    size_t in_n = (size_t)M * K, w_n = (size_t)K * N;
    int rc;
    if (bf16_fits(cm, in_n, w_n, 0)) {
        if ((rc = cu_to_bf16(cm->bf16_w, w, w_n, s))) return rc;
        if ((rc = cu_to_bf16(cm->bf16_in, inp, in_n, s))) return rc;
        rc = gemm_bf16(cm, &p, cm->bf16_w, cm->bf16_in, out);
    } else {
        rc = cu_gemm(cm, &p, w, inp, out);
    }
    if (rc) return rc;
    if (!bias && !residual) return PV_OK;
    return cu_bias_residual(out, bias, residual, M, N, (pv_stream)cm->stream);
}

extern "C" int cu_matmul_backward(pv_cuda_model *cm, float *dinp, float *dw, float *dbias,
                                  const float *dout, const float *inp, const float *w, int M,
                                  int K, int N, int accumulate) {
    int rc;
    pv_stream s = (pv_stream)cm->stream;
    size_t in_n = (size_t)M * K, w_n = (size_t)K * N, dout_n = (size_t)M * N;
    const int b16 = bf16_fits(cm, in_n, w_n, dout_n);
    if (b16 && (rc = cu_to_bf16(cm->bf16_dout, dout, dout_n, s))) return rc; /* used twice */
    if (dinp) {
        pv_gemm_plan p = pv_plan_linear_dinp(M, K, N, accumulate);
        if (b16) {
            if ((rc = cu_to_bf16(cm->bf16_w, w, w_n, s))) return rc;
            rc = gemm_bf16(cm, &p, cm->bf16_w, cm->bf16_dout, dinp);
        } else {
            rc = cu_gemm(cm, &p, w, dout, dinp);
        }
        if (rc) return rc;
    }
    pv_gemm_plan p = pv_plan_linear_dw(M, K, N);
    if (b16) {
        if ((rc = cu_to_bf16(cm->bf16_in, inp, in_n, s))) return rc;
        rc = gemm_bf16(cm, &p, cm->bf16_in, cm->bf16_dout, dw);
    } else {
        rc = cu_gemm(cm, &p, inp, dout, dw);
    }
    if (rc) return rc;
    if (dbias) return cu_bias_backward(dbias, dout, M, N, cm->scratch, (pv_stream)cm->stream);
    return PV_OK;
}
