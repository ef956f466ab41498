/* Plaintext simulation of MPC fixed-point arithmetic in the ring Z_{2^64} (see fixedpoint.h).
 *
 * Every ring value is handled as uint64_t: additions and multiplications wrap modulo 2^64 with
 * no undefined behaviour, and the signed reading (two's complement) is computed explicitly
 * where it matters (truncation, comparison, decoding), so nothing depends on
 * implementation-defined conversions either.
 *
 * The matmul is a small Goto-style GEMM: B packed once per call into panels of NR columns,
 * MR rows of A packed per task, an MR x NR register tile of uint64 accumulators written in plain
 * C that gcc vectorises (with AVX-512DQ the 64-bit multiply is one vpmullq; on AVX2 it is
 * emulated with three vpmuludq, which is why an int32 path exists: when every operand fits in
 * int32 a product is a single vpmuldq and still exact in the ring). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../polyvit.h"
#include "fixedpoint.h"
#include "threads.h"

#if defined(__AVX512F__)
#define MR 6 /* 6 x 32 uint64 = 24 zmm accumulators of 32 */
#else
#define MR 4
#endif
#define NR 32

#define SIGN ((uint64_t)1 << 63)
static const double TWO62 = 4611686018427387904.0, TWO64 = 18446744073709551616.0;
static const double TWO117 = 166153499473114484112975882535043072.0; /* 2^117 */

/* ---- scalar helpers ---------------------------------------------------------------------- */

/* floor(signed(v) / 2^f): an arithmetic right shift, written on unsigned values */
static inline uint64_t fx_trunc(uint64_t v, int f) {
    uint64_t s = 0 - (v >> 63); /* all ones for a negative value */
    return ((v ^ s) >> f) ^ s;
}

/* |signed(v)| as an unsigned value (exact for -2^63 too) */
static inline uint64_t fx_abs(uint64_t v) { return (v >> 63) ? 0 - v : v; }

/* the signed (two's complement) value: int64_t has no padding and no other representation,
 * so copying the bits is exact and well defined (and compiles to nothing) */
static inline int64_t fx_signed(uint64_t v) {
    int64_t s;
    memcpy(&s, &v, sizeof s);
    return s;
}

static inline double fx_dec(uint64_t v, double inv_scale) { return (double)fx_signed(v) * inv_scale; }

/* an integral double (finite) mod 2^64 */
static inline uint64_t fx_from_int(double r) {
    if (!(fabs(r) < TWO64)) r = fmod(r, TWO64); /* exact; now |r| < 2^64 */
    return r >= 0 ? (uint64_t)r : 0 - (uint64_t)(-r);
}

/* round(x * 2^f) mod 2^64 for a finite x; scale = 2^f. |x| >= 2^117 is a multiple of 2^64
 * (its last mantissa bit is worth at least 2^65), so it encodes to 0. */
static inline uint64_t fx_enc_slow(double x, double scale) {
    if (!(fabs(x) < TWO117)) return 0;
    return fx_from_int(nearbyint(x * scale));
}

/* the same, branch-free where |x * 2^f| < 2^62 (every value a model produces): a rounding and
 * one conversion, which gcc vectorises; *big is set when the slow path is needed */
static inline uint64_t fx_enc_fast(double x, double scale, int *big) {
    double r = nearbyint(x * scale);
    int ok = fabs(r) < TWO62; /* false for NaN and inf too */
    *big |= !ok;
    return (uint64_t)(int64_t)(ok ? r : 0.0);
}

static inline uint64_t fx_enc(double x, double scale) {
    int big = 0;
    uint64_t v = fx_enc_fast(x, scale, &big);
    return big ? fx_enc_slow(x, scale) : v;
}

static inline int fx_less(uint64_t a, uint64_t b) { return (a ^ SIGN) < (b ^ SIGN); }

/* ---- encode / decode / max|x| ------------------------------------------------------------ */

