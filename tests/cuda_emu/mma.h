/* A CPU stand-in for the warp matrix functions (nvcuda::wmma) polyvit's engine uses: 16x16x16
 * tiles of bf16 operands with float32 accumulators.
 *
 * On a GPU a fragment is spread over the warp's 32 lanes in an unspecified layout and every
 * wmma call is a warp-wide collective. Here every lane holds the whole tile and does the whole
 * operation itself (32 identical copies; stores write the same values 32 times), which is
 * equivalent for code that touches fragments only through these calls. The products are
 * exact float32 sums of the bf16 operands in k order; a tensor core's order differs, within
 * float32 rounding. What a GPU requires is checked and reported as a launch error: the pointer
 * 256-bit aligned, ldm a multiple of 8 elements (bf16) or 4 (float).
 */
#ifndef PV_EMU_MMA_H
#define PV_EMU_MMA_H

#include <stdint.h>

#include "cuda_bf16.h"

void pv_emu_kernel_fail(const char *what);

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void> struct fragment;

/* rows x cols of the tile as the math sees it: A is M x K, B is K x N, C is M x N */
template <int M, int N, int K, class Layout>
struct fragment<matrix_a, M, N, K, __nv_bfloat16, Layout> {
    static const int rows = M, cols = K;
    float v[M][K];
};
template <int M, int N, int K, class Layout>
struct fragment<matrix_b, M, N, K, __nv_bfloat16, Layout> {
    static const int rows = K, cols = N;
    float v[K][N];
};
template <int M, int N, int K> struct fragment<accumulator, M, N, K, float, void> {
    static const int rows = M, cols = N;
    float v[M][N];
};

static inline void pv_check(const void *p, unsigned ldm, unsigned mult) {
    if (((uintptr_t)p & 31u) != 0) pv_emu_kernel_fail("wmma: pointer not 256-bit aligned");
    if (ldm % mult != 0) pv_emu_kernel_fail("wmma: ldm not a multiple of 16 bytes");
}

template <class L> struct is_col_major { static const bool value = false; };
template <> struct is_col_major<col_major> { static const bool value = true; };

/* element (i, j) of the tile at p[i * ldm + j] (row_major) or p[i + j * ldm] (col_major) */
template <class Use, int M, int N, int K, class Layout>
inline void load_matrix_sync(fragment<Use, M, N, K, __nv_bfloat16, Layout> &f,
                             const __nv_bfloat16 *p, unsigned ldm) {
    pv_check(p, ldm, 8);
    typedef fragment<Use, M, N, K, __nv_bfloat16, Layout> F;
    const bool col = is_col_major<Layout>::value;
    for (int i = 0; i < F::rows; i++)
        for (int j = 0; j < F::cols; j++)
            f.v[i][j] = __bfloat162float(col ? p[i + (size_t)j * ldm] : p[(size_t)i * ldm + j]);
}

template <int M, int N, int K>
inline void fill_fragment(fragment<accumulator, M, N, K, float, void> &f, float x) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) f.v[i][j] = x;
}

template <int M, int N, int K, class LA, class LB>
inline void mma_sync(fragment<accumulator, M, N, K, float, void> &d,
                     const fragment<matrix_a, M, N, K, __nv_bfloat16, LA> &a,
                     const fragment<matrix_b, M, N, K, __nv_bfloat16, LB> &b,
                     const fragment<accumulator, M, N, K, float, void> &c) {
    float out[M][N];
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float s = 0.0f;
            for (int k = 0; k < K; k++) s += a.v[i][k] * b.v[k][j];
            out[i][j] = c.v[i][j] + s;
        }
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) d.v[i][j] = out[i][j];
}

template <int M, int N, int K>
inline void store_matrix_sync(float *p, const fragment<accumulator, M, N, K, float, void> &f,
                              unsigned ldm, layout_t layout) {
    pv_check(p, ldm, 4);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            if (layout == mem_row_major)
                p[(size_t)i * ldm + j] = f.v[i][j];
            else
                p[i + (size_t)j * ldm] = f.v[i][j];
        }
}

}  // namespace wmma
}  // namespace nvcuda

#endif
