/* fixedpoint.h: plaintext simulation of MPC fixed-point arithmetic (cpu/fixedpoint.c), bound in
 * module_fixed.c. Kept out of polyvit.h: it is an evaluation tool, not part of the model engine.
 *
 * The ring is Z_{2^64}, as in SecretFlow SPU: a real x is held as round(x * 2^f) mod 2^64, in an
 * int64 buffer. All arithmetic is done on uint64_t (wrapping, no signed-overflow UB); a value is
 * read as signed (two's complement) only to truncate, compare or decode. A product of two
 * fixed-point values has 2f fractional bits and is truncated by f bits: trunc(v) = floor(v / 2^f)
 * of the signed value (an arithmetic shift, so negatives round toward -inf). A matmul sums the
 * 2f-bit products in the ring and truncates once. Overflow wraps silently, exactly as in the ring.
 *
 * Nonlinear kernels (exp, 1/x, 1/sqrt, GELU) are evaluated in double on the decoded fixed-point
 * value and the result re-encoded: MPC uses approximations there; we simulate the arithmetic
 * around them. Encoding rounds to nearest (ties to even, the default rounding mode).
 *
 * Functions return 0 (PV_OK) or a negative status with pv_last_error() set; they never print or
 * abort. The caller (module_fixed.c) has checked every shape and that 0 <= f <= 62. */
#ifndef POLYVIT_FIXEDPOINT_H
#define POLYVIT_FIXEDPOINT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* which multiply kernel a matmul uses; both compute the same exact ring result */
enum {
    PV_FX_KERNEL_AUTO = 0, /* the faster one for this build and these operands */
    PV_FX_KERNEL_U64 = 1,  /* full 64x64 -> 64 wrapping multiply (vpmullq with AVX-512DQ) */
    PV_FX_KERNEL_I32 = 2,  /* both operands fit in int32: 32x32 -> 64 signed multiply (vpmuldq);
                              an error when an operand does not fit */
};

/* out[i] = round(x[i] * 2^f) mod 2^64; PV_ERR_VALUE (naming the index) on NaN or +-inf */
int pv_fx_encode_f64(int64_t *out, const double *x, size_t n, int f);
int pv_fx_encode_f32(int64_t *out, const float *x, size_t n, int f);
/* out[i] = signed(x[i]) / 2^f */
void pv_fx_decode(double *out, const int64_t *x, size_t n, int f);
/* max |signed(x[i])| / 2^f (0 for n = 0) */
double pv_fx_maxabs(const int64_t *x, size_t n, int f);

/* Y[b] = trunc(X[b] @ W[b or 0]) + bias + res[b], for b < nb. X[b] is M x K (rows contiguous),
 * W[b] K x N, or N x K with transpose_b; bias (N) and res (nb x M x N) may be NULL; Y is
 * nb x M x N and must not overlap X or W (it may be res). w_batched: W holds nb matrices. */
int pv_fx_matmul(int64_t *Y, const int64_t *X, const int64_t *W, const int64_t *bias,
                 const int64_t *res, int nb, int w_batched, int M, int K, int N, int transpose_b,
                 int f, int kernel);

/* out = trunc(x * y), x of rows x D; y: ymode 0 one value, 1 a vector over the last axis (D),
 * 2 the same shape as x. out may be x. */
void pv_fx_mul(int64_t *out, const int64_t *x, const int64_t *y, size_t rows, int D, int ymode,
               int f);

/* LayerNorm over the last axis (D) of rows x D:
 *   mean = trunc(sum(x) * enc(1/D)); d = x - mean; var = trunc(sum(trunc(d*d)) * enc(1/D));
 *   rstd = enc(1 / sqrt(max(dec(var), 0) + eps)); y = trunc(trunc(d * rstd) * gamma) + beta */
int pv_fx_layernorm(int64_t *out, const int64_t *x, const int64_t *gamma, const int64_t *beta,
                    size_t rows, int D, int f, double eps);

/* softmax over the last axis (T) of rows x T:
 *   m = max (signed); e = enc(exp(min(dec(x - m), 0))); s = sum(e); r = enc(1/dec(s));
 *   y = trunc(e * r). out may be x. */
int pv_fx_softmax(int64_t *out, const int64_t *x, size_t rows, int T, int f);

/* y = enc(gelu(dec(x))), exact erf form or the tanh approximation. out must not be x.
 * mx (may be NULL) gets the decoded max |x| and max |y|. */
int pv_fx_gelu(int64_t *out, const int64_t *x, size_t n, int f, int tanh_form, double mx[2]);

/* Horner with encoded coefficients (width 1: one set; width D: per channel of the last axis):
 *   t = trunc(A*x) + B; y = trunc(t*x) + C. out may be x.
 * mx (may be NULL) gets the decoded max |x| and max |y|. */
void pv_fx_poly(int64_t *out, const int64_t *x, const int64_t *A, const int64_t *B,
                const int64_t *C, size_t rows, int D, int width, int f, double mx[2]);

/* Multi-head self-attention on qkv (nb x T x 3C, timm's layout: q, k, v, each split into NH
 * heads of C/NH columns) into y (nb x T x C). Per (image, head):
 *   q' = trunc(q * scale); S = trunc(q' @ k^T); P = softmax(S) (as pv_fx_softmax);
 *   y_h = trunc(P @ v).
 * stats (may be NULL) gets the decoded max |.| of: [0] q' and k (what the score product
 * multiplies), [1] S (the softmax input), [2] v, [3] y. */
int pv_fx_attention(int64_t *y, double stats[4], const int64_t *qkv, int nb, int T, int C,
                    int NH, int64_t scale, int f);

#ifdef __cplusplus
}
#endif
#endif