/* x * 2^f rounded, for the branch-free pass: 0 where the slow path is needed (*big set) */
#define ENC_FAST_LOOP(out, x, n, scale, big)                                                      \
    _Pragma("omp parallel for schedule(static) reduction(| : big) if (n > 65536)")               \
    for (size_t i = 0; i < n; i++) {                                                              \
        double r_ = nearbyint((double)(x)[i] * (scale));                                         \
        int ok_ = fabs(r_) < TWO62;                                                               \
        big |= !ok_;                                                                              \
        (out)[i] = (uint64_t)(int64_t)(ok_ ? r_ : 0.0);                                          \
    }

/* the rare values the fast pass left out: huge ones wrap mod 2^64, non-finite ones are an error */
#define ENC_SLOW_FIX(out, x, n, scale)                                                            \
    for (size_t i = 0; i < n; i++) {                                                              \
        double v_ = (double)(x)[i];                                                               \
        if (fabs(nearbyint(v_ * (scale))) < TWO62) continue;                                      \
        if (!isfinite(v_))                                                                        \
            return pv_set_error(PV_ERR_VALUE, "cannot encode a non-finite value (%g at flat "     \
                                "index %zu) as fixed point", v_, i);                              \
        (out)[i] = fx_enc_slow(v_, (scale));                                                      \
    }

int pv_fx_encode_f64(int64_t *out_, const double *x, size_t n, int f) {
    uint64_t *out = (uint64_t *)out_;
    const double scale = ldexp(1.0, f);
    int big = 0;
    ENC_FAST_LOOP(out, x, n, scale, big)
    if (big) ENC_SLOW_FIX(out, x, n, scale)
    return PV_OK;
}

int pv_fx_encode_f32(int64_t *out_, const float *x, size_t n, int f) {
    uint64_t *out = (uint64_t *)out_;
    const double scale = ldexp(1.0, f);
    int big = 0;
    ENC_FAST_LOOP(out, x, n, scale, big)
    if (big) ENC_SLOW_FIX(out, x, n, scale)
    return PV_OK;
}

void pv_fx_decode(double *out, const int64_t *x, size_t n, int f) {
    const double inv = ldexp(1.0, -f);
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) out[i] = (double)x[i] * inv;
}

static uint64_t maxabs_u(const uint64_t *x, size_t n) {
    uint64_t m = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t a = fx_abs(x[i]);
        m = a > m ? a : m;
    }
    return m;
}

double pv_fx_maxabs(const int64_t *x_, size_t n, int f) {
    const uint64_t *x = (const uint64_t *)x_;
    uint64_t m = 0;
#pragma omp parallel for schedule(static) reduction(max : m) if (n > 65536)
    for (size_t i0 = 0; i0 < n; i0 += 8192) {
        uint64_t a = maxabs_u(x + i0, n - i0 < 8192 ? n - i0 : 8192);
        m = a > m ? a : m;
    }
    return ldexp((double)m, -f);
}

/* ---- matmul ------------------------------------------------------------------------------ */

/* does signed(v) lie in [-2^31, 2^31)? */
static inline int fits32(uint64_t v) { return v + ((uint64_t)1 << 31) < ((uint64_t)1 << 32); }
static inline int32_t to32(uint64_t v) { /* v fits: exact, no implementation-defined cast */
    return (int32_t)((int64_t)(v + ((uint64_t)1 << 31)) - ((int64_t)1 << 31));
}

static int all_fit32(const uint64_t *x, size_t n) {
    int ok = 1;
#pragma omp parallel for schedule(static) reduction(&& : ok) if (n > 65536)
    for (size_t i0 = 0; i0 < n; i0 += 8192) {
        size_t i1 = n - i0 < 8192 ? n : i0 + 8192;
        int o = 1;
        for (size_t i = i0; i < i1; i++) o &= fits32(x[i]);
        ok = ok && o;
    }
    return ok;
}

/* element (k, j) of the K x N operand: W[k*ld + j], or W[j*ld + k] when transposed */
#define W_AT(W, ld, tb, k, j) ((tb) ? (W)[(size_t)(j) * (ld) + (k)] : (W)[(size_t)(k) * (ld) + (j)])

