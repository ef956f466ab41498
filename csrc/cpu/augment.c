/* augment.c: RandAugment's 14 ops on uint8 NHWC batches, as torchvision's _apply_op does them
 * on PIL images, and RandAugment itself with a per-image seeded generator; OpenMP over images.
 *
 * Each op replays the arithmetic of the Pillow call torchvision makes, in the same order and
 * precision, so that the result is the same byte for byte:
 *   Shear, Translate, Rotate: Image.transform(AFFINE) with torchvision's inverse matrix
 *     (_get_inverse_affine_matrix) or Image.rotate's own matrix (rounded to 15 decimals), and
 *     Geometry.c's engines: ImagingScaleAffine when the matrix has no cross terms, the 16.16
 *     fixed-point affine_fixed otherwise (double stepping past +-32768), the generic
 *     transform with the bilinear / bicubic filters for those interpolations; the
 *     0 / 90 / 180 / 270 degree shortcuts of Image.rotate; pixels from outside get `fill`.
 *   Brightness, Color, Contrast, Sharpness: ImageEnhance, i.e. ImagingBlend(degenerate, image,
 *     (float)factor) in float with truncation; the degenerate image is black, the "L"
 *     conversion (ITU-R 601-2 in 16-bit fixed point, Convert.c's L24), a grey image at the
 *     rounded mean of the "L" histogram, or the SMOOTH 3x3 filter (Filter.c, float, border
 *     rows and columns copied).
 *   Posterize, Solarize, AutoContrast, Equalize: ImageOps' lookup tables. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../polyvit.h"
#include "image.h"
#include "threads.h"
#include "rng.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif
static const double DEG_TO_RAD = M_PI / 180.0; /* CPython's math.radians / math.degrees */
static const double RAD_TO_DEG = 180.0 / M_PI;

/* torchvision's RandAugment: which ops take a random sign */
static const int op_signed[PV_OP_COUNT] = {0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0};

typedef struct {
    int H, W, C, interp;
    const uint8_t *fill;
    int *xintab; /* W ints of scratch */
} img_ctx;

static inline size_t npix(const img_ctx *c) { return (size_t)c->H * c->W; }

static void fill_image(uint8_t *dst, const img_ctx *c) {
    size_t n = npix(c);
    if (c->C == 1 || (c->fill[0] == c->fill[1] && c->fill[1] == c->fill[2])) {
        memset(dst, c->fill[0], n * c->C);
        return;
    }
    size_t row = (size_t)c->W * c->C; /* one row by pixels, the others copied from it */
    for (int x = 0; x < c->W; x++) memcpy(dst + (size_t)x * 3, c->fill, 3);
    for (int y = 1; y < c->H; y++) memcpy(dst + y * row, dst, row);
}

/* ---- geometry (Geometry.c) ----------------------------------------------------------------- */
static inline int coord(double v) { /* COORD(): -1 below 0; huge / NaN count as outside */
    if (!(v >= 0.0)) return -1;
    if (v >= 2147483647.0) return 2147483647;
    return (int)v;
}
static inline long long floor_ll(double v) { /* FLOOR() for the fixed-point conversion */
    return v < 0.0 ? (long long)floor(v) : (long long)v;
}

#define ALWAYS_INLINE static inline __attribute__((always_inline))

ALWAYS_INLINE void put_px(uint8_t *dst, const uint8_t *src, const int C) {
    if (C == 3) {
        dst[0] = src[0];
        dst[1] = src[1];
        dst[2] = src[2];
    } else {
        dst[0] = src[0];
    }
}

/* ImagingScaleAffine (a[1] == a[3] == 0), onto a background already filled */
ALWAYS_INLINE void affine_scale_c(uint8_t *dst, const uint8_t *src, const double a[6], const img_ctx *c,
                                  const int C) {
    int W = c->W, H = c->H, *xintab = c->xintab;
    double xo = a[2] + a[0] * 0.5, yo = a[5] + a[4] * 0.5;
    int xmin = W, xmax = 0;
    memset(xintab, 0, sizeof(int) * (size_t)W);
    for (int x = 0; x < W; x++) {
        int xin = coord(xo);
        if (xin >= 0 && xin < W) {
            xmax = x + 1;
            if (x < xmin) xmin = x;
            xintab[x] = xin;
        }
        xo += a[0];
    }
    /* a plain shift (Translate): every row is one contiguous copy */
    int contiguous = xmin < xmax;
    for (int x = xmin + 1; x < xmax && contiguous; x++) contiguous = xintab[x] == xintab[x - 1] + 1;
    for (int y = 0; y < H; y++) {
        int yi = coord(yo);
        if (yi >= 0 && yi < H) {
            const uint8_t *in = src + (size_t)yi * W * C;
            uint8_t *out = dst + (size_t)y * W * C;
            if (contiguous)
                memcpy(out + (size_t)xmin * C, in + (size_t)xintab[xmin] * C, (size_t)(xmax - xmin) * C);
            else
                for (int x = xmin; x < xmax; x++) put_px(out + (size_t)x * C, in + (size_t)xintab[x] * C, C);
        }
        yo += a[4];
    }
}

