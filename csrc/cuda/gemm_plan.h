/* gemm_plan.h: every cuBLAS product the CUDA engine issues, as data.
 *
 * The engine's tensors are row-major; cuBLAS is column-major. The transposes, leading
 * dimensions and strides that bridge the two are the easiest thing to get wrong and the hardest
 * to see, so they are decided here, in plain C, and nowhere else: gemm.cu and attention.cu only
 * pass a plan and its two operands to cuBLAS. tests/cuda_host/gemm_plan_check.c runs each plan
 * through a host column-major GEMM with cuBLAS's semantics and compares the results with
 * row-major reference math (linear layers, attention forward and backward), without a GPU.
 *
 * A plan computes, for each of `batch` products,
 *     C = alpha * op(A) * op(B) + beta * C      (column-major; op = transpose when ta/tb)
 * with op(A) m x k, op(B) k x n, C m x n, and the operands `sA`, `sB`, `sC` floats apart.
 */
#ifndef POLYVIT_GEMM_PLAN_H
#define POLYVIT_GEMM_PLAN_H

#ifdef __CUDACC__
#define PV_PLAN_HD __host__ __device__
#else
#define PV_PLAN_HD
#endif

typedef struct {
    int ta, tb;          /* transpose A / B */
    int m, n, k;
    int lda, ldb, ldc;
    long long sA, sB, sC; /* batch strides, in floats (0 for a single product) */
    int batch;
    float alpha, beta;
} pv_gemm_plan;

static inline pv_gemm_plan pv_plan(int ta, int tb, int m, int n, int k, int lda, int ldb, int ldc,
                                   long long sA, long long sB, long long sC, int batch,
                                   float alpha, float beta) {
    pv_gemm_plan p;
    p.ta = ta; p.tb = tb; p.m = m; p.n = n; p.k = k;
    p.lda = lda; p.ldb = ldb; p.ldc = ldc;
    p.sA = sA; p.sB = sB; p.sC = sC;
    p.batch = batch; p.alpha = alpha; p.beta = beta;
    return p;
}

/* ---- linear layers: out(M,N) = inp(M,K) @ w(N,K)^T --------------------------------------- */
/* A = w, B = inp, C = out. Row-major out is column-major out^T (N x M) = w^T' ... i.e.
 * out^T = op_T(w as K x N column-major) * (inp as K x M column-major). */
static inline pv_gemm_plan pv_plan_linear_forward(int M, int K, int N) {
    return pv_plan(1, 0, N, M, K, K, K, N, 0, 0, 0, 1, 1.0f, 0.0f);
}
/* dinp(M,K) [+]= dout(M,N) @ w(N,K): A = w, B = dout, C = dinp */
static inline pv_gemm_plan pv_plan_linear_dinp(int M, int K, int N, int accumulate) {
    return pv_plan(0, 0, K, M, N, K, N, K, 0, 0, 0, 1, 1.0f, accumulate ? 1.0f : 0.0f);
}
/* dw(N,K) = dout(M,N)^T @ inp(M,K): A = inp, B = dout, C = dw */
static inline pv_gemm_plan pv_plan_linear_dw(int M, int K, int N) {
    return pv_plan(0, 1, K, N, M, K, N, K, 0, 0, 0, 1, 1.0f, 0.0f);
}

/* ---- attention, per (batch, head): q, k, v, y each (T, hs) row-major, contiguous per head,
 * S and P (T, T) row-major with rows L >= T floats apart (the padding is never read or
 * written); `bh` products T*hs (or T*L) floats apart ------------------------------------- */
/* S = scale * q k^T: A = k, B = q, C = S */
static inline pv_gemm_plan pv_plan_att_scores(int T, int hs, int bh, float scale, int L) {
    return pv_plan(1, 0, T, T, hs, hs, hs, L, (long long)T * hs, (long long)T * hs,
                   (long long)T * L, bh, scale, 0.0f);
}
/* y = P v: A = v, B = P, C = y */
static inline pv_gemm_plan pv_plan_att_values(int T, int hs, int bh, int L) {
    return pv_plan(0, 0, hs, T, T, hs, L, hs, (long long)T * hs, (long long)T * L,
                   (long long)T * hs, bh, 1.0f, 0.0f);
}
/* dP = dy v^T: A = v, B = dy, C = dP */
static inline pv_gemm_plan pv_plan_att_dprobs(int T, int hs, int bh, int L) {
    return pv_plan(1, 0, T, T, hs, hs, hs, L, (long long)T * hs, (long long)T * hs,
                   (long long)T * L, bh, 1.0f, 0.0f);
}
/* dv = P^T dy: A = dy, B = P, C = dv */
static inline pv_gemm_plan pv_plan_att_dvalues(int T, int hs, int bh, int L) {
    return pv_plan(0, 1, hs, T, T, hs, L, hs, (long long)T * hs, (long long)T * L,
                   (long long)T * hs, bh, 1.0f, 0.0f);
}
/* dq = dS k: A = k, B = dS, C = dq */
static inline pv_gemm_plan pv_plan_att_dq(int T, int hs, int bh, int L) {
    return pv_plan(0, 0, hs, T, T, hs, L, hs, (long long)T * hs, (long long)T * L,
                   (long long)T * hs, bh, 1.0f, 0.0f);
}
/* dk = dS^T q: A = q, B = dS, C = dk */
static inline pv_gemm_plan pv_plan_att_dk(int T, int hs, int bh, int L) {
    return pv_plan(0, 1, hs, T, T, hs, L, hs, (long long)T * hs, (long long)T * L,
                   (long long)T * hs, bh, 1.0f, 0.0f);
}

/* ---- the layout changes around attention ------------------------------------------------- */
/* Element i of the permuted (B, NH, T, hs) tensor of q (k, v: + C, + 2C) sits at this offset
 * of the packed qkv (B, T, 3, NH, hs); the same map runs backward for the gradient. */
PV_PLAN_HD static inline long long pv_qkv_offset(long long i, int T, int NH, int hs) {
    long long d = i % hs, r = i / hs;
    long long t = r % T;
    r /= T;
    long long h = r % NH, b = r / NH;
    return ((b * T + t) * 3 * NH + h) * hs + d;
}
/* Element i of a per-head (B, NH, T, hs) tensor sits at this offset of (B, T, NH*hs). */
PV_PLAN_HD static inline long long pv_heads_offset(long long i, int T, int NH, int hs) {
    long long d = i % hs, r = i / hs;
    long long t = r % T;
    r /= T;
    long long h = r % NH, b = r / NH;
    return (b * T + t) * NH * hs + h * hs + d;
}

#endif
