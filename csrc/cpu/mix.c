/* Mixup / CutMix pixel mixing: each output image is its source, a blend of the source with
 * its partner, or the source with a box pasted from the partner. The output is a separate
 * buffer, so a pair (i, j) that mix with each other both read the unmixed originals. */
#include <math.h>
#include <string.h>

#include "mix.h"

/* elementwise blend of n values; kept separate so the compiler vectorises the f32 loop */
static void blend_f32(float *o, const float *a, const float *b, size_t n, float w1, float w2) {
    for (size_t k = 0; k < n; k++) o[k] = a[k] * w1 + b[k] * w2;
}

static void blend_u8(uint8_t *o, const uint8_t *a, const uint8_t *b, size_t n, float w1, float w2) {
    for (size_t k = 0; k < n; k++) {
        float v = (float)a[k] * w1 + (float)b[k] * w2;
        v = rintf(v); /* round half to even, as np.rint; the result stays in 0..255 */
        v = v < 0.f ? 0.f : v > 255.f ? 255.f : v;
        o[k] = (uint8_t)v;
    }
}

/* copy image i (already in out) and overwrite the box from the partner, byte-wise */
static void paste_box(char *o, const char *p, int layout, int C, int H, int W, size_t es,
                      int64_t yl, int64_t yh, int64_t xl, int64_t xh) {
    if (yh <= yl || xh <= xl) return;
    if (layout == PV_MIX_NHWC) {
        size_t row = (size_t)W * C * es, seg = (size_t)(xh - xl) * C * es;
        for (int64_t y = yl; y < yh; y++) {
            size_t off = (size_t)y * row + (size_t)xl * C * es;
            memcpy(o + off, p + off, seg);
        }
    } else {
        size_t plane = (size_t)H * W * es, row = (size_t)W * es, seg = (size_t)(xh - xl) * es;
        for (int c = 0; c < C; c++)
            for (int64_t y = yl; y < yh; y++) {
                size_t off = (size_t)c * plane + (size_t)y * row + (size_t)xl * es;
                memcpy(o + off, p + off, seg);
            }
    }
}

int pv_mix_images(void *out, const void *x, int dtype, int layout, int B, int C, int H, int W,
                  const int64_t *partner, const uint8_t *kind, const float *w, const int64_t *box) {
    const size_t n = (size_t)C * H * W;
    const size_t es = dtype == PV_MIX_U8 ? 1 : sizeof(float);
    char *o = (char *)out;
    const char *xs = (const char *)x;
    /* memory-bound: a team only pays off on large batches (a CIFAR batch of 128 is 1.5 MB) */
    const int parallel = (size_t)B * n * es >= ((size_t)8 << 20) && B > 1;
#pragma omp parallel for schedule(static) if (parallel)
    for (int i = 0; i < B; i++) {
        char *oi = o + (size_t)i * n * es;
        const char *xi = xs + (size_t)i * n * es;
        const char *pi = xs + (size_t)partner[i] * n * es;
        if (kind[i] == PV_MIX_BLEND) {
            float w1 = w[2 * i], w2 = w[2 * i + 1];
            if (dtype == PV_MIX_U8)
                blend_u8((uint8_t *)oi, (const uint8_t *)xi, (const uint8_t *)pi, n, w1, w2);
            else
                blend_f32((float *)oi, (const float *)xi, (const float *)pi, n, w1, w2);
        } else {
            memcpy(oi, xi, n * es);
            if (kind[i] == PV_MIX_BOX)
                paste_box(oi, pi, layout, C, H, W, es, box[4 * i], box[4 * i + 1], box[4 * i + 2],
                          box[4 * i + 3]);
        }
    }
    return 0;
}
