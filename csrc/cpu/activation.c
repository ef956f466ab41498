/* Activations: exact-erf GELU and the quadratic y = s*(a*x^2 + b*x + c), forward and backward.
 * Poly coefficients are per block (width 1) or per hidden channel (width H). */
#include <math.h>
#include <string.h>

#include "../polyvit.h"
#include "vecmath.h"

#define INV_SQRT2 0.70710678118654752f
#define INV_SQRT2PI 0.39894228040143268f

float pv_erf_scalar(float x) { return erff(x); }

/* tanh-form constants: gelu(x) ~ 0.5 x (1 + tanh(k0 (x + k1 x^3))) */
#define K0 0.79788456080286536f /* sqrt(2/pi) */
#define K1 0.044715f

#ifdef PV_HAVE_AVX2
/* tanh(u) = 1 - 2 / (exp(2u) + 1): exp saturates cleanly at both ends (t -> +-1) */
static inline __m256 pv_tanh8(__m256 u) {
    const __m256 one = _mm256_set1_ps(1.0f), two = _mm256_set1_ps(2.0f);
    __m256 e = pv_exp8(_mm256_mul_ps(two, u));
    return _mm256_sub_ps(one, _mm256_div_ps(two, _mm256_add_ps(e, one)));
}
#endif

void gelu_forward(float *out, const float *inp, size_t n, int tanh_form) {
#pragma omp parallel for schedule(static)
    for (size_t i0 = 0; i0 < n; i0 += 4096) {
        size_t i1 = i0 + 4096 < n ? i0 + 4096 : n, i = i0;
#ifdef PV_HAVE_AVX2
        const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f),
                     k = _mm256_set1_ps(INV_SQRT2), k0 = _mm256_set1_ps(K0),
                     k1 = _mm256_set1_ps(K1);
        for (; i + 8 <= i1; i += 8) {
            __m256 x = _mm256_loadu_ps(inp + i), e;
            if (tanh_form) {
                __m256 u = _mm256_mul_ps(k0, _mm256_fmadd_ps(_mm256_mul_ps(k1, x), _mm256_mul_ps(x, x), x));
                e = pv_tanh8(u);
            } else {
                e = pv_erf8(_mm256_mul_ps(x, k));
            }
            _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(half, x), _mm256_add_ps(one, e)));
        }
#endif
        for (; i < i1; i++) {
            float x = inp[i];
            float e = tanh_form ? tanhf(K0 * (x + K1 * x * x * x)) : erff(x * INV_SQRT2);
            out[i] = 0.5f * x * (1.0f + e);
        }
    }
}

/* erf form: d/dx gelu = Phi(x) + x*phi(x)
 * tanh form: 0.5 (1 + t) + 0.5 x (1 - t^2) k0 (1 + 3 k1 x^2), t = tanh(k0 (x + k1 x^3)) */
void gelu_backward(float *dinp, const float *inp, const float *dout, size_t n, int tanh_form) {
#pragma omp parallel for schedule(static)
    for (size_t i0 = 0; i0 < n; i0 += 4096) {
        size_t i1 = i0 + 4096 < n ? i0 + 4096 : n, i = i0;
#ifdef PV_HAVE_AVX2
        const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f),
                     k = _mm256_set1_ps(INV_SQRT2), nh = _mm256_set1_ps(-0.5f),
                     c = _mm256_set1_ps(INV_SQRT2PI), k0 = _mm256_set1_ps(K0),
                     k1 = _mm256_set1_ps(K1), k13 = _mm256_set1_ps(3.0f * K1);
        for (; i + 8 <= i1; i += 8) {
            __m256 x = _mm256_loadu_ps(inp + i), d;
            if (tanh_form) {
                __m256 x2 = _mm256_mul_ps(x, x);
                __m256 t = pv_tanh8(_mm256_mul_ps(k0, _mm256_fmadd_ps(_mm256_mul_ps(k1, x), x2, x)));
                __m256 du = _mm256_mul_ps(k0, _mm256_fmadd_ps(k13, x2, one));
                __m256 sech2 = _mm256_fnmadd_ps(t, t, one);
                d = _mm256_fmadd_ps(_mm256_mul_ps(half, x), _mm256_mul_ps(sech2, du),
                                    _mm256_mul_ps(half, _mm256_add_ps(one, t)));
            } else {
                __m256 cdf = _mm256_mul_ps(half, _mm256_add_ps(one, pv_erf8(_mm256_mul_ps(x, k))));
                __m256 pdf = _mm256_mul_ps(c, pv_exp8(_mm256_mul_ps(nh, _mm256_mul_ps(x, x))));
                d = _mm256_fmadd_ps(x, pdf, cdf);
            }
            _mm256_storeu_ps(dinp + i, _mm256_mul_ps(d, _mm256_loadu_ps(dout + i)));
        }
#endif
        for (; i < i1; i++) {
            float x = inp[i], d;
            if (tanh_form) {
                float t = tanhf(K0 * (x + K1 * x * x * x));
                d = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * K0 * (1.0f + 3.0f * K1 * x * x);
            } else {
                d = 0.5f * (1.0f + erff(x * INV_SQRT2)) + x * INV_SQRT2PI * expf(-0.5f * x * x);
            }
            dinp[i] = d * dout[i];
        }
    }
}

