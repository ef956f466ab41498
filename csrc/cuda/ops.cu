/* ops.cu: the CUDA engine's non-GEMM ops, each the device twin of a CPU op (csrc/cpu/) with
 * the same arguments plus a stream.
 *
 * Three kernel shapes cover everything here:
 *
 *   - elementwise: one functor per op, run by k_elementwise over a grid-stride loop. Where every
 *     pointer is 16-byte aligned (and, for ops that index a column, the row length is a multiple
 *     of 4, so a float4 never straddles two rows) the bulk runs on float4 and the remainder on
 *     scalars; otherwise everything runs on scalars. Indices are size_t.
 *
 *   - row-wise (layernorm): one warp per row, lane-strided partial sums combined by an xor
 *     butterfly of shuffles. Every lane ends with the bitwise same value (each butterfly step adds
 *     the same two partials, only commuted), so mean/rstd are uniform across the warp.
 *
 *   - column sums over rows (bias gradient, layernorm dw/db, poly coefficient sums): a fixed
 *     two-stage scheme, see k_colsum. Stage 1: block (chunk of COLSUM_CHUNK rows, 32 columns)
 *     writes one partial per column per chunk to scratch; stage 2 sums the partials of each
 *     column over the chunks. Both stages assign work by index only, so the summation order,
 *     and with it the result, is fixed for a given shape: no atomics, run to run identical.
 *
 * Gradient norm (grad_sumsq) uses a grid whose size is a function of n only (never of the
 * device), a fixed per-thread order and a fixed tree per block, then one block over the block
 * partials in order: deterministic as well.
 *
 * Nothing here exits, aborts or prints; every launch is followed by PV_LAUNCH_CHECK.
 */
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "pv_cuda.h"

/* ---- constants of the reference formulas (csrc/cpu/activation.c) --------------------------- */
#define INV_SQRT2 0.70710678118654752f
#define INV_SQRT2PI 0.39894228040143268f
#define K0 0.79788456080286536f /* sqrt(2/pi) */
#define K1 0.044715f

/* ---- launch helpers -------------------------------------------------------------------------- */
#define EW_THREADS 256
/* grid-stride kernels never need more blocks than this; well under the 2^31-1 limit of grid.x */
#define MAX_BLOCKS (1u << 20)

static unsigned blocks_for(size_t work, unsigned threads) {
    size_t b = (work + threads - 1) / threads;
    if (b < 1) b = 1;
    if (b > MAX_BLOCKS) b = MAX_BLOCKS;
    return (unsigned)b;
}

static inline bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; } /* NULL: yes */

/* functor methods and their helpers are host+device: the index arithmetic and the formulas can
 * then be exercised against the CPU reference on a machine without a GPU */
#define PV_HD __host__ __device__
/* unroll hints inside PV_HD code: only in the device pass (the host compiler would warn) */
#ifdef __CUDA_ARCH__
#define PV_UNROLL(n) _Pragma(#n)
#else
#define PV_UNROLL(n)
#endif

PV_HD __forceinline__ float4 ld4(const float *p, size_t q) {
    return reinterpret_cast<const float4 *>(p)[q];
}
PV_HD __forceinline__ void st4(float *p, size_t q, float4 v) {
    reinterpret_cast<float4 *>(p)[q] = v;
}

/* a / d and a % d; 32-bit division when both fit (64-bit division is a long software routine) */
PV_HD __forceinline__ void divmod(size_t a, size_t d, size_t &q, size_t &r) {
    if (((a | d) >> 32) == 0) {
        unsigned qa = (unsigned)a / (unsigned)d;
        q = qa;
        r = (unsigned)a - qa * (unsigned)d;
    } else {
        q = a / d;
        r = a - q * d;
    }
}

/* ---- elementwise driver ---------------------------------------------------------------------- */
/* Op provides init() (per-thread setup, e.g. folding scalars), vec(q) for floats [4q, 4q+4) and
 * one(i) for float i. n4 = number of float4s handled by vec (0 when not vectorised); elements
 * [4*n4, n) go through one(). */
struct OpBase {
    PV_HD void init() {}
    PV_HD void vec(size_t) const {}
};

template <class Op>
__global__ void __launch_bounds__(EW_THREADS) k_elementwise(Op op, size_t n4, size_t n) {
    Op o = op; /* a local copy init() may modify */
    o.init();
    const size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t q = tid; q < n4; q += stride) o.vec(q);
    for (size_t i = 4 * n4 + tid; i < n; i += stride) o.one(i);
}

template <class Op>
static int launch_elementwise(const char *name, const Op &op, size_t n, bool vec, cudaStream_t s) {
    if (n == 0) return PV_OK;
    size_t n4 = vec ? n / 4 : 0;
    size_t work = n4 + (n - 4 * n4);
    PV_LAUNCH(k_elementwise<Op>, blocks_for(work, EW_THREADS), EW_THREADS, 0, s)(op, n4, n);
    PV_LAUNCH_CHECK(name);
    return PV_OK;
}

/* ---- warp / block reductions (fixed order) --------------------------------------------------- */
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    /* xor butterfly: every lane ends with the same bits (see the file comment) */
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

