/* Host check of csrc/cuda/gemm_plan.h: every cuBLAS product the CUDA engine issues, run through
 * a column-major GEMM with cuBLAS's semantics (C = alpha op(A) op(B) + beta C, batched by
 * strides), then compared with row-major reference math in double: the linear layers' forward
 * and both gradients, and attention forward and backward assembled exactly as attention.cu
 * assembles them (permute with pv_qkv_offset, planned products, softmax, heads back with
 * pv_heads_offset). No GPU, no CUDA: plain C. Prints one line per check; exits 1 on a failure. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/gemm_plan.h"

static int fails = 0;

/* cuBLAS's column-major semantics: element (i, j) of X with leading dimension ld is X[i + j*ld] */
static void ref_gemm(const pv_gemm_plan *p, const float *A, const float *B, float *C) {
    for (int b = 0; b < p->batch; b++) {
        const float *a = A + b * p->sA, *bb = B + b * p->sB;
        float *c = C + b * p->sC;
        for (int j = 0; j < p->n; j++)
            for (int i = 0; i < p->m; i++) {
                double s = 0.0;
                for (int l = 0; l < p->k; l++) {
                    double x = p->ta ? a[l + (size_t)i * p->lda] : a[i + (size_t)l * p->lda];
                    double y = p->tb ? bb[j + (size_t)l * p->ldb] : bb[l + (size_t)j * p->ldb];
                    s += x * y;
                }
                float *o = &c[i + (size_t)j * p->ldc];
                *o = (float)(p->alpha * s + (p->beta != 0.0f ? p->beta * *o : 0.0));
            }
    }
}

static float *rnd(size_t n, unsigned *seed) {
    float *x = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) {
        *seed = *seed * 1664525u + 1013904223u;
        x[i] = (float)((*seed >> 8) / 16777216.0 * 2.0 - 1.0);
    }
    return x;
}

static void check(const char *what, const float *got, const double *want, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = got[i] - want[i];
        num += d * d;
        den += want[i] * want[i];
    }
    double rel = sqrt(num / (den > 0 ? den : 1.0));
    /* float32 results of double sums: a correct plan is ~1e-7; a wrong transpose or stride O(1) */
    int bad = !(rel < 1e-5);
    fails += bad;
    printf("%s %-44s n=%zu rel=%.2e\n", bad ? "FAIL" : "ok  ", what, n, rel);
}

static void linear(int M, int K, int N, unsigned seed) {
    float *inp = rnd((size_t)M * K, &seed), *w = rnd((size_t)N * K, &seed);
    float *dout = rnd((size_t)M * N, &seed), *prev = rnd((size_t)M * K, &seed);
    float *out = calloc((size_t)M * N, 4), *dinp = malloc(sizeof(float) * M * K),
          *dw = calloc((size_t)N * K, 4);
    double *want = malloc(sizeof(double) * ((size_t)M * N + M * K + N * K));
    char name[96];

    pv_gemm_plan p = pv_plan_linear_forward(M, K, N);
    ref_gemm(&p, w, inp, out);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int l = 0; l < K; l++) s += (double)inp[i * K + l] * w[j * K + l];
            want[i * N + j] = s;
        }
    snprintf(name, sizeof name, "linear forward %dx%dx%d", M, K, N);
    check(name, out, want, (size_t)M * N);

    for (int acc = 0; acc < 2; acc++) {
        memcpy(dinp, prev, sizeof(float) * M * K);
        p = pv_plan_linear_dinp(M, K, N, acc);
        ref_gemm(&p, w, dout, dinp);
        for (int i = 0; i < M; i++)
            for (int l = 0; l < K; l++) {
                double s = acc ? prev[i * K + l] : 0.0;
                for (int j = 0; j < N; j++) s += (double)dout[i * N + j] * w[j * K + l];
                want[i * K + l] = s;
            }
        snprintf(name, sizeof name, "linear dinp %dx%dx%d%s", M, K, N, acc ? " (accumulate)" : "");
        check(name, dinp, want, (size_t)M * K);
    }

    p = pv_plan_linear_dw(M, K, N);
    ref_gemm(&p, inp, dout, dw);
    for (int j = 0; j < N; j++)
        for (int l = 0; l < K; l++) {
            double s = 0;
            for (int i = 0; i < M; i++) s += (double)dout[i * N + j] * inp[i * K + l];
            want[j * K + l] = s;
        }
    snprintf(name, sizeof name, "linear dw %dx%dx%d", M, K, N);
    check(name, dw, want, (size_t)N * K);
    free(inp); free(w); free(dout); free(prev); free(out); free(dinp); free(dw); free(want);
}

