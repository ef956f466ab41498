/* ops_host_check.cu: the per-element functors of csrc/cuda/ops.cu, run on the HOST against the
 * CPU engine's own code (the C files of csrc/cpu, compiled with the engine's flags), so that
 * their formulas and index arithmetic are checked on a machine without a GPU. Built and run by
 * tests/test_cuda_host.py:
 *
 *   gcc <setup.py's cflags> -c csrc/cpu/{embed,layernorm,activation,adamw}.c
 *   gcc <same> -U__AVX2__ -Dgelu_forward=scalar_gelu_forward ... -c csrc/cpu/activation.c
 *   nvcc -std=c++17 -Icsrc -Xcompiler -ffp-contract=off ops_host_check.cu *.o -lgomp
 *
 * No kernel is launched and no CUDA runtime call is made: ops.cu's functors are __host__
 * __device__, and this file drives them with host copies of the drivers' index logic
 * (k_elementwise's grid-stride split into float4s and a scalar tail, k_colsum's two-stage
 * column sums, k_poly_coef_final's block tree): a change to one of those kernels' order must be
 * made here too. The kernels themselves, the warp/block reductions (layernorm rows,
 * grad_sumsq) and the real GPU arithmetic (FMA contraction, device erff/expf/tanhf) are checked
 * only by tests/test_cuda.py on a GPU.
 *
 * Every check prints one line starting with "ok" or "FAIL"; the exit status is the number of
 * failures (capped at 100), 0 when all pass. "exact" checks compare bit patterns: there the
 * functor evaluates the very same float expression, in the same order, as the CPU code. Only
 * where the order of a reduction differs by design, or the CPU engine uses its AVX2
 * approximations, is there a bound: "sum" (column sums, in units of 2^-24 * sum|terms|),
 * "ulps" (poly coefficient gradients) and "tol" (max |got - ref| / (1 + |ref|), GELU against
 * the AVX2 build); each is justified, with what was measured, where it is defined.
 */
#include "cuda/ops.cu"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <string>
#include <vector>

/* ops.cu's launch wrappers reference these (defined in csrc/cuda/gemm.cu); never called here */
extern "C" int pv_cuda_last_launch_error(const char *) { return 0; }
extern "C" int pv_cuda_fail(const char *, int, const char *, int) { return PV_ERR_RUNTIME; }

/* activation.c compiled a second time with the AVX2 block removed (-U__AVX2__) and its symbols
 * renamed: the scalar formulas the engine runs on the tail of every 4096-element chunk (and
 * everywhere on a build without AVX2/FMA) */
extern "C" {
void scalar_gelu_forward(float *out, const float *inp, size_t n, int tanh_form);
void scalar_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n,
                          int tanh_form);
}

/* ---- reporting ------------------------------------------------------------------------------ */
static int g_checks = 0, g_fails = 0;

static std::string fmt(const char *f, ...) {
    char buf[256];
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    return buf;
}

static void report(bool ok, const std::string &name, const std::string &detail) {
    g_checks++;
    if (!ok) g_fails++;
    printf("%-4s %-52s %s\n", ok ? "ok" : "FAIL", name.c_str(), detail.c_str());
}

static uint32_t bits(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

/* bitwise equality of n floats */
static void check_exact(const std::string &name, const float *got, const float *ref, size_t n) {
    size_t bad = 0, first = 0;
    double maxd = 0;
    for (size_t i = 0; i < n; i++) {
        if (bits(got[i]) != bits(ref[i])) {
            if (!bad) first = i;
            bad++;
            double d = fabs((double)got[i] - ref[i]);
            if (!(d <= maxd)) maxd = d; /* NaN too */
        }
    }
    report(bad == 0 && n > 0, name,
           bad ? fmt("exact n=%zu: %zu differ, first at %zu (got %.9g ref %.9g), max |d| %.3g",
                     n, bad, first, got[first], ref[first], maxd)
               : fmt("exact n=%zu", n));
}

/* max |got - ref| / (1 + |ref|) <= tol */
static void check_tol(const std::string &name, const float *got, const float *ref, size_t n,
                      double tol) {
    double md = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]) / (1.0 + fabs((double)ref[i]));
        if (!(d <= md)) { /* NaN counts as the worst */
            md = d;
            at = i;
        }
    }
    report(md <= tol && n > 0, name, fmt("tol n=%zu: max %.3g at %zu (tol %.2g)", n, md, at, tol));
}

/* column sums: max_j |got_j - ref_j| / (2^-24 * absum_j), absum_j = sum of |terms| of column j:
 * the size of the rounding of a float sum in units of its natural scale (any summation order
 * of m terms is within (m-1) of these units of the exact sum) */
static void check_sum(const std::string &name, const float *got, const float *ref,
                      const double *absum, size_t n, double tol) {
    double md = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]) / (ldexp(1.0, -24) * absum[i]);
        if (!(d <= md)) {
            md = d;
            at = i;
        }
    }
    report(md <= tol && n > 0, name,
           fmt("sum n=%zu: max %.3g u*sum|terms| at %zu (tol %g)", n, md, at, tol));
}

/* |got - ref| <= max_ulps float ulps of ref */
static void check_ulps(const std::string &name, const float *got, const float *ref, size_t n,
                       int max_ulps) {
    long long md = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        /* sign-magnitude bits -> a monotone integer scale (+0 and -0 both 0) */
        long long a = bits(got[i]) & 0x7fffffffu, b = bits(ref[i]) & 0x7fffffffu;
        if (bits(got[i]) >> 31) a = -a;
        if (bits(ref[i]) >> 31) b = -b;
        long long d = llabs(a - b);
        if (got[i] != got[i] || ref[i] != ref[i]) d = 1LL << 40;
        if (d > md) {
            md = d;
            at = i;
        }
    }
    report(md <= max_ulps && n > 0, name,
           fmt("ulps n=%zu: max %lld at %zu (tol %d)", n, md, at, max_ulps));
}

static void check_true(const std::string &name, bool cond, const std::string &detail) {
    report(cond, name, detail);
}

/* ---- buffers: 64-byte aligned, guard words on both sides, poisoned contents ------------------ */
static const uint32_t GUARD = 0x7fa5a5a5u, POISON = 0x7fbadbadu; /* two NaN patterns */
static int g_guard_fail = 0, g_buffers = 0;