static void affine_scale(uint8_t *dst, const uint8_t *src, const double a[6], const img_ctx *c) {
    if (c->C == 3)
        affine_scale_c(dst, src, a, c, 3);
    else
        affine_scale_c(dst, src, a, c, 1);
}

static inline int check_fixed(const double a[6], int x, int y) {
    return fabs(x * a[0] + y * a[1] + a[2]) < 32768.0 && fabs(x * a[3] + y * a[4] + a[5]) < 32768.0;
}

static inline long long floor_div(long long n, long long d) { /* d > 0 */
    long long q = n / d;
    return (n % d != 0 && n < 0) ? q - 1 : q;
}

/* the integers x with lo <= A + x * a < hi, intersected with [*x0, *x1) */
static inline void clip_range(long long A, long long a, long long lo, long long hi, int *x0, int *x1) {
    long long first, last; /* inclusive */
    if (a > 0) {
        first = -floor_div(-(lo - A), a);  /* ceil((lo - A) / a) */
        last = floor_div(hi - 1 - A, a);
    } else if (a < 0) {
        first = floor_div(A - hi, -a) + 1;
        last = floor_div(A - lo, -a);
    } else {
        if (A >= lo && A < hi) return;
        *x1 = *x0;
        return;
    }
    if (first > *x0) *x0 = first > *x1 ? *x1 : (int)first;
    if (last + 1 < *x1) *x1 = last + 1 < *x0 ? *x0 : (int)(last + 1);
}

/* affine_fixed: nearest neighbour in 16.16 fixed point. Per row, the span of output pixels
 * whose source lies inside the image is solved for exactly (the same test Pillow makes per
 * pixel: 0 <= v >> 16 < size, i.e. 0 <= v < size << 16), then copied without tests; 64-bit
 * accumulators give the values Pillow's int arithmetic gives wherever it does not overflow. */
ALWAYS_INLINE void affine_fixed_c(uint8_t *dst, const uint8_t *src, const double a[6], const img_ctx *c,
                                  const int C) {
    int W = c->W, H = c->H;
#define FIX(v) floor_ll((v) * 65536.0 + 0.5)
    long long a0 = FIX(a[0]), a1 = FIX(a[1]), a3 = FIX(a[3]), a4 = FIX(a[4]);
    long long a2 = FIX(a[2] + a[0] * 0.5 + a[1] * 0.5), a5 = FIX(a[5] + a[3] * 0.5 + a[4] * 0.5);
#undef FIX
    long long wlim = (long long)W << 16, hlim = (long long)H << 16;
    for (int y = 0; y < H; y++, a2 += a1, a5 += a4) {
        int x0 = 0, x1 = W;
        clip_range(a2, a0, 0, wlim, &x0, &x1);
        clip_range(a5, a3, 0, hlim, &x0, &x1);
        if (x0 >= x1) continue;
        uint8_t *out = dst + (size_t)y * W * C;
        long long xx = a2 + x0 * a0, yy = a5 + x0 * a3;
        if (a3 == 0 && a0 == 65536) { /* ShearX: the span is one contiguous piece of a row */
            memcpy(out + (size_t)x0 * C, src + ((size_t)(yy >> 16) * W + (size_t)(xx >> 16)) * C,
                   (size_t)(x1 - x0) * C);
            continue;
        }
        for (int x = x0; x < x1; x++, xx += a0, yy += a3)
            put_px(out + (size_t)x * C, src + ((size_t)(yy >> 16) * W + (size_t)(xx >> 16)) * C, C);
    }
}

static void affine_fixed(uint8_t *dst, const uint8_t *src, const double a[6], const img_ctx *c) {
    if (c->C == 3)
        affine_fixed_c(dst, src, a, c, 3);
    else
        affine_fixed_c(dst, src, a, c, 1);
}

