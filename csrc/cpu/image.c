/* image.c: resize (Pillow's antialiased resampling), crops, flips, RandomResizedCrop and
 * normalisation of uint8 NHWC batches; OpenMP over images.
 *
 * Resizing replays Pillow's ImagingResample step for step, so the output is bit-identical
 * to Image.resize: per output pixel a window of the filter stretched by the downscale
 * factor (support * max(1, in/out)), weights normalised to sum 1 in double and rounded to
 * 22-bit fixed point, a horizontal pass into a uint8 row buffer and then a vertical pass,
 * each accumulating in int32 from a rounding bias of 1 << 21 and clipping to 0..255.
 * NEAREST goes through Pillow's ImagingScaleAffine (a stepping source coordinate in double). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../polyvit.h"
#include "image.h"
#include "threads.h"
#include "rng.h"

#ifdef _OPENMP
#include <omp.h>
#endif


/* ---- filters (Resample.c) ---------------------------------------------------------------- */
static double filter_bilinear(double x) {
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

static double filter_bicubic(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

#define PRECISION_BITS (32 - 8 - 2)

static inline uint8_t clip8(int ss) {
    int v = ss >> PRECISION_BITS;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* the coefficients of one axis: per output index its first input index, tap count and taps */
typedef struct {
    int ksize;
    int *bounds;  /* 2 * out: xmin, count */
    int32_t *k;   /* out * ksize, fixed point */
    double *tmp;  /* ksize doubles of scratch */
} axis_coeffs;

static int axis_ksize(int in_size, int out_size, int interp) {
    double support = interp == PV_INTERP_BICUBIC ? 2.0 : 1.0;
    double scale = (double)in_size / out_size;
    if (scale < 1.0) scale = 1.0;
    return (int)ceil(support * scale) * 2 + 1;
}

/* Pillow's precompute_coeffs + normalize_coeffs_8bpc for the box [0, in_size) */
static void axis_make(axis_coeffs *c, int in_size, int out_size, int interp) {
    double (*filter)(double) = interp == PV_INTERP_BICUBIC ? filter_bicubic : filter_bilinear;
    double fsupport = interp == PV_INTERP_BICUBIC ? 2.0 : 1.0;
    double scale = (double)in_size / out_size, filterscale = scale < 1.0 ? 1.0 : scale;
    double support = fsupport * filterscale, ss = 1.0 / filterscale;
    int ksize = c->ksize;
    for (int xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale, ww = 0.0;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        if (xmax > ksize) xmax = ksize; /* cannot happen; keeps the buffer safe regardless */
        double *k = c->tmp;
        for (int x = 0; x < xmax; x++) {
            double w = filter((x + xmin - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        for (int x = 0; x < xmax; x++)
            if (ww != 0.0) k[x] /= ww;
        int32_t *kk = c->k + (size_t)xx * ksize;
        for (int x = 0; x < ksize; x++) {
            double v = x < xmax ? k[x] : 0.0;
            kk[x] = v < 0 ? (int32_t)(-0.5 + v * (1 << PRECISION_BITS))
                          : (int32_t)(0.5 + v * (1 << PRECISION_BITS));
        }
        c->bounds[2 * xx] = xmin;
        c->bounds[2 * xx + 1] = xmax < 0 ? 0 : xmax;
    }
}

/* rows [y0, y1) of src (iw wide) -> dst rows [0, y1 - y0) (ow wide) */
static void resample_horizontal(uint8_t *dst, const uint8_t *src, size_t sstride, int y0, int y1,
                                int ow, int C, const axis_coeffs *c) {
    for (int y = y0; y < y1; y++) {
        const uint8_t *in = src + (size_t)y * sstride;
        uint8_t *out = dst + (size_t)(y - y0) * ow * C;
        for (int xx = 0; xx < ow; xx++) {
            int xmin = c->bounds[2 * xx], n = c->bounds[2 * xx + 1];
            const int32_t *k = c->k + (size_t)xx * c->ksize;
            const uint8_t *p = in + (size_t)xmin * C;
            if (C == 3) {
                int s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
                for (int x = 0; x < n; x++) {
                    s0 += p[3 * x] * k[x];
                    s1 += p[3 * x + 1] * k[x];
                    s2 += p[3 * x + 2] * k[x];
                }
                out[3 * xx] = clip8(s0);
                out[3 * xx + 1] = clip8(s1);
                out[3 * xx + 2] = clip8(s2);
            } else {
                for (int ch = 0; ch < C; ch++) {
                    int s = 1 << (PRECISION_BITS - 1);
                    for (int x = 0; x < n; x++) s += p[C * x + ch] * k[x];
                    out[C * xx + ch] = clip8(s);
                }
            }
        }
    }
}

/* dst (oh rows of width `row` bytes) from src rows (row bytes each, stride sstride), where
 * src row 0 is the source's row `yoff` (bounds are in source rows) */
static void resample_vertical(uint8_t *dst, const uint8_t *src, size_t sstride, int yoff, int oh,
                              int row, const axis_coeffs *c, int32_t *acc) {
    for (int yy = 0; yy < oh; yy++) {
        int ymin = c->bounds[2 * yy] - yoff, n = c->bounds[2 * yy + 1];
        const int32_t *k = c->k + (size_t)yy * c->ksize;
        for (int i = 0; i < row; i++) acc[i] = 1 << (PRECISION_BITS - 1);
        for (int y = 0; y < n; y++) {
            const uint8_t *in = src + (size_t)(ymin + y) * sstride;
            int32_t w = k[y];
            for (int i = 0; i < row; i++) acc[i] += in[i] * w;
        }
        uint8_t *out = dst + (size_t)yy * row;
        for (int i = 0; i < row; i++) out[i] = clip8(acc[i]);
    }
}

/* Pillow's COORD(): truncation, -1 below zero; huge or NaN coordinates count as outside */
static inline int coord(double v) {
    if (!(v >= 0.0)) return -1;
    if (v >= 2147483647.0) return 2147483647;
    return (int)v;
}

/* Image.resize(NEAREST) = ImagingScaleAffine with a = (iw/ow, 0, 0, 0, ih/oh, 0), fill 0 */
static void resize_nearest_one(uint8_t *dst, int oh, int ow, const uint8_t *src, size_t sstride,
                               int ih, int iw, int C, int *xintab) {
    double a0 = (double)iw / ow, a4 = (double)ih / oh;
    double xo = a0 * 0.5, yo = a4 * 0.5;
    int xmin = ow, xmax = 0;
    memset(xintab, 0, sizeof(int) * (size_t)ow);
    for (int x = 0; x < ow; x++) {
        int xin = coord(xo);
        if (xin >= 0 && xin < iw) {
            xmax = x + 1;
            if (x < xmin) xmin = x;
            xintab[x] = xin;
        }
        xo += a0;
    }
    for (int y = 0; y < oh; y++) {
        int yi = coord(yo);
        uint8_t *out = dst + (size_t)y * ow * C;
        memset(out, 0, (size_t)ow * C);
        if (yi >= 0 && yi < ih) {
            const uint8_t *in = src + (size_t)yi * sstride;
            for (int x = xmin; x < xmax; x++) memcpy(out + (size_t)x * C, in + (size_t)xintab[x] * C, C);
        }
        yo += a4;
    }
}

/* per-thread scratch of a resize of an ih x iw (or smaller) source to oh x ow */
typedef struct {
    axis_coeffs h, v;
    uint8_t *tmp; /* max(ih * ow, oh * iw) * C */
    int32_t *acc; /* max(ow, iw) * C */
    int *xintab;  /* ow */
    void *block;
} resize_scratch;

static size_t al64(size_t n) { return (n + 63) & ~(size_t)63; }

static int scratch_alloc(resize_scratch *s, int ih, int iw, int C, int oh, int ow, int interp) {
    int kh = axis_ksize(iw, ow, interp), kv = axis_ksize(ih, oh, interp);
    size_t sz[9] = {al64(sizeof(int) * 2 * (size_t)ow), al64(sizeof(int32_t) * (size_t)ow * kh),
                    al64(sizeof(double) * kh),           al64(sizeof(int) * 2 * (size_t)oh),
                    al64(sizeof(int32_t) * (size_t)oh * kv), al64(sizeof(double) * kv),
                    al64((size_t)(ih * ow > oh * iw ? ih * ow : oh * iw) * C),           al64(sizeof(int32_t) * (size_t)(ow > iw ? ow : iw) * C),
                    al64(sizeof(int) * (size_t)ow)};
    size_t total = 0;
    for (int i = 0; i < 9; i++) total += sz[i];
    char *p = malloc(total);
    s->block = p;
    if (!p) return -1;
    s->h.ksize = kh;
    s->h.bounds = (int *)p; p += sz[0];
    s->h.k = (int32_t *)p; p += sz[1];
    s->h.tmp = (double *)p; p += sz[2];
    s->v.ksize = kv;
    s->v.bounds = (int *)p; p += sz[3];
    s->v.k = (int32_t *)p; p += sz[4];
    s->v.tmp = (double *)p; p += sz[5];
    s->tmp = (uint8_t *)p; p += sz[6];
    s->acc = (int32_t *)p; p += sz[7];
    s->xintab = (int *)p;
    return 0;
}

/* resize one ih x iw window (row stride sstride bytes) to oh x ow; for the antialiased
 * filters the coefficients in s->h / s->v must already be made for these sizes */
static void resize_one(uint8_t *dst, int oh, int ow, const uint8_t *src, size_t sstride, int ih,
                       int iw, int C, int interp, resize_scratch *s) {
    if (oh == ih && ow == iw) { /* Pillow returns a copy */
        for (int y = 0; y < ih; y++) memcpy(dst + (size_t)y * ow * C, src + (size_t)y * sstride, (size_t)iw * C);
        return;
    }
    if (interp == PV_INTERP_NEAREST) {
        resize_nearest_one(dst, oh, ow, src, sstride, ih, iw, C, s->xintab);
        return;
    }
    int need_h = ow != iw, need_v = oh != ih;
    /* Pillow 13 runs the vertical pass first when the height shrinks by more than twice
     * the amount the width shrinks (or when the width grows while the height shrinks);
     * measured against Image.resize on thousands of size pairs, see tests/test_augment.py */
    if (need_h && need_v && oh < ih && 2 * (iw - ow) < ih - oh) {
        resample_vertical(s->tmp, src, sstride, 0, oh, iw * C, &s->v, s->acc);
        resample_horizontal(dst, s->tmp, (size_t)iw * C, 0, oh, ow, C, &s->h);
    } else if (need_h && need_v) {
        /* only the source rows the vertical pass reads go through the horizontal one */
        int y_first = s->v.bounds[0];
        int y_last = s->v.bounds[2 * (oh - 1)] + s->v.bounds[2 * (oh - 1) + 1];
        resample_horizontal(s->tmp, src, sstride, y_first, y_last, ow, C, &s->h);
        resample_vertical(dst, s->tmp, (size_t)ow * C, y_first, oh, ow * C, &s->v, s->acc);
    } else if (need_h) {
        resample_horizontal(dst, src, sstride, 0, ih, ow, C, &s->h);
    } else {
        resample_vertical(dst, src, sstride, 0, oh, ow * C, &s->v, s->acc);
    }
}

int pv_img_resize(uint8_t *out, const uint8_t *in, int B, int H, int W, int C, int oh, int ow,
                  int interp) {
    int nt = pv_max_threads();
    resize_scratch *s = calloc((size_t)nt, sizeof *s);
    if (!s) return pv_set_error(PV_ERR_NOMEM, "resize: out of memory");
    int fail = 0;
    for (int t = 0; t < nt; t++)
        if (scratch_alloc(&s[t], H, W, C, oh, ow, interp)) fail = 1;
    if (!fail && interp != PV_INTERP_NEAREST) {
        /* the coefficients are the same for every image: make them once, share them */
        axis_make(&s[0].h, W, ow, interp);
        axis_make(&s[0].v, H, oh, interp);
        for (int t = 1; t < nt; t++) {
            memcpy(s[t].h.bounds, s[0].h.bounds, sizeof(int) * 2 * (size_t)ow);
            memcpy(s[t].h.k, s[0].h.k, sizeof(int32_t) * (size_t)ow * s[0].h.ksize);
            memcpy(s[t].v.bounds, s[0].v.bounds, sizeof(int) * 2 * (size_t)oh);
            memcpy(s[t].v.k, s[0].v.k, sizeof(int32_t) * (size_t)oh * s[0].v.ksize);
        }
    }
    if (!fail) {
        size_t isz = (size_t)H * W * C, osz = (size_t)oh * ow * C;
#pragma omp parallel for schedule(dynamic, 1)
        for (int b = 0; b < B; b++)
            resize_one(out + b * osz, oh, ow, in + b * isz, (size_t)W * C, H, W, C, interp, &s[pv_thread_id()]);
    }
    for (int t = 0; t < nt; t++) free(s[t].block);
    free(s);
    return fail ? pv_set_error(PV_ERR_NOMEM, "resize: out of memory for %d thread buffers", nt) : PV_OK;
}

void pv_img_crop(uint8_t *out, const uint8_t *in, int B, int H, int W, int C, int top, int left,
                 int oh, int ow) {
    size_t isz = (size_t)H * W * C, osz = (size_t)oh * ow * C;
    /* the columns of the window that fall inside the image */
    int x0 = left < 0 ? -left : 0, x1 = ow;
    if (left + x1 > W) x1 = W - left;
    if (x1 < x0) x1 = x0;
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        for (int y = 0; y < oh; y++) {
            uint8_t *o = out + b * osz + (size_t)y * ow * C;
            int sy = top + y;
            if (sy < 0 || sy >= H || x1 <= x0) {
                memset(o, 0, (size_t)ow * C);
                continue;
            }
            memset(o, 0, (size_t)x0 * C);
            memcpy(o + (size_t)x0 * C, in + b * isz + ((size_t)sy * W + left + x0) * C, (size_t)(x1 - x0) * C);
            memset(o + (size_t)x1 * C, 0, (size_t)(ow - x1) * C);
        }
    }
}

void pv_img_hflip(uint8_t *out, const uint8_t *in, int B, int H, int W, int C) {
    size_t isz = (size_t)H * W * C;
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++)
        for (int y = 0; y < H; y++) {
            const uint8_t *i = in + b * isz + (size_t)y * W * C;
            uint8_t *o = out + b * isz + (size_t)y * W * C;
            for (int x = 0; x < W; x++)
                for (int c = 0; c < C; c++) o[(size_t)(W - 1 - x) * C + c] = i[(size_t)x * C + c];
        }
}

/* torchvision's RandomResizedCrop.get_params, drawing from our generator */
static void rrc_box(int box[4], uint64_t *rng, int H, int W, double smin, double smax, double rmin,
                    double rmax) {
    double area = (double)H * W, lr0 = log(rmin), lr1 = log(rmax);
    for (int attempt = 0; attempt < 10; attempt++) {
        double target = area * (smin + (smax - smin) * pv_rng_uniform(rng));
        double aspect = exp(lr0 + (lr1 - lr0) * pv_rng_uniform(rng));
        double wf = nearbyint(sqrt(target * aspect)), hf = nearbyint(sqrt(target / aspect));
        if (wf > 0 && wf <= W && hf > 0 && hf <= H) {
            int w = (int)wf, h = (int)hf;
            box[0] = (int)pv_rng_below(rng, (uint32_t)(H - h + 1));
            box[1] = (int)pv_rng_below(rng, (uint32_t)(W - w + 1));
            box[2] = h;
            box[3] = w;
            return;
        }
    }
    /* fallback: central crop at the nearest allowed ratio */
    double in_ratio = (double)W / H;
    int w, h;
    if (in_ratio < rmin) {
        w = W;
        h = (int)nearbyint(w / rmin);
    } else if (in_ratio > rmax) {
        h = H;
        w = (int)nearbyint(h * rmax);
    } else {
        w = W;
        h = H;
    }
    if (h < 1) h = 1;
    if (w < 1) w = 1;
    if (h > H) h = H;
    if (w > W) w = W;
    box[0] = (H - h) / 2;
    box[1] = (W - w) / 2;
    box[2] = h;
    box[3] = w;
}

int pv_img_random_resized_crop(uint8_t *out, int32_t *boxes, const uint8_t *in,
                               const uint64_t *seeds, int B, int H, int W, int C, int oh, int ow,
                               double smin, double smax, double rmin, double rmax, int interp) {
    int nt = pv_max_threads();
    resize_scratch *s = calloc((size_t)nt, sizeof *s);
    if (!s) return pv_set_error(PV_ERR_NOMEM, "random_resized_crop: out of memory");
    int fail = 0;
    for (int t = 0; t < nt; t++)
        if (scratch_alloc(&s[t], H, W, C, oh, ow, interp)) fail = 1;
    if (!fail) {
        size_t isz = (size_t)H * W * C, osz = (size_t)oh * ow * C;
#pragma omp parallel for schedule(dynamic, 1)
        for (int b = 0; b < B; b++) {
            resize_scratch *sc = &s[pv_thread_id()];
            uint64_t rng = pv_rng_init(seeds[b], PV_RNG_RRC);
            int box[4];
            rrc_box(box, &rng, H, W, smin, smax, rmin, rmax);
            if (boxes) memcpy(boxes + 4 * (size_t)b, box, sizeof box);
            int h = box[2], w = box[3];
            if (interp != PV_INTERP_NEAREST) {
                /* per-image coefficients; the buffers were sized for the whole image, and a
                 * crop never needs more taps than that */
                if (w != ow) axis_make(&sc->h, w, ow, interp);
                if (h != oh) axis_make(&sc->v, h, oh, interp);
            }
            resize_one(out + b * osz, oh, ow, in + b * isz + ((size_t)box[0] * W + box[1]) * C,
                       (size_t)W * C, h, w, C, interp, sc);
        }
    }
    for (int t = 0; t < nt; t++) free(s[t].block);
    free(s);
    return fail ? pv_set_error(PV_ERR_NOMEM, "random_resized_crop: out of memory for %d thread buffers", nt)
                : PV_OK;
}

void pv_img_normalize(float *out, const uint8_t *in, int B, int H, int W, int C,
                      const double *mean, const double *std, double scale) {
    float lut[3][256];
    for (int c = 0; c < C; c++)
        for (int v = 0; v < 256; v++) lut[c][v] = (float)((v * scale - mean[c]) / std[c]);
    size_t hw = (size_t)H * W;
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        const uint8_t *i = in + b * hw * C;
        float *o = out + b * hw * C;
        if (C == 3) {
            float *o0 = o, *o1 = o + hw, *o2 = o + 2 * hw;
            for (size_t p = 0; p < hw; p++) {
                o0[p] = lut[0][i[3 * p]];
                o1[p] = lut[1][i[3 * p + 1]];
                o2[p] = lut[2][i[3 * p + 2]];
            }
        } else {
            for (int c = 0; c < C; c++)
                for (size_t p = 0; p < hw; p++) o[c * hw + p] = lut[c][i[p * C + c]];
        }
    }
}