/* B packed into ceil(N/NR) panels of K rows x NR (zero past N) */
static void pack_b_u64(uint64_t *Bp, const uint64_t *W, size_t ld, int tb, int K, int N, int p) {
    uint64_t *dst = Bp + (size_t)p * K * NR;
    int j0 = p * NR, nj = N - j0 < NR ? N - j0 : NR;
    for (int k = 0; k < K; k++) {
        uint64_t *d = dst + (size_t)k * NR;
        for (int jj = 0; jj < nj; jj++) d[jj] = W_AT(W, ld, tb, k, j0 + jj);
        for (int jj = nj; jj < NR; jj++) d[jj] = 0;
    }
}

static void pack_b_i32(int32_t *Bp, const uint64_t *W, size_t ld, int tb, int K, int N, int p) {
    int32_t *dst = Bp + (size_t)p * K * NR;
    int j0 = p * NR, nj = N - j0 < NR ? N - j0 : NR;
    for (int k = 0; k < K; k++) {
        int32_t *d = dst + (size_t)k * NR;
        for (int jj = 0; jj < nj; jj++) d[jj] = to32(W_AT(W, ld, tb, k, j0 + jj));
        for (int jj = nj; jj < NR; jj++) d[jj] = 0;
    }
}

/* tile (MR x NR) = A panel (K x MR) times B panel (K x NR), in the ring. Plain loops over
 * fixed-size arrays: gcc keeps acc in vector registers and vectorises along j. */
static void kern_u64(uint64_t *restrict tile, const uint64_t *restrict Ap,
                     const uint64_t *restrict Bp, int K) {
    uint64_t acc[MR][NR];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = 0;
    for (int k = 0; k < K; k++) {
        const uint64_t *b = Bp + (size_t)k * NR, *a = Ap + (size_t)k * MR;
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) acc[i][j] += a[i] * b[j];
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) tile[i * NR + j] = acc[i][j];
}

/* the same with int32 operands: each product is exact in int64, the sum wraps in uint64 */
static void kern_i32(uint64_t *restrict tile, const int32_t *restrict Ap,
                     const int32_t *restrict Bp, int K) {
    uint64_t acc[MR][NR];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = 0;
    for (int k = 0; k < K; k++) {
        const int32_t *b = Bp + (size_t)k * NR, *a = Ap + (size_t)k * MR;
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) acc[i][j] += (uint64_t)((int64_t)a[i] * (int64_t)b[j]);
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) tile[i * NR + j] = acc[i][j];
}

/* rows m0 .. m0+mr-1 (mr <= MR) of Y = trunc(X @ B) + bias + res. Ap: MR*K scratch of the
 * kernel's element type. res may be Y (each element is read before it is written). */
static void gemm_panel(uint64_t *Y, size_t ldy, const uint64_t *X, size_t ldx, const void *Bp,
                       int i32, int K, int N, int m0, int mr, int f, const uint64_t *bias,
                       const uint64_t *res, size_t ldr, void *Ap) {
    if (i32) {
        int32_t *A = (int32_t *)Ap;
        for (int k = 0; k < K; k++)
            for (int i = 0; i < MR; i++)
                A[(size_t)k * MR + i] = i < mr ? to32(X[(size_t)(m0 + i) * ldx + k]) : 0;
    } else {
        uint64_t *A = (uint64_t *)Ap;
        for (int k = 0; k < K; k++)
            for (int i = 0; i < MR; i++) A[(size_t)k * MR + i] = i < mr ? X[(size_t)(m0 + i) * ldx + k] : 0;
    }
    uint64_t tile[MR * NR];
    int np = (N + NR - 1) / NR;
    for (int p = 0; p < np; p++) {
        if (i32)
            kern_i32(tile, (const int32_t *)Ap, (const int32_t *)Bp + (size_t)p * K * NR, K);
        else
            kern_u64(tile, (const uint64_t *)Ap, (const uint64_t *)Bp + (size_t)p * K * NR, K);
        int j0 = p * NR, nj = N - j0 < NR ? N - j0 : NR;
        for (int i = 0; i < mr; i++) {
            uint64_t *y = Y + (size_t)(m0 + i) * ldy + j0;
            const uint64_t *t = tile + i * NR;
            const uint64_t *r = res ? res + (size_t)(m0 + i) * ldr + j0 : NULL;
            for (int jj = 0; jj < nj; jj++) {
                uint64_t v = fx_trunc(t[jj], f);
                if (bias) v += bias[j0 + jj];
                if (r) v += r[jj];
                y[jj] = v;
            }
        }
    }
}