/* ImagingTransformAffine's floating-point fallback (coordinates beyond +-32768) */
static void affine_float(uint8_t *dst, const uint8_t *src, const double a[6], const img_ctx *c) {
    int W = c->W, H = c->H, C = c->C;
    double xo = a[2] + a[1] * 0.5 + a[0] * 0.5, yo = a[5] + a[4] * 0.5 + a[3] * 0.5;
    for (int y = 0; y < H; y++) {
        double xx = xo, yy = yo;
        uint8_t *out = dst + (size_t)y * W * C;
        for (int x = 0; x < W; x++) {
            int xin = coord(xx);
            if (xin >= 0 && xin < W) {
                int yin = coord(yy);
                if (yin >= 0 && yin < H) memcpy(out + (size_t)x * C, src + ((size_t)yin * W + xin) * C, C);
            }
            xx += a[0];
            yy += a[3];
        }
        xo += a[1];
        yo += a[4];
    }
}

static inline int floor_i(double v) { return v < 0.0 ? (int)floor(v) : (int)v; }
static inline int clipi(int v, int n) { return v < 0 ? 0 : v < n ? v : n - 1; }

/* bilinear_filter8 / bilinear_filter32RGB: returns 0 when (xin, yin) is outside */
static int sample_bilinear(uint8_t *out, const uint8_t *src, int W, int H, int C, double xin, double yin) {
    if (xin < 0.0 || xin >= W || yin < 0.0 || yin >= H) return 0;
    xin -= 0.5;
    yin -= 0.5;
    int x = floor_i(xin), y = floor_i(yin);
    double dx = xin - x, dy = yin - y;
    int x0 = clipi(x, W), x1 = clipi(x + 1, W);
    const uint8_t *r0 = src + (size_t)clipi(y, H) * W * C;
    const uint8_t *r1 = (y + 1 >= 0 && y + 1 < H) ? src + (size_t)(y + 1) * W * C : NULL;
    for (int b = 0; b < C; b++) {
        double v1 = r0[x0 * C + b] + (r0[x1 * C + b] - r0[x0 * C + b]) * dx, v2;
        if (r1)
            v2 = r1[x0 * C + b] + (r1[x1 * C + b] - r1[x0 * C + b]) * dx;
        else
            v2 = v1;
        v1 = v1 + (v2 - v1) * dy;
        out[b] = (uint8_t)v1;
    }
    return 1;
}

static inline double cubic(double v1, double v2, double v3, double v4, double d) {
    double p1 = v2, p2 = -v1 + v3, p3 = 2 * (v1 - v2) + v3 - v4, p4 = -v1 + v2 - v3 + v4;
    return p1 + d * (p2 + d * (p3 + d * p4));
}

/* bicubic_filter8 / bicubic_filter32RGB */
static int sample_bicubic(uint8_t *out, const uint8_t *src, int W, int H, int C, double xin, double yin) {
    if (xin < 0.0 || xin >= W || yin < 0.0 || yin >= H) return 0;
    xin -= 0.5;
    yin -= 0.5;
    int x = floor_i(xin), y = floor_i(yin);
    double dx = xin - x, dy = yin - y;
    x--;
    y--;
    int xs[4] = {clipi(x, W), clipi(x + 1, W), clipi(x + 2, W), clipi(x + 3, W)};
    for (int b = 0; b < C; b++) {
        double v[4];
        const uint8_t *in = src + (size_t)clipi(y, H) * W * C;
#define ROWV(in) cubic((double)(in)[xs[0] * C + b], (double)(in)[xs[1] * C + b], (double)(in)[xs[2] * C + b], (double)(in)[xs[3] * C + b], dx)
        /* Pillow evaluates the first pass with ints: -v1 + v3 etc. are exact either way */
        v[0] = ROWV(in);
        for (int r = 1; r < 4; r++) {
            if (y + r >= 0 && y + r < H) {
                in = src + (size_t)(y + r) * W * C;
                v[r] = ROWV(in);
            } else {
                v[r] = v[r - 1];
            }
        }
#undef ROWV
        double r = cubic(v[0], v[1], v[2], v[3], dy);
        out[b] = r <= 0.0 ? 0 : r >= 255.0 ? 255 : (uint8_t)r;
    }
    return 1;
}

