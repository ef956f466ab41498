/* Multi-head self-attention on timm's packed qkv (B, T, 3C), as the CPU engine computes it:
 * S = scale * q k^T, P = softmax(S) over keys (P saved for backward), y = P v.
 *
 * The per-head matrices are not evenly strided inside (B, T, 3C) (heads are hs apart, batches
 * T*3C apart), so q, k, v are first permuted to (3, B, NH, T, hs) and the products run as
 * strided-batched cuBLAS GEMMs over B*NH, the way llm.c's attention_forward does. The softmax
 * is one warp per row, which covers ViT sequence lengths (65..600 tokens) in a few passes.
 * A flash-style kernel that never writes S would save the (B, NH, T, T) traffic; it is not
 * written yet (P must be kept anyway for this engine's backward).
 */
#include <cuda_runtime.h>
#include <math.h>

#include "pv_cuda.h"

/* qkv (B, T, 3, NH, hs) -> qkvr (3, B, NH, T, hs) */
__global__ void permute_qkv_kernel(float *__restrict__ qkvr, const float *__restrict__ qkv, int B,
                                   int T, int NH, int hs) {
    size_t n = (size_t)B * NH * T * hs;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        /* i indexes (b, h, t, d) of one of q, k, v */
        size_t src = (size_t)pv_qkv_offset((long long)i, T, NH, hs);
        size_t C = (size_t)NH * hs;
        qkvr[i] = qkv[src];
        qkvr[n + i] = qkv[src + C];
        qkvr[2 * n + i] = qkv[src + 2 * C];
    }
}

/* the reverse: d_qkvr (3, B, NH, T, hs) -> dqkv (B, T, 3C), overwritten */
__global__ void permute_qkv_backward_kernel(float *__restrict__ dqkv,
                                            const float *__restrict__ dqkvr, int B, int T, int NH,
                                            int hs) {
    size_t n = (size_t)B * NH * T * hs;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t dst = (size_t)pv_qkv_offset((long long)i, T, NH, hs);
        size_t C = (size_t)NH * hs;
        dqkv[dst] = dqkvr[i];
        dqkv[dst + C] = dqkvr[n + i];
        dqkv[dst + 2 * C] = dqkvr[2 * n + i];
    }
}

/* (B, NH, T, hs) <-> (B, T, NH*hs); to_heads chooses the direction */
__global__ void heads_kernel(float *__restrict__ out, const float *__restrict__ in, int B, int T,
                             int NH, int hs, int to_heads) {
    size_t n = (size_t)B * NH * T * hs;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t flat = (size_t)pv_heads_offset((long long)i, T, NH, hs);
        if (to_heads)
            out[i] = in[flat];
        else
            out[flat] = in[i];
    }
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* softmax of each row of length n, in place; one warp per row */
__global__ void softmax_rows_kernel(float *__restrict__ x, size_t rows, int n) {
    size_t row = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return; /* whole warps leave together: rows are per warp */
    float *p = x + row * n;
    float mx = -INFINITY;
    for (int j = lane; j < n; j += 32) mx = fmaxf(mx, p[j]);
    mx = warp_max(mx);
    float s = 0.0f;
    for (int j = lane; j < n; j += 32) {
        float e = expf(p[j] - mx);
        p[j] = e;
        s += e;
    }
    float inv = 1.0f / warp_sum(s);
    for (int j = lane; j < n; j += 32) p[j] *= inv;
}

/* dS = scale * P * (dP - sum_j P_j dP_j), in place over dP; one warp per row */
__global__ void softmax_backward_kernel(float *__restrict__ d, const float *__restrict__ P,
                                        size_t rows, int n, float scale) {
    size_t row = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    float *g = d + row * n;
    const float *p = P + row * n;
    float dot = 0.0f;
    for (int j = lane; j < n; j += 32) dot += p[j] * g[j];
    dot = warp_sum(dot);
    for (int j = lane; j < n; j += 32) g[j] = scale * p[j] * (g[j] - dot);
}

static int grid_for(size_t n, int threads) {
    size_t g = (n + threads - 1) / threads;
    return (int)(g > 65536 * 8 ? 65536 * 8 : (g ? g : 1));
}