/* sum over a block of EW_THREADS threads; result valid in thread 0 */
__device__ __forceinline__ double block_sum_double(double v) {
    __shared__ double sh[EW_THREADS / 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    double r = 0.0;
    if (warp == 0) {
        r = lane < (EW_THREADS / 32) ? sh[lane] : 0.0;
        r = warp_sum(r);
    }
    return r;
}

/* ---- two-stage deterministic column sums ------------------------------------------------------ */
/* Stage 1: grid (chunks, column tiles), block (32 columns, COLSUM_LANES row lanes). Thread
 * (tx, ty) of chunk k sums, in row order, rows k*chunk_rows + ty, + COLSUM_LANES, ... of column
 * tile*32 + tx (one warp = one row lane = 32 consecutive columns: coalesced). The lanes' sums
 * are then added in lane order 0..COLSUM_LANES-1 through shared memory and the result written
 * to dst.p[q][k*N + j]. Stage 2 is the same kernel over the (chunks, N) partials with a single
 * chunk. F supplies Acc (float or double), NQ (quantities per column) and add(i, j, acc), which
 * adds row i's contributions at column j. */
#define COLSUM_COLS 32
#define COLSUM_LANES 8
#define COLSUM_CHUNK 256 /* rows per stage-1 chunk */

template <typename Acc, int NQ>
struct OutPtrs {
    Acc *p[NQ];
};

template <class F>
__global__ void __launch_bounds__(COLSUM_COLS *COLSUM_LANES)
    k_colsum(F f, size_t rows, size_t chunk_rows, int N, OutPtrs<typename F::Acc, F::NQ> dst) {
    typedef typename F::Acc Acc;
    __shared__ Acc sh[F::NQ][COLSUM_LANES][COLSUM_COLS];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const size_t chunk = blockIdx.x;
    const size_t r0 = chunk * chunk_rows;
    const size_t r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
    const int ntiles = (N + COLSUM_COLS - 1) / COLSUM_COLS;
    for (int tile = blockIdx.y; tile < ntiles; tile += gridDim.y) { /* block-uniform loop */
        const int j = tile * COLSUM_COLS + tx;
        Acc acc[F::NQ];
#pragma unroll
        for (int q = 0; q < F::NQ; q++) acc[q] = Acc(0);
        if (j < N) {
#pragma unroll 4
            for (size_t i = r0 + ty; i < r1; i += COLSUM_LANES) f.add(i, j, acc);
        }
#pragma unroll
        for (int q = 0; q < F::NQ; q++) sh[q][ty][tx] = acc[q];
        __syncthreads();
        if (ty == 0 && j < N) {
#pragma unroll
            for (int q = 0; q < F::NQ; q++) {
                Acc t = sh[q][0][tx];
#pragma unroll
                for (int l = 1; l < COLSUM_LANES; l++) t += sh[q][l][tx];
                dst.p[q][chunk * (size_t)N + j] = t;
            }
        }
        __syncthreads(); /* sh is reused by the next tile */
    }
}

/* stage 2's row source: the stage-1 partials, quantity q at p + q*qstride, (chunks, N) */
template <typename A, int Q>
struct PartialF {
    typedef A Acc;
    static constexpr int NQ = Q;
    const A *p;
    size_t qstride;
    int N;
    PV_HD void add(size_t i, int j, A *acc) const {
        PV_UNROLL(unroll)
        for (int q = 0; q < Q; q++) acc[q] += p[q * qstride + i * (size_t)N + j];
    }
};

static size_t colsum_chunks(size_t rows) { return (rows + COLSUM_CHUNK - 1) / COLSUM_CHUNK; }
/* Acc elements of scratch for NQ quantities; none when one chunk suffices (stage 1 then writes
 * the outputs directly). Non-decreasing in rows, so the size for the largest batch covers
 * every smaller one. */
static size_t colsum_scratch(size_t rows, size_t N, int NQ) {
    size_t k = colsum_chunks(rows);
    return k > 1 ? (size_t)NQ * k * N : 0;
}

/* out[q] (N each) = column sums over `rows` rows; rows > 0, N > 0 */
template <class F>
static int colsum_run(const char *name, const F &f, size_t rows, int N,
                      const OutPtrs<typename F::Acc, F::NQ> &out, typename F::Acc *scratch,
                      cudaStream_t s) {
    typedef typename F::Acc Acc;
    const size_t nchunks = colsum_chunks(rows);
    const int ntiles = (N + COLSUM_COLS - 1) / COLSUM_COLS;
    const unsigned gy = ntiles < 65535 ? (unsigned)ntiles : 65535u; /* k_colsum loops over tiles */
    const dim3 block(COLSUM_COLS, COLSUM_LANES);
    if (nchunks == 1) {
        PV_LAUNCH(k_colsum<F>, dim3(1, gy), block, 0, s)(f, rows, COLSUM_CHUNK, N, out);
        PV_LAUNCH_CHECK(name);
        return PV_OK;
    }
    OutPtrs<Acc, F::NQ> part;
    for (int q = 0; q < F::NQ; q++) part.p[q] = scratch + (size_t)q * nchunks * N;
    PV_LAUNCH(k_colsum<F>, dim3((unsigned)nchunks, gy), block, 0, s)(f, rows, COLSUM_CHUNK, N, part);
    PV_LAUNCH_CHECK(name);
    typedef PartialF<Acc, F::NQ> PartialF_t; /* a name without commas, for PV_LAUNCH */
    PartialF_t pf;
    pf.p = scratch;
    pf.qstride = nchunks * (size_t)N;
    pf.N = N;
    PV_LAUNCH(k_colsum<PartialF_t>, dim3(1, gy), block, 0, s)(pf, nchunks, nchunks, N, out);
    PV_LAUNCH_CHECK("colsum_partials");
    return PV_OK;
}

/* =============================================================================================
 * images
 * ============================================================================================= */
/* out NCHW float; in uint8 NCHW, or NHWC (transposed on the way). Scalar: the input is bytes and
 * the NHWC reads are strided by Cin anyway; the output writes are coalesced. */
struct ImagesU8Op : OpBase {
    float *out;
    const uint8_t *in;
    const float *scale, *shift;
    size_t HW, Cin;
    int nhwc;
    PV_HD void one(size_t i) const {
        size_t bc, p, b, c;
        divmod(i, HW, bc, p);
        divmod(bc, Cin, b, c);
        size_t src = nhwc ? (b * HW + p) * Cin + c : i;
        out[i] = (float)in[src] * scale[c] + shift[c];
    }
};

extern "C" int cu_images_u8(float *out, const uint8_t *in, const float *scale, const float *shift,
                            int B, int Cin, int img, int nhwc, pv_stream s) {
    if (B <= 0 || Cin <= 0 || img <= 0) return PV_OK;
    ImagesU8Op op;
    op.out = out;
    op.in = in;
    op.scale = scale;
    op.shift = shift;
    op.HW = (size_t)img * img;
    op.Cin = (size_t)Cin;
    op.nhwc = nhwc;
    return launch_elementwise("images_u8", op, (size_t)B * Cin * op.HW, false, s);
}

/* float32 NCHW in, same affine; a float4 stays in one channel plane when HW % 4 == 0 */
struct ImagesF32Op : OpBase {
    float *out;
    const float *in, *scale, *shift;
    size_t HW, Cin;
    PV_HD size_t chan(size_t i) const {
        size_t bc, p, b, c;
        divmod(i, HW, bc, p);
        divmod(bc, Cin, b, c);
        return c;
    }
    PV_HD void vec(size_t q) const {
        size_t c = chan(4 * q);
        float sc = scale[c], sh = shift[c];
        float4 x = ld4(in, q);
        st4(out, q, make_float4(x.x * sc + sh, x.y * sc + sh, x.z * sc + sh, x.w * sc + sh));
    }
    PV_HD void one(size_t i) const {
        size_t c = chan(i);
        out[i] = in[i] * scale[c] + shift[c];
    }
};

extern "C" int cu_images_f32(float *out, const float *in, const float *scale, const float *shift,
                             int B, int Cin, int img, pv_stream s) {
    if (B <= 0 || Cin <= 0 || img <= 0) return PV_OK;
    ImagesF32Op op;
    op.out = out;
    op.in = in;
    op.scale = scale;
    op.shift = shift;
    op.HW = (size_t)img * img;
    op.Cin = (size_t)Cin;
    bool vec = op.HW % 4 == 0 && aligned16(out) && aligned16(in);
    return launch_elementwise("images_f32", op, (size_t)B * Cin * op.HW, vec, s);
}

/* =============================================================================================
 * patch embedding (csrc/cpu/embed.c)
 * ============================================================================================= */
/* patches[(b*N + gy*G + gx), (c*p + ky)*p + kx] = images[b, c, gy*p + ky, gx*p + kx]
 * One thread per output element (float4 of 4 consecutive kx when p % 4 == 0 and img % 4 == 0:
 * then the 4 outputs are 4 consecutive, 16-byte aligned pixels of one image row). */
struct Im2colOp : OpBase {
    float *patches;
    const float *images;
    size_t Cin, img, p, G, N, D;
    PV_HD size_t src_index(size_t i) const {
        size_t row, col, b, n, gy, gx, c, rem, ky, kx;
        divmod(i, D, row, col);
        divmod(row, N, b, n);
        divmod(n, G, gy, gx);
        divmod(col, p * p, c, rem);
        divmod(rem, p, ky, kx);
        return ((b * Cin + c) * img + gy * p + ky) * img + gx * p + kx;
    }
    PV_HD void vec(size_t q) const { st4(patches, q, ld4(images, src_index(4 * q) / 4)); }
    PV_HD void one(size_t i) const { patches[i] = images[src_index(i)]; }
};

extern "C" int cu_patch_im2col(float *patches, const float *images, int B, int Cin, int img,
                               int p, pv_stream s) {
    if (B <= 0 || Cin <= 0 || p <= 0 || img < p) return PV_OK;
    Im2colOp op;
    op.patches = patches;
    op.images = images;
    op.Cin = (size_t)Cin;
    op.img = (size_t)img;
    op.p = (size_t)p;
    op.G = (size_t)(img / p);
    op.N = op.G * op.G;
    op.D = (size_t)Cin * p * p;
    bool vec = p % 4 == 0 && img % 4 == 0 && aligned16(patches) && aligned16(images);
    return launch_elementwise("patch_im2col", op, (size_t)B * op.N * op.D, vec, s);
}

/* x[b,0] = cls + pos[0]; x[b,1+n] = patch_out[b,n] + pos[1+n] */
struct TokensAssembleOp : OpBase {
    float *x;
    const float *patch_out, *cls, *pos;
    size_t T, C;
    /* i: index into x; returns the source index (in cls when t == 0) and sets pi (pos index) */
    PV_HD const float *src(size_t i, size_t &si, size_t &pi) const {
        size_t bt, j, b, t;
        divmod(i, C, bt, j);
        divmod(bt, T, b, t);
        pi = t * C + j;
        if (t == 0) {
            si = j;
            return cls;
        }
        si = (b * (T - 1) + t - 1) * C + j;
        return patch_out;
    }
    PV_HD void vec(size_t q) const {
        size_t si, pi;
        const float *sp = src(4 * q, si, pi);
        float4 a = ld4(sp, si / 4), p = ld4(pos, pi / 4);
        st4(x, q, make_float4(a.x + p.x, a.y + p.y, a.z + p.z, a.w + p.w));
    }
    PV_HD void one(size_t i) const {
        size_t si, pi;
        const float *sp = src(i, si, pi);
        x[i] = sp[si] + pos[pi];
    }
};

extern "C" int cu_tokens_assemble(float *x, const float *patch_out, const float *cls,
                                  const float *pos, int B, int T, int C, pv_stream s) {
    if (B <= 0 || T <= 0 || C <= 0) return PV_OK;
    TokensAssembleOp op;
    op.x = x;
    op.patch_out = patch_out;
    op.cls = cls;
    op.pos = pos;
    op.T = (size_t)T;
    op.C = (size_t)C;
    bool vec = C % 4 == 0 && aligned16(x) && aligned16(patch_out) && aligned16(cls) &&
               aligned16(pos);
    return launch_elementwise("tokens_assemble", op, (size_t)B * T * C, vec, s);
}

/* dcls = sum_b dx[b,0]; dpos[t] = sum_b dx[b,t]; dpatch_out[b,n] = dx[b,1+n].
 * One thread per (t, j) of dpos: it sums over b in order from 0.0f exactly as the CPU loop does
 * (deterministic, no scratch), and copies each dx[b,t,j] (t > 0) to dpatch_out on the way. The
 * threads of a warp read consecutive j: coalesced. */
struct TokensBackwardOp : OpBase {
    float *dcls, *dpos, *dpatch;
    const float *dx;
    size_t B, T, C;
    PV_HD void vec(size_t q) const {
        const size_t i = 4 * q, TC = T * C;
        const bool patch = i >= C; /* t > 0 */
        float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
        PV_UNROLL(unroll 4)
        for (size_t b = 0; b < B; b++) {
            float4 g = ld4(dx, (b * TC + i) / 4);
            acc.x += g.x;
            acc.y += g.y;
            acc.z += g.z;
            acc.w += g.w;
            if (patch) st4(dpatch, (b * (TC - C) + i - C) / 4, g);
        }
        st4(dpos, q, acc);
        if (!patch) st4(dcls, q, acc);
    }
    PV_HD void one(size_t i) const {
        const size_t TC = T * C;
        const bool patch = i >= C;
        float acc = 0.f;
        PV_UNROLL(unroll 4)
        for (size_t b = 0; b < B; b++) {
            float g = dx[b * TC + i];
            acc += g;
            if (patch) dpatch[b * (TC - C) + i - C] = g;
        }
        dpos[i] = acc;
        if (!patch) dcls[i] = acc;
    }
};

extern "C" int cu_tokens_backward(float *dcls, float *dpos, float *dpatch_out, const float *dx,
                                  int B, int T, int C, pv_stream s) {
    if (T <= 0 || C <= 0) return PV_OK;
    if (B <= 0) { /* empty batch: the sums are zero */
        PV_CUDA_CHECK(cudaMemsetAsync(dpos, 0, sizeof(float) * (size_t)T * C, s));
        PV_CUDA_CHECK(cudaMemsetAsync(dcls, 0, sizeof(float) * (size_t)C, s));
        return PV_OK;
    }
    TokensBackwardOp op;
    op.dcls = dcls;
    op.dpos = dpos;
    op.dpatch = dpatch_out;
    op.dx = dx;
    op.B = (size_t)B;
    op.T = (size_t)T;
    op.C = (size_t)C;
    bool vec = C % 4 == 0 && aligned16(dcls) && aligned16(dpos) && aligned16(dpatch_out) &&
               aligned16(dx);
    return launch_elementwise("tokens_backward", op, (size_t)T * C, vec, s);
}

/* =============================================================================================
 * bias (+ residual) and its gradient
 * ============================================================================================= */
/* out(M,N) += bias(N) [+ residual(M,N)]. The CPU seeds the GEMM output with residual + bias and
 * accumulates the product onto it; here the product comes first, so out + (residual + bias)
 * keeps the CPU's pairing of the two addends. out may alias residual (read before write). */
struct BiasResidualOp : OpBase {
    float *out;
    const float *bias, *res;
    size_t N;
    PV_HD float f(float o, float r, float b) const {
        if (bias && res) return o + (r + b);
        return bias ? o + b : o + r;
    }
    PV_HD void vec(size_t q) const {
        size_t row, j;
        divmod(4 * q, N, row, j);
        float4 o = ld4(out, q);
        float4 r = res ? ld4(res, q) : make_float4(0.f, 0.f, 0.f, 0.f);
        float4 b = bias ? ld4(bias, j / 4) : make_float4(0.f, 0.f, 0.f, 0.f);
        st4(out, q, make_float4(f(o.x, r.x, b.x), f(o.y, r.y, b.y), f(o.z, r.z, b.z),
                                f(o.w, r.w, b.w)));
    }
    PV_HD void one(size_t i) const {
        size_t row, j;
        divmod(i, N, row, j);
        out[i] = f(out[i], res ? res[i] : 0.f, bias ? bias[j] : 0.f);
    }
};

extern "C" int cu_bias_residual(float *out, const float *bias, const float *residual, int M, int N,
                                pv_stream s) {
    if (M <= 0 || N <= 0 || (!bias && !residual)) return PV_OK;
    BiasResidualOp op;
    op.out = out;
    op.bias = bias;
    op.res = residual;
    op.N = (size_t)N;
    bool vec = N % 4 == 0 && aligned16(out) && aligned16(bias) && aligned16(residual);
    return launch_elementwise("bias_residual", op, (size_t)M * N, vec, s);
}

/* ---- float32 -> bf16 (the bf16 mode's GEMM operands, see gemm.cu) ----------------------------- */
/* round to nearest even, as the tensor cores' FAST_16BF path rounds float32 inputs; NaN stays a
 * (quiet) NaN, +-Inf and overflow to +-Inf as IEEE rounding says */
PV_HD __forceinline__ uint16_t pv_float_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

struct ToBf16Op : OpBase {
    uint16_t *dst;
    const float *src;
    PV_HD void vec(size_t q) const {
        float4 v = ld4(src, q);
        uint2 w; /* four bf16 in one 8-byte store */
        w.x = (uint32_t)pv_float_to_bf16(v.x) | ((uint32_t)pv_float_to_bf16(v.y) << 16);
        w.y = (uint32_t)pv_float_to_bf16(v.z) | ((uint32_t)pv_float_to_bf16(v.w) << 16);
        reinterpret_cast<uint2 *>(dst)[q] = w;
    }
    PV_HD void one(size_t i) const { dst[i] = pv_float_to_bf16(src[i]); }
};

extern "C" int cu_to_bf16(void *dst, const float *src, size_t n, pv_stream s) {
    ToBf16Op op;
    op.dst = (uint16_t *)dst;
    op.src = src;
    bool vec = aligned16(src) && ((uintptr_t)dst & 7u) == 0;
    return launch_elementwise("to_bf16", op, n, vec, s);
}

struct BiasColF {
    typedef float Acc;
    static constexpr int NQ = 1;
    const float *dout;
    int N;
    PV_HD void add(size_t i, int j, float *acc) const { acc[0] += dout[i * (size_t)N + j]; }
};

extern "C" size_t cu_bias_backward_scratch(int M, int N) {
    if (M <= 0 || N <= 0) return 0;
    return colsum_scratch((size_t)M, (size_t)N, 1);
}

extern "C" int cu_bias_backward(float *dbias, const float *dout, int M, int N, float *scratch,
                                pv_stream s) {
    if (N <= 0) return PV_OK;
    if (M <= 0) {
        PV_CUDA_CHECK(cudaMemsetAsync(dbias, 0, sizeof(float) * (size_t)N, s));
        return PV_OK;
    }
    BiasColF f;
    f.dout = dout;
    f.N = N;
    OutPtrs<float, 1> out;
    out.p[0] = dbias;
    return colsum_run("bias_backward", f, (size_t)M, N, out, scratch, s);
}

/* =============================================================================================
 * layernorm (csrc/cpu/layernorm.c)
 * ============================================================================================= */
/* One warp per row, 8 rows per block. Two-pass statistics as on the CPU: mean, then the sum of
 * squared deviations; r = 1/sqrtf(var/C + eps) (IEEE division and sqrt: nvcc's defaults without
 * fast math). The row is read three times; a 3 KB row stays in L1 between the passes. The row
 * loop is warp-uniform, so the full-mask shuffles always see all 32 lanes. */
#define LN_THREADS 256
#define LN_ROWS_PER_BLOCK (LN_THREADS / 32)

__global__ void __launch_bounds__(LN_THREADS)
    k_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                        const float *b, int rows, int C, float eps, size_t in_stride, int vec,
                        float *xres, const float *rbias, const float *res) {
    const int lane = threadIdx.x & 31;
    const int C4 = C >> 2;
    for (size_t row = (size_t)blockIdx.x * LN_ROWS_PER_BLOCK + (threadIdx.x >> 5);
         row < (size_t)rows; row += (size_t)gridDim.x * LN_ROWS_PER_BLOCK) {
        const float *x = inp + row * in_stride;
        float *o = out + row * (size_t)C;
        if (xres) {
            /* fused residual (cu_residual_layernorm_forward): x = gemm + (residual + bias), in
             * place, each lane on exactly the elements it reads again below (no sync needed);
             * the expression of cu_bias_residual */
            float *xr = xres + row * (size_t)C;
            const float *rr = res + row * (size_t)C;
            if (vec) {
                for (int k = lane; k < C4; k += 32) {
                    float4 v = ld4(xr, k), r = ld4(rr, k), bb = ld4(rbias, k);
                    st4(xr, k, make_float4(v.x + (r.x + bb.x), v.y + (r.y + bb.y),
                                           v.z + (r.z + bb.z), v.w + (r.w + bb.w)));
                }
            } else {
                for (int k = lane; k < C; k += 32) xr[k] = xr[k] + (rr[k] + rbias[k]);
            }
        }
        float sum = 0.f;
        if (vec) {
            for (int k = lane; k < C4; k += 32) {
                float4 v = ld4(x, k);
                sum += v.x;
                sum += v.y;
                sum += v.z;
                sum += v.w;
            }
        } else {
            for (int k = lane; k < C; k += 32) sum += x[k];
        }
        sum = warp_sum(sum);
        const float mu = sum / C;
        float var = 0.f;
        if (vec) {
            for (int k = lane; k < C4; k += 32) {
                float4 v = ld4(x, k);
                float d0 = v.x - mu, d1 = v.y - mu, d2 = v.z - mu, d3 = v.w - mu;
                var += d0 * d0;
                var += d1 * d1;
                var += d2 * d2;
                var += d3 * d3;
            }
        } else {
            for (int k = lane; k < C; k += 32) {
                float d = x[k] - mu;
                var += d * d;
            }
        }
        var = warp_sum(var);
        const float r = 1.0f / sqrtf(var / C + eps);
        if (vec) {
            for (int k = lane; k < C4; k += 32) {
                float4 v = ld4(x, k), ww = ld4(w, k), bb = ld4(b, k);
                st4(o, k, make_float4((v.x - mu) * r * ww.x + bb.x, (v.y - mu) * r * ww.y + bb.y,
                                      (v.z - mu) * r * ww.z + bb.z, (v.w - mu) * r * ww.w + bb.w));
            }
        } else {
            for (int k = lane; k < C; k += 32) o[k] = (x[k] - mu) * r * w[k] + b[k];
        }
        if (lane == 0) {
            if (mean) mean[row] = mu;
            if (rstd) rstd[row] = r;
        }
    }
}