/* ImagingGenericTransform with the affine map and a bilinear / bicubic filter */
static void affine_generic(uint8_t *dst, const uint8_t *src, const double a[6], const img_ctx *c) {
    int W = c->W, H = c->H, C = c->C;
    for (int y = 0; y < H; y++) {
        uint8_t *out = dst + (size_t)y * W * C;
        for (int x = 0; x < W; x++) {
            double xin = x + 0.5, yin = y + 0.5;
            double xx = a[0] * xin + a[1] * yin + a[2], yy = a[3] * xin + a[4] * yin + a[5];
            if (c->interp == PV_INTERP_BICUBIC)
                sample_bicubic(out + (size_t)x * C, src, W, H, C, xx, yy);
            else
                sample_bilinear(out + (size_t)x * C, src, W, H, C, xx, yy);
        }
    }
}

/* Image.transform(size, AFFINE, a, resample, fillcolor=fill) */
static void affine(uint8_t *dst, const uint8_t *src, const double a[6], const img_ctx *c) {
    fill_image(dst, c);
    if (c->interp != PV_INTERP_NEAREST) {
        affine_generic(dst, src, a, c);
    } else if (a[1] == 0 && a[3] == 0) {
        affine_scale(dst, src, a, c);
    } else if (check_fixed(a, 0, 0) && check_fixed(a, c->W, c->H) && check_fixed(a, 0, c->H) &&
               check_fixed(a, c->W, 0)) {
        affine_fixed(dst, src, a, c);
    } else {
        affine_float(dst, src, a, c);
    }
}

/* torchvision.transforms.functional._get_inverse_affine_matrix (inverted=True), with Python's
 * evaluation order */
static void inverse_affine(double m[6], double cx, double cy, double angle, double tx, double ty,
                           double scale, double shear_x, double shear_y) {
    double rot = angle * DEG_TO_RAD, sx = shear_x * DEG_TO_RAD, sy = shear_y * DEG_TO_RAD;
    double a = cos(rot - sy) / cos(sy);
    double b = -cos(rot - sy) * tan(sx) / cos(sy) - sin(rot);
    double c = sin(rot - sy) / cos(sy);
    double d = -sin(rot - sy) * tan(sx) / cos(sy) + cos(rot);
    m[0] = d / scale;
    m[1] = -b / scale;
    m[2] = 0.0 / scale;
    m[3] = -c / scale;
    m[4] = a / scale;
    m[5] = 0.0 / scale;
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty);
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty);
    m[2] += cx;
    m[5] += cy;
}

/* Python's round(x, 15): the correctly rounded decimal, read back */
static double round15(double x) {
    char buf[64];
    snprintf(buf, sizeof buf, "%.15f", x);
    return strtod(buf, NULL);
}

/* Python's float %: the result takes the divisor's sign */
static double py_mod(double v, double w) {
    double m = fmod(v, w);
    if (m != 0.0) {
        if ((w < 0) != (m < 0)) m += w;
    } else {
        m = copysign(0.0, w);
    }
    return m;
}

/* Image.rotate(angle, resample, expand=False, center=None, fillcolor=fill) */
static void op_rotate(uint8_t *dst, const uint8_t *src, double angle, const img_ctx *c) {
    int W = c->W, H = c->H, C = c->C;
    angle = py_mod(angle, 360.0);
    if (angle == 0) {
        memcpy(dst, src, npix(c) * C);
        return;
    }
    if (angle == 180 || ((angle == 90 || angle == 270) && W == H)) {
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                const uint8_t *p = src + ((size_t)y * W + x) * C;
                size_t o;
                if (angle == 180)
                    o = (size_t)(H - 1 - y) * W + (W - 1 - x); /* ROTATE_180 */
                else if (angle == 90)
                    o = (size_t)(W - 1 - x) * H + y;           /* ROTATE_90 (W == H) */
                else
                    o = (size_t)x * H + (H - 1 - y);           /* ROTATE_270 */
                put_px(dst + o * C, p, C);
            }
        return;
    }
    double r = -(angle * DEG_TO_RAD);
    double m[6] = {round15(cos(r)), round15(sin(r)), 0.0, round15(-sin(r)), round15(cos(r)), 0.0};
    double cx = W / 2.0, cy = H / 2.0, x = -cx, y = -cy;
    double m2 = m[0] * x + m[1] * y + m[2], m5 = m[3] * x + m[4] * y + m[5];
    m[2] = m2 + cx;
    m[5] = m5 + cy;
    affine(dst, src, m, c);
}

