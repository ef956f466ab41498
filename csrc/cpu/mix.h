/* mix.h: the Mixup / CutMix pixel kernel (cpu/mix.c), bound in module_mix.c.
 * Kept out of polyvit.h: it is a data-pipeline op, not part of the model engine. */
#ifndef POLYVIT_MIX_H
#define POLYVIT_MIX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* what happens to image i */
enum {
    PV_MIX_COPY = 0,  /* out[i] = x[i] */
    PV_MIX_BLEND = 1, /* out[i] = w[2i] * x[i] + w[2i+1] * x[partner[i]] */
    PV_MIX_BOX = 2,   /* out[i] = x[i], except rows box[4i]..box[4i+1]-1 and columns
                         box[4i+2]..box[4i+3]-1, taken from x[partner[i]] (every channel) */
};

enum { PV_MIX_F32 = 0, PV_MIX_U8 = 1 };     /* element type */
enum { PV_MIX_NCHW = 0, PV_MIX_NHWC = 1 }; /* layout */

/* One pass over a batch of B images (C channels, H x W) into a new buffer: out must not
 * overlap x. A blend computes x*w1 + p*w2 in float32 (w1 = w[2i], w2 = w[2i+1]; two roundings,
 * no fused multiply-add, as NumPy does it); uint8 results are rounded half to even (np.rint)
 * and clamped to 0..255. Parallel over images (OpenMP) from 8 MB of images up; below that one
 * thread is faster than waking a team. The caller has checked every index,
 * the weights (finite, in [0, 1]) and 0 <= box[4i] <= box[4i+1] <= H,
 * 0 <= box[4i+2] <= box[4i+3] <= W. Returns 0. */
int pv_mix_images(void *out, const void *x, int dtype, int layout, int B, int C, int H, int W,
                  const int64_t *partner, const uint8_t *kind, const float *w, const int64_t *box);

#ifdef __cplusplus
}
#endif
#endif
