"""Image preprocessing and RandAugment on uint8 NHWC batches, in C (``polyvit._C``).

Images are ``uint8`` arrays of shape ``(B, H, W, C)`` with ``C`` 1 (grey) or 3 (RGB). Every
function works on the whole batch in C, in parallel over images (OpenMP, ``polyvit.set_num_threads``),
with the GIL released, and returns a new array.

The ops reproduce what torchvision does to PIL images, with Pillow's own arithmetic (resampling,
affine transforms, ``ImageEnhance``, ``ImageOps``), so that a batch augmented here matches the
same images augmented by torchvision + Pillow one at a time; ``tests/test_augment.py`` measures
the agreement. Randomness comes from one 64-bit seed per image through a small C generator
(splitmix64): what an image gets depends on its seed alone, never on the number of threads.

    >>> ra = RandAugment(num_ops=2, magnitude=9)
    >>> out = ra(images, seeds)                     # seeds: uint64 (B,)
    >>> x = normalize(out, mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.243, 0.261))
"""
from __future__ import annotations

import numbers
from typing import Sequence, Tuple, Union

import numpy as np

from ._lib import _C

__all__ = [
    "OPS", "INTERPOLATIONS", "resize", "center_crop", "hflip", "random_resized_crop", "normalize",
    "apply_op", "rand_augment", "rand_augment_plan", "RandAugment",
]

#: RandAugment's ops, in torchvision's order (the index is what ``rand_augment_plan`` returns)
OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
       "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
#: ops that RandAugment applies with a random sign
SIGNED_OPS = frozenset(("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
                        "Color", "Contrast", "Sharpness"))
INTERPOLATIONS = {"nearest": 0, "bilinear": 1, "bicubic": 2}
_MAX_SIDE = 32768

Size = Union[int, Tuple[int, int], Sequence[int]]


# ---- argument checks: one sentence per problem --------------------------------------------
def _images(images, name: str = "images") -> np.ndarray:
    if isinstance(images, np.ndarray):
        a = images
    else:
        try:
            a = np.asarray(images)
        except Exception as e:  # ragged lists and the like
            raise TypeError(f"{name} could not be read as an array ({e})") from None
    if a.dtype != np.uint8:
        raise TypeError(f"{name} must be a uint8 array of shape (B, H, W, C), got dtype {a.dtype} "
                        "(convert with np.clip(x, 0, 255).astype(np.uint8) if that is what you mean)")
    if a.ndim != 4:
        raise ValueError(f"{name} must have shape (B, H, W, C), got {a.ndim} dimension(s) {a.shape}"
                         + ("; add a batch axis with images[None]" if a.ndim == 3 else ""))
    B, H, W, C = a.shape
    if B == 0:
        raise ValueError(f"{name} is an empty batch (B = 0)")
    if C not in (1, 3):
        raise ValueError(f"{name} must have 1 or 3 channels in the last axis (NHWC), got {C}")
    if H < 1 or W < 1:
        raise ValueError(f"{name} must be at least 1x1 pixels, got {H}x{W}")
    if H > _MAX_SIDE or W > _MAX_SIDE:
        raise ValueError(f"{name} sides must be at most {_MAX_SIDE} pixels, got {H}x{W}")
    return np.ascontiguousarray(a)


def _int(v, name: str, lo: int = None, hi: int = None) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (numbers.Integral,)):
        raise TypeError(f"{name} must be an int, got {v!r}")
    v = int(v)
    if lo is not None and v < lo:
        raise ValueError(f"{name} must be at least {lo}, got {v}")
    if hi is not None and v > hi:
        raise ValueError(f"{name} must be at most {hi}, got {v}")
    return v


def _real(v, name: str) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {v!r}")
    v = float(v)
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def _size(size: Size, name: str = "size") -> Tuple[int, int]:
    """int -> (size, size); (h, w) -> (h, w)."""
    if isinstance(size, numbers.Integral) and not isinstance(size, (bool, np.bool_)):
        s = _int(size, name, 1, _MAX_SIDE)
        return s, s
    try:
        h, w = size
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a pair (height, width), got {size!r}") from None
    return _int(h, f"{name} height", 1, _MAX_SIDE), _int(w, f"{name} width", 1, _MAX_SIDE)