/* ---- colour (Blend.c, Convert.c, Filter.c, ImageOps) ---------------------------------- */
/* Pillow's clip to 0..255 then truncation (t <= 0 -> 0, t >= 255 -> 255, else (int)t), done as
 * truncation then an integer clamp, which gives the same for every |t| < 2^31 and vectorizes
 * (float compares do not: GCC keeps them as branches). The binding bounds |magnitude| by 1e6,
 * so |t| <= 255 * (1 + 1e6) here. */
static inline int clip_trunc(float t) {
    int i = (int)t;
    i = i < 0 ? 0 : i;
    return i > 255 ? 255 : i;
}

/* ImagingBlend of one value: in1 + alpha * (in2 - in1) in float, clipped, truncated */
static inline uint8_t blend_px(int in1, int in2, float alpha) {
    return (uint8_t)clip_trunc((float)in1 + alpha * (float)(in2 - in1));
}

static inline int luma(const uint8_t *p) { /* Convert.c rgb2l: L24 >> 16 */
    return (p[0] * 19595 + p[1] * 38470 + p[2] * 7471 + 0x8000) >> 16;
}

/* blend of every value with one constant degenerate value (Brightness: 0; Contrast: the mean) */
static void blend_const(uint8_t *restrict dst, const uint8_t *restrict src, size_t n, int deg, float alpha) {
    for (size_t i = 0; i < n; i++) dst[i] = blend_px(deg, src[i], alpha);
}

/* one table per channel */
static void apply_luts(uint8_t *restrict dst, const uint8_t *restrict src, uint8_t lut[][256], size_t np, int C) {
    if (C == 1) {
        for (size_t i = 0; i < np; i++) dst[i] = lut[0][src[i]];
        return;
    }
    for (size_t p = 0; p < np; p++) {
        dst[3 * p] = lut[0][src[3 * p]];
        dst[3 * p + 1] = lut[1][src[3 * p + 1]];
        dst[3 * p + 2] = lut[2][src[3 * p + 2]];
    }
}

static void op_color(uint8_t *restrict dst, const uint8_t *restrict src, float alpha, const img_ctx *c) {
    size_t n = npix(c);
    if (c->C == 1) { /* ImageEnhance.Color of an "L" image blends it with itself */
        memcpy(dst, src, n);
        return;
    }
    for (size_t p = 0; p < n; p++) {
        const uint8_t *s = src + 3 * p;
        int l = luma(s);
        dst[3 * p] = blend_px(l, s[0], alpha);
        dst[3 * p + 1] = blend_px(l, s[1], alpha);
        dst[3 * p + 2] = blend_px(l, s[2], alpha);
    }
}

static void op_contrast(uint8_t *dst, const uint8_t *restrict src, float alpha, const img_ctx *c) {
    size_t n = npix(c);
    long long sum = 0;
    if (c->C == 3)
        for (size_t p = 0; p < n; p++) sum += luma(src + 3 * p);
    else
        for (size_t p = 0; p < n; p++) sum += src[p];
    /* ImageStat mean (exact int sum / count, correctly rounded), int(mean + 0.5) */
    int mean = (int)((double)sum / (double)n + 0.5);
    blend_const(dst, src, n * c->C, mean, alpha);
}

/* one row of ImageEnhance.Sharpness (interior pixels), C a compile-time constant */
ALWAYS_INLINE void sharpness_row(uint8_t *restrict out, const uint8_t *restrict up,
                                 const uint8_t *restrict mid, const uint8_t *restrict dn,
                                 size_t row, float alpha, const int C) {
    const float k1 = 1.0f / 13.0f, k5 = 5.0f / 13.0f; /* kernel / divisor, in float */
    for (size_t i = C; i < row - C; i++) {
        /* Filter.c: offset 0.5, then rows y+1, y, y-1, each ((l*k + m*k) + r*k) */
        float ss = 0.5f;
        ss += ((float)dn[i - C] * k1 + (float)dn[i] * k1) + (float)dn[i + C] * k1;
        ss += ((float)mid[i - C] * k1 + (float)mid[i] * k5) + (float)mid[i + C] * k1;
        ss += ((float)up[i - C] * k1 + (float)up[i] * k1) + (float)up[i + C] * k1;
        int deg = clip_trunc(ss);
        out[i] = (uint8_t)clip_trunc((float)deg + alpha * (float)(mid[i] - deg));
    }
}