/* attention on packed qkv (B, T, 3C) as attention.cu computes it, against direct math */
static void attention(int B, int T, int C, int NH, int L, unsigned seed) {
    int hs = C / NH, bh = B * NH;
    size_t n = (size_t)B * NH * T * hs, tt = (size_t)bh * T * L; /* S, P: rows L >= T apart */
    float scale = 1.0f / sqrtf((float)hs);
    float *qkv = rnd((size_t)B * T * 3 * C, &seed), *dy = rnd((size_t)B * T * C, &seed);
    float *qkvr = malloc(sizeof(float) * 3 * n), *att = malloc(sizeof(float) * tt);
    float *vacc = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
    float *dP = malloc(sizeof(float) * tt), *dqkvr = malloc(sizeof(float) * 3 * n);
    float *dqkv = malloc(sizeof(float) * (size_t)B * T * 3 * C);
    double *want = malloc(sizeof(double) * (size_t)B * T * 3 * C);
    double *P = malloc(sizeof(double) * T * T), *dS = malloc(sizeof(double) * T * T);
    char name[96];
    for (size_t i = 0; i < tt; i++) att[i] = dP[i] = NAN; /* the row padding must stay unread */

    /* ---- forward, as cu_attention_forward ---- */
    for (size_t i = 0; i < n; i++) {
        long long src = pv_qkv_offset((long long)i, T, NH, hs);
        qkvr[i] = qkv[src];
        qkvr[n + i] = qkv[src + C];
        qkvr[2 * n + i] = qkv[src + 2 * C];
    }
    float *q = qkvr, *k = qkvr + n, *v = qkvr + 2 * n;
    pv_gemm_plan p = pv_plan_att_scores(T, hs, bh, scale, L);
    ref_gemm(&p, k, q, att);
    for (size_t r = 0; r < (size_t)bh * T; r++) { /* softmax rows (the kernel's formula) */
        float *row = att + r * L, mx = -INFINITY, s = 0;
        for (int j = 0; j < T; j++) mx = fmaxf(mx, row[j]);
        for (int j = 0; j < T; j++) s += row[j] = expf(row[j] - mx);
        for (int j = 0; j < T; j++) row[j] /= s;
    }
    p = pv_plan_att_values(T, hs, bh, L);
    ref_gemm(&p, v, att, vacc);
    for (size_t i = 0; i < n; i++) y[pv_heads_offset((long long)i, T, NH, hs)] = vacc[i];

    /* direct math from qkv: y[b,t,h*hs+d] = sum_u P[t][u] v[b,u,h,d] */
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const float *base = qkv + (size_t)b * T * 3 * C + h * hs;
#define Q(t, d) base[(size_t)(t) * 3 * C + (d)]
#define K_(t, d) base[(size_t)(t) * 3 * C + C + (d)]
#define V(t, d) base[(size_t)(t) * 3 * C + 2 * C + (d)]
            for (int t = 0; t < T; t++) {
                double mx = -INFINITY, s = 0;
                for (int u = 0; u < T; u++) {
                    double z = 0;
                    for (int d = 0; d < hs; d++) z += (double)Q(t, d) * K_(u, d);
                    P[t * T + u] = z * scale;
                    mx = fmax(mx, P[t * T + u]);
                }
                for (int u = 0; u < T; u++) s += P[t * T + u] = exp(P[t * T + u] - mx);
                for (int u = 0; u < T; u++) P[t * T + u] /= s;
                for (int d = 0; d < hs; d++) {
                    double z = 0;
                    for (int u = 0; u < T; u++) z += P[t * T + u] * V(u, d);
                    want[((size_t)b * T + t) * C + h * hs + d] = z;
                }
            }
            /* backward, direct: dP = dy v^T, dS = P (dP - rowsum(P dP)), dq = scale dS k,
             * dk = scale dS^T q, dv = P^T dy */
            const float *g = dy + (size_t)b * T * C + h * hs;
            double *wq = want + (size_t)B * T * C; /* second half of want: dqkv (B,T,3C) */
            (void)wq;
            for (int t = 0; t < T; t++) {
                double dot = 0;
                for (int u = 0; u < T; u++) {
                    double z = 0;
                    for (int d = 0; d < hs; d++) z += (double)g[(size_t)t * C + d] * V(u, d);
                    dS[t * T + u] = z;
                    dot += P[t * T + u] * z;
                }
                for (int u = 0; u < T; u++) dS[t * T + u] = P[t * T + u] * (dS[t * T + u] - dot);
            }
            double *dq_w = malloc(sizeof(double) * T * hs * 3);
            for (int t = 0; t < T; t++)
                for (int d = 0; d < hs; d++) {
                    double zq = 0, zk = 0, zv = 0;
                    for (int u = 0; u < T; u++) {
                        zq += dS[t * T + u] * K_(u, d);
                        zk += dS[u * T + t] * Q(u, d);
                        zv += P[u * T + t] * g[(size_t)u * C + d];
                    }
                    dq_w[(t * hs + d) * 3 + 0] = scale * zq;
                    dq_w[(t * hs + d) * 3 + 1] = scale * zk;
                    dq_w[(t * hs + d) * 3 + 2] = zv;
                }
            /* stash the direct gradients in dqkv's layout, in a buffer after the forward's */
            for (int t = 0; t < T; t++)
                for (int d = 0; d < hs; d++)
                    for (int w3 = 0; w3 < 3; w3++)
                        dqkv[((size_t)b * T + t) * 3 * C + w3 * C + h * hs + d] =
                            (float)dq_w[(t * hs + d) * 3 + w3];
            free(dq_w);
#undef Q
#undef K_
#undef V
        }
    snprintf(name, sizeof name, "attention forward B%d T%d C%d NH%d L%d", B, T, C, NH, L);
    check(name, y, want, (size_t)B * T * C);
    for (size_t i = 0; i < (size_t)B * T * 3 * C; i++) want[i] = dqkv[i];

    /* ---- backward, as cu_attention_backward ---- */
    for (size_t i = 0; i < n; i++) vacc[i] = dy[pv_heads_offset((long long)i, T, NH, hs)];
    float *dq = dqkvr, *dk = dqkvr + n, *dv = dqkvr + 2 * n;
    p = pv_plan_att_dprobs(T, hs, bh, L);
    ref_gemm(&p, v, vacc, dP);
    p = pv_plan_att_dvalues(T, hs, bh, L);
    ref_gemm(&p, vacc, att, dv);
    for (size_t r = 0; r < (size_t)bh * T; r++) { /* softmax backward (the kernel's formula) */
        float *g = dP + r * L, dot = 0;
        const float *pr = att + r * L;
        for (int j = 0; j < T; j++) dot += pr[j] * g[j];
        for (int j = 0; j < T; j++) g[j] = scale * pr[j] * (g[j] - dot);
    }
    p = pv_plan_att_dq(T, hs, bh, L);
    ref_gemm(&p, k, dP, dq);
    p = pv_plan_att_dk(T, hs, bh, L);
    ref_gemm(&p, q, dP, dk);
    for (size_t i = 0; i < n; i++) {
        long long dst = pv_qkv_offset((long long)i, T, NH, hs);
        dqkv[dst] = dq[i];
        dqkv[dst + C] = dk[i];
        dqkv[dst + 2 * C] = dv[i];
    }
    snprintf(name, sizeof name, "attention backward B%d T%d C%d NH%d L%d", B, T, C, NH, L);
    check(name, dqkv, want, (size_t)B * T * 3 * C);
    free(qkv); free(dy); free(qkvr); free(att); free(vacc); free(y); free(dP); free(dqkvr);
    free(dqkv); free(want); free(P); free(dS);
}

int main(void) {
    linear(1, 1, 1, 1);
    linear(7, 5, 3, 2);
    linear(13, 8, 21, 3);
    linear(65, 32, 96, 4);
    attention(1, 1, 4, 1, 1, 5);
    attention(2, 5, 8, 2, 5, 6);
    attention(3, 17, 12, 3, 17, 7);
    attention(2, 65, 32, 4, 65, 8);
    /* rows padded as POLYVIT_CUDA_ATT_LD=pad pads them (T rounded up to 8) */
    attention(2, 5, 8, 2, 8, 9);
    attention(3, 17, 12, 3, 24, 10);
    attention(2, 65, 32, 4, 72, 11);
    printf("%s: %d failure(s)\n", fails ? "FAILED" : "all ok", fails);
    return fails ? 1 : 0;
}
