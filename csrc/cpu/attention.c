/* Multi-head self-attention on the packed qkv activations (B, T, 3C), timm's layout: for token t,
 * q = qkv[t, 0:C], k = qkv[t, C:2C], v = qkv[t, 2C:3C], head h owning columns h*hs .. (h+1)*hs.
 * One (batch, head) pair per task: its T x T score tile stays in cache while softmax runs,
 * and the small GEMMs read q/k/v in place through their leading dimensions (no copies). */
#include <math.h>
#include <string.h>

#include "../polyvit.h"
#include "blas.h"
#include "vecmath.h"

#ifdef _OPENMP
#include <omp.h>
#endif

void pv_softmax_rows(float *x, int rows, int n) {
    for (int r = 0; r < rows; r++) {
        float *row = x + (size_t)r * n;
        float mx = -INFINITY;
        for (int j = 0; j < n; j++) mx = row[j] > mx ? row[j] : mx;
        float sum = 0.0f;
        int j = 0;
#ifdef PV_HAVE_AVX2
        __m256 vm = _mm256_set1_ps(mx), vs = _mm256_setzero_ps();
        for (; j + 8 <= n; j += 8) {
            __m256 e = pv_exp8(_mm256_sub_ps(_mm256_loadu_ps(row + j), vm));
            _mm256_storeu_ps(row + j, e);
            vs = _mm256_add_ps(vs, e);
        }
        float t[8];
        _mm256_storeu_ps(t, vs);
        sum = ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
#endif
        for (; j < n; j++) {
            row[j] = expf(row[j] - mx);
            sum += row[j];
        }
        float inv = 1.0f / sum;
#pragma omp simd
        for (j = 0; j < n; j++) row[j] *= inv;
    }
}

void attention_forward(float *y, float *att, const float *qkv, int B, int T, int C, int NH) {
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
    size_t ld = (size_t)3 * C;
#pragma omp parallel for schedule(dynamic, 1)
    for (int bh = 0; bh < B * NH; bh++) {
        int b = bh / NH, h = bh % NH;
        const float *q = qkv + (size_t)b * T * ld + (size_t)h * hs;
        const float *k = q + C, *v = q + 2 * C;
        float *S = att + (size_t)bh * T * T;
        /* S = scale * q k^T, softmax over keys */
        PV_SGEMM(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, scale, q, (int)ld, k, (int)ld,
                 0.0f, S, T);
        pv_softmax_rows(S, T, T);
        /* y_h = S v */
        PV_SGEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f, S, T, v, (int)ld, 0.0f,
                 y + (size_t)b * T * C + (size_t)h * hs, C);
    }
}

/* scratch: nthreads * T * T floats. dqkv is fully overwritten. */
void attention_backward(float *dqkv, float *scratch, const float *dy, const float *att,
                        const float *qkv, int B, int T, int C, int NH) {
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
    size_t ld = (size_t)3 * C;
#pragma omp parallel for schedule(dynamic, 1)
    for (int bh = 0; bh < B * NH; bh++) {
#ifdef _OPENMP
        float *dS = scratch + (size_t)omp_get_thread_num() * T * T;
#else
        float *dS = scratch;
#endif
        int b = bh / NH, h = bh % NH;
        size_t off = (size_t)b * T * ld + (size_t)h * hs;
        const float *q = qkv + off, *k = q + C, *v = q + 2 * C;
        float *dq = dqkv + off, *dk = dq + C, *dv = dq + 2 * C;
        const float *P = att + (size_t)bh * T * T;
        const float *g = dy + (size_t)b * T * C + (size_t)h * hs;
        /* dP = g v^T ; dv = P^T g */
        PV_SGEMM(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, 1.0f, g, C, v, (int)ld, 0.0f,
                 dS, T);
        PV_SGEMM(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, P, T, g, C, 0.0f, dv,
                 (int)ld);
        /* softmax backward: dS = P * (dP - rowsum(dP * P)), times the score scale */
        for (int i = 0; i < T; i++) {
            const float *p = P + (size_t)i * T;
            float *d = dS + (size_t)i * T;
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int j = 0; j < T; j++) dot += p[j] * d[j];
#pragma omp simd
            for (int j = 0; j < T; j++) d[j] = scale * p[j] * (d[j] - dot);
        }
        /* dq = dS k ; dk = dS^T q */
        PV_SGEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f, dS, T, k, (int)ld,
                 0.0f, dq, (int)ld);
        PV_SGEMM(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, dS, T, q, (int)ld, 0.0f,
                 dk, (int)ld);
    }
}