/* ImageEnhance.Sharpness: blend of the SMOOTH-filtered image and the image */
static void op_sharpness(uint8_t *dst, const uint8_t *src, float alpha, const img_ctx *c) {
    int W = c->W, H = c->H, C = c->C;
    size_t row = (size_t)W * C;
    if (W < 3 || H < 3) { /* ImagingFilter returns a copy: blending with it is the identity */
        memcpy(dst, src, row * H);
        return;
    }
    memcpy(dst, src, row); /* Filter.c copies the border rows and columns */
    memcpy(dst + (H - 1) * row, src + (H - 1) * row, row);
    for (int y = 1; y < H - 1; y++) {
        const uint8_t *up = src + (y - 1) * row, *mid = src + y * row, *dn = src + (y + 1) * row;
        uint8_t *out = dst + y * row;
        memcpy(out, mid, C);
        memcpy(out + row - C, mid + row - C, C);
        if (C == 3)
            sharpness_row(out, up, mid, dn, row, alpha, 3);
        else
            sharpness_row(out, up, mid, dn, row, alpha, 1);
    }
}

/* per-channel histograms; two copies (even / odd pixels) so that runs of equal values do not
 * serialise on one counter */
static void histograms(unsigned hist[][256], const uint8_t *src, size_t n, int C) {
    unsigned h2[2][3][256];
    memset(h2, 0, sizeof h2);
    size_t p = 0;
    if (C == 1) {
        for (; p + 1 < n; p += 2) {
            h2[0][0][src[p]]++;
            h2[1][0][src[p + 1]]++;
        }
        if (p < n) h2[0][0][src[p]]++;
    } else {
        for (; p + 1 < n; p += 2) {
            const uint8_t *a = src + 3 * p;
            h2[0][0][a[0]]++;
            h2[0][1][a[1]]++;
            h2[0][2][a[2]]++;
            h2[1][0][a[3]]++;
            h2[1][1][a[4]]++;
            h2[1][2][a[5]]++;
        }
        if (p < n) {
            const uint8_t *a = src + 3 * p;
            h2[0][0][a[0]]++;
            h2[0][1][a[1]]++;
            h2[0][2][a[2]]++;
        }
    }
    for (int ch = 0; ch < C; ch++)
        for (int v = 0; v < 256; v++) hist[ch][v] = h2[0][ch][v] + h2[1][ch][v];
}

static void op_autocontrast(uint8_t *dst, const uint8_t *src, const img_ctx *c) {
    unsigned hist[3][256];
    uint8_t lut[3][256];
    histograms(hist, src, npix(c), c->C);
    for (int ch = 0; ch < c->C; ch++) {
        int lo = 0, hi = 255;
        while (lo < 255 && !hist[ch][lo]) lo++;
        while (hi > 0 && !hist[ch][hi]) hi--;
        if (hi <= lo) {
            for (int v = 0; v < 256; v++) lut[ch][v] = (uint8_t)v;
        } else {
            double scale = 255.0 / (hi - lo), offset = -lo * scale;
            for (int v = 0; v < 256; v++) {
                int ix = (int)(v * scale + offset);
                lut[ch][v] = (uint8_t)(ix < 0 ? 0 : ix > 255 ? 255 : ix);
            }
        }
    }
    apply_luts(dst, src, lut, npix(c), c->C);
}

static void op_equalize(uint8_t *dst, const uint8_t *src, const img_ctx *c) {
    unsigned hist[3][256];
    uint8_t lut[3][256];
    histograms(hist, src, npix(c), c->C);
    for (int ch = 0; ch < c->C; ch++) {
        const unsigned *h = hist[ch];
        long long total = 0, last = 0;
        int nonzero = 0;
        for (int v = 0; v < 256; v++)
            if (h[v]) {
                nonzero++;
                total += h[v];
                last = h[v];
            }
        long long step = nonzero <= 1 ? 0 : (total - last) / 255;
        if (!step) {
            for (int v = 0; v < 256; v++) lut[ch][v] = (uint8_t)v;
        } else {
            long long n = step / 2;
            for (int v = 0; v < 256; v++) {
                long long q = n / step; /* Image.point clips table values to 0..255 */
                lut[ch][v] = (uint8_t)(q > 255 ? 255 : q);
                n += h[v];
            }
        }
    }
    apply_luts(dst, src, lut, npix(c), c->C);
}