struct Buf {
    static const size_t G = 16; /* guard floats per side: keeps data 64-byte aligned */
    std::string label;
    float *base;
    size_t n;
    Buf(const std::string &l, size_t n_) : label(l), n(n_) {
        size_t bytes = ((n + 2 * G) * sizeof(float) + 63) / 64 * 64;
        base = (float *)aligned_alloc(64, bytes);
        if (!base) {
            fprintf(stderr, "out of memory\n");
            exit(99);
        }
        for (size_t i = 0; i < n + 2 * G; i++)
            memcpy(base + i, i < G || i >= G + n ? &GUARD : &POISON, 4);
    }
    ~Buf() {
        bool ok = true;
        for (size_t i = 0; i < G; i++)
            ok = ok && bits(base[i]) == GUARD && bits(base[G + n + i]) == GUARD;
        if (!ok) {
            g_guard_fail++;
            report(false, "guard words around " + label, "a write out of bounds");
        }
        g_buffers++;
        free(base);
    }
    Buf(const Buf &) = delete;
    Buf &operator=(const Buf &) = delete;
    float *p() { return base + G; }
    operator float *() { return base + G; }
    float &operator[](size_t i) { return base[G + i]; }
};

static void poison(float *p, size_t n) {
    for (size_t i = 0; i < n; i++) memcpy(p + i, &POISON, 4);
}

static const char *PATH(int vec) { return vec ? "float4" : "scalar"; }

/* splitmix64: the same numbers on every platform */
struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
    uint64_t next() {
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    /* full-precision floats (53 random bits, rounded once): values on a coarse grid would make
     * many float sums exact and hide a change of summation order */
    float uni(float lo, float hi) {
        return (float)(lo + ((double)hi - lo) * ((next() >> 11) * (1.0 / 9007199254740992.0)));
    }
    void fill(float *p, size_t n, float lo = -1.f, float hi = 1.f) {
        for (size_t i = 0; i < n; i++) p[i] = uni(lo, hi);
    }
};

/* ---- host copies of the drivers ------------------------------------------------------------- */
/* k_elementwise with a grid of `threads` threads: each copies the op and runs init(), then takes
 * float4s q = tid, tid + threads, ... < n4 and scalars 4*n4 + tid, ... < n. vec = the launch
 * wrapper's decision; its preconditions (16-byte alignment, and for ops that index a column, a
 * row length % 4 == 0) are the caller's to respect, as the wrappers do. */
template <class Op>
static void ew_host(const Op &op, size_t n, bool vec, size_t threads = 7) {
    const size_t n4 = vec ? n / 4 : 0;
    for (size_t tid = 0; tid < threads; tid++) {
        Op o = op;
        o.init();
        for (size_t q = tid; q < n4; q += threads) o.vec(q);
        for (size_t i = 4 * n4 + tid; i < n; i += threads) o.one(i);
    }
}

/* k_colsum: grid (gridx chunks, gridy column-tile slots), block (COLSUM_COLS, COLSUM_LANES) */
template <class F>
static void k_colsum_host(const F &f, size_t rows, size_t chunk_rows, int N,
                          const OutPtrs<typename F::Acc, F::NQ> &dst, size_t gridx,
                          unsigned gridy) {
    typedef typename F::Acc Acc;
    const int NQ = F::NQ;
    const int ntiles = (N + COLSUM_COLS - 1) / COLSUM_COLS;
    static Acc sh[F::NQ][COLSUM_LANES][COLSUM_COLS];
    for (size_t chunk = 0; chunk < gridx; chunk++) {
        const size_t r0 = chunk * chunk_rows;
        const size_t r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
        for (unsigned by = 0; by < gridy; by++) {
            for (int tile = (int)by; tile < ntiles; tile += (int)gridy) {
                for (int ty = 0; ty < COLSUM_LANES; ty++) {
                    for (int tx = 0; tx < COLSUM_COLS; tx++) {
                        const int j = tile * COLSUM_COLS + tx;
                        Acc acc[F::NQ];
                        for (int q = 0; q < NQ; q++) acc[q] = Acc(0);
                        if (j < N)
                            for (size_t i = r0 + ty; i < r1; i += COLSUM_LANES) f.add(i, j, acc);
                        for (int q = 0; q < NQ; q++) sh[q][ty][tx] = acc[q];
                    }
                }
                for (int tx = 0; tx < COLSUM_COLS; tx++) {
                    const int j = tile * COLSUM_COLS + tx;
                    if (j >= N) continue;
                    for (int q = 0; q < NQ; q++) {
                        Acc t = sh[q][0][tx];
                        for (int l = 1; l < COLSUM_LANES; l++) t += sh[q][l][tx];
                        dst.p[q][chunk * (size_t)N + j] = t;
                    }
                }
            }
        }
    }
}

/* colsum_run, step for step; the scratch it needs must fit in scratch_elems (the size the
 * cu_*_scratch function gave): returns false when it would not */
template <class F>
static bool colsum_run_host(const F &f, size_t rows, int N,
                            const OutPtrs<typename F::Acc, F::NQ> &out,
                            typename F::Acc *scratch, size_t scratch_elems) {
    typedef typename F::Acc Acc;
    const size_t nchunks = colsum_chunks(rows);
    const int ntiles = (N + COLSUM_COLS - 1) / COLSUM_COLS;
    const unsigned gy = ntiles < 65535 ? (unsigned)ntiles : 65535u;
    if (nchunks == 1) {
        k_colsum_host(f, rows, COLSUM_CHUNK, N, out, 1, gy);
        return true;
    }
    if ((size_t)F::NQ * nchunks * N > scratch_elems) return false;
    OutPtrs<Acc, F::NQ> part;
    for (int q = 0; q < F::NQ; q++) part.p[q] = scratch + (size_t)q * nchunks * N;
    k_colsum_host(f, rows, COLSUM_CHUNK, N, part, nchunks, gy);
    PartialF<Acc, F::NQ> pf;
    pf.p = scratch;
    pf.qstride = nchunks * (size_t)N;
    pf.N = N;
    k_colsum_host(pf, nchunks, nchunks, N, out, 1, gy);
    return true;
}

/* k_poly_coef_final: width 1 is one block of POLY_FINAL_THREADS threads (strided column sums,
 * then the shared-memory tree); width H one thread per channel */