def _interp(interpolation: str) -> int:
    if not isinstance(interpolation, str) or interpolation.lower() not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}")
    return INTERPOLATIONS[interpolation.lower()]


def _seeds(seeds, B: int) -> np.ndarray:
    if isinstance(seeds, (numbers.Integral,)) and not isinstance(seeds, (bool, np.bool_)):
        raise TypeError("seeds must hold one seed per image (an array of shape (B,)), not one int; "
                        "e.g. np.arange(B, dtype=np.uint64) + step * B")
    try:
        a = np.asarray(seeds)
    except Exception as e:
        raise TypeError(f"seeds could not be read as an array ({e})") from None
    if a.dtype.kind not in "iu":
        raise TypeError(f"seeds must be integers (uint64 preferred), got dtype {a.dtype}")
    if a.ndim != 1 or a.shape[0] != B:
        raise ValueError(f"seeds must have shape ({B},), one per image, got {a.shape}")
    if a.dtype.kind == "i" and a.size and a.min() < 0:
        raise ValueError("seeds must be non-negative")
    return np.ascontiguousarray(a, dtype=np.uint64)


def _fill(fill, C: int) -> bytes:
    vals = [fill] * C if isinstance(fill, numbers.Real) and not isinstance(fill, (bool, np.bool_)) else fill
    try:
        vals = list(vals)
    except TypeError:
        raise TypeError(f"fill must be a number or one number per channel, got {fill!r}") from None
    if len(vals) == 1:
        vals = vals * C
    if len(vals) != C:
        raise ValueError(f"fill must have one value per channel ({C}), got {len(vals)}")
    out = []
    for v in vals:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
            raise TypeError(f"fill values must be numbers, got {v!r}")
        if not np.isfinite(float(v)):
            raise ValueError(f"fill values must be finite, got {v}")
        iv = int(v)  # as torchvision's _parse_fill for PIL images
        if not 0 <= iv <= 255:
            raise ValueError(f"fill values must be in 0..255 for uint8 images, got {v}")
        out.append(iv)
    return bytes(out)


def _op_index(op) -> int:
    if isinstance(op, str):
        for i, name in enumerate(OPS):
            if name.lower() == op.lower():
                return i
        raise ValueError(f"unknown op {op!r}; the ops are {', '.join(OPS)}")
    if isinstance(op, numbers.Integral) and not isinstance(op, (bool, np.bool_)):
        if not 0 <= int(op) < len(OPS):
            raise ValueError(f"op index must be in 0..{len(OPS) - 1}, got {op}")
        return int(op)
    raise TypeError(f"op must be a name from OPS or an index, got {op!r}")


# ---- preprocessing ---------------------------------------------------------------------------
def resize(images, size: Size, interpolation: str = "bilinear") -> np.ndarray:
    """Resize every image as Pillow's ``Image.resize`` does (antialiased when downscaling).

    ``size`` (h, w) is the output size; an int resizes the shorter side to ``size`` and keeps
    the aspect ratio (torchvision's rule: the longer side becomes ``int(size * long / short)``).
    ``interpolation``: "bilinear", "bicubic" (Pillow's separable filters with support scaled by
    the downscale factor, 22-bit fixed-point weights) or "nearest".
    """
    x = _images(images)
    B, H, W, C = x.shape
    if isinstance(size, numbers.Integral) and not isinstance(size, (bool, np.bool_)):
        s = _int(size, "size", 1, _MAX_SIDE)
        if W <= H:
            oh, ow = int(s * H / W), s
        else:
            oh, ow = s, int(s * W / H)
        if oh > _MAX_SIDE or ow > _MAX_SIDE:
            raise ValueError(f"resizing the shorter side to {s} gives {oh}x{ow}, larger than {_MAX_SIDE}")
    else:
        oh, ow = _size(size)
    return _C.img_resize(x, oh, ow, _interp(interpolation))