static unsigned ln_blocks(int rows) {
    return blocks_for((size_t)rows * 32, LN_THREADS); /* one warp per row */
}

extern "C" int cu_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                                    const float *w, const float *b, int rows, int C, float eps,
                                    size_t in_stride, pv_stream s) {
    if (rows <= 0 || C <= 0) return PV_OK;
    int vec = C % 4 == 0 && in_stride % 4 == 0 && aligned16(out) && aligned16(inp) &&
              aligned16(w) && aligned16(b);
    PV_LAUNCH(k_layernorm_forward, ln_blocks(rows), LN_THREADS, 0, s)(
        out, mean, rstd, inp, w, b, rows, C, eps, in_stride, vec, (float *)NULL,
        (const float *)NULL, (const float *)NULL);
    PV_LAUNCH_CHECK("layernorm_forward");
    return PV_OK;
}

extern "C" int cu_residual_layernorm_forward(float *x, float *out, float *mean, float *rstd,
                                             const float *bias, const float *residual,
                                             const float *w, const float *b, int rows, int C,
                                             float eps, pv_stream s) {
    if (rows <= 0 || C <= 0) return PV_OK;
    int vec = C % 4 == 0 && aligned16(out) && aligned16(x) && aligned16(w) && aligned16(b) &&
              aligned16(bias) && aligned16(residual);
    PV_LAUNCH(k_layernorm_forward, ln_blocks(rows), LN_THREADS, 0, s)(
        out, mean, rstd, x, w, b, rows, C, eps, (size_t)C, vec, x, bias, residual);
    PV_LAUNCH_CHECK("residual_layernorm_forward");
    return PV_OK;
}

