/* Multi-head self-attention on timm's packed qkv (B, T, 3C), as the CPU engine computes it:
 * S = scale * q k^T, P = softmax(S) over keys (P saved for backward), y = P v.
 *
 * The per-head matrices are not evenly strided inside (B, T, 3C) (heads are hs apart, batches
 * T*3C apart), so q, k, v are first permuted to (3, B, NH, T, hs) and the products run as
 * strided-batched cuBLAS GEMMs over B*NH, the way llm.c's attention_forward does. The softmax
 * is one warp per row, which covers ViT sequence lengths (65..600 tokens) in a few passes.
 *
 * In bf16 mode, with POLYVIT_CUDA_ATTENTION=fused, the forward is one fused kernel instead
 * (attention_fused_kernel, below): q, k and v are read straight from the packed qkv, S and the
 * softmax stay in shared memory, the products run on the tensor cores (wmma, bf16 operands,
 * float32 accumulation), and y is written in token layout. Only P goes to memory, for the
 * backward (which stays unfused). The numbers are those of the unfused bf16 path up to
 * float32 accumulation order: the same operands are rounded to bf16 the same way (q and k for
 * S, P and v for P v), and the softmax is the same float32 code.
 *
 * Why it exists: on an H100 the unfused forward took 22 of ViT-B/16's 67 ms (batch 256,
 * bench/results/gpu-h100-2026-11-26/run1-initial/gpu_probe-h100.json); its batched
 * 197 x 64 x 197 products run at ~30 TFLOP/s, and S, P and the permuted copies cross memory
 * several times. Why it is opt-in: its first version, run there, was correct (tests/test_cuda.py,
 * compute-sanitizer memcheck/racecheck/synccheck clean) but took 68 ms (run2-...). The likely
 * cause: the tile loads were scalar, one 4-byte load in flight per thread per iteration, with a
 * barrier after each tile, at 2 blocks (8 warps) per SM: latency-bound. They now load 16
 * bytes per access with every access of a thread issued before the first is converted; that
 * version has run only on the CPU emulator, and its speed is not measured.
 */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <mma.h>

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