/* one op on one image; dst != src */
static void apply_one(uint8_t *dst, const uint8_t *src, int op, double mag, const img_ctx *c) {
    size_t n = npix(c) * c->C;
    double m[6];
    switch (op) {
    case PV_OP_SHEAR_X:
        inverse_affine(m, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, atan(mag) * RAD_TO_DEG, 0.0);
        affine(dst, src, m, c);
        break;
    case PV_OP_SHEAR_Y:
        inverse_affine(m, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, atan(mag) * RAD_TO_DEG);
        affine(dst, src, m, c);
        break;
    case PV_OP_TRANSLATE_X:
    case PV_OP_TRANSLATE_Y: {
        /* int(magnitude) pixels; a shift past the whole image is the same as one of W (H) */
        double lim = op == PV_OP_TRANSLATE_X ? c->W : c->H, t = trunc(mag);
        t = t > lim ? lim : t < -lim ? -lim : t;
        inverse_affine(m, c->W * 0.5, c->H * 0.5, 0.0, op == PV_OP_TRANSLATE_X ? t : 0.0,
                       op == PV_OP_TRANSLATE_Y ? t : 0.0, 1.0, 0.0, 0.0);
        affine(dst, src, m, c);
        break;
    }
    case PV_OP_ROTATE:
        op_rotate(dst, src, mag, c);
        break;
    case PV_OP_BRIGHTNESS:
        blend_const(dst, src, n, 0, (float)(1.0 + mag));
        break;
    case PV_OP_COLOR:
        op_color(dst, src, (float)(1.0 + mag), c);
        break;
    case PV_OP_CONTRAST:
        op_contrast(dst, src, (float)(1.0 + mag), c);
        break;
    case PV_OP_SHARPNESS:
        op_sharpness(dst, src, (float)(1.0 + mag), c);
        break;
    case PV_OP_POSTERIZE: {
        int bits = (int)mag; /* validated 0..8 */
        bits = bits < 0 ? 0 : bits > 8 ? 8 : bits;
        uint8_t mask = (uint8_t)~((1 << (8 - bits)) - 1);
        for (size_t i = 0; i < n; i++) dst[i] = src[i] & mask;
        break;
    }
    case PV_OP_SOLARIZE: {
        /* v < threshold stays, the rest is inverted: the first inverted value is ceil(threshold) */
        double t = ceil(mag);
        int first = t <= 0 ? 0 : t >= 256 ? 256 : (int)t;
        if (first == 256) {
            memcpy(dst, src, n);
        } else {
            uint8_t f = (uint8_t)first;
            for (size_t i = 0; i < n; i++) dst[i] = src[i] >= f ? (uint8_t)(255 - src[i]) : src[i];
        }
        break;
    }
    case PV_OP_AUTOCONTRAST:
        op_autocontrast(dst, src, c);
        break;
    case PV_OP_EQUALIZE:
        op_equalize(dst, src, c);
        break;
    default: /* Identity */
        memcpy(dst, src, n);
        break;
    }
}


int pv_aug_apply(uint8_t *out, const uint8_t *in, int B, int H, int W, int C, int op,
                 double magnitude, const uint8_t *fill, int interp) {
    int nt = pv_max_threads();
    int *xin = malloc(sizeof(int) * (size_t)W * nt);
    if (!xin) return pv_set_error(PV_ERR_NOMEM, "apply_op: out of memory");
    size_t isz = (size_t)H * W * C;
#pragma omp parallel for schedule(dynamic, 1)
    for (int b = 0; b < B; b++) {
        img_ctx c = {H, W, C, interp, fill, xin + (size_t)W * pv_thread_id()};
        apply_one(out + b * isz, in + b * isz, op, magnitude, &c);
    }
    free(xin);
    return PV_OK;
}

/* torch.linspace(start, end, steps)[i] in float32 as torch's CPU kernel computes it: from the
 * start for the first half, from the end for the second, each a fused multiply-add */
static float linspace_f32(double start_d, double end_d, int steps, int i) {
    float start = (float)start_d, end = (float)end_d;
    float step = (end - start) / (float)(steps - 1);
    return i < steps / 2 ? fmaf(step, (float)i, start) : fmaf(-step, (float)(steps - i - 1), end);
}