/* dinp += r * (g*w - mean(g*w) - xhat * mean(g*w*xhat)), one warp per row. */
__global__ void __launch_bounds__(LN_THREADS)
    k_layernorm_backward_dx(float *dinp, const float *dout, const float *inp, const float *w,
                            const float *mean, const float *rstd, int rows, int C,
                            size_t in_stride, size_t dinp_stride, int vec) {
    const int lane = threadIdx.x & 31;
    const int C4 = C >> 2;
    for (size_t row = (size_t)blockIdx.x * LN_ROWS_PER_BLOCK + (threadIdx.x >> 5);
         row < (size_t)rows; row += (size_t)gridDim.x * LN_ROWS_PER_BLOCK) {
        const float *x = inp + row * in_stride;
        const float *g = dout + row * (size_t)C;
        float *dx = dinp + row * dinp_stride;
        const float mu = mean[row], r = rstd[row];
        float sg = 0.f, sgx = 0.f;
        if (vec) {
            for (int k = lane; k < C4; k += 32) {
                float4 xv = ld4(x, k), gv = ld4(g, k), wv = ld4(w, k);
                float gw0 = gv.x * wv.x, gw1 = gv.y * wv.y, gw2 = gv.z * wv.z, gw3 = gv.w * wv.w;
                sg += gw0;
                sgx += gw0 * (xv.x - mu) * r;
                sg += gw1;
                sgx += gw1 * (xv.y - mu) * r;
                sg += gw2;
                sgx += gw2 * (xv.z - mu) * r;
                sg += gw3;
                sgx += gw3 * (xv.w - mu) * r;
            }
        } else {
            for (int k = lane; k < C; k += 32) {
                float gw = g[k] * w[k];
                sg += gw;
                sgx += gw * (x[k] - mu) * r;
            }
        }
        sg = warp_sum(sg) / C;
        sgx = warp_sum(sgx) / C;
        if (vec) {
            for (int k = lane; k < C4; k += 32) {
                float4 xv = ld4(x, k), gv = ld4(g, k), wv = ld4(w, k), d = ld4(dx, k);
                d.x += r * (gv.x * wv.x - sg - (xv.x - mu) * r * sgx);
                d.y += r * (gv.y * wv.y - sg - (xv.y - mu) * r * sgx);
                d.z += r * (gv.z * wv.z - sg - (xv.z - mu) * r * sgx);
                d.w += r * (gv.w * wv.w - sg - (xv.w - mu) * r * sgx);
                st4(dx, k, d);
            }
        } else {
            for (int k = lane; k < C; k += 32) {
                float xh = (x[k] - mu) * r;
                dx[k] += r * (g[k] * w[k] - sg - xh * sgx);
            }
        }
    }
}