/* softmax of each row of length n (rows ld apart), in place; one warp per row */
__global__ void softmax_rows_kernel(float *__restrict__ x, size_t rows, int n, int ld) {
    size_t row = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return; /* whole warps leave together: rows are per warp */
    float *p = x + row * ld;
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

/* dS = scale * P * (dP - sum_j P_j dP_j), in place over dP; one warp per row (rows ld apart) */
__global__ void softmax_backward_kernel(float *__restrict__ d, const float *__restrict__ P,
                                        size_t rows, int n, int ld, float scale) {
    size_t row = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    float *g = d + row * ld;
    const float *p = P + row * ld;
    float dot = 0.0f;
    for (int j = lane; j < n; j += 32) dot += p[j] * g[j];
    dot = warp_sum(dot);
    for (int j = lane; j < n; j += 32) g[j] = scale * p[j] * (g[j] - dot);
}

/* ---- the fused forward (bf16 mode) ------------------------------------------------------------ */
#define FA_BK 64      /* keys per K / V tile in shared memory */
#define FA_MAXJ 20    /* score-row elements per lane in the softmax: T <= 32 * FA_MAXJ = 640 */
#define FA_SMEM_MAX (99 * 1024) /* fits every sm_80+ GPU's opt-in limit (sm_86/89: 99 KiB) */

/* Shared memory for BQ query rows of head size HS over T tokens: the Q tile and one K or V tile
 * as bf16 (rows HS + 8 apart: 16 bytes of padding spread the rows over the banks), and the
 * BQ score rows as float32 (max(Tp, HS) + 4 apart: Tp keys padded to the key tile, and wide
 * enough for the HS outputs that reuse them), later holding P as bf16 in place and then the
 * output rows. Every wmma pointer is then 32-byte aligned and every ldm a multiple of 16 bytes. */
__host__ __device__ static inline int fused_lds(int T, int HS) {
    int Tp = (T + FA_BK - 1) / FA_BK * FA_BK;
    return (Tp > HS ? Tp : HS) + 4;
}
static size_t fused_smem_bytes(int T, int HS, int BQ) {
    return (size_t)(BQ + FA_BK) * (HS + 8) * 2 + (size_t)BQ * fused_lds(T, HS) * 4;
}

/* rows r0 .. r0 + ROWS - 1 of q, k or v (off = 0, C or 2C) of one head, rounded to bf16 into
 * dst (rows LDH apart); rows past T are zeros. 16-byte loads (base, C3 and off are multiples of
 * 4 floats: the caller checks), every load of a thread issued before the first is converted,
 * so that each thread has PER loads in flight rather than one. */
template <int HS, int ROWS, int NTHR>
__device__ __forceinline__ void load_tile_bf16(__nv_bfloat16 *dst, const float *base, size_t C3,
                                               int off, int r0, int T) {
    /* PER float4s per thread, CH of them in flight at a time (more would spill registers) */
    constexpr int LDH = HS + 8, V = ROWS * HS / 4, PER = (V + NTHR - 1) / NTHR;
    constexpr int CH = PER < 8 ? PER : 8;
    for (int i0 = 0; i0 < PER; i0 += CH) {
        float4 buf[CH];
#pragma unroll
        for (int i = 0; i < CH; i++) {
            int v = threadIdx.x + (i0 + i) * NTHR, r = v / (HS / 4), c = (v - r * (HS / 4)) * 4;
            buf[i] = v < V && r0 + r < T ? *reinterpret_cast<const float4 *>(
                                               base + (size_t)(r0 + r) * C3 + off + c)
                                         : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
#pragma unroll
        for (int i = 0; i < CH; i++) {
            int v = threadIdx.x + (i0 + i) * NTHR, r = v / (HS / 4), c = (v - r * (HS / 4)) * 4;
            if (v >= V) continue;
            __nv_bfloat16 *d = dst + r * LDH + c;
            d[0] = __float2bfloat16_rn(buf[i].x);
            d[1] = __float2bfloat16_rn(buf[i].y);
            d[2] = __float2bfloat16_rn(buf[i].z);
            d[3] = __float2bfloat16_rn(buf[i].w);
        }
    }
}

/* grid (ceil(T / BQ), B * NH), BQ / 16 warps; warp w owns query rows q0 + 16w .. q0 + 16w + 15 */
template <int HS, int BQ>
__global__ void __launch_bounds__(BQ * 2)
    attention_fused_kernel(float *__restrict__ y, float *__restrict__ att,
                           const float *__restrict__ qkv, int T, int NH, int att_ld,
                           float scale) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
    using namespace nvcuda;
    const int LDH = HS + 8;
    const int Tp = (T + FA_BK - 1) / FA_BK * FA_BK, LDS = fused_lds(T, HS);
    const int C = NH * HS;
    const size_t C3 = 3 * (size_t)C;
    const int bh = blockIdx.y, b = bh / NH, h = bh - b * NH;
    const int q0 = blockIdx.x * BQ;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    PV_DYNAMIC_SMEM(smem);
    __nv_bfloat16 *sQ = (__nv_bfloat16 *)smem;
    __nv_bfloat16 *sKV = sQ + BQ * LDH;
    float *sS = (float *)(sKV + FA_BK * LDH);
    float *myS = sS + (size_t)warp * 16 * LDS;
    const float *base = qkv + (size_t)b * T * C3 + (size_t)h * HS; /* q of token 0, this head */

    /* the Q tile as bf16; rows past T are zeros */
    load_tile_bf16<HS, BQ, BQ * 2>(sQ, base, C3, 0, q0, T);
    /* S = q k^T (unscaled), one key tile at a time */
    for (int k0 = 0; k0 < Tp; k0 += FA_BK) {
        __syncthreads(); /* the Q tile is written; the previous K tile is consumed */
        load_tile_bf16<HS, FA_BK, BQ * 2>(sKV, base, C3, C, k0, T);
        __syncthreads();
#pragma unroll
        for (int n = 0; n < FA_BK / 16; n++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.0f);
#pragma unroll
            for (int kk = 0; kk < HS / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fq;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fk;
                wmma::load_matrix_sync(fq, sQ + warp * 16 * LDH + kk * 16, LDH);
                wmma::load_matrix_sync(fk, sKV + n * 16 * LDH + kk * 16, LDH);
                wmma::mma_sync(acc, fq, fk, acc);
            }
            wmma::store_matrix_sync(myS + k0 + n * 16, acc, LDS, wmma::mem_row_major);
        }
    }
    __syncwarp(); /* the warp's score rows are complete */

    /* softmax over keys, row by row, with softmax_rows_kernel's arithmetic and order; P goes to
     * att (float32, rows < T) and, as bf16, over the start of its own score row */
    for (int r = 0; r < 16; r++) {
        float *row = myS + (size_t)r * LDS;
        const int t = q0 + warp * 16 + r;
        float e[FA_MAXJ];
        float mx = -INFINITY;
#pragma unroll
        for (int jj = 0; jj < FA_MAXJ; jj++) {
            int j = lane + 32 * jj;
            e[jj] = j < T ? scale * row[j] : -INFINITY;
            mx = fmaxf(mx, e[jj]);
        }
        mx = warp_max(mx);
        float s = 0.0f;
#pragma unroll
        for (int jj = 0; jj < FA_MAXJ; jj++) {
            int j = lane + 32 * jj;
            e[jj] = j < T ? expf(e[jj] - mx) : 0.0f;
            s += e[jj];
        }
        float inv = 1.0f / warp_sum(s);
        __syncwarp(); /* every lane has read the row: it may be overwritten */
        __nv_bfloat16 *prow = (__nv_bfloat16 *)row;
        float *arow = att + ((size_t)bh * T + t) * att_ld;
#pragma unroll
        for (int jj = 0; jj < FA_MAXJ; jj++) {
            int j = lane + 32 * jj;
            if (j < Tp) {
                float p = e[jj] * inv; /* 0 past T */
                prow[j] = __float2bfloat16_rn(p);
                if (t < T && j < T) arow[j] = p;
            }
        }
    }

    /* y = P v, one value tile at a time; each warp accumulates its 16 rows x HS */
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> o[HS / 16];
#pragma unroll
    for (int dn = 0; dn < HS / 16; dn++) wmma::fill_fragment(o[dn], 0.0f);
    const __nv_bfloat16 *myP = (const __nv_bfloat16 *)myS;
    for (int k0 = 0; k0 < Tp; k0 += FA_BK) {
        __syncthreads(); /* the previous tile is consumed (the last K tile, the first time) */
        load_tile_bf16<HS, FA_BK, BQ * 2>(sKV, base, C3, 2 * C, k0, T);
        __syncthreads();
#pragma unroll
        for (int ks = 0; ks < FA_BK / 16; ks++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fp;
            wmma::load_matrix_sync(fp, myP + k0 + ks * 16, 2 * LDS);
#pragma unroll
            for (int dn = 0; dn < HS / 16; dn++) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fv;
                wmma::load_matrix_sync(fv, sKV + ks * 16 * LDH + dn * 16, LDH);
                wmma::mma_sync(o[dn], fp, fv, o[dn]);
            }
        }
    }
    __syncwarp(); /* P is read: the rows take the output */