def center_crop(images, size: Size) -> np.ndarray:
    """The central ``size`` window of every image (torchvision's ``center_crop``: offsets
    ``round((H - h) / 2)``, and zero padding where the window is larger than the image)."""
    x = _images(images)
    B, H, W, C = x.shape
    oh, ow = _size(size)
    top = -((oh - H) // 2) if oh > H else int(round((H - oh) / 2.0))
    left = -((ow - W) // 2) if ow > W else int(round((W - ow) / 2.0))
    return _C.img_crop(x, top, left, oh, ow)


def hflip(images) -> np.ndarray:
    """Mirror every image left to right."""
    return _C.img_hflip(_images(images))


def random_resized_crop(images, size: Size, seeds, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0),
                        interpolation: str = "bilinear", return_boxes: bool = False):
    """torchvision's ``RandomResizedCrop`` per image: a crop of random area (``scale`` of the
    image) and aspect ratio (log-uniform in ``ratio``), 10 attempts then the central crop,
    resized to ``size`` as ``resize`` does. The draws come from ``seeds`` (one per image).

    With ``return_boxes=True`` also returns the crops as int32 ``(B, 4)`` rows ``(top, left,
    height, width)``.
    """
    x = _images(images)
    B, H, W, C = x.shape
    oh, ow = _size(size)
    s = _seeds(seeds, B)
    try:
        smin, smax = (_real(v, "scale") for v in scale)
        rmin, rmax = (_real(v, "ratio") for v in ratio)
    except (TypeError, ValueError) as e:
        if isinstance(e, ValueError) and "finite" in str(e):
            raise
        raise TypeError(f"scale and ratio must be pairs of numbers, got {scale!r} and {ratio!r}") from None
    if not 0 < smin <= smax:
        raise ValueError(f"scale must satisfy 0 < min <= max, got {scale!r}")
    if not 0 < rmin <= rmax:
        raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio!r}")
    out, boxes = _C.img_random_resized_crop(x, s, oh, ow, smin, smax, rmin, rmax, _interp(interpolation))
    return (out, boxes) if return_boxes else out


def normalize(images, mean, std, scale: float = 1.0 / 255.0) -> np.ndarray:
    """float32 NCHW ``(x * scale - mean[c]) / std[c]`` (computed in double, rounded once):
    the model's input from uint8 NHWC images."""
    x = _images(images)
    C = x.shape[3]

    def per_channel(v, name):
        vals = [v] * C if isinstance(v, numbers.Real) else list(np.asarray(v, dtype=np.float64).reshape(-1))
        if len(vals) == 1:
            vals = vals * C
        if len(vals) != C:
            raise ValueError(f"{name} must have one value per channel ({C}), got {len(vals)}")
        vals = tuple(_real(float(u), name) for u in vals)
        return vals

    m, s = per_channel(mean, "mean"), per_channel(std, "std")
    if any(v == 0 for v in s):
        raise ValueError(f"std must be non-zero, got {s}")
    return _C.img_normalize(x, m, s, _real(scale, "scale"))


# ---- RandAugment -----------------------------------------------------------------------------
def apply_op(images, op, magnitude: float, fill=0, interpolation: str = "nearest") -> np.ndarray:
    """One RandAugment op on every image, as torchvision's ``_apply_op`` does it on PIL images.

    ``magnitude`` is the signed value in the op's own units: the shear factor (ShearX/Y, as
    ``tan`` of the shear angle), pixels (TranslateX/Y, truncated to an int), degrees (Rotate,
    counter-clockwise about the image centre), ``factor - 1`` (Brightness, Color, Contrast,
    Sharpness), bits kept (Posterize, int 0..8), the threshold (Solarize: values >= it are
    inverted); ignored by Identity, AutoContrast and Equalize. ``fill`` is the colour the
    geometric ops bring in from outside the image.
    """
    x = _images(images)
    i = _op_index(op)
    m = _real(magnitude, "magnitude")
    if abs(m) > 1e6:
        raise ValueError(f"magnitude must be at most 1e6 in size, got {m}")
    if OPS[i] == "Posterize" and not 0 <= int(m) <= 8:
        raise ValueError(f"Posterize keeps int(magnitude) bits, which must be in 0..8, got {magnitude}")
    return _C.aug_apply_op(x, i, m, _fill(fill, x.shape[3]), _interp(interpolation))