/* dw[j] = sum_i g*(x-mu)*r, db[j] = sum_i g, float, in the fixed two-stage order */
struct LnColF {
    typedef float Acc;
    static constexpr int NQ = 2;
    const float *dout, *inp, *mean, *rstd;
    size_t in_stride;
    int C;
    PV_HD void add(size_t i, int j, float *acc) const {
        float g = dout[i * (size_t)C + j], x = inp[i * in_stride + j];
        acc[0] += g * (x - mean[i]) * rstd[i];
        acc[1] += g;
    }
};

extern "C" size_t cu_layernorm_backward_scratch(int rows, int C) {
    if (rows <= 0 || C <= 0) return 0;
    return colsum_scratch((size_t)rows, (size_t)C, 2);
}

extern "C" int cu_layernorm_backward(float *dinp, float *dw, float *db, const float *dout,
                                     const float *inp, const float *w, const float *mean,
                                     const float *rstd, int rows, int C, size_t in_stride,
                                     size_t dinp_stride, float *scratch, pv_stream s) {
    if (C <= 0) return PV_OK;
    if (rows <= 0) { /* no rows: dinp untouched, dw and db are empty sums */
        if (dw) PV_CUDA_CHECK(cudaMemsetAsync(dw, 0, sizeof(float) * (size_t)C, s));
        if (db) PV_CUDA_CHECK(cudaMemsetAsync(db, 0, sizeof(float) * (size_t)C, s));
        return PV_OK;
    }
    /* dw, db first: they read dout, so a caller whose dinp aliases dout still gets the sums of
     * the incoming gradient (the dx kernel reads each element of its row before writing it) */
    if (dw && db) {
        LnColF f;
        f.dout = dout;
        f.inp = inp;
        f.mean = mean;
        f.rstd = rstd;
        f.in_stride = in_stride;
        f.C = C;
        OutPtrs<float, 2> out;
        out.p[0] = dw;
        out.p[1] = db;
        int rc = colsum_run("layernorm_backward_dwdb", f, (size_t)rows, C, out, scratch, s);
        if (rc) return rc;
    }
    int vec = C % 4 == 0 && in_stride % 4 == 0 && dinp_stride % 4 == 0 && aligned16(dinp) &&
              aligned16(dout) && aligned16(inp) && aligned16(w);
    PV_LAUNCH(k_layernorm_backward_dx, ln_blocks(rows), LN_THREADS, 0, s)(
        dinp, dout, inp, w, mean, rstd, rows, C, in_stride, dinp_stride, vec);
    PV_LAUNCH_CHECK("layernorm_backward_dx");
    return PV_OK;
}

/* =============================================================================================
 * GELU (csrc/cpu/activation.c, the scalar formulas)
 * ============================================================================================= */
PV_HD __forceinline__ float gelu_f(float x, int tanh_form) {
    float e = tanh_form ? tanhf(K0 * (x + K1 * x * x * x)) : erff(x * INV_SQRT2);
    return 0.5f * x * (1.0f + e);
}
PV_HD __forceinline__ float gelu_df(float x, int tanh_form) {
    if (tanh_form) {
        float t = tanhf(K0 * (x + K1 * x * x * x));
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * K0 * (1.0f + 3.0f * K1 * x * x);
    }
    return 0.5f * (1.0f + erff(x * INV_SQRT2)) + x * INV_SQRT2PI * expf(-0.5f * x * x);
}

/* fc1's bias fused into the activation (bias != NULL): x = h + bias[j], h = x (kept: capture
 * and backward read it), then the activation of x. The same float sum the unfused bias kernel
 * makes, one pass over h fewer. H % 4 == 0 for the float4 path. */
PV_HD __forceinline__ float4 add_bias4(float *h, const float *bias, size_t H, size_t q, float4 x) {
    size_t row, j;
    divmod(4 * q, H, row, j);
    float4 bv = ld4(bias, j / 4);
    x = make_float4(x.x + bv.x, x.y + bv.y, x.z + bv.z, x.w + bv.w);
    st4(h, q, x);
    return x;
}
PV_HD __forceinline__ float add_bias1(float *h, const float *bias, size_t H, size_t i, float x) {
    size_t row, j;
    divmod(i, H, row, j);
    x = x + bias[j];
    h[i] = x;
    return x;
}

struct GeluFwdOp : OpBase {
    float *out;
    const float *inp;
    int tanh_form;
    float *h = nullptr;          /* the fused bias (optional): h == inp, updated in place */
    const float *bias = nullptr;
    size_t H = 0;
    PV_HD void vec(size_t q) const {
        float4 x = ld4(inp, q);
        if (bias) x = add_bias4(h, bias, H, q, x);
        st4(out, q, make_float4(gelu_f(x.x, tanh_form), gelu_f(x.y, tanh_form),
                                gelu_f(x.z, tanh_form), gelu_f(x.w, tanh_form)));
    }
    PV_HD void one(size_t i) const {
        float x = inp[i];
        if (bias) x = add_bias1(h, bias, H, i, x);
        out[i] = gelu_f(x, tanh_form);
    }
};

extern "C" int cu_gelu_forward(float *out, const float *inp, size_t n, int tanh_form,
                               pv_stream s) {
    GeluFwdOp op;
    op.out = out;
    op.inp = inp;
    op.tanh_form = tanh_form;
    return launch_elementwise("gelu_forward", op, n, aligned16(out) && aligned16(inp), s);
}

extern "C" int cu_bias_gelu_forward(float *out, float *h, const float *bias, size_t rows, int H,
                                    int tanh_form, pv_stream s) {
    if (rows == 0 || H <= 0) return PV_OK;
    GeluFwdOp op;
    op.out = out;
    op.inp = h;
    op.h = h;
    op.bias = bias;
    op.H = (size_t)H;
    op.tanh_form = tanh_form;
    bool vec = H % 4 == 0 && aligned16(out) && aligned16(h) && aligned16(bias);
    return launch_elementwise("bias_gelu_forward", op, rows * (size_t)H, vec, s);
}

/* dinp may == dout: each element is read before it is written, by the same thread */
struct GeluBwdOp : OpBase {
    float *dinp;
    const float *inp, *dout;
    int tanh_form;
    PV_HD void vec(size_t q) const {
        float4 x = ld4(inp, q), g = ld4(dout, q);
        st4(dinp, q, make_float4(gelu_df(x.x, tanh_form) * g.x, gelu_df(x.y, tanh_form) * g.y,
                                 gelu_df(x.z, tanh_form) * g.z, gelu_df(x.w, tanh_form) * g.w));
    }
    PV_HD void one(size_t i) const { dinp[i] = gelu_df(inp[i], tanh_form) * dout[i]; }
};