#pragma unroll
    for (int dn = 0; dn < HS / 16; dn++)
        wmma::store_matrix_sync(myS + dn * 16, o[dn], LDS, wmma::mem_row_major);
    __syncwarp();
    for (int r = 0; r < 16; r++) {
        const int t = q0 + warp * 16 + r;
        if (t >= T) break;
        float *dst = y + ((size_t)b * T + t) * C + (size_t)h * HS;
        for (int d = lane; d < HS; d += 32) dst[d] = myS[(size_t)r * LDS + d];
    }
#endif
}

template <int HS, int BQ>
static int fused_launch(float *y, float *att, const float *qkv, int B, int T, int NH, int att_ld,
                        float scale, cudaStream_t s) {
    size_t bytes = fused_smem_bytes(T, HS, BQ);
    auto kernel = attention_fused_kernel<HS, BQ>;
    if (bytes > 48 * 1024)
        PV_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)bytes));
    dim3 grid((unsigned)((T + BQ - 1) / BQ), (unsigned)(B * NH));
    PV_LAUNCH(kernel, grid, BQ * 2, bytes, s)(y, att, qkv, T, NH, att_ld, scale);
    PV_LAUNCH_CHECK("attention_fused");
    return PV_OK;
}

/* the fused forward where it applies (bf16 mode with POLYVIT_CUDA_ATTENTION=fused, sm_80+,
 * head size 16/32/64/128, qkv 16-byte aligned, T <= 640 with the shared memory in
 * FA_SMEM_MAX); 1 when it ran (or failed: rc holds the error), 0 when the caller should run
 * the unfused path */
