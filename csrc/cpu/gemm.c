/* GEMMs of the linear layers, partitioned over OpenMP threads (OpenBLAS single-threaded inside).
 * Weights use PyTorch's (out_features, in_features) layout, so forward is inp @ w^T. */
#include <string.h>

#include "../polyvit.h"
#include "blas.h"

#ifdef _OPENMP
#include <omp.h>
#define PV_TID omp_get_thread_num()
#define PV_NT omp_get_num_threads()
#else
#define PV_TID 0
#define PV_NT 1
#endif

/* split [0, n) into nt parts, multiples of `align` where possible */
static void split(int n, int nt, int t, int align, int *lo, int *hi) {
    int units = (n + align - 1) / align;
    int u0 = (int)((long long)units * t / nt), u1 = (int)((long long)units * (t + 1) / nt);
    *lo = u0 * align < n ? u0 * align : n;
    *hi = u1 * align < n ? u1 * align : n;
}

void matmul_forward(float *out, const float *inp, const float *w, const float *bias,
                    const float *residual, int M, int K, int N) {
#pragma omp parallel
    {
        int lo, hi;
        split(M, PV_NT, PV_TID, 8, &lo, &hi);
        int rows = hi - lo;
        if (rows > 0) {
            float *o = out + (size_t)lo * N;
            float beta = 0.0f;
            /* seed the output with residual and/or bias, then let the GEMM accumulate (beta=1) */
            if (residual || bias) {
                for (int i = 0; i < rows; i++) {
                    float *orow = o + (size_t)i * N;
                    const float *rrow = residual ? residual + (size_t)(lo + i) * N : NULL;
                    if (rrow && bias)
                        for (int j = 0; j < N; j++) orow[j] = rrow[j] + bias[j];
                    else if (rrow)
                        memcpy(orow, rrow, sizeof(float) * N);
                    else
                        memcpy(orow, bias, sizeof(float) * N);
                }
                beta = 1.0f;
            }
            PV_SGEMM(CblasRowMajor, CblasNoTrans, CblasTrans, rows, N, K, 1.0f,
                     inp + (size_t)lo * K, K, w, K, beta, o, N);
        }
    }
}

void matmul_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                     const float *w, int M, int K, int N, int accumulate) {
#pragma omp parallel
    {
        /* The two products have the same FLOPs (M*N*K), so with several threads the pool splits
         * in two teams, one per product, and each team partitions its own product: every GEMM
         * call stays large (better blocking than cutting both products into thin slices). */
        int nt = PV_NT, t = PV_TID, lo, hi;
        int both = dinp && dw && nt >= 2;
        int n_in = both ? nt / 2 : nt;        /* threads on dinp: 0 .. n_in-1 */
        int in_team = !both || t < n_in;      /* this thread works on dinp */
        int w_team = !both || t >= n_in;      /* this thread works on dw */
        int n_w = both ? nt - n_in : nt, tw = both ? t - n_in : t;
        /* dinp(M,K) = dout(M,N) @ w(N,K): rows split */
        if (dinp && in_team) {
            split(M, n_in, t, 8, &lo, &hi);
            if (hi > lo)
                PV_SGEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, hi - lo, K, N, 1.0f,
                         dout + (size_t)lo * N, N, w, K, accumulate ? 1.0f : 0.0f,
                         dinp + (size_t)lo * K, K);
        }
        /* dw(N,K) = dout^T(N,M) @ inp(M,K): split the output rows (N), full reduction over M */
        if (dw && w_team) {
            split(N, n_w, tw, 8, &lo, &hi);
            if (hi > lo)
                PV_SGEMM(CblasRowMajor, CblasTrans, CblasNoTrans, hi - lo, K, M, 1.0f, dout + lo,
                         N, inp, K, 0.0f, dw + (size_t)lo * K, K);
            /* dbias over the same columns: sum rows in order, fixed regardless of thread count */
            if (dbias && hi > lo) {
                memset(dbias + lo, 0, sizeof(float) * (hi - lo));
                for (int i = 0; i < M; i++) {
                    const float *r = dout + (size_t)i * N;
                    for (int j = lo; j < hi; j++) dbias[j] += r[j];
                }
            }
        }
    }
}