double pv_aug_magnitude(int op, int magnitude, int bins, int H, int W) {
    switch (op) {
    case PV_OP_SHEAR_X:
    case PV_OP_SHEAR_Y:
        return linspace_f32(0.0, 0.3, bins, magnitude);
    case PV_OP_TRANSLATE_X:
        return linspace_f32(0.0, 150.0 / 331.0 * W, bins, magnitude);
    case PV_OP_TRANSLATE_Y:
        return linspace_f32(0.0, 150.0 / 331.0 * H, bins, magnitude);
    case PV_OP_ROTATE:
        return linspace_f32(0.0, 30.0, bins, magnitude);
    case PV_OP_BRIGHTNESS:
    case PV_OP_COLOR:
    case PV_OP_CONTRAST:
    case PV_OP_SHARPNESS:
        return linspace_f32(0.0, 0.9, bins, magnitude);
    case PV_OP_POSTERIZE: {
        /* 8 - (arange(bins) / ((bins - 1) / 4)).round().int(): float32, round half to even */
        float q = (float)magnitude / (float)((bins - 1) / 4.0);
        return (double)(8 - (int)nearbyintf(q));
    }
    case PV_OP_SOLARIZE:
        return linspace_f32(255.0, 0.0, bins, magnitude);
    default:
        return 0.0;
    }
}

/* the draws of one image: op uniform over the 14, then a sign bit for the signed ones */
static void plan_image(int32_t *ops, double *mags, uint64_t seed, int num_ops, const double table[PV_OP_COUNT]) {
    uint64_t rng = pv_rng_init(seed, PV_RNG_RANDAUGMENT);
    for (int k = 0; k < num_ops; k++) {
        int op = (int)pv_rng_below(&rng, PV_OP_COUNT);
        double m = table[op];
        if (op_signed[op] && (pv_rng_next(&rng) >> 63)) m *= -1.0;
        ops[k] = op;
        mags[k] = m;
    }
}

static void magnitude_table(double table[PV_OP_COUNT], int magnitude, int bins, int H, int W) {
    for (int op = 0; op < PV_OP_COUNT; op++) table[op] = pv_aug_magnitude(op, magnitude, bins, H, W);
}

void pv_aug_plan(int32_t *ops, double *mags, const uint64_t *seeds, int B, int H, int W,
                 int num_ops, int magnitude, int bins) {
    double table[PV_OP_COUNT];
    magnitude_table(table, magnitude, bins, H, W);
    for (int b = 0; b < B; b++)
        plan_image(ops + (size_t)b * num_ops, mags + (size_t)b * num_ops, seeds[b], num_ops, table);
}

int pv_aug_rand_augment(uint8_t *out, const uint8_t *in, const uint64_t *seeds, int B, int H,
                        int W, int C, int num_ops, int magnitude, int bins, const uint8_t *fill,
                        int interp) {
    double table[PV_OP_COUNT];
    magnitude_table(table, magnitude, bins, H, W);
    int nt = pv_max_threads();
    size_t isz = (size_t)H * W * C;
    /* per thread: one image of ping-pong space, W ints, the plan */
    size_t per = ((isz + 63) & ~(size_t)63) + sizeof(int) * (size_t)W + 64 +
                 (sizeof(int32_t) + sizeof(double)) * (size_t)num_ops + 64;
    per = (per + 63) & ~(size_t)63; /* every thread's block starts 64-byte aligned */
    char *scratch = malloc(per * nt);
    if (!scratch) return pv_set_error(PV_ERR_NOMEM, "rand_augment: out of memory for %d thread buffers", nt);
#pragma omp parallel for schedule(dynamic, 1)
    for (int b = 0; b < B; b++) {
        char *s = scratch + per * pv_thread_id();
        uint8_t *tmp = (uint8_t *)s;
        int *xin = (int *)(s + ((isz + 63) & ~(size_t)63));
        double *mags = (double *)((char *)xin + ((sizeof(int) * (size_t)W + 63) & ~(size_t)63));
        int32_t *ops = (int32_t *)(mags + num_ops);
        img_ctx c = {H, W, C, interp, fill, xin};
        plan_image(ops, mags, seeds[b], num_ops, table);
        const uint8_t *src = in + b * isz;
        uint8_t *dst_final = out + b * isz;
        if (num_ops == 0) memcpy(dst_final, src, isz);
        for (int k = 0; k < num_ops; k++) {
            /* alternate between tmp and the output so that the last op lands in the output */
            uint8_t *dst = ((num_ops - 1 - k) % 2 == 0) ? dst_final : tmp;
            apply_one(dst, src, ops[k], mags[k], &c);
            src = dst;
        }
    }
    free(scratch);
    return PV_OK;
}
