/* image.h: image preprocessing (image.c) and RandAugment (augment.c) on uint8 NHWC batches.
 *
 * Images are B x H x W x C uint8, C-contiguous, C in {1, 3}. Every function is parallel over
 * images (OpenMP) and reproduces Pillow's arithmetic (libImaging Resample.c, Geometry.c,
 * Filter.c, Blend.c, Convert.c and ImageOps / ImageEnhance), so results agree with Pillow to
 * the grey level (bit-exact where the integer and float steps are replayed in the same order).
 * Functions that allocate return PV_OK or PV_ERR_NOMEM (message in pv_last_error()); the
 * binding has validated all arguments before any of these runs. */
#ifndef PV_IMAGE_H
#define PV_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { PV_INTERP_NEAREST = 0, PV_INTERP_BILINEAR = 1, PV_INTERP_BICUBIC = 2 };

/* RandAugment's 14 ops in torchvision's order */
enum {
    PV_OP_IDENTITY = 0, PV_OP_SHEAR_X, PV_OP_SHEAR_Y, PV_OP_TRANSLATE_X, PV_OP_TRANSLATE_Y,
    PV_OP_ROTATE, PV_OP_BRIGHTNESS, PV_OP_COLOR, PV_OP_CONTRAST, PV_OP_SHARPNESS,
    PV_OP_POSTERIZE, PV_OP_SOLARIZE, PV_OP_AUTOCONTRAST, PV_OP_EQUALIZE, PV_OP_COUNT
};

/* ---- image.c ---------------------------------------------------------------------------- */
/* out (B, oh, ow, C) = Image.resize((ow, oh), filter) of each image: antialiased separable
 * convolution (bilinear, bicubic) or nearest neighbour, as Pillow. */
int pv_img_resize(uint8_t *out, const uint8_t *in, int B, int H, int W, int C, int oh, int ow,
                  int interp);
/* out (B, oh, ow, C): the window at (top, left) of each image; pixels outside are 0
 * (top/left may be negative: torchvision's center_crop pads with zeros) */
void pv_img_crop(uint8_t *out, const uint8_t *in, int B, int H, int W, int C, int top, int left,
                 int oh, int ow);
void pv_img_hflip(uint8_t *out, const uint8_t *in, int B, int H, int W, int C);
/* torchvision RandomResizedCrop per image, drawn from seeds[b]: crop box (i, j, h, w) in
 * boxes[4b..4b+3] (may be NULL), then resize of the crop to (oh, ow) */
int pv_img_random_resized_crop(uint8_t *out, int32_t *boxes, const uint8_t *in,
                               const uint64_t *seeds, int B, int H, int W, int C, int oh, int ow,
                               double scale_min, double scale_max, double ratio_min,
                               double ratio_max, int interp);
/* out (B, C, H, W) float32 = (x * scale - mean[c]) / std[c], computed in double, rounded once */
void pv_img_normalize(float *out, const uint8_t *in, int B, int H, int W, int C,
                      const double *mean, const double *std, double scale);

/* ---- augment.c -------------------------------------------------------------------------- */
/* one op with one signed magnitude (in the op's units, as torchvision's _apply_op) on every
 * image; fill[C] is the colour of pixels that geometric ops bring in from outside */
int pv_aug_apply(uint8_t *out, const uint8_t *in, int B, int H, int W, int C, int op,
                 double magnitude, const uint8_t *fill, int interp);
/* torchvision RandAugment's magnitude table: op's value at bin `magnitude` of `bins`
 * (float32 linspace as torch computes it), for an H x W image */
double pv_aug_magnitude(int op, int magnitude, int bins, int H, int W);
/* the ops (index into the 14) and signed magnitudes RandAugment draws for each image:
 * ops[b * num_ops + k], mags[b * num_ops + k] */
void pv_aug_plan(int32_t *ops, double *mags, const uint64_t *seeds, int B, int H, int W,
                 int num_ops, int magnitude, int bins);
/* RandAugment(num_ops, magnitude, bins) of each image with its seed */
int pv_aug_rand_augment(uint8_t *out, const uint8_t *in, const uint64_t *seeds, int B, int H,
                        int W, int C, int num_ops, int magnitude, int bins, const uint8_t *fill,
                        int interp);

#ifdef __cplusplus
}
#endif
#endif