static void poly_coef_final_host(float *da, float *db, float *dc, float *ds, const double *acc,
                                 const float *a, const float *b, const float *c, const float *sc,
                                 int width1, int H) {
    if (width1) {
        static double sh[3][POLY_FINAL_THREADS];
        for (int tid = 0; tid < POLY_FINAL_THREADS; tid++) {
            double t2 = 0.0, t1 = 0.0, t0 = 0.0;
            for (int j = tid; j < H; j += POLY_FINAL_THREADS) {
                t2 += acc[j];
                t1 += acc[H + j];
                t0 += acc[2 * (size_t)H + j];
            }
            sh[0][tid] = t2;
            sh[1][tid] = t1;
            sh[2][tid] = t0;
        }
        for (int off = POLY_FINAL_THREADS / 2; off > 0; off >>= 1)
            for (int tid = 0; tid < off; tid++)
                for (int k = 0; k < 3; k++) sh[k][tid] += sh[k][tid + off];
        double t2 = sh[0][0], t1 = sh[1][0], t0 = sh[2][0];
        da[0] = (float)(sc[0] * t2);
        db[0] = (float)(sc[0] * t1);
        dc[0] = (float)(sc[0] * t0);
        ds[0] = (float)(a[0] * t2 + b[0] * t1 + c[0] * t0);
        return;
    }
    for (int j = 0; j < H; j++) {
        double t2 = acc[j], t1 = acc[H + j], t0 = acc[2 * (size_t)H + j];
        da[j] = (float)(sc[j] * t2);
        db[j] = (float)(sc[j] * t1);
        dc[j] = (float)(sc[j] * t0);
        ds[j] = (float)(a[j] * t2 + b[j] * t1 + c[j] * t0);
    }
}

/* =============================================================================================
 * checks
 * ============================================================================================= */
static void check_helpers() {
    /* divmod: the 32-bit fast path and the 64-bit path */
    const size_t cases[][2] = {{0, 1},          {17, 5},        {4294967295ull, 7},
                               {4294967296ull, 7}, {(1ull << 40) + 123, (1ull << 33) + 1},
                               {123, 1ull << 35}, {(1ull << 36) + 5, 3}, {1000000007ull, 4096}};
    size_t bad = 0;
    for (auto &c : cases) {
        size_t q, r;
        divmod(c[0], c[1], q, r);
        if (q != c[0] / c[1] || r != c[0] % c[1]) bad++;
    }
    check_true("divmod 32- and 64-bit paths", bad == 0,
               fmt("%zu of %zu wrong", bad, sizeof cases / sizeof cases[0]));
    check_true("blocks_for bounds",
               blocks_for(0, 256) == 1 && blocks_for(257, 256) == 2 &&
                   blocks_for((size_t)1 << 40, 256) == MAX_BLOCKS,
               fmt("0->%u 257->%u 2^40->%u", blocks_for(0, 256), blocks_for(257, 256),
                   blocks_for((size_t)1 << 40, 256)));
}

/* cu_images_u8 (always scalar) and cu_images_f32 against their contract in pv_cuda.h,
 * out = x*scale[c] + shift[c] (the CPU engine takes float input: polyvit/model.py normalises) */
static void check_images() {
    Rng rng(1);
    for (int Cin : {3, 1})
        for (int img : {8, 7})
            for (int nhwc = 0; nhwc < 2; nhwc++) {
                const int B = 2;
                const size_t HW = (size_t)img * img, n = (size_t)B * Cin * HW;
                std::vector<uint8_t> in(n);
                for (auto &v : in) v = (uint8_t)(rng.next() & 255);
                Buf sc("scale", Cin), sh("shift", Cin), out("images out", n), ref("images ref", n);
                rng.fill(sc, Cin);
                rng.fill(sh, Cin, -2.f, 2.f);
                for (int b = 0; b < B; b++)
                    for (int c = 0; c < Cin; c++)
                        for (size_t px = 0; px < HW; px++) {
                            size_t o = ((size_t)b * Cin + c) * HW + px;
                            size_t i = nhwc ? ((size_t)b * HW + px) * Cin + c : o;
                            ref[o] = (float)in[i] * sc[c] + sh[c];
                        }
                ImagesU8Op op;
                op.out = out;
                op.in = in.data();
                op.scale = sc;
                op.shift = sh;
                op.HW = HW;
                op.Cin = (size_t)Cin;
                op.nhwc = nhwc;
                ew_host(op, n, false);
                check_exact(fmt("images_u8 %s Cin=%d img=%d", nhwc ? "nhwc" : "nchw", Cin, img),
                            out, ref, n);

                if (nhwc) continue;
                Buf inf("images f32 in", n), out2("images f32 out", n), ref2("images f32 ref", n);
                for (size_t i = 0; i < n; i++) inf[i] = rng.uni(0.f, 1.f);
                for (size_t i = 0; i < n; i++) {
                    size_t c = (i / HW) % Cin;
                    ref2[i] = inf[i] * sc[c] + sh[c];
                }
                ImagesF32Op f;
                f.out = out2;
                f.in = inf;
                f.scale = sc;
                f.shift = sh;
                f.HW = HW;
                f.Cin = (size_t)Cin;
                for (int vec = 0; vec < 2; vec++) {
                    if (vec && HW % 4) continue; /* the wrapper's condition */
                    poison(out2, n);
                    ew_host(f, n, vec);
                    check_exact(fmt("images_f32 %s Cin=%d img=%d", PATH(vec), Cin, img), out2,
                                ref2, n);
                }
            }
}

/* cu_patch_im2col against csrc/cpu/embed.c patch_im2col */
static void check_im2col() {
    Rng rng(2);
    for (int Cin : {3, 1})
        for (int p : {3, 4, 8, 16})
            for (int img : {16, 17, 24, 32}) {
                if (img < p || (Cin == 1 && p != 4)) continue;
                const int B = 2, G = img / p, N = G * G, D = Cin * p * p;
                const size_t ni = (size_t)B * Cin * img * img, no = (size_t)B * N * D;
                Buf im("im2col images", ni), out("im2col out", no), ref("im2col ref", no);
                rng.fill(im, ni);
                patch_im2col(ref, im, B, Cin, img, p);
                Im2colOp op;
                op.patches = out;
                op.images = im;
                op.Cin = (size_t)Cin;
                op.img = (size_t)img;
                op.p = (size_t)p;
                op.G = (size_t)G;
                op.N = (size_t)N;
                op.D = (size_t)D;
                for (int vec = 0; vec < 2; vec++) {
                    if (vec && (p % 4 || img % 4)) continue;
                    poison(out, no);
                    ew_host(op, no, vec);
                    check_exact(fmt("im2col %s Cin=%d p=%d img=%d", PATH(vec), Cin, p, img), out,
                                ref, no);
                }
            }
}

