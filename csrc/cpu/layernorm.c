/* LayerNorm over the last dimension (C), two-pass mean/variance like PyTorch. Rows of the input
 * may be strided (the final norm reads only the class tokens). */
#include <math.h>
#include <string.h>

#include "../polyvit.h"

void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                       const float *b, int rows, int C, float eps, size_t in_stride) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < rows; i++) {
        const float *x = inp + (size_t)i * in_stride;
        float *o = out + (size_t)i * C;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int j = 0; j < C; j++) s += x[j];
        float mu = s / C;
        float v = 0.0f;
#pragma omp simd reduction(+ : v)
        for (int j = 0; j < C; j++) {
            float d = x[j] - mu;
            v += d * d;
        }
        float r = 1.0f / sqrtf(v / C + eps);
#pragma omp simd
        for (int j = 0; j < C; j++) o[j] = (x[j] - mu) * r * w[j] + b[j];
        mean[i] = mu;
        rstd[i] = r;
    }
}

void layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                        const float *w, const float *mean, const float *rstd, int rows, int C,
                        size_t in_stride, size_t dinp_stride) {
#pragma omp parallel
    {
        /* input gradient: row-parallel */
#pragma omp for schedule(static)
        for (int i = 0; i < rows; i++) {
            const float *x = inp + (size_t)i * in_stride;
            const float *g = dout + (size_t)i * C;
            float *dx = dinp + (size_t)i * dinp_stride;
            float mu = mean[i], r = rstd[i];
            float sg = 0.0f, sgx = 0.0f; /* mean of g*w and of g*w*xhat */
#pragma omp simd reduction(+ : sg, sgx)
            for (int j = 0; j < C; j++) {
                float gw = g[j] * w[j];
                sg += gw;
                sgx += gw * (x[j] - mu) * r;
            }
            sg /= C;
            sgx /= C;
#pragma omp simd
            for (int j = 0; j < C; j++) {
                float xh = (x[j] - mu) * r;
                dx[j] += r * (g[j] * w[j] - sg - xh * sgx);
            }
        }
        /* weight and bias gradients: column-parallel, rows summed in order (deterministic) */
#pragma omp for schedule(static)
        for (int c0 = 0; c0 < C; c0 += 16) {
            int c1 = c0 + 16 < C ? c0 + 16 : C;
            float aw[16] = {0}, ab[16] = {0};
            for (int i = 0; i < rows; i++) {
                const float *x = inp + (size_t)i * in_stride;
                const float *g = dout + (size_t)i * C;
                float mu = mean[i], r = rstd[i];
                for (int j = c0; j < c1; j++) {
                    aw[j - c0] += g[j] * (x[j] - mu) * r;
                    ab[j - c0] += g[j];
                }
            }
            for (int j = c0; j < c1; j++) {
                dw[j] = aw[j - c0];
                db[j] = ab[j - c0];
            }
        }
    }
}