extern "C" int cu_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n,
                                int tanh_form, pv_stream s) {
    GeluBwdOp op;
    op.dinp = dinp;
    op.inp = inp;
    op.dout = dout;
    op.tanh_form = tanh_form;
    return launch_elementwise("gelu_backward", op, n,
                              aligned16(dinp) && aligned16(inp) && aligned16(dout), s);
}

/* =============================================================================================
 * poly activation y = s*(a x^2 + b x + c)
 * ============================================================================================= */
/* width 1: s folded into the coefficients, Horner (as the CPU); width H: per channel j = i % H */
struct PolyFwdOp : OpBase {
    float *out;
    const float *inp, *a, *b, *c, *sc;
    size_t H;
    int width1;
    float A, Bc, Cc; /* width 1: s*a, s*b, s*c, set by init() */
    PV_HD void init() {
        if (width1) {
            A = sc[0] * a[0];
            Bc = sc[0] * b[0];
            Cc = sc[0] * c[0];
        }
    }
    PV_HD float f1(float x) const { return (A * x + Bc) * x + Cc; }
    PV_HD static float fh(float x, float a_, float b_, float c_, float s_) {
        return s_ * ((a_ * x + b_) * x + c_);
    }
    float *h = nullptr;          /* the fused bias (optional), as in GeluFwdOp */
    const float *bias = nullptr;
    PV_HD void vec(size_t q) const {
        float4 x = ld4(inp, q), y;
        if (bias) x = add_bias4(h, bias, H, q, x);
        if (width1) {
            y = make_float4(f1(x.x), f1(x.y), f1(x.z), f1(x.w));
        } else {
            size_t row, j;
            divmod(4 * q, H, row, j);
            float4 av = ld4(a, j / 4), bv = ld4(b, j / 4), cv = ld4(c, j / 4), sv = ld4(sc, j / 4);
            y = make_float4(fh(x.x, av.x, bv.x, cv.x, sv.x), fh(x.y, av.y, bv.y, cv.y, sv.y),
                            fh(x.z, av.z, bv.z, cv.z, sv.z), fh(x.w, av.w, bv.w, cv.w, sv.w));
        }
        st4(out, q, y);
    }
    PV_HD void one(size_t i) const {
        float x = inp[i];
        if (bias) x = add_bias1(h, bias, H, i, x);
        if (width1) {
            out[i] = f1(x);
        } else {
            size_t row, j;
            divmod(i, H, row, j);
            out[i] = fh(x, a[j], b[j], c[j], sc[j]);
        }
    }
};

/* poly forward, with fc1's bias fused in when bias != NULL (then inp == h, updated in place) */
static int poly_forward_launch(float *out, const float *inp, float *h, const float *bias,
                               const float *a, const float *b, const float *c, const float *sc,
                               int width, size_t rows, int H, cudaStream_t s) {
    if (rows == 0 || H <= 0) return PV_OK;
    PolyFwdOp op;
    op.out = out;
    op.inp = inp;
    op.h = h;
    op.bias = bias;
    op.a = a;
    op.b = b;
    op.c = c;
    op.sc = sc;
    op.H = (size_t)H;
    op.width1 = width == 1;
    op.A = op.Bc = op.Cc = 0.f;
    bool vec = aligned16(out) && aligned16(inp) &&
               (!bias || (H % 4 == 0 && aligned16(bias))) &&
               (op.width1 || (H % 4 == 0 && aligned16(a) && aligned16(b) && aligned16(c) &&
                              aligned16(sc)));
    return launch_elementwise(bias ? "bias_poly_forward" : "poly_forward", op,
                              rows * (size_t)H, vec, s);
}

extern "C" int cu_poly_forward(float *out, const float *inp, const float *a, const float *b,
                               const float *c, const float *sc, int width, size_t rows, int H,
                               pv_stream s) {
    return poly_forward_launch(out, inp, NULL, NULL, a, b, c, sc, width, rows, H, s);
}

extern "C" int cu_bias_poly_forward(float *out, float *h, const float *bias, const float *a,
                                    const float *b, const float *c, const float *sc, int width,
                                    size_t rows, int H, pv_stream s) {
    return poly_forward_launch(out, h, h, bias, a, b, c, sc, width, rows, H, s);
}

/* dinp = g * s*(2 a x + b), expression order as the CPU: width 1 g*(A2*x + Bc) with
 * A2 = 2*s*a, Bc = s*b; width H g*s*(2*a*x + b). dinp may alias dout (read, then write). */
struct PolyBwdOp : OpBase {
    float *dinp;
    const float *inp, *dout, *a, *b, *sc;
    size_t H;
    int width1;
    float A2, Bc;
    PV_HD void init() {
        if (width1) {
            A2 = 2.0f * sc[0] * a[0];
            Bc = sc[0] * b[0];
        }
    }
    PV_HD float f1(float g, float x) const { return g * (A2 * x + Bc); }
    PV_HD static float fh(float g, float x, float a_, float b_, float s_) {
        return g * s_ * (2.0f * a_ * x + b_);
    }
    PV_HD void vec(size_t q) const {
        float4 x = ld4(inp, q), g = ld4(dout, q), d;
        if (width1) {
            d = make_float4(f1(g.x, x.x), f1(g.y, x.y), f1(g.z, x.z), f1(g.w, x.w));
        } else {
            size_t row, j;
            divmod(4 * q, H, row, j);
            float4 av = ld4(a, j / 4), bv = ld4(b, j / 4), sv = ld4(sc, j / 4);
            d = make_float4(fh(g.x, x.x, av.x, bv.x, sv.x), fh(g.y, x.y, av.y, bv.y, sv.y),
                            fh(g.z, x.z, av.z, bv.z, sv.z), fh(g.w, x.w, av.w, bv.w, sv.w));
        }
        st4(dinp, q, d);
    }
    PV_HD void one(size_t i) const {
        float x = inp[i], g = dout[i];
        if (width1) {
            dinp[i] = f1(g, x);
        } else {
            size_t row, j;
            divmod(i, H, row, j);
            dinp[i] = fh(g, x, a[j], b[j], sc[j]);
        }
    }
};

/* per-column sums of g*x^2, g*x, g over rows, in double; the products in float as the CPU
 * (gx = g*x; sum += gx*x), each converted to double before it is added */
struct PolyColF {
    typedef double Acc;
    static constexpr int NQ = 3;
    const float *inp, *dout;
    int H;
    PV_HD void add(size_t i, int j, double *acc) const {
        size_t k = i * (size_t)H + j;
        float x = inp[k], g = dout[k];
        float gx = g * x;
        acc[0] += (double)(gx * x);
        acc[1] += (double)gx;
        acc[2] += (double)g;
    }
};

#define POLY_FINAL_THREADS 256
/* acc: (3, H) column sums t2 = sum g x^2, t1 = sum g x, t0 = sum g.
 * width H: one thread per channel. width 1: one block of POLY_FINAL_THREADS threads sums the H
 * columns (thread k: columns k, k + 256, ... in order, then a fixed shared-memory tree). */