/* cu_tokens_assemble / cu_tokens_backward against embed.c */
static void check_tokens() {
    Rng rng(3);
    for (int C : {8, 7, 12})
        for (int T : {5, 2}) {
            const int B = 3;
            const size_t n = (size_t)B * T * C, np = (size_t)B * (T - 1) * C;
            Buf po("patch_out", np), cls("cls", C), pos("pos", (size_t)T * C), x("x", n);
            Buf ref("x ref", n);
            rng.fill(po, np);
            rng.fill(cls, C);
            rng.fill(pos, (size_t)T * C);
            tokens_assemble(ref, po, cls, pos, B, T, C);
            TokensAssembleOp op;
            op.x = x;
            op.patch_out = po;
            op.cls = cls;
            op.pos = pos;
            op.T = (size_t)T;
            op.C = (size_t)C;
            for (int vec = 0; vec < 2; vec++) {
                if (vec && C % 4) continue;
                poison(x, n);
                ew_host(op, n, vec);
                check_exact(fmt("tokens_assemble %s C=%d T=%d", PATH(vec), C, T), x, ref, n);
            }

            Buf dx("dx", n), dcls("dcls", C), dpos("dpos", (size_t)T * C), dp("dpatch", np);
            Buf rc("dcls ref", C), rp("dpos ref", (size_t)T * C), rpp("dpatch ref", np);
            rng.fill(dx, n);
            tokens_backward(rc, rp, rpp, dx, B, T, C);
            TokensBackwardOp tb;
            tb.dcls = dcls;
            tb.dpos = dpos;
            tb.dpatch = dp;
            tb.dx = dx;
            tb.B = (size_t)B;
            tb.T = (size_t)T;
            tb.C = (size_t)C;
            for (int vec = 0; vec < 2; vec++) {
                if (vec && C % 4) continue;
                poison(dcls, (size_t)C);
                poison(dpos, (size_t)T * C);
                poison(dp, np);
                ew_host(tb, (size_t)T * C, vec);
                const char *path = PATH(vec);
                /* the sums over b run in b order from 0.0f, as the CPU loop: exact */
                check_exact(fmt("tokens_backward dcls %s C=%d T=%d", path, C, T), dcls, rc, C);
                check_exact(fmt("tokens_backward dpos %s C=%d T=%d", path, C, T), dpos, rp,
                            (size_t)T * C);
                check_exact(fmt("tokens_backward dpatch %s C=%d T=%d", path, C, T), dp, rpp, np);
            }
        }
}

/* cu_bias_residual: the CPU (gemm.c matmul_forward) seeds the output with residual + bias (or
 * one of them) and the GEMM adds the product onto the seed, so out = product + seed. */
static void check_bias_residual() {
    Rng rng(4);
    for (int N : {12, 13})
        for (int mode = 0; mode < 4; mode++) { /* bias, residual, both, both with out == residual */
            const int M = 7;
            const size_t n = (size_t)M * N;
            Buf prod("product", n), res("residual", n), bias("bias", N);
            Buf out("bias_residual out", n), ref("bias_residual ref", n);
            rng.fill(prod, n);
            rng.fill(res, n);
            rng.fill(bias, N);
            const bool alias = mode == 3;
            const float *bp = mode != 1 ? bias.p() : NULL;
            const float *rp = mode != 0 ? (alias ? out.p() : res.p()) : NULL;
            for (int vec = 0; vec < 2; vec++) {
                if (vec && N % 4) continue;
                memcpy(out, prod, n * 4);
                for (size_t i = 0; i < n; i++) {
                    float r = mode == 0 ? 0.f : alias ? prod[i] : res[i], b = bias[i % N];
                    float seed = mode == 0 ? b : mode == 1 ? r : r + b;
                    ref[i] = prod[i] + seed;
                }
                BiasResidualOp op;
                op.out = out;
                op.bias = bp;
                op.res = rp;
                op.N = (size_t)N;
                ew_host(op, n, vec);
                static const char *names[] = {"bias", "residual", "bias+residual",
                                              "bias+residual, out==res"};
                check_exact(fmt("bias_residual %s %s N=%d", names[mode], PATH(vec), N), out, ref,
                            n);
            }
        }
}

/* The column sums. The CPU adds rows in order into one accumulator per column; k_colsum adds
 * rows r0+ty, r0+ty+8, ... per lane, the 8 lanes in order, then the 256-row chunks in order.
 * With rows <= COLSUM_LANES every lane holds at most one row and the order is the CPU's
 * (0 + x0 + x1 + ... + 0 + 0): exact. Above that the order differs by design, and the float
 * sums are compared by check_sum, in units of 2^-24 * sum_i |term_i| of the column. Measured
 * max on these inputs: 3.9 (layernorm dw, C=37, 600 rows), bias 2.1; over 150 further seeds of
 * the same shapes: layernorm dw 3.4, db 3.0, bias 3.3. COLSUM_TOL = 8 is 2x the largest (and
 * half the worst case of two orders of 9 rows, 2 * 8 units). A row missed, doubled or paired
 * with the wrong mean/rstd moves a sum by about sum|terms| / rows: >= 2^24 / 1000 ~ 1.7e4
 * units here. */
static const double COLSUM_TOL = 8;

