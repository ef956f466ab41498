/* Patch embedding (a stride-p convolution as im2col + GEMM) and the token sequence
 * [cls, patches] + pos. */
#include <string.h>

#include "../polyvit.h"

/* patches[(b*N + gy*G + gx), (c*p + ky)*p + kx] = images[b, c, gy*p + ky, gx*p + kx] */
void patch_im2col(float *patches, const float *images, int B, int Cin, int img, int p) {
    int G = img / p, N = G * G, D = Cin * p * p;
#pragma omp parallel for schedule(static)
    for (int bn = 0; bn < B * N; bn++) {
        int b = bn / N, n = bn % N, gy = n / G, gx = n % G;
        float *row = patches + (size_t)bn * D;
        for (int c = 0; c < Cin; c++)
            for (int ky = 0; ky < p; ky++)
                memcpy(row + (c * p + ky) * p,
                       images + (((size_t)b * Cin + c) * img + (size_t)gy * p + ky) * img + (size_t)gx * p,
                       sizeof(float) * p);
    }
}

/* x[b,0] = cls + pos[0]; x[b,1+n] = patch_out[b,n] + pos[1+n] */
void tokens_assemble(float *x, const float *patch_out, const float *cls, const float *pos, int B,
                     int T, int C) {
#pragma omp parallel for schedule(static)
    for (int bt = 0; bt < B * T; bt++) {
        int b = bt / T, t = bt % T;
        float *o = x + (size_t)bt * C;
        const float *src = t == 0 ? cls : patch_out + ((size_t)b * (T - 1) + t - 1) * C;
        const float *ps = pos + (size_t)t * C;
#pragma omp simd
        for (int j = 0; j < C; j++) o[j] = src[j] + ps[j];
    }
}

/* dcls = sum_b dx[b,0]; dpos[t] = sum_b dx[b,t]; dpatch_out[b,n] = dx[b,1+n] */
void tokens_backward(float *dcls, float *dpos, float *dpatch_out, const float *dx, int B, int T,
                     int C) {
#pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) {
        float *dp = dpos + (size_t)t * C;
        memset(dp, 0, sizeof(float) * C);
        for (int b = 0; b < B; b++) {
            const float *g = dx + ((size_t)b * T + t) * C;
#pragma omp simd
            for (int j = 0; j < C; j++) dp[j] += g[j];
            if (t > 0) memcpy(dpatch_out + ((size_t)b * (T - 1) + t - 1) * C, g, sizeof(float) * C);
        }
        if (t == 0) memcpy(dcls, dp, sizeof(float) * C);
    }
}