__global__ void __launch_bounds__(POLY_FINAL_THREADS)
    k_poly_coef_final(float *da, float *db, float *dc, float *ds, const double *acc,
                      const float *a, const float *b, const float *c, const float *sc, int width1,
                      int H) {
    if (width1) {
        __shared__ double sh[3][POLY_FINAL_THREADS];
        const int tid = threadIdx.x;
        double t2 = 0.0, t1 = 0.0, t0 = 0.0;
        for (int j = tid; j < H; j += POLY_FINAL_THREADS) {
            t2 += acc[j];
            t1 += acc[H + j];
            t0 += acc[2 * (size_t)H + j];
        }
        sh[0][tid] = t2;
        sh[1][tid] = t1;
        sh[2][tid] = t0;
        __syncthreads();
        for (int off = POLY_FINAL_THREADS / 2; off > 0; off >>= 1) {
            if (tid < off) {
                sh[0][tid] += sh[0][tid + off];
                sh[1][tid] += sh[1][tid + off];
                sh[2][tid] += sh[2][tid + off];
            }
            __syncthreads();
        }
        if (tid == 0) {
            t2 = sh[0][0];
            t1 = sh[1][0];
            t0 = sh[2][0];
            da[0] = (float)(sc[0] * t2);
            db[0] = (float)(sc[0] * t1);
            dc[0] = (float)(sc[0] * t0);
            ds[0] = (float)(a[0] * t2 + b[0] * t1 + c[0] * t0);
        }
        return;
    }
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < H; j += gridDim.x * blockDim.x) {
        double t2 = acc[j], t1 = acc[H + j], t0 = acc[2 * (size_t)H + j];
        da[j] = (float)(sc[j] * t2);
        db[j] = (float)(sc[j] * t1);
        dc[j] = (float)(sc[j] * t0);
        ds[j] = (float)(a[j] * t2 + b[j] * t1 + c[j] * t0);
    }
}

/* doubles: the (3, H) column sums, then the stage-1 partials when there is more than one chunk */
extern "C" size_t cu_poly_backward_scratch(size_t rows, int H) {
    if (H <= 0) return 0;
    return 3 * (size_t)H + colsum_scratch(rows, (size_t)H, 3);
}

extern "C" int cu_poly_backward(float *dinp, float *da, float *db, float *dc, float *ds,
                                const float *inp, const float *dout, const float *a,
                                const float *b, const float *c, const float *sc, int width,
                                size_t rows, int H, double *scratch, pv_stream s) {
    if (H <= 0) return PV_OK;
    const int width1 = width == 1;
    const int nw = width1 ? 1 : H;
    if (rows == 0) { /* empty sums: zero coefficient gradients */
        PV_CUDA_CHECK(cudaMemsetAsync(da, 0, sizeof(float) * (size_t)nw, s));
        PV_CUDA_CHECK(cudaMemsetAsync(db, 0, sizeof(float) * (size_t)nw, s));
        PV_CUDA_CHECK(cudaMemsetAsync(dc, 0, sizeof(float) * (size_t)nw, s));
        PV_CUDA_CHECK(cudaMemsetAsync(ds, 0, sizeof(float) * (size_t)nw, s));
        return PV_OK;
    }
    /* 1. the coefficient sums from the ORIGINAL dout, before dinp (which may alias it) is
     *    written; the stream orders them */
    double *acc = scratch;
    PolyColF f;
    f.inp = inp;
    f.dout = dout;
    f.H = H;
    OutPtrs<double, 3> out;
    out.p[0] = acc;
    out.p[1] = acc + H;
    out.p[2] = acc + 2 * (size_t)H;
    int rc = colsum_run("poly_backward_sums", f, rows, H, out, scratch + 3 * (size_t)H, s);
    if (rc) return rc;
    /* 2. da, db, dc, ds from the sums */
    unsigned nb = width1 ? 1u : blocks_for((size_t)H, POLY_FINAL_THREADS);
    PV_LAUNCH(k_poly_coef_final, nb, POLY_FINAL_THREADS, 0, s)(da, db, dc, ds, acc, a, b, c, sc, width1,
                                                        H);
    PV_LAUNCH_CHECK("poly_coef_final");
    /* 3. the input gradient */
    PolyBwdOp op;
    op.dinp = dinp;
    op.inp = inp;
    op.dout = dout;
    op.a = a;
    op.b = b;
    op.sc = sc;
    op.H = (size_t)H;
    op.width1 = width1;
    op.A2 = op.Bc = 0.f;
    bool vec = aligned16(dinp) && aligned16(inp) && aligned16(dout) &&
               (width1 || (H % 4 == 0 && aligned16(a) && aligned16(b) && aligned16(sc)));
    return launch_elementwise("poly_backward_dinp", op, rows * (size_t)H, vec, s);
}

/* =============================================================================================
 * pooling for the head (csrc/cpu/model.c pool_tokens / head_backward)
 * ============================================================================================= */
/* out[b,j] = src[b,0,j] (token) or (sum_{t=1}^{T-1} src[b,t,j]) * (1/(T-1)) summed in t order
 * from 0.0f, as the CPU */
struct PoolOp : OpBase {
    float *out;
    const float *src;
    size_t T, C;
    int avg;
    float inv;
    PV_HD void vec(size_t q) const {
        size_t b, j;
        divmod(4 * q, C, b, j);
        const size_t base = b * T * C + j;
        if (!avg) {
            st4(out, q, ld4(src, base / 4));
            return;
        }
        float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
        for (size_t t = 1; t < T; t++) {
            float4 v = ld4(src, (base + t * C) / 4);
            acc.x += v.x;
            acc.y += v.y;
            acc.z += v.z;
            acc.w += v.w;
        }
        st4(out, q, make_float4(acc.x * inv, acc.y * inv, acc.z * inv, acc.w * inv));
    }
    PV_HD void one(size_t i) const {
        size_t b, j;
        divmod(i, C, b, j);
        const size_t base = b * T * C + j;
        if (!avg) {
            out[i] = src[base];
            return;
        }
        float acc = 0.f;
        for (size_t t = 1; t < T; t++) acc += src[base + t * C];
        out[i] = acc * inv;
    }
};

extern "C" int cu_pool_tokens(float *out, const float *src, int B, int T, int C, int pool,
                              pv_stream s) {
    if (B <= 0 || T <= 0 || C <= 0) return PV_OK;
    PoolOp op;
    op.out = out;
    op.src = src;
    op.T = (size_t)T;
    op.C = (size_t)C;
    op.avg = pool != PV_POOL_TOKEN;
    op.inv = 1.0f / (float)(T - 1); /* as the CPU; T == 1 with avg pool is not a valid model */
    bool vec = C % 4 == 0 && aligned16(out) && aligned16(src);
    return launch_elementwise("pool_tokens", op, (size_t)B * C, vec, s);
}

/* d_tok (B,T,C) overwritten: token pool d_pooled at t = 0, zero elsewhere; average pool zero at
 * t = 0 (the class token), d_pooled * (1/(T-1)) at every patch token */
struct PoolBwdOp : OpBase {
    float *d_tok;
    const float *d_pooled;
    size_t T, C;
    int avg;
    float inv;
    /* value source for element i: sets pi (index into d_pooled); returns false for a zero */
    PV_HD bool src(size_t i, size_t &pi) const {
        size_t bt, j, b, t;
        divmod(i, C, bt, j);
        divmod(bt, T, b, t);
        pi = b * C + j;
        return avg ? t != 0 : t == 0;
    }
    PV_HD void vec(size_t q) const {
        size_t pi;
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (src(4 * q, pi)) {
            v = ld4(d_pooled, pi / 4);
            if (avg) v = make_float4(v.x * inv, v.y * inv, v.z * inv, v.w * inv);
        }
        st4(d_tok, q, v);
    }
    PV_HD void one(size_t i) const {
        size_t pi;
        float v = 0.f;
        if (src(i, pi)) v = avg ? d_pooled[pi] * inv : d_pooled[pi];
        d_tok[i] = v;
    }
};

extern "C" int cu_pool_backward(float *d_tok, const float *d_pooled, int B, int T, int C, int pool,
                                pv_stream s) {
    if (B <= 0 || T <= 0 || C <= 0) return PV_OK;
    PoolBwdOp op;
    op.d_tok = d_tok;
    op.d_pooled = d_pooled;
    op.T = (size_t)T;
    op.C = (size_t)C;
    op.avg = pool != PV_POOL_TOKEN;
    op.inv = 1.0f / (float)(T - 1);
    bool vec = C % 4 == 0 && aligned16(d_tok) && aligned16(d_pooled);
    return launch_elementwise("pool_backward", op, (size_t)B * T * C, vec, s);
}