static void check_bias_backward() {
    Rng rng(5);
    for (int M : {1, 5, 8, 9, 256, 257, 1000})
        for (int N : {37, 64}) {
            const size_t n = (size_t)M * N;
            Buf d("dout", n), out("dbias", N), ref("dbias ref", N);
            rng.fill(d, n);
            /* gemm.c matmul_backward's dbias loop */
            std::vector<double> absum(N, 0.0);
            for (int j = 0; j < N; j++) ref[j] = 0.f;
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) {
                    ref[j] += d[(size_t)i * N + j];
                    absum[j] += fabs(d[(size_t)i * N + j]);
                }
            size_t ns = cu_bias_backward_scratch(M, N);
            Buf scratch("bias scratch", ns);
            BiasColF f;
            f.dout = d;
            f.N = N;
            OutPtrs<float, 1> o;
            o.p[0] = out;
            bool fits = colsum_run_host(f, (size_t)M, N, o, scratch.p(), ns);
            check_true(fmt("bias_backward scratch M=%d N=%d", M, N), fits, fmt("%zu floats", ns));
            if (M <= COLSUM_LANES)
                check_exact(fmt("bias_backward M=%d N=%d", M, N), out, ref, N);
            else
                check_sum(fmt("bias_backward M=%d N=%d", M, N), out, ref, absum.data(), N,
                          COLSUM_TOL);
        }
}

/* layernorm dw, db (LnColF) against layernorm.c's layernorm_backward, strided input rows */
static void check_layernorm_dwdb() {
    Rng rng(6);
    for (int C : {24, 37})
        for (int rows : {7, 600})
            for (int strided = 0; strided < 2; strided++) {
                const size_t st = strided ? 3 * (size_t)C : (size_t)C, n = (size_t)rows * C;
                Buf inp("ln inp", rows * st), dout("ln dout", n), w("ln w", C), b("ln b", C);
                Buf y("ln out", n);
                Buf mean("ln mean", rows), rstd("ln rstd", rows), dinp("ln dinp", rows * st);
                rng.fill(inp, rows * st, -2.f, 2.f);
                rng.fill(dout, n);
                rng.fill(w, C);
                rng.fill(b, C);
                layernorm_forward(y, mean, rstd, inp, w, b, rows, C, 1e-6f, st);
                memset(dinp, 0, rows * st * 4);
                Buf dw("ln dw ref", C), db("ln db ref", C), dw2("ln dw", C), db2("ln db", C);
                layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, rows, C, st, st);
                size_t ns = cu_layernorm_backward_scratch(rows, C);
                Buf scratch("ln scratch", ns);
                LnColF f;
                f.dout = dout;
                f.inp = inp;
                f.mean = mean;
                f.rstd = rstd;
                f.in_stride = st;
                f.C = C;
                OutPtrs<float, 2> o;
                o.p[0] = dw2;
                o.p[1] = db2;
                bool fits = colsum_run_host(f, (size_t)rows, C, o, scratch.p(), ns);
                std::string tag = fmt("C=%d rows=%d stride=%zu", C, rows, st);
                check_true("layernorm dw/db scratch " + tag, fits, fmt("%zu floats", ns));
                if (rows <= COLSUM_LANES) {
                    check_exact("layernorm dw " + tag, dw2, dw, C);
                    check_exact("layernorm db " + tag, db2, db, C);
                } else {
                    std::vector<double> aw(C, 0.0), ab(C, 0.0); /* |terms| as LnColF forms them */
                    for (int i = 0; i < rows; i++)
                        for (int j = 0; j < C; j++) {
                            float gg = dout[(size_t)i * C + j], xx = inp[i * st + j];
                            aw[j] += fabs(gg * (xx - mean[i]) * rstd[i]);
                            ab[j] += fabs(gg);
                        }
                    check_sum("layernorm dw " + tag, dw2, dw, aw.data(), C, COLSUM_TOL);
                    check_sum("layernorm db " + tag, db2, db, ab.data(), C, COLSUM_TOL);
                }
            }
}

/* GELU, both forms. Against the scalar formulas of activation.c: exact (the functor's gelu_f /
 * gelu_df are the same expressions, through the same libm erff/expf/tanhf). Against the engine
 * build of activation.c, which with AVX2+FMA computes blocks of 8 with vecmath.h's pv_erf8 /
 * pv_exp8 (erf abs error < 5e-7) and pv_tanh8 = 1 - 2/(exp(2u)+1), a tolerance per op,
 * max |d|/(1+|ref|) (0 on a build without AVX2). The two approximations were compared on a
 * dense grid (2^23 points of [-16, 16], dout = 1; for bwd the max absolute difference, which
 * bounds the metric for |dout| <= 1): erf fwd 1.01e-6 (|x| ~ 5.65), erf bwd 2.4e-7, tanh fwd
 * 3.2e-7, tanh bwd 2.0e-6 (|x| ~ 5, where 1 - t^2 cancels); the tolerances are ~1.5x those
 * grid maxima. The random inputs here reach 7.5e-7, 1.2e-7, 3.2e-7, 1.9e-6 (and over 150
 * further seeds 1.01e-6, 1.4e-7, 3.2e-7, 2.0e-6: the grid maxima). */
static const double GELU_AVX2_TOL[2][2] = {{1.5e-6, 4e-7},  /* erf: fwd, bwd */
                                           {5e-7, 3e-6}};   /* tanh: fwd, bwd */

