"""Mixup and CutMix with timm's semantics; the pixel mixing runs in C (``polyvit._C.mix``).

``Mixup`` follows ``timm.data.mixup.Mixup`` (batch, pair and elem modes, ``switch_prob``,
``cutmix_minmax``, lambda correction for clipped boxes, label smoothing), with one change that
the rest of polyvit needs: the random draws come from a NumPy ``Generator`` made from the
``seed`` given with each batch, never from the global NumPy state, so a batch's mixing depends
on its seed alone. The draws are made in timm's order with the Generator's equivalents
(``rand`` -> ``random``, ``beta`` -> ``beta``, ``randint`` -> ``integers``).

The mixing itself is one pass in C over the batch into a new buffer, parallel over images:
image ``i`` is blended with, or receives a box from, its partner ``B - 1 - i`` (the batch
flipped, as in timm), always reading the unmixed originals.
"""
from __future__ import annotations

import numbers
from typing import Optional, Sequence, Tuple

import numpy as np

from ._lib import _C

__all__ = ["Mixup", "mixup_target", "rand_bbox", "cutmix_bbox_and_lam"]

_MODES = ("batch", "pair", "elem")
_COPY, _BLEND, _BOX = 0, 1, 2


def _rng(seed) -> np.random.Generator:
    """A Generator from a seed: int >= 0, a sequence of them, a SeedSequence, or a Generator."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        raise TypeError("a seed is required (an int, a sequence of ints or a numpy Generator): "
                        "the mixing of a batch must be reproducible")
    if isinstance(seed, (bool, np.bool_)):
        raise TypeError(f"the seed must be an int or a numpy Generator, got {seed!r}")
    if isinstance(seed, numbers.Integral):
        if int(seed) < 0:
            raise ValueError(f"the seed must be a non-negative int, got {seed}")
        return np.random.default_rng(int(seed))
    if isinstance(seed, np.random.SeedSequence):
        return np.random.default_rng(seed)
    try:
        s = np.asarray(seed)
    except Exception:
        s = None
    if s is None or s.ndim != 1 or s.dtype.kind not in "iu" or s.size == 0:
        raise TypeError("the seed must be an int, a sequence of non-negative ints or a numpy "
                        f"Generator, got {type(seed).__name__}")
    if (s < 0).any():
        raise ValueError(f"seed entries must be non-negative, got {s.tolist()}")
    return np.random.default_rng([int(v) for v in s])


def one_hot_smoothed(labels: np.ndarray, num_classes: int, smoothing: float) -> np.ndarray:
    """float32 (B, K): off = smoothing / K everywhere, on = 1 - smoothing + off at the label."""
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    y = np.full((len(labels), num_classes), off, dtype=np.float32)
    y[np.arange(len(labels)), labels] = on
    return y


def mixup_target(labels: np.ndarray, num_classes: int, lam, smoothing: float = 0.0) -> np.ndarray:
    """timm's ``mixup_target``: ``lam * y + (1 - lam) * y[::-1]`` of the smoothed one-hot labels,
    in float32. ``lam``: a Python number (timm's batch mode) or a float32 array (B,) (its pair
    and elem modes); the arithmetic follows the type, as in timm."""
    y1 = one_hot_smoothed(labels, num_classes, smoothing)
    y2 = y1[::-1]
    if isinstance(lam, np.ndarray):
        lam32 = lam.astype(np.float32).reshape(-1, 1)
        return y1 * lam32 + y2 * (np.float32(1.0) - lam32)
    lam = float(lam)
    return y1 * np.float32(lam) + y2 * np.float32(1.0 - lam)


def rand_bbox(img_shape, lam, rng: np.random.Generator, margin: float = 0.0, count=None):
    """timm's ``rand_bbox`` (a square-ish box of area about ``(1 - lam)`` of the image, its centre
    uniform, clipped at the borders) with draws from ``rng``. Returns ``(yl, yh, xl, xh)``."""
    ratio = np.sqrt(1 - lam)
    img_h, img_w = img_shape[-2:]
    cut_h, cut_w = int(img_h * ratio), int(img_w * ratio)
    margin_y, margin_x = int(margin * cut_h), int(margin * cut_w)
    cy = rng.integers(0 + margin_y, img_h - margin_y, size=count)
    cx = rng.integers(0 + margin_x, img_w - margin_x, size=count)
    yl = np.clip(cy - cut_h // 2, 0, img_h)
    yh = np.clip(cy + cut_h // 2, 0, img_h)
    xl = np.clip(cx - cut_w // 2, 0, img_w)
    xh = np.clip(cx + cut_w // 2, 0, img_w)
    return yl, yh, xl, xh


def rand_bbox_minmax(img_shape, minmax, rng: np.random.Generator, count=None):
    """timm's ``rand_bbox_minmax``: box sides uniform in [min, max) of the image sides."""
    img_h, img_w = img_shape[-2:]
    cut_h = rng.integers(int(img_h * minmax[0]), int(img_h * minmax[1]), size=count)
    cut_w = rng.integers(int(img_w * minmax[0]), int(img_w * minmax[1]), size=count)
    yl = rng.integers(0, img_h - cut_h, size=count)
    xl = rng.integers(0, img_w - cut_w, size=count)
    return yl, yl + cut_h, xl, xl + cut_w