int pv_fx_matmul(int64_t *Y_, const int64_t *X_, const int64_t *W_, const int64_t *bias_,
                 const int64_t *res_, int nb, int w_batched, int M, int K, int N, int transpose_b,
                 int f, int kernel) {
    uint64_t *Y = (uint64_t *)Y_;
    const uint64_t *X = (const uint64_t *)X_, *W = (const uint64_t *)W_;
    const uint64_t *bias = (const uint64_t *)bias_, *res = (const uint64_t *)res_;
    if (nb <= 0 || M <= 0 || N <= 0) return PV_OK;
    if (K < 0) return pv_set_error(PV_ERR_VALUE, "fx_matmul: negative inner dimension %d", K);
    const int nw = w_batched ? nb : 1;
    const size_t xsize = (size_t)nb * M * K, wsize = (size_t)nw * K * N;
    int i32;
    if (kernel == PV_FX_KERNEL_I32) {
        if (!all_fit32(X, xsize) || !all_fit32(W, wsize))
            return pv_set_error(PV_ERR_VALUE, "fx_matmul: kernel 'i32' needs every operand to fit in int32 "
                                "([-2^31, 2^31) as a signed ring value); use kernel 'auto' or 'u64'");
        i32 = 1;
    } else if (kernel == PV_FX_KERNEL_U64) {
        i32 = 0;
    } else {
#if defined(__AVX512DQ__)
        i32 = 0; /* vpmullq: the full multiply is as fast as the 32-bit one */
#else
        i32 = all_fit32(X, xsize) && all_fit32(W, wsize);
#endif
    }
    const size_t es = i32 ? sizeof(int32_t) : sizeof(uint64_t);
    const int np = (N + NR - 1) / NR;
    const size_t bstride = (size_t)np * K * NR; /* elements per packed matrix */
    void *Bp = malloc(es * (bstride * nw + 1));
    if (!Bp)
        return pv_set_error(PV_ERR_NOMEM, "fx_matmul: out of memory packing the second operand "
                            "(%zu bytes)", es * bstride * nw);
    const size_t ldw = transpose_b ? (size_t)K : (size_t)N;
#pragma omp parallel for schedule(static)
    for (long t = 0; t < (long)nw * np; t++) {
        int b = (int)(t / np), p = (int)(t % np);
        const uint64_t *Wb = W + (size_t)b * K * N;
        if (i32)
            pack_b_i32((int32_t *)Bp + (size_t)b * bstride, Wb, ldw, transpose_b, K, N, p);
        else
            pack_b_u64((uint64_t *)Bp + (size_t)b * bstride, Wb, ldw, transpose_b, K, N, p);
    }
    const long mp = (M + MR - 1) / MR, tasks = (long)nb * mp;
    int nomem = 0;
#pragma omp parallel
    {
        void *Ap = malloc(es * ((size_t)MR * K + 1));
        if (!Ap) {
#pragma omp atomic write
            nomem = 1;
        }
#pragma omp for schedule(dynamic, 4)
        for (long t = 0; t < tasks; t++) {
            if (!Ap) continue;
            int b = (int)(t / mp), m0 = (int)(t % mp) * MR, mr = M - m0 < MR ? M - m0 : MR;
            size_t off = (size_t)b * M * N;
            const void *Bb = i32 ? (const void *)((const int32_t *)Bp + (w_batched ? b * bstride : 0))
                                 : (const void *)((const uint64_t *)Bp + (w_batched ? b * bstride : 0));
            gemm_panel(Y + off, N, X + (size_t)b * M * K, K, Bb, i32, K, N, m0, mr, f, bias,
                       res ? res + off : NULL, N, Ap);
        }
        free(Ap);
    }
    free(Bp);
    if (nomem) return pv_set_error(PV_ERR_NOMEM, "fx_matmul: out of memory for a row panel");
    return PV_OK;
}