static int attention_fused(pv_cuda_model *cm, float *y, float *att, const float *qkv, int B,
                           int *rc) {
    pv_model *m = &cm->m;
    int T = m->T, NH = m->NH, hs = m->C / m->NH;
    if (cm->precision != PV_PREC_BF16 || !cm->att_fused || cm->cc_major < 8 ||
        T > 32 * FA_MAXJ || (hs != 16 && hs != 32 && hs != 64 && hs != 128) ||
        ((uintptr_t)qkv & 15u) != 0) /* the tile loads are 16 bytes wide */
        return 0;
    int bq = fused_smem_bytes(T, hs, 64) <= FA_SMEM_MAX ? 64
             : fused_smem_bytes(T, hs, 32) <= FA_SMEM_MAX ? 32 : 0;
    if (!bq) return 0;
    float scale = 1.0f / sqrtf((float)hs);
    cudaStream_t s = (cudaStream_t)cm->stream;
#define FA_CASE(H)                                                                            \
    case H:                                                                                   \
        *rc = bq == 64 ? fused_launch<H, 64>(y, att, qkv, B, T, NH, m->att_ld, scale, s)      \
                       : fused_launch<H, 32>(y, att, qkv, B, T, NH, m->att_ld, scale, s);     \
        return 1;
    switch (hs) {
        FA_CASE(16)
        FA_CASE(32)
        FA_CASE(64)
        FA_CASE(128)
    }
#undef FA_CASE
    return 0;
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
    int rc = PV_OK;
    if (attention_fused(cm, y, att, qkv, B, &rc)) return rc;
    size_t n = (size_t)B * NH * T * hs;
    float scale = 1.0f / sqrtf((float)hs);
    float *q = cm->qkvr, *k = q + n, *v = k + n;
    PV_LAUNCH(permute_qkv_kernel, grid_for(n, 256), 256, 0, s)(cm->qkvr, qkv, B, T, NH, hs);
    PV_LAUNCH_CHECK("permute_qkv");
    /* S (T,T) row-major per (b,h): S[t1][t2] = scale * q[t1] . k[t2] */
    const int L = m->att_ld;
    pv_gemm_plan ps = pv_plan_att_scores(T, hs, B * NH, scale, L);
    rc = cu_gemm(cm, &ps, k, q, att);
    if (rc) return rc;
    size_t rows = (size_t)B * NH * T;
    PV_LAUNCH(softmax_rows_kernel, grid_for(rows * 32, 256), 256, 0, s)(att, rows, T, L);
    PV_LAUNCH_CHECK("softmax_rows");
    /* vacc (T,hs) per (b,h) = P v */
    pv_gemm_plan pv_ = pv_plan_att_values(T, hs, B * NH, L);
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
    int bh = B * NH, L = m->att_ld;
    /* dP (T,T) = dvacc v^T */
    pv_gemm_plan p1 = pv_plan_att_dprobs(T, hs, bh, L);
    int rc = cu_gemm(cm, &p1, v, cm->vacc, cm->d_attn);
    if (rc) return rc;
    /* dv (T,hs) = P^T dvacc */
    pv_gemm_plan p2 = pv_plan_att_dvalues(T, hs, bh, L);
    rc = cu_gemm(cm, &p2, cm->vacc, att, dv);
    if (rc) return rc;
    size_t rows = (size_t)B * NH * T;
    PV_LAUNCH(softmax_backward_kernel, grid_for(rows * 32, 256), 256, 0, s)(cm->d_attn, att, rows, T,
                                                                     L, scale);
    PV_LAUNCH_CHECK("softmax_backward");
    /* dq = dS k, dk = dS^T q (dS already carries the scale) */
    pv_gemm_plan p3 = pv_plan_att_dq(T, hs, bh, L);
    rc = cu_gemm(cm, &p3, k, cm->d_attn, dq);
    if (rc) return rc;
    pv_gemm_plan p4 = pv_plan_att_dk(T, hs, bh, L);
    rc = cu_gemm(cm, &p4, q, cm->d_attn, dk);
    if (rc) return rc;
    PV_LAUNCH(permute_qkv_backward_kernel, grid_for(n, 256), 256, 0, s)(dqkv, cm->d_qkvr, B, T, NH, hs);
    PV_LAUNCH_CHECK("permute_qkv_backward");
    return PV_OK;
}