def cutmix_bbox_and_lam(img_shape, lam, rng: np.random.Generator, ratio_minmax=None,
                        correct_lam: bool = True, count=None):
    """A CutMix box and its lambda, corrected to the clipped box's real area when
    ``correct_lam`` (or with ``ratio_minmax``): lam = 1 - box area / image area."""
    if ratio_minmax is not None:
        yl, yu, xl, xu = rand_bbox_minmax(img_shape, ratio_minmax, rng, count=count)
    else:
        yl, yu, xl, xu = rand_bbox(img_shape, lam, rng, count=count)
    if correct_lam or ratio_minmax is not None:
        bbox_area = (yu - yl) * (xu - xl)
        lam = 1. - bbox_area / float(img_shape[-2] * img_shape[-1])
    return (yl, yu, xl, xu), lam


def _check_prob(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (0.0 <= float(v) <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {v!r}")
    return float(v)


class Mixup:
    """Mixup / CutMix on a batch, with soft targets (timm's ``Mixup``).

    Args:
        mixup_alpha: Beta(alpha, alpha) for the Mixup lambda; Mixup is active when > 0.
        cutmix_alpha: Beta(alpha, alpha) for the CutMix lambda; CutMix is active when > 0.
        cutmix_minmax: (min, max) box side ratios; when given, CutMix uses them instead of
            alpha (and cutmix_alpha is forced to 1.0, as in timm).
        prob: probability of mixing a batch (or an element, in 'pair' and 'elem' modes).
        switch_prob: probability of CutMix instead of Mixup when both are active.
        mode: 'batch' (one lambda and box for the batch), 'pair' (per pair i, B-1-i) or
            'elem' (per image).
        correct_lam: correct lambda to the clipped CutMix box's actual area.
        label_smoothing: the targets are smoothed one-hot vectors, off = s/K, on = 1 - s + off.
        num_classes: K.

    ``mixup(x, labels, seed) -> (x_mixed, targets)``: ``x`` float32 (B, C, H, W) (normalised
    images) or uint8 (B, H, W, C); ``labels`` integers (B,); ``seed`` an int, a sequence of
    ints or a numpy Generator. ``x_mixed`` is a new array of x's shape and dtype (uint8 blends
    are rounded half to even); ``targets`` float32 (B, K), each row summing to 1. After a call,
    ``last_lam`` (float32 (B,): the weight of each image's own label) and ``last_params``
    (mode, per-image kind 'copy'/'mixup'/'cutmix', box (B, 4) as (y0, y1, x0, x1), lam) say
    what was done. Set ``mixup_enabled = False`` to pass batches through (targets still soft).
    """

    def __init__(self, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 cutmix_minmax: Optional[Sequence[float]] = None, prob: float = 1.0,
                 switch_prob: float = 0.5, mode: str = "batch", correct_lam: bool = True,
                 label_smoothing: float = 0.1, num_classes: int = 1000):
        for name, v in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.cutmix_minmax = None
        if cutmix_minmax is not None:
            try:
                lo, hi = (float(v) for v in cutmix_minmax)
            except (TypeError, ValueError):
                raise ValueError(f"cutmix_minmax must be two numbers (min, max), got {cutmix_minmax!r}") from None
            if not (0.0 <= lo < hi <= 1.0):
                raise ValueError(f"cutmix_minmax must satisfy 0 <= min < max <= 1, got {cutmix_minmax!r}")
            self.cutmix_minmax = (lo, hi)
            self.cutmix_alpha = 1.0  # as timm: minmax boxes, alpha fixed so the logic stays simple
        if self.mixup_alpha <= 0 and self.cutmix_alpha <= 0:
            raise ValueError("one of mixup_alpha > 0, cutmix_alpha > 0 or cutmix_minmax must be given")
        self.mix_prob = _check_prob(prob, "prob")
        self.switch_prob = _check_prob(switch_prob, "switch_prob")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}")
        self.mode = mode
        self.correct_lam = bool(correct_lam)
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real) \
                or not (0.0 <= float(label_smoothing) < 1.0):
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.mixup_enabled = True
        self.last_lam: Optional[np.ndarray] = None
        self.last_params: Optional[dict] = None

    def __repr__(self) -> str:
        return (f"Mixup(mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, "
                f"cutmix_minmax={self.cutmix_minmax}, prob={self.mix_prob}, "
                f"switch_prob={self.switch_prob}, mode={self.mode!r}, correct_lam={self.correct_lam}, "
                f"label_smoothing={self.label_smoothing}, num_classes={self.num_classes})")

    # ---- random parameters, in timm's order of draws ------------------------------------------
    def _params_per_elem(self, n: int, rng: np.random.Generator):
        lam = np.ones(n, dtype=np.float32)
        use_cutmix = np.zeros(n, dtype=bool)
        if self.mixup_enabled:
            if self.mixup_alpha > 0. and self.cutmix_alpha > 0.:
                use_cutmix = rng.random(n) < self.switch_prob
                lam_mix = np.where(use_cutmix,
                                   rng.beta(self.cutmix_alpha, self.cutmix_alpha, size=n),
                                   rng.beta(self.mixup_alpha, self.mixup_alpha, size=n))
            elif self.mixup_alpha > 0.:
                lam_mix = rng.beta(self.mixup_alpha, self.mixup_alpha, size=n)
            else:
                use_cutmix = np.ones(n, dtype=bool)
                lam_mix = rng.beta(self.cutmix_alpha, self.cutmix_alpha, size=n)
            lam = np.where(rng.random(n) < self.mix_prob, lam_mix.astype(np.float32), lam)
        return lam, use_cutmix

    def _params_per_batch(self, rng: np.random.Generator):
        lam = 1.
        use_cutmix = False
        if self.mixup_enabled and rng.random() < self.mix_prob:
            if self.mixup_alpha > 0. and self.cutmix_alpha > 0.:
                use_cutmix = bool(rng.random() < self.switch_prob)
                lam_mix = rng.beta(self.cutmix_alpha, self.cutmix_alpha) if use_cutmix else \
                    rng.beta(self.mixup_alpha, self.mixup_alpha)
            elif self.mixup_alpha > 0.:
                lam_mix = rng.beta(self.mixup_alpha, self.mixup_alpha)
            else:
                use_cutmix = True
                lam_mix = rng.beta(self.cutmix_alpha, self.cutmix_alpha)
            lam = float(lam_mix)
        return lam, use_cutmix

    def sample(self, batch_size: int, image_hw: Tuple[int, int], seed) -> dict:
        """The random part alone: for a batch of ``batch_size`` images of ``image_hw`` (H, W),
        ``{'partner' (B,), 'kind' (B,: 0 copy, 1 mixup, 2 cutmix), 'weights' (B, 2) float32:
        the blend weights of the image and its partner, 'box' (B, 4), 'lam': the label weight
        of the image itself (a float in 'batch' mode, float32 (B,) otherwise, as in timm)}``."""
        rng = _rng(seed)
        B = int(batch_size)
        H, W = int(image_hw[0]), int(image_hw[1])
        if self.mode == "pair" and B % 2:
            raise ValueError(f"mode 'pair' needs an even batch size, got {B}")
        if self.cutmix_minmax is not None:
            lo, hi = self.cutmix_minmax
            if int(H * lo) >= int(H * hi) or int(W * lo) >= int(W * hi):
                raise ValueError(f"cutmix_minmax {self.cutmix_minmax} leaves no box size to draw for "
                                 f"a {H}x{W} image")
        shape = (H, W)
        partner = np.arange(B - 1, -1, -1, dtype=np.int64)
        kind = np.zeros(B, dtype=np.uint8)
        weights = np.zeros((B, 2), dtype=np.float32)
        box = np.zeros((B, 4), dtype=np.int64)
        if self.mode == "batch":
            lam, use_cutmix = self._params_per_batch(rng)
            if lam != 1.:
                if use_cutmix:
                    (yl, yh, xl, xh), lam = cutmix_bbox_and_lam(
                        shape, lam, rng, ratio_minmax=self.cutmix_minmax, correct_lam=self.correct_lam)
                    kind[:] = _BOX
                    box[:] = (int(yl), int(yh), int(xl), int(xh))
                else:
                    kind[:] = _BLEND
                    weights[:] = (np.float32(lam), np.float32(1. - lam))  # timm: x*lam + flip*(1-lam)
            lam = float(lam)
        else:
            n = B if self.mode == "elem" else B // 2
            lam_batch, use_cutmix = self._params_per_elem(n, rng)
            for i in range(n):
                j = B - i - 1
                lam = lam_batch[i]
                if lam != 1.:
                    rows = (i, j) if self.mode == "pair" else (i,)
                    if use_cutmix[i]:
                        (yl, yh, xl, xh), lam = cutmix_bbox_and_lam(
                            shape, lam, rng, ratio_minmax=self.cutmix_minmax,
                            correct_lam=self.correct_lam)
                        for r in rows:
                            kind[r] = _BOX
                            box[r] = (int(yl), int(yh), int(xl), int(xh))
                        lam_batch[i] = lam
                    else:
                        for r in rows:
                            kind[r] = _BLEND
                            weights[r] = (lam, np.float32(1.) - lam)  # float32, as timm's lam
            if self.mode == "pair":
                lam_batch = np.concatenate((lam_batch, lam_batch[::-1]))
            lam = lam_batch  # float32 (B,)
        return {"partner": partner, "kind": kind, "weights": weights, "box": box, "lam": lam}

    # ---- applying them ----------------------------------------------------------------------
    @staticmethod
    def _check_x(x) -> Tuple[np.ndarray, str]:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"images must be a numpy array, got {type(x).__name__}")
        if x.dtype == np.float32:
            layout = "NCHW"
        elif x.dtype == np.uint8:
            layout = "NHWC"
        else:
            raise TypeError("images must be float32 (B, C, H, W) normalised or uint8 (B, H, W, C), "
                            f"got dtype {x.dtype}")
        if x.ndim != 4 or 0 in x.shape:
            raise ValueError(f"images must be a non-empty 4-D batch ({'B, C, H, W' if layout == 'NCHW' else 'B, H, W, C'}), "
                             f"got shape {x.shape}")
        return np.ascontiguousarray(x), layout

    def _check_labels(self, labels, B: int) -> np.ndarray:
        lab = np.asarray(labels)
        if lab.dtype.kind not in "iu" or lab.dtype == np.bool_:
            raise TypeError(f"labels must be integers (class indices), got dtype {lab.dtype}")
        if lab.shape != (B,):
            raise ValueError(f"labels must have shape ({B},), one per image, got {lab.shape}")
        if B and (lab.min() < 0 or lab.max() >= self.num_classes):
            bad = int(np.flatnonzero((lab < 0) | (lab >= self.num_classes))[0])
            raise ValueError(f"label {int(lab[bad])} at position {bad} is outside 0..{self.num_classes - 1}")
        return lab.astype(np.int64)

    def apply(self, x, labels, params: dict) -> Tuple[np.ndarray, np.ndarray]:
        """Mix ``x`` and build the targets from parameters made by ``sample``."""
        x, layout = self._check_x(x)
        labels = self._check_labels(labels, x.shape[0])
        out = _C.mix(x, layout, params["partner"], params["kind"], params["weights"], params["box"])
        targets = mixup_target(labels, self.num_classes, params["lam"], self.label_smoothing)
        names = np.array(["copy", "mixup", "cutmix"])
        self.last_lam = np.broadcast_to(np.asarray(params["lam"], dtype=np.float32), (x.shape[0],)).copy()
        self.last_params = {"mode": self.mode, "kind": names[params["kind"]], "box": params["box"],
                            "lam": self.last_lam}
        return out, targets

    def __call__(self, x, labels, seed) -> Tuple[np.ndarray, np.ndarray]:
        x, layout = self._check_x(x)
        hw = x.shape[2:4] if layout == "NCHW" else x.shape[1:3]
        labels = self._check_labels(labels, x.shape[0])
        params = self.sample(x.shape[0], hw, seed)
        return self.apply(x, labels, params)