static void check_gelu() {
    Rng rng(7);
    /* 2 chunks of the CPU's 4096 and an odd tail; specials first */
    const size_t n = 2 * 4096 + 1003;
    Buf x("gelu x", n), g("gelu dout", n);
    const float specials[] = {0.f, -0.f, 1e-30f, -1e-30f, 1e-6f, -1e-6f, 0.5f, -0.5f, 3.f, -3.f,
                              5.5f, -5.5f, 10.f, -10.f, 20.f, -20.f, 88.f, -88.f, 1e4f, -1e4f};
    const size_t ns = sizeof specials / sizeof specials[0];
    for (size_t i = 0; i < n; i++) x[i] = i < ns ? specials[i] : rng.uni(-8.f, 8.f);
    rng.fill(g, n);
    for (int tf = 0; tf < 2; tf++) {
        const char *form = tf ? "tanh" : "erf";
        Buf ref("gelu ref", n), eng("gelu engine", n), out("gelu out", n);
        scalar_gelu_forward(ref, x, n, tf);
        gelu_forward(eng, x, n, tf);
        GeluFwdOp op;
        op.out = out;
        op.inp = x;
        op.tanh_form = tf;
        ew_host(op, n, true);
        check_exact(fmt("gelu fwd %s float4", form), out, ref, n);
        check_tol(fmt("gelu fwd %s float4 vs engine build", form), out, eng, n,
                  GELU_AVX2_TOL[tf][0]);
        /* scalar path on pointers off 16-byte alignment (the wrapper's fallback) */
        poison(out, n);
        op.out = out.p() + 1;
        op.inp = x.p() + 1;
        ew_host(op, n - 1, false);
        check_exact(fmt("gelu fwd %s scalar unaligned", form), out.p() + 1, ref.p() + 1, n - 1);

        Buf dref("gelu dref", n), deng("gelu dengine", n), d("gelu dinp", n);
        scalar_gelu_backward(dref, x, g, n, tf);
        gelu_backward(deng, x, g, n, tf);
        GeluBwdOp ob;
        ob.inp = x;
        for (int vec = 0; vec < 2; vec++)
            for (int alias = 0; alias < 2; alias++) {
                Buf gd("gelu dout copy", n);
                memcpy(gd, g, n * 4);
                size_t off = vec ? 0 : 1; /* the scalar runs use unaligned pointers */
                poison(d, n);
                float *dst = alias ? gd.p() : d.p();
                ob.dinp = dst + off;
                ob.dout = gd.p() + off;
                ob.inp = x.p() + off;
                ob.tanh_form = tf;
                ew_host(ob, n - off, vec);
                check_exact(fmt("gelu bwd %s %s%s", form, vec ? "float4" : "scalar unaligned",
                                alias ? " (dinp == dout)" : ""),
                            dst + off, dref.p() + off, n - off);
                if (vec && alias)
                    check_tol(fmt("gelu bwd %s float4 vs engine build", form), dst, deng, n,
                              GELU_AVX2_TOL[tf][1]);
            }
    }
}

/* poly activation and its backward against activation.c (no AVX2 intrinsics there: the engine
 * build is the reference throughout): forward and dinp exact. Coefficient gradients: PolyColF's
 * double sums in k_colsum's order, then k_poly_coef_final (width 1: a block tree over the H
 * column sums), against poly_backward's row-order double sums and sequential column sum. Both
 * sum the same float terms in double, so each differs from the exact sum by ~n * 2^-53 *
 * sum|terms| (< 1e-11 relative here), far below a float ulp of the results; rounded once to
 * float they agree unless that tiny difference straddles a rounding boundary: at most 1 ulp.
 * Measured: 0 ulps on every shape below, here and over 150 further seeds. */
static const int POLY_COEF_ULPS = 1;

static void check_poly() {
    Rng rng(8);
    struct Shape { int H; size_t rows; };
    const Shape shapes[] = {{16, 700}, {13, 700}, {16, 5}, {13, 256}, {300, 37}, {4, 257}};
    for (const Shape &sh : shapes)
        for (int wmode = 0; wmode < 2; wmode++) {
            const int H = sh.H, width = wmode ? H : 1, width1 = width == 1, nw = width1 ? 1 : H;
            const size_t rows = sh.rows, n = rows * H;
            if (width1 && H == 1) continue;
            std::string tag = fmt("H=%d width=%d rows=%zu", H, width, rows);
            Buf x("poly x", n), g("poly dout", n), a("pa", H), b("pb", H), c("pc", H), s("ps", H);
            rng.fill(x, n, -3.f, 3.f);
            rng.fill(g, n);
            rng.fill(a, H);
            rng.fill(b, H);
            rng.fill(c, H);
            rng.fill(s, H, 0.5f, 1.5f);
            const bool vec_ok = width1 || H % 4 == 0; /* cu_poly_forward's condition */

            Buf ref("poly ref", n), out("poly out", n);
            poly_forward(ref, x, a, b, c, s, width, rows, H);
            PolyFwdOp op;
            op.out = out;
            op.inp = x;
            op.a = a;
            op.b = b;
            op.c = c;
            op.sc = s;
            op.H = (size_t)H;
            op.width1 = width1;
            op.A = op.Bc = op.Cc = 0.f;
            for (int vec = 0; vec < 2; vec++) {
                if (vec && !vec_ok) continue;
                poison(out, n);
                ew_host(op, n, vec);
                check_exact(fmt("poly fwd %s ", PATH(vec)) + tag, out, ref, n);
            }

            Buf dref("poly dinp ref", n), da("da ref", nw), db("db ref", nw), dc("dc ref", nw);
            Buf ds("ds ref", nw);
            std::vector<double> acc_cpu(3 * (size_t)H);
            poly_backward(dref, da, db, dc, ds, x, g, a, b, c, s, width, rows, H, acc_cpu.data());

            /* cu_poly_backward: 1. sums from the original dout, 2. coefficients, 3. dinp */
            const size_t nsc = cu_poly_backward_scratch(rows, H);
            std::vector<double> scratch(nsc + 8, 12345.0);
            double *acc = scratch.data();
            PolyColF f;
            f.inp = x;
            f.dout = g;
            f.H = H;
            OutPtrs<double, 3> o;
            o.p[0] = acc;
            o.p[1] = acc + H;
            o.p[2] = acc + 2 * (size_t)H;
            bool fits = nsc >= 3 * (size_t)H &&
                        colsum_run_host(f, rows, H, o, acc + 3 * (size_t)H, nsc - 3 * (size_t)H);
            bool tail = true;
            for (size_t i = nsc; i < nsc + 8; i++) tail = tail && scratch[i] == 12345.0;
            check_true("poly bwd scratch " + tag, fits && tail, fmt("%zu doubles", nsc));
            Buf da2("da", nw), db2("db", nw), dc2("dc", nw), ds2("ds", nw);
            poly_coef_final_host(da2, db2, dc2, ds2, acc, a, b, c, s, width1, H);
            const char *q[4] = {"da", "db", "dc", "ds"};
            float *got[4] = {da2, db2, dc2, ds2}, *want[4] = {da, db, dc, ds};
            for (int k = 0; k < 4; k++)
                check_ulps(fmt("poly bwd %s ", q[k]) + tag, got[k], want[k], nw, POLY_COEF_ULPS);

            PolyBwdOp ob;
            ob.inp = x;
            ob.a = a;
            ob.b = b;
            ob.sc = s;
            ob.H = (size_t)H;
            ob.width1 = width1;
            ob.A2 = ob.Bc = 0.f;
            for (int vec = 0; vec < 2; vec++) {
                if (vec && !vec_ok) continue;
                for (int alias = 0; alias < 2; alias++) {
                    Buf gd("poly dout copy", n), d("poly dinp", n);
                    memcpy(gd, g, n * 4);
                    ob.dout = gd;
                    ob.dinp = alias ? gd.p() : d.p();
                    ew_host(ob, n, vec);
                    check_exact(fmt("poly bwd dinp %s%s ", PATH(vec),
                                    alias ? " (dinp == dout)" : "") + tag,
                                ob.dinp, dref, n);
                }
            }
        }
}