extern "C" int cu_attention_forward(pv_cuda_model *cm, float *y, float *att, const float *qkv,
                                    int B) {
    pv_model *m = &cm->m;
    cudaStream_t s = (cudaStream_t)cm->stream;
    int T = m->T, NH = m->NH, hs = m->C / m->NH;
    size_t n = (size_t)B * NH * T * hs;
    float scale = 1.0f / sqrtf((float)hs);
    float *q = cm->qkvr, *k = q + n, *v = k + n;
    PV_LAUNCH(permute_qkv_kernel, grid_for(n, 256), 256, 0, s)(cm->qkvr, qkv, B, T, NH, hs);
    PV_LAUNCH_CHECK("permute_qkv");
    /* S (T,T) row-major per (b,h): S[t1][t2] = scale * q[t1] . k[t2] */
    pv_gemm_plan ps = pv_plan_att_scores(T, hs, B * NH, scale);
    int rc = cu_gemm(cm, &ps, k, q, att);
    if (rc) return rc;
    size_t rows = (size_t)B * NH * T;
    PV_LAUNCH(softmax_rows_kernel, grid_for(rows * 32, 256), 256, 0, s)(att, rows, T);
    PV_LAUNCH_CHECK("softmax_rows");
    /* vacc (T,hs) per (b,h) = P v */
    pv_gemm_plan pv_ = pv_plan_att_values(T, hs, B * NH);
    rc = cu_gemm(cm, &pv_, v, att, cm->vacc);
    if (rc) return rc;
    PV_LAUNCH(heads_kernel, grid_for(n, 256), 256, 0, s)(y, cm->vacc, B, T, NH, hs, 0);
    PV_LAUNCH_CHECK("heads_to_tokens");
    return PV_OK;
}

extern "C" int cu_attention_backward(pv_cuda_model *cm, float *dqkv, const float *dy,
                                     const float *att, const float *qkv, int B) {
    pv_model *m = &cm->m;
    cudaStream_t s = (cudaStream_t)cm->stream;
    int T = m->T, NH = m->NH, hs = m->C / m->NH;
    size_t n = (size_t)B * NH * T * hs;
    float scale = 1.0f / sqrtf((float)hs);
    float *q = cm->qkvr, *k = q + n, *v = k + n;
    float *dq = cm->d_qkvr, *dk = dq + n, *dv = dk + n;
    /* q, k, v of this block again (the buffer holds the last block's forward) */
    PV_LAUNCH(permute_qkv_kernel, grid_for(n, 256), 256, 0, s)(cm->qkvr, qkv, B, T, NH, hs);
    PV_LAUNCH_CHECK("permute_qkv");
    PV_LAUNCH(heads_kernel, grid_for(n, 256), 256, 0, s)(cm->vacc, dy, B, T, NH, hs, 1);
    PV_LAUNCH_CHECK("tokens_to_heads");
    int bh = B * NH;
    /* dP (T,T) = dvacc v^T */
    pv_gemm_plan p1 = pv_plan_att_dprobs(T, hs, bh);
    int rc = cu_gemm(cm, &p1, v, cm->vacc, cm->d_attn);
    if (rc) return rc;
    /* dv (T,hs) = P^T dvacc */
    pv_gemm_plan p2 = pv_plan_att_dvalues(T, hs, bh);
    rc = cu_gemm(cm, &p2, cm->vacc, att, dv);
    if (rc) return rc;
    size_t rows = (size_t)B * NH * T;
    PV_LAUNCH(softmax_backward_kernel, grid_for(rows * 32, 256), 256, 0, s)(cm->d_attn, att, rows, T,
                                                                     scale);
    PV_LAUNCH_CHECK("softmax_backward");
    /* dq = dS k, dk = dS^T q (dS already carries the scale) */
    pv_gemm_plan p3 = pv_plan_att_dq(T, hs, bh);
    rc = cu_gemm(cm, &p3, k, cm->d_attn, dq);
    if (rc) return rc;
    pv_gemm_plan p4 = pv_plan_att_dk(T, hs, bh);
    rc = cu_gemm(cm, &p4, q, cm->d_attn, dk);
    if (rc) return rc;
    PV_LAUNCH(permute_qkv_backward_kernel, grid_for(n, 256), 256, 0, s)(dqkv, cm->d_qkvr, B, T, NH, hs);
    PV_LAUNCH_CHECK("permute_qkv_backward");
    return PV_OK;
}