void poly_forward(float *out, const float *inp, const float *a, const float *b, const float *c,
                  const float *s, int width, size_t rows, int H) {
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *x = inp + r * H;
        float *y = out + r * H;
        if (width == 1) {
            /* fold s into the coefficients: y = (s*a*x + s*b)*x + s*c, Horner */
            float A = s[0] * a[0], Bc = s[0] * b[0], Cc = s[0] * c[0];
#pragma omp simd
            for (int j = 0; j < H; j++) y[j] = (A * x[j] + Bc) * x[j] + Cc;
        } else {
#pragma omp simd
            for (int j = 0; j < H; j++) y[j] = s[j] * ((a[j] * x[j] + b[j]) * x[j] + c[j]);
        }
    }
}

/* dinp = dout * s*(2a x + b); coefficient gradients summed over rows (and channels for
 * width 1): da = sum g*s*x^2, db = sum g*s*x, dc = sum g*s, ds = sum g*(a x^2 + b x + c).
 * Rows are reduced in column blocks so the sum order does not depend on the thread count. */
void poly_backward(float *dinp, float *da, float *db, float *dc, float *ds, const float *inp,
                   const float *dout, const float *a, const float *b, const float *c,
                   const float *s, int width, size_t rows, int H, double *acc) {
    /* acc (3*H doubles): per-column sums of g*x^2, g*x and g over all rows. These reductions run
     * over B*T rows, so they are kept in double; float32 sums would lose digits that the
     * finite-difference tests see. */
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int c0 = 0; c0 < H; c0 += 64) {
            int c1 = c0 + 64 < H ? c0 + 64 : H;
            double sx2[64] = {0}, sx[64] = {0}, s1[64] = {0};
            for (size_t r = 0; r < rows; r++) {
                const float *x = inp + r * H, *g = dout + r * H;
                for (int j = c0; j < c1; j++) {
                    float gx = g[j] * x[j];
                    sx2[j - c0] += gx * x[j];
                    sx[j - c0] += gx;
                    s1[j - c0] += g[j];
                }
            }
            for (int j = c0; j < c1; j++) {
                acc[j] = sx2[j - c0];
                acc[H + j] = sx[j - c0];
                acc[2 * H + j] = s1[j - c0];
            }
        }
        /* input gradient, after the barrier above: dinp may alias dout */
#pragma omp for schedule(static)
        for (size_t r = 0; r < rows; r++) {
            const float *x = inp + r * H, *g = dout + r * H;
            float *dx = dinp + r * H;
            if (width == 1) {
                float A2 = 2.0f * s[0] * a[0], Bc = s[0] * b[0];
#pragma omp simd
                for (int j = 0; j < H; j++) dx[j] = g[j] * (A2 * x[j] + Bc);
            } else {
#pragma omp simd
                for (int j = 0; j < H; j++) dx[j] = g[j] * s[j] * (2.0f * a[j] * x[j] + b[j]);
            }
        }
    }
    if (width == 1) {
        double t2 = 0, t1 = 0, t0 = 0;
        for (int j = 0; j < H; j++) {
            t2 += acc[j];
            t1 += acc[H + j];
            t0 += acc[2 * H + j];
        }
        da[0] = (float)(s[0] * t2);
        db[0] = (float)(s[0] * t1);
        dc[0] = (float)(s[0] * t0);
        ds[0] = (float)(a[0] * t2 + b[0] * t1 + c[0] * t0);
    } else {
        for (int j = 0; j < H; j++) {
            double t2 = acc[j], t1 = acc[H + j], t0 = acc[2 * H + j];
            da[j] = (float)(s[j] * t2);
            db[j] = (float)(s[j] * t1);
            dc[j] = (float)(s[j] * t0);
            ds[j] = (float)(a[j] * t2 + b[j] * t1 + c[j] * t0);
        }
    }
}