def _ra_args(num_ops, magnitude, num_magnitude_bins):
    n = _int(num_ops, "num_ops", 0, 1000)
    bins = _int(num_magnitude_bins, "num_magnitude_bins", 2, 1_000_000)
    mag = _int(magnitude, "magnitude")
    if not 0 <= mag < bins:
        raise ValueError(f"magnitude is a bin index and must be in 0..{bins - 1} "
                         f"(num_magnitude_bins={bins}), got {mag}")
    return n, mag, bins


def rand_augment(images, seeds, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31,
                 fill=0, interpolation: str = "nearest") -> np.ndarray:
    """torchvision's ``RandAugment(num_ops, magnitude, num_magnitude_bins)`` on every image:
    ``num_ops`` times an op drawn uniformly from ``OPS``, at the magnitude of bin ``magnitude``
    (torchvision's tables, float32 as torch computes them), with a random sign for the signed
    ops. Image ``b`` draws from ``seeds[b]`` only (see ``rand_augment_plan``)."""
    x = _images(images)
    n, mag, bins = _ra_args(num_ops, magnitude, num_magnitude_bins)
    s = _seeds(seeds, x.shape[0])
    return _C.aug_rand_augment(x, s, n, mag, bins, _fill(fill, x.shape[3]), _interp(interpolation))


def rand_augment_plan(seeds, image_size: Size, num_ops: int = 2, magnitude: int = 9,
                      num_magnitude_bins: int = 31) -> Tuple[np.ndarray, np.ndarray]:
    """What ``rand_augment`` does to each image: ``(ops, magnitudes)``, int32 and float64 arrays
    of shape ``(B, num_ops)`` holding the op index into ``OPS`` and the signed magnitude of each
    step. ``rand_augment(x, seeds)`` equals applying them one after another with ``apply_op``.
    ``image_size`` (h, w) matters for the Translate magnitudes."""
    h, w = _size(image_size, "image_size")
    n, mag, bins = _ra_args(num_ops, magnitude, num_magnitude_bins)
    try:
        B = len(seeds)
    except TypeError:
        raise TypeError(f"seeds must be an array of shape (B,), got {seeds!r}") from None
    s = _seeds(seeds, B)
    return _C.aug_rand_augment_plan(s, h, w, n, mag, bins)


def magnitude_table(image_size: Size, magnitude: int = 9, num_magnitude_bins: int = 31) -> dict:
    """RandAugment's unsigned magnitude of each op at bin ``magnitude``: {op name: value}."""
    h, w = _size(image_size, "image_size")
    _, mag, bins = _ra_args(0, magnitude, num_magnitude_bins)
    return {name: _C.aug_magnitude(i, mag, bins, h, w) for i, name in enumerate(OPS)}


class RandAugment:
    """``RandAugment(num_ops=2, magnitude=9, num_magnitude_bins=31, fill=0)``; call it with a
    uint8 NHWC batch and one seed per image: ``ra(images, seeds)``."""

    def __init__(self, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31, fill=0,
                 interpolation: str = "nearest"):
        self.num_ops, self.magnitude, self.num_magnitude_bins = _ra_args(num_ops, magnitude,
                                                                         num_magnitude_bins)
        if isinstance(fill, numbers.Real):
            _fill(fill, 1)
        else:
            try:
                _fill(fill, len(fill))  # values checked now, the channel count at call time
            except TypeError:
                raise TypeError(f"fill must be a number or one number per channel, got {fill!r}") from None
        self.fill = fill
        _interp(interpolation)
        self.interpolation = interpolation

    def __call__(self, images, seeds) -> np.ndarray:
        return rand_augment(images, seeds, self.num_ops, self.magnitude, self.num_magnitude_bins,
                            self.fill, self.interpolation)

    def plan(self, seeds, image_size: Size):
        return rand_augment_plan(seeds, image_size, self.num_ops, self.magnitude,
                                 self.num_magnitude_bins)

    def __repr__(self) -> str:
        return (f"RandAugment(num_ops={self.num_ops}, magnitude={self.magnitude}, "
                f"num_magnitude_bins={self.num_magnitude_bins}, fill={self.fill!r}, "
                f"interpolation={self.interpolation!r})")