/* =============================================================================================
 * optimizer: gradient norm, gradient scaling, AdamW (csrc/cpu/adamw.c)
 * ============================================================================================= */
/* group_of[k] is the group of floats [16k, 16k+16): float i -> group_of[i >> 4], float4 q (floats
 * 4q..4q+3, never straddling a 16-float chunk) -> group_of[q >> 2]. Groups are 0..3; & 3 keeps a
 * corrupt table from indexing past the 4-entry arrays. */
static int frozen_mask(const pv_cuda_hp &hp) {
    int m = 0;
    for (int g = 0; g < 4; g++)
        if (hp.frozen[g]) m |= 1 << g;
    return m;
}

#define SUMSQ_THREADS EW_THREADS
#define SUMSQ_MAX_BLOCKS 1024
/* a function of n only (never of the device): the summation order is fixed for a given n */
static size_t sumsq_blocks(size_t n) {
    size_t b = (n + (size_t)SUMSQ_THREADS * 16 - 1) / ((size_t)SUMSQ_THREADS * 16);
    if (b < 1) b = 1;
    if (b > SUMSQ_MAX_BLOCKS) b = SUMSQ_MAX_BLOCKS;
    return b;
}

/* each thread: (double)g*g over its grid-stride float4s (then tail floats) in order; the block's
 * threads combined by a fixed shuffle/shared tree; partial[blockIdx.x] */
__global__ void __launch_bounds__(SUMSQ_THREADS)
    k_sumsq_partial(double *partial, const float *g, const uint8_t *group_of, size_t n, size_t n4,
                    int frozen) {
    const size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    double acc = 0.0;
    for (size_t q = tid; q < n4; q += stride) {
        if ((frozen >> (group_of[q >> 2] & 3)) & 1) continue;
        float4 v = ld4(g, q);
        acc += (double)v.x * v.x;
        acc += (double)v.y * v.y;
        acc += (double)v.z * v.z;
        acc += (double)v.w * v.w;
    }
    for (size_t i = 4 * n4 + tid; i < n; i += stride) {
        if ((frozen >> (group_of[i >> 4] & 3)) & 1) continue;
        acc += (double)g[i] * g[i];
    }
    acc = block_sum_double(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

/* one block: thread k sums partials k, k + 256, ... in order, then the fixed tree */
__global__ void __launch_bounds__(SUMSQ_THREADS)
    k_sumsq_final(double *out, const double *partial, int nparts) {
    double acc = 0.0;
    for (int k = threadIdx.x; k < nparts; k += SUMSQ_THREADS) acc += partial[k];
    acc = block_sum_double(acc);
    if (threadIdx.x == 0) out[0] = acc;
}

extern "C" size_t cu_sumsq_scratch(size_t n) { return sumsq_blocks(n); }

extern "C" int cu_grad_sumsq(double *out, const float *g, const uint8_t *group_of, size_t n,
                             pv_cuda_hp hp, double *scratch, pv_stream s) {
    if (n == 0) { /* the empty sum: still define out[0] */
        PV_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(double), s));
        return PV_OK;
    }
    const size_t nb = sumsq_blocks(n);
    const size_t n4 = aligned16(g) ? n / 4 : 0;
    PV_LAUNCH(k_sumsq_partial, (unsigned)nb, SUMSQ_THREADS, 0, s)(scratch, g, group_of, n, n4,
                                                           frozen_mask(hp));
    PV_LAUNCH_CHECK("grad_sumsq_partial");
    PV_LAUNCH(k_sumsq_final, 1, SUMSQ_THREADS, 0, s)(out, scratch, (int)nb);
    PV_LAUNCH_CHECK("grad_sumsq_final");
    return PV_OK;
}

struct GradScaleOp : OpBase {
    float *g;
    const uint8_t *group_of;
    int frozen;
    float scale;
    PV_HD void vec(size_t q) const {
        if ((frozen >> (group_of[q >> 2] & 3)) & 1) return;
        float4 v = ld4(g, q);
        st4(g, q, make_float4(v.x * scale, v.y * scale, v.z * scale, v.w * scale));
    }
    PV_HD void one(size_t i) const {
        if ((frozen >> (group_of[i >> 4] & 3)) & 1) return;
        g[i] *= scale;
    }
};

extern "C" int cu_grad_scale(float *g, const uint8_t *group_of, size_t n, pv_cuda_hp hp,
                             float scale, pv_stream s) {
    GradScaleOp op;
    op.g = g;
    op.group_of = group_of;
    op.frozen = frozen_mask(hp);
    op.scale = scale;
    return launch_elementwise("grad_scale", op, n, aligned16(g), s);
}

/* torch.optim.AdamW, the CPU expression order:
 *   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g g;
 *   p = p*decay - step * m / (sqrtf(v)/bc2_sqrt + eps),  step = lr/bc1 (per group, on the host)
 * frozen groups: p, m, v untouched. */
struct AdamWOp : OpBase {
    float *p, *m, *v;
    const float *g;
    const uint8_t *group_of;
    int frozen;
    float step[4], decay[4];
    float beta1, beta2, eps, bc2_sqrt;
    /* a constant-index select: step[grp] on a local copy of the op would go to local memory */
    PV_HD static float pick(const float (&a)[4], int k) {
        return k == 0 ? a[0] : k == 1 ? a[1] : k == 2 ? a[2] : a[3];
    }
    PV_HD void upd(float &pj, float &mj_, float &vj_, float gj, int grp) const {
        float mj = beta1 * mj_ + (1.0f - beta1) * gj;
        float vj = beta2 * vj_ + (1.0f - beta2) * gj * gj;
        mj_ = mj;
        vj_ = vj;
        pj = pj * pick(decay, grp) - pick(step, grp) * mj / (sqrtf(vj) / bc2_sqrt + eps);
    }
    PV_HD void vec(size_t q) const {
        const int grp = group_of[q >> 2] & 3;
        if ((frozen >> grp) & 1) return;
        float4 pv = ld4(p, q), mv = ld4(m, q), vv = ld4(v, q), gv = ld4(g, q);
        upd(pv.x, mv.x, vv.x, gv.x, grp);
        upd(pv.y, mv.y, vv.y, gv.y, grp);
        upd(pv.z, mv.z, vv.z, gv.z, grp);
        upd(pv.w, mv.w, vv.w, gv.w, grp);
        st4(m, q, mv);
        st4(v, q, vv);
        st4(p, q, pv);
    }
    PV_HD void one(size_t i) const {
        const int grp = group_of[i >> 4] & 3;
        if ((frozen >> grp) & 1) return;
        float pj = p[i], mj = m[i], vj = v[i];
        upd(pj, mj, vj, g[i], grp);
        m[i] = mj;
        v[i] = vj;
        p[i] = pj;
    }
};

extern "C" int cu_adamw(float *p, const float *g, float *m, float *v, const uint8_t *group_of,
                        size_t n, pv_cuda_hp hp, float beta1, float beta2, float eps, float bc1,
                        float bc2_sqrt, pv_stream s) {
    AdamWOp op;
    op.p = p;
    op.m = m;
    op.v = v;
    op.g = g;
    op.group_of = group_of;
    op.frozen = frozen_mask(hp);
    for (int k = 0; k < 4; k++) {
        op.step[k] = hp.lr[k] / bc1;
        op.decay[k] = hp.decay[k];
    }
    op.beta1 = beta1;
    op.beta2 = beta2;
    op.eps = eps;
    op.bc2_sqrt = bc2_sqrt;
    bool vec = aligned16(p) && aligned16(g) && aligned16(m) && aligned16(v);
    return launch_elementwise("adamw", op, n, vec, s);
}