/* ---- elementwise ------------------------------------------------------------------------- */

void pv_fx_mul(int64_t *out_, const int64_t *x_, const int64_t *y_, size_t rows, int D, int ymode,
               int f) {
    uint64_t *out = (uint64_t *)out_;
    const uint64_t *x = (const uint64_t *)x_, *y = (const uint64_t *)y_;
#pragma omp parallel for schedule(static) if (rows * (size_t)D > 65536)
    for (size_t r = 0; r < rows; r++) {
        const uint64_t *xr = x + r * D;
        uint64_t *o = out + r * D;
        if (ymode == 0) {
            uint64_t c = y[0];
            for (int j = 0; j < D; j++) o[j] = fx_trunc(xr[j] * c, f);
        } else {
            const uint64_t *yr = ymode == 1 ? y : y + r * D;
            for (int j = 0; j < D; j++) o[j] = fx_trunc(xr[j] * yr[j], f);
        }
    }
}

static void ln_row(uint64_t *o, const uint64_t *x, const uint64_t *g, const uint64_t *b, int D,
                   int f, uint64_t invD, double eps, double scale, double inv) {
    uint64_t s = 0;
    for (int j = 0; j < D; j++) s += x[j];
    uint64_t mean = fx_trunc(s * invD, f), v = 0;
    for (int j = 0; j < D; j++) {
        uint64_t d = x[j] - mean;
        v += fx_trunc(d * d, f);
    }
    double var = fx_dec(fx_trunc(v * invD, f), inv);
    if (!(var > 0)) var = 0; /* a wrapped (negative) variance: the ring value is garbage anyway */
    uint64_t r = fx_enc(1.0 / sqrt(var + eps), scale);
    for (int j = 0; j < D; j++) o[j] = fx_trunc(fx_trunc((x[j] - mean) * r, f) * g[j], f) + b[j];
}

int pv_fx_layernorm(int64_t *out, const int64_t *x, const int64_t *gamma, const int64_t *beta,
                    size_t rows, int D, int f, double eps) {
    const double scale = ldexp(1.0, f), inv = ldexp(1.0, -f);
    const uint64_t invD = fx_enc(1.0 / D, scale);
#pragma omp parallel for schedule(static) if (rows * (size_t)D > 16384)
    for (size_t r = 0; r < rows; r++)
        ln_row((uint64_t *)out + r * D, (const uint64_t *)x + r * D, (const uint64_t *)gamma,
               (const uint64_t *)beta, D, f, invD, eps, scale, inv);
    return PV_OK;
}

static void softmax_row(uint64_t *o, const uint64_t *x, int T, int f, double scale, double inv) {
    uint64_t m = x[0], s = 0;
    for (int j = 1; j < T; j++) m = fx_less(m, x[j]) ? x[j] : m;
    for (int j = 0; j < T; j++) {
        double z = fx_dec(x[j] - m, inv);
        uint64_t e = fx_enc(exp(z < 0 ? z : 0.0), scale); /* z > 0 only if x - m wrapped */
        o[j] = e;
        s += e;
    }
    uint64_t r = fx_enc(1.0 / fx_dec(s, inv), scale);
    for (int j = 0; j < T; j++) o[j] = fx_trunc(o[j] * r, f);
}