/* the head's pooling and its backward: copies of csrc/cpu/model.c pool_tokens and of the
 * pooling part of head_backward (without final norm / fc_norm), both static there */
static void cpu_pool_tokens(float *out, const float *src, int B, int T, int C, int pool) {
    for (int b = 0; b < B; b++) {
        const float *xb = src + (size_t)b * T * C;
        float *o = out + (size_t)b * C;
        if (pool == PV_POOL_TOKEN) {
            memcpy(o, xb, sizeof(float) * C);
            continue;
        }
        memset(o, 0, sizeof(float) * C);
        for (int t = 1; t < T; t++)
            for (int j = 0; j < C; j++) o[j] += xb[(size_t)t * C + j];
        float inv = 1.0f / (T - 1);
        for (int j = 0; j < C; j++) o[j] *= inv;
    }
}

static void cpu_pool_backward(float *d_x, const float *d_pooled, int B, int T, int C, int pool) {
    memset(d_x, 0, sizeof(float) * (size_t)B * T * C);
    if (pool == PV_POOL_TOKEN) {
        for (int b = 0; b < B; b++)
            memcpy(d_x + (size_t)b * T * C, d_pooled + (size_t)b * C, sizeof(float) * C);
        return;
    }
    float inv = 1.0f / (T - 1);
    for (int b = 0; b < B; b++) {
        float *db = d_x + (size_t)b * T * C;
        memset(db, 0, sizeof(float) * C);
        for (int t = 1; t < T; t++)
            for (int j = 0; j < C; j++) db[(size_t)t * C + j] = d_pooled[(size_t)b * C + j] * inv;
    }
}

static void check_pool() {
    Rng rng(9);
    for (int C : {8, 6, 7})
        for (int T : {1, 2, 5})
            for (int pool : {PV_POOL_TOKEN, PV_POOL_AVG}) {
                if (pool == PV_POOL_AVG && T == 1) continue; /* no patch tokens: not a model */
                const int B = 3;
                const size_t n = (size_t)B * T * C;
                std::string tag =
                    fmt("%s C=%d T=%d", pool == PV_POOL_TOKEN ? "token" : "avg", C, T);
                Buf src("pool src", n), out("pooled", (size_t)B * C);
                Buf ref("pooled ref", (size_t)B * C);
                rng.fill(src, n);
                cpu_pool_tokens(ref, src, B, T, C, pool);
                Buf dp("d_pooled", (size_t)B * C), dt("d_tok", n), rt("d_tok ref", n);
                rng.fill(dp, (size_t)B * C);
                cpu_pool_backward(rt, dp, B, T, C, pool);
                PoolOp op; /* as cu_pool_tokens sets it up */
                op.out = out;
                op.src = src;
                op.T = (size_t)T;
                op.C = (size_t)C;
                op.avg = pool != PV_POOL_TOKEN;
                op.inv = 1.0f / (float)(T - 1);
                PoolBwdOp pb; /* as cu_pool_backward */
                pb.d_tok = dt;
                pb.d_pooled = dp;
                pb.T = (size_t)T;
                pb.C = (size_t)C;
                pb.avg = pool != PV_POOL_TOKEN;
                pb.inv = 1.0f / (float)(T - 1);
                for (int vec = 0; vec < 2; vec++) {
                    if (vec && C % 4) continue;
                    poison(out, (size_t)B * C);
                    ew_host(op, (size_t)B * C, vec);
                    check_exact(fmt("pool_tokens %s ", PATH(vec)) + tag, out, ref, (size_t)B * C);
                    poison(dt, n); /* every element must be written */
                    ew_host(pb, n, vec);
                    check_exact(fmt("pool_backward %s ", PATH(vec)) + tag, dt, rt, n);
                }
            }
}

/* AdamW and gradient scaling against csrc/cpu/adamw.c itself (pv_grad_scale, pv_adamw_step) on a
 * parameter table laid out as layout.c does (16-float aligned tensors, padded n_params), with the
 * group map built as csrc/cuda/model.cu builds it and the hyperparameters converted as its
 * to_cuda_hp / pvc_adamw_step do (lr/bc1 formed in double, bc1 = 1 passed to cu_adamw). */