int pv_fx_softmax(int64_t *out, const int64_t *x, size_t rows, int T, int f) {
    const double scale = ldexp(1.0, f), inv = ldexp(1.0, -f);
#pragma omp parallel for schedule(static) if (rows * (size_t)T > 16384)
    for (size_t r = 0; r < rows; r++)
        softmax_row((uint64_t *)out + r * T, (const uint64_t *)x + r * T, T, f, scale, inv);
    return PV_OK;
}

static inline double gelu_d(double v, int tanh_form) {
    const double k0 = 0.79788456080286535588, k1 = 0.044715, is2 = 0.70710678118654752440;
    double e = tanh_form ? tanh(k0 * (v + k1 * v * v * v)) : erf(v * is2);
    return 0.5 * v * (1.0 + e);
}

int pv_fx_gelu(int64_t *out_, const int64_t *x, size_t n, int f, int tanh_form, double mx[2]) {
    uint64_t *out = (uint64_t *)out_;
    const uint64_t *xu = (const uint64_t *)x;
    const double scale = ldexp(1.0, f), inv = ldexp(1.0, -f);
    int big = 0;
    uint64_t mi = 0, mo = 0;
#pragma omp parallel for schedule(static) reduction(| : big) reduction(max : mi, mo) if (n > 16384)
    for (size_t i = 0; i < n; i++) {
        double r = nearbyint(gelu_d((double)x[i] * inv, tanh_form) * scale);
        int ok = fabs(r) < TWO62;
        big |= !ok;
        uint64_t y = (uint64_t)(int64_t)(ok ? r : 0.0), ai = fx_abs(xu[i]), ao = fx_abs(y);
        out[i] = y;
        mi = ai > mi ? ai : mi;
        mo = ao > mo ? ao : mo;
    }
    if (big) { /* |gelu(x)| * 2^f >= 2^62: wrap it as the ring does */
        for (size_t i = 0; i < n; i++) {
            double g = gelu_d((double)x[i] * inv, tanh_form);
            if (!(fabs(nearbyint(g * scale)) < TWO62)) out[i] = fx_enc_slow(g, scale);
        }
        mo = maxabs_u(out, n);
    }
    if (mx) {
        mx[0] = ldexp((double)mi, -f);
        mx[1] = ldexp((double)mo, -f);
    }
    return PV_OK;
}

void pv_fx_poly(int64_t *out_, const int64_t *x_, const int64_t *A_, const int64_t *B_,
                const int64_t *C_, size_t rows, int D, int width, int f, double mx[2]) {
    uint64_t *out = (uint64_t *)out_;
    const uint64_t *x = (const uint64_t *)x_;
    const uint64_t *A = (const uint64_t *)A_, *B = (const uint64_t *)B_, *C = (const uint64_t *)C_;
    uint64_t mi = 0, mo = 0;
#pragma omp parallel for schedule(static) reduction(max : mi, mo) if (rows * (size_t)D > 65536)
    for (size_t r = 0; r < rows; r++) {
        const uint64_t *xr = x + r * D;
        uint64_t *o = out + r * D;
        uint64_t li = 0, lo = 0;
        if (width == 1) {
            const uint64_t a = A[0], b = B[0], c = C[0];
            for (int j = 0; j < D; j++) {
                uint64_t v = xr[j], y = fx_trunc((fx_trunc(a * v, f) + b) * v, f) + c, ai = fx_abs(v),
                         ao = fx_abs(y);
                o[j] = y;
                li = ai > li ? ai : li;
                lo = ao > lo ? ao : lo;
            }
        } else {
            for (int j = 0; j < D; j++) {
                uint64_t v = xr[j], y = fx_trunc((fx_trunc(A[j] * v, f) + B[j]) * v, f) + C[j],
                         ai = fx_abs(v), ao = fx_abs(y);
                o[j] = y;
                li = ai > li ? ai : li;
                lo = ao > lo ? ao : lo;
            }
        }
        mi = li > mi ? li : mi;
        mo = lo > mo ? lo : mo;
    }
    if (mx) {
        mx[0] = ldexp((double)mi, -f);
        mx[1] = ldexp((double)mo, -f);
    }
}

/* ---- attention --------------------------------------------------------------------------- */

int pv_fx_attention(int64_t *y_, double stats[4], const int64_t *qkv_, int nb, int T, int C,
                    int NH, int64_t scale_, int f) {
    uint64_t *Y = (uint64_t *)y_;
    const uint64_t *qkv = (const uint64_t *)qkv_, scale = (uint64_t)scale_;
    const int hd = C / NH;
    const size_t ld = (size_t)3 * C;
    const int npT = (T + NR - 1) / NR, npH = (hd + NR - 1) / NR, kmax = hd > T ? hd : T;
    const size_t n_qs = (size_t)T * hd, n_kp = (size_t)npT * hd * NR, n_S = (size_t)T * T,
                 n_vp = (size_t)npH * T * NR, n_ap = (size_t)MR * kmax;
    const double fscale = ldexp(1.0, f), inv = ldexp(1.0, -f);
    uint64_t mq = 0, ms = 0, mv = 0, my = 0;
    int nomem = 0;
#pragma omp parallel reduction(max : mq, ms, mv, my)
    {
        uint64_t *ws = malloc(sizeof(uint64_t) * (n_qs + n_kp + n_S + n_vp + n_ap + 1));
        if (!ws) {
#pragma omp atomic write
            nomem = 1;
        }
        uint64_t *qs = ws, *kp = qs + n_qs, *S = kp + n_kp, *vp = S + n_S, *Ap = vp + n_vp;
#pragma omp for schedule(dynamic, 1)
        for (long bh = 0; bh < (long)nb * NH; bh++) {
            if (!ws) continue;
            int b = (int)(bh / NH), h = (int)(bh % NH);
            const uint64_t *q = qkv + (size_t)b * T * ld + (size_t)h * hd, *k = q + C, *v = q + 2 * C;
            for (int t = 0; t < T; t++)
                for (int d = 0; d < hd; d++) {
                    uint64_t a = fx_trunc(q[(size_t)t * ld + d] * scale, f);
                    qs[(size_t)t * hd + d] = a;
                    a = fx_abs(a);
                    mq = a > mq ? a : mq;
                    a = fx_abs(k[(size_t)t * ld + d]);
                    mq = a > mq ? a : mq;
                    a = fx_abs(v[(size_t)t * ld + d]);
                    mv = a > mv ? a : mv;
                }
            for (int p = 0; p < npT; p++) pack_b_u64(kp, k, ld, 1, hd, T, p); /* B = k^T (hd x T) */
            for (int p = 0; p < npH; p++) pack_b_u64(vp, v, ld, 0, T, hd, p); /* B = v (T x hd) */
            for (int m0 = 0; m0 < T; m0 += MR)
                gemm_panel(S, T, qs, hd, kp, 0, hd, T, m0, T - m0 < MR ? T - m0 : MR, f, NULL, NULL,
                           0, Ap);
            uint64_t a = maxabs_u(S, n_S);
            ms = a > ms ? a : ms;
            for (int t = 0; t < T; t++) softmax_row(S + (size_t)t * T, S + (size_t)t * T, T, f, fscale, inv);
            uint64_t *yb = Y + (size_t)b * T * C + (size_t)h * hd;
            for (int m0 = 0; m0 < T; m0 += MR)
                gemm_panel(yb, C, S, T, vp, 0, T, hd, m0, T - m0 < MR ? T - m0 : MR, f, NULL, NULL, 0,
                           Ap);
            for (int t = 0; t < T; t++) {
                a = maxabs_u(yb + (size_t)t * C, hd);
                my = a > my ? a : my;
            }
        }
        free(ws);
    }
    if (nomem) return pv_set_error(PV_ERR_NOMEM, "fx_attention: out of memory for the per-thread tiles");
    if (stats) {
        stats[0] = ldexp((double)mq, -f);
        stats[1] = ldexp((double)ms, -f);
        stats[2] = ldexp((double)mv, -f);
        stats[3] = ldexp((double)my, -f);
    }
    return PV_OK;
}