static void check_optimizer() {
    const size_t sizes[] = {37, 16, 5, 100, 64, 3, 21, 48};
    const int groups[] = {PV_GROUP_DECAY, PV_GROUP_NO_DECAY, PV_GROUP_EMBED, PV_GROUP_POLY,
                          PV_GROUP_DECAY, PV_GROUP_EMBED, PV_GROUP_NO_DECAY, PV_GROUP_POLY};
    const int nt = sizeof sizes / sizeof sizes[0];
    std::vector<pv_tensor> tensors(nt);
    size_t off = 0;
    for (int i = 0; i < nt; i++) {
        memset(&tensors[i], 0, sizeof(pv_tensor));
        snprintf(tensors[i].name, PV_NAME_MAX, "t%d", i);
        tensors[i].ndim = 1;
        tensors[i].shape[0] = (int)sizes[i];
        tensors[i].size = sizes[i];
        tensors[i].offset = off;
        tensors[i].group = groups[i];
        off += (sizes[i] + 15) / 16 * 16;
    }
    const size_t n = off, chunks = (n + 15) / 16;
    std::vector<uint8_t> group_of(chunks, 0);
    for (auto &t : tensors)
        for (size_t c = t.offset / 16; c < (t.offset + t.size + 15) / 16; c++)
            group_of[c] = (uint8_t)t.group;

    const float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, gscale = 0.7f;
    for (int scenario = 0; scenario < 2; scenario++)
        for (int vec = 0; vec < 2; vec++) {
            pv_group_hp hp[4] = {
                {1e-3f, 0.05f, 0}, {2e-3f, 0.0f, 0}, {3e-3f, 0.1f, 0}, {5e-4f, 0.0f, 0}};
            if (scenario == 0) hp[PV_GROUP_EMBED].frozen = 1;
            else hp[PV_GROUP_DECAY].frozen = hp[PV_GROUP_POLY].frozen = 1;
            std::string tag =
                fmt("%s frozen=%s", PATH(vec), scenario == 0 ? "{embed}" : "{decay,poly}");
            pv_model *m = (pv_model *)calloc(1, sizeof(pv_model));
            Buf p("params ref", n), g("grads ref", n), mm("m ref", n), vv("v ref", n);
            Buf p2("params", n), g2("grads", n), m2("m", n), v2("v", n);
            Rng rng(10 + scenario);
            memset(p, 0, n * 4); /* padding stays zero, as in a model */
            memset(mm, 0, n * 4);
            memset(vv, 0, n * 4);
            for (auto &t : tensors) rng.fill(p.p() + t.offset, t.size);
            memcpy(p2, p, n * 4);
            memcpy(m2, mm, n * 4);
            memcpy(v2, vv, n * 4);
            m->n_tensors = nt;
            m->tensors = tensors.data();
            m->n_params = n;
            m->params = p;
            m->grads = g;
            m->m = mm;
            m->v = vv;
            bool all = true;
            for (int t = 1; t <= 3; t++) {
                memset(g, 0, n * 4);
                for (auto &tt : tensors) rng.fill(g.p() + tt.offset, tt.size, -2.f, 2.f);
                memcpy(g2, g, n * 4);
                pv_grad_scale(m, hp, gscale);
                pv_adamw_step(m, hp, beta1, beta2, eps, t);

                /* pvc_adamw_step / to_cuda_hp / cu_grad_scale / cu_adamw */
                double bc1 = 1.0 - pow(beta1, t), bc2 = 1.0 - pow(beta2, t);
                pv_cuda_hp h, h1;
                for (int i = 0; i < 4; i++) {
                    h.lr[i] = (float)(hp[i].lr / bc1);
                    h1.lr[i] = (float)(hp[i].lr / 1.0);
                    h.decay[i] = h1.decay[i] = 1.0f - hp[i].lr * hp[i].weight_decay;
                    h.frozen[i] = h1.frozen[i] = hp[i].frozen;
                }
                GradScaleOp gs;
                gs.g = g2;
                gs.group_of = group_of.data();
                gs.frozen = frozen_mask(h1);
                gs.scale = gscale;
                ew_host(gs, n, vec);
                AdamWOp op;
                op.p = p2;
                op.m = m2;
                op.v = v2;
                op.g = g2;
                op.group_of = group_of.data();
                op.frozen = frozen_mask(h);
                const float bc1_arg = 1.0f;
                for (int k = 0; k < 4; k++) {
                    op.step[k] = h.lr[k] / bc1_arg;
                    op.decay[k] = h.decay[k];
                }
                op.beta1 = beta1;
                op.beta2 = beta2;
                op.eps = eps;
                op.bc2_sqrt = (float)sqrt(bc2);
                ew_host(op, n, vec);
                for (size_t i = 0; i < n; i++)
                    all = all && bits(g2[i]) == bits(g[i]) && bits(p2[i]) == bits(p[i]) &&
                          bits(m2[i]) == bits(mm[i]) && bits(v2[i]) == bits(vv[i]);
                if (t == 3 || !all) {
                    check_exact(fmt("grad_scale after step %d ", t) + tag, g2, g, n);
                    check_exact(fmt("adamw p after step %d ", t) + tag, p2, p, n);
                    check_exact(fmt("adamw m after step %d ", t) + tag, m2, mm, n);
                    check_exact(fmt("adamw v after step %d ", t) + tag, v2, vv, n);
                    if (!all) break;
                }
            }
            /* frozen tensors: parameters as initialised, state still zero */
            size_t moved = 0;
            Rng r0(10 + scenario);
            for (auto &t : tensors) {
                std::vector<float> init(t.size);
                r0.fill(init.data(), t.size);
                if (!hp[t.group].frozen) continue;
                for (size_t i = 0; i < t.size; i++)
                    moved += bits(p2[t.offset + i]) != bits(init[i]) || m2[t.offset + i] != 0.f ||
                             v2[t.offset + i] != 0.f;
            }
            check_true("adamw frozen groups untouched " + tag, moved == 0,
                       fmt("%zu floats moved", moved));
            free(m);
        }
}

/* scratch sizes the wrappers allocate from: none for one chunk, NQ * chunks * N beyond, and
 * non-decreasing in rows (model.cu sizes them for the largest batch) */
static void check_scratch_sizes() {
    size_t bad = 0, prev_b = 0, prev_l = 0, prev_p = 0;
    for (int rows = 1; rows <= 5000; rows += 7) {
        size_t k = (rows + COLSUM_CHUNK - 1) / COLSUM_CHUNK;
        size_t b = cu_bias_backward_scratch(rows, 37), l = cu_layernorm_backward_scratch(rows, 24);
        size_t p = cu_poly_backward_scratch((size_t)rows, 13);
        if (b != (k > 1 ? k * 37 : 0) || l != (k > 1 ? 2 * k * 24 : 0) ||
            p != 3 * 13 + (k > 1 ? 3 * k * 13 : 0))
            bad++;
        if (b < prev_b || l < prev_l || p < prev_p) bad++;
        prev_b = b;
        prev_l = l;
        prev_p = p;
    }
    check_true("colsum scratch sizes", bad == 0, fmt("%zu wrong", bad));
    size_t s1 = cu_sumsq_scratch(1), s2 = cu_sumsq_scratch(86000000);
    check_true("grad_sumsq scratch size", s1 == 1 && s2 == SUMSQ_MAX_BLOCKS,
               fmt("%zu, %zu", s1, s2));
}

int main() {
    check_helpers();
    check_images();
    check_im2col();
    check_tokens();
    check_bias_residual();
    check_bias_backward();
    check_layernorm_dwdb();
    check_gelu();
    check_poly();
    check_pool();
    check_optimizer();
    check_scratch_sizes();
    report(g_guard_fail == 0, "guard words around every buffer",
           fmt("%d buffers, %d overwritten", g_buffers, g_guard_fail));
    printf("%s %d checks, %d failed\n", g_fails ? "FAIL" : "ok", g_checks, g_fails);
    return g_fails ? (g_fails < 100 ? g_fails : 100) : 0;
}
