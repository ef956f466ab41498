"""Mixup / CutMix (polyvit.mixup, pixel kernel polyvit._C.mix) against a NumPy port of timm's
algorithm and against the definitions: blends, boxes, label weights, lambda statistics."""
from __future__ import annotations

import numpy as np
import pytest

import polyvit
from polyvit import _C
from polyvit.mixup import Mixup, mixup_target


# ---- an independent reference: timm.data.mixup.Mixup, line by line, torch -> NumPy --------------
# (np.random.<f> -> the Generator's equivalent: rand -> random, beta -> beta, randint -> integers)
def ref_rand_bbox(img_shape, lam, rng, margin=0., count=None):
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


def ref_rand_bbox_minmax(img_shape, minmax, rng, count=None):
    img_h, img_w = img_shape[-2:]
    cut_h = rng.integers(int(img_h * minmax[0]), int(img_h * minmax[1]), size=count)
    cut_w = rng.integers(int(img_w * minmax[0]), int(img_w * minmax[1]), size=count)
    yl = rng.integers(0, img_h - cut_h, size=count)
    xl = rng.integers(0, img_w - cut_w, size=count)
    return yl, yl + cut_h, xl, xl + cut_w


def ref_cutmix_bbox_and_lam(img_shape, lam, rng, ratio_minmax=None, correct_lam=True):
    if ratio_minmax is not None:
        yl, yu, xl, xu = ref_rand_bbox_minmax(img_shape, ratio_minmax, rng)
    else:
        yl, yu, xl, xu = ref_rand_bbox(img_shape, lam, rng)
    if correct_lam or ratio_minmax is not None:
        bbox_area = (yu - yl) * (xu - xl)
        lam = 1. - bbox_area / float(img_shape[-2] * img_shape[-1])
    return (yl, yu, xl, xu), lam


def ref_mixup_target(target, num_classes, lam, smoothing):
    if np.ndim(lam) == 0:  # torch takes a NumPy scalar as a Python number: float32 math stays
        lam = float(lam)
    off_value = smoothing / num_classes
    on_value = 1. - smoothing + off_value
    y1 = np.full((len(target), num_classes), off_value, dtype=np.float32)
    y1[np.arange(len(target)), target] = on_value
    y2 = y1[::-1]
    return y1 * lam + y2 * (1. - lam)


class RefMixup:
    """timm's Mixup on float32 NCHW NumPy arrays."""

    def __init__(self, mixup_alpha=1., cutmix_alpha=0., cutmix_minmax=None, prob=1.0, switch_prob=0.5,
                 mode='batch', correct_lam=True, label_smoothing=0., num_classes=0):
        self.mixup_alpha, self.cutmix_alpha, self.cutmix_minmax = mixup_alpha, cutmix_alpha, cutmix_minmax
        if cutmix_minmax is not None:
            self.cutmix_alpha = 1.0
        self.mix_prob, self.switch_prob, self.label_smoothing = prob, switch_prob, label_smoothing
        self.num_classes, self.mode, self.correct_lam = num_classes, mode, correct_lam
        self.mixup_enabled = True

    def _params_per_elem(self, batch_size, rng):
        lam = np.ones(batch_size, dtype=np.float32)
        use_cutmix = np.zeros(batch_size, dtype=bool)
        if self.mixup_enabled:
            if self.mixup_alpha > 0. and self.cutmix_alpha > 0.:
                use_cutmix = rng.random(batch_size) < self.switch_prob
                lam_mix = np.where(use_cutmix, rng.beta(self.cutmix_alpha, self.cutmix_alpha, size=batch_size),
                                   rng.beta(self.mixup_alpha, self.mixup_alpha, size=batch_size))
            elif self.mixup_alpha > 0.:
                lam_mix = rng.beta(self.mixup_alpha, self.mixup_alpha, size=batch_size)
            elif self.cutmix_alpha > 0.:
                use_cutmix = np.ones(batch_size, dtype=bool)
                lam_mix = rng.beta(self.cutmix_alpha, self.cutmix_alpha, size=batch_size)
            lam = np.where(rng.random(batch_size) < self.mix_prob, lam_mix.astype(np.float32), lam)
        return lam, use_cutmix

    def _params_per_batch(self, rng):
        lam = 1.
        use_cutmix = False
        if self.mixup_enabled and rng.random() < self.mix_prob:
            if self.mixup_alpha > 0. and self.cutmix_alpha > 0.:
                use_cutmix = rng.random() < self.switch_prob
                lam_mix = rng.beta(self.cutmix_alpha, self.cutmix_alpha) if use_cutmix else \
                    rng.beta(self.mixup_alpha, self.mixup_alpha)
            elif self.mixup_alpha > 0.:
                lam_mix = rng.beta(self.mixup_alpha, self.mixup_alpha)
            elif self.cutmix_alpha > 0.:
                use_cutmix = True
                lam_mix = rng.beta(self.cutmix_alpha, self.cutmix_alpha)
            lam = float(lam_mix)
        return lam, use_cutmix

    def _mix_elem(self, x, rng):
        batch_size = len(x)
        lam_batch, use_cutmix = self._params_per_elem(batch_size, rng)
        x_orig = x.copy()
        for i in range(batch_size):
            j = batch_size - i - 1
            lam = lam_batch[i]
            if lam != 1.:
                if use_cutmix[i]:
                    (yl, yh, xl, xh), lam = ref_cutmix_bbox_and_lam(
                        x[i].shape, lam, rng, ratio_minmax=self.cutmix_minmax, correct_lam=self.correct_lam)
                    x[i][:, yl:yh, xl:xh] = x_orig[j][:, yl:yh, xl:xh]
                    lam_batch[i] = lam
                else:
                    x[i] = x[i] * lam + x_orig[j] * (1 - lam)
        return lam_batch[:, None]

    def _mix_pair(self, x, rng):
        batch_size = len(x)
        lam_batch, use_cutmix = self._params_per_elem(batch_size // 2, rng)
        x_orig = x.copy()
        for i in range(batch_size // 2):
            j = batch_size - i - 1
            lam = lam_batch[i]
            if lam != 1.:
                if use_cutmix[i]:
                    (yl, yh, xl, xh), lam = ref_cutmix_bbox_and_lam(
                        x[i].shape, lam, rng, ratio_minmax=self.cutmix_minmax, correct_lam=self.correct_lam)
                    x[i][:, yl:yh, xl:xh] = x_orig[j][:, yl:yh, xl:xh]
                    x[j][:, yl:yh, xl:xh] = x_orig[i][:, yl:yh, xl:xh]
                    lam_batch[i] = lam
                else:
                    x[i] = x[i] * lam + x_orig[j] * (1 - lam)
                    x[j] = x[j] * lam + x_orig[i] * (1 - lam)
        lam_batch = np.concatenate((lam_batch, lam_batch[::-1]))
        return lam_batch[:, None]

    def _mix_batch(self, x, rng):
        lam, use_cutmix = self._params_per_batch(rng)
        if lam == 1.:
            return 1.
        if use_cutmix:
            (yl, yh, xl, xh), lam = ref_cutmix_bbox_and_lam(
                x.shape, lam, rng, ratio_minmax=self.cutmix_minmax, correct_lam=self.correct_lam)
            x[:, :, yl:yh, xl:xh] = x[::-1][:, :, yl:yh, xl:xh].copy()
        else:
            x_flipped = x[::-1] * (1. - lam)
            x *= lam
            x += x_flipped
        return lam

    def __call__(self, x, target, rng):
        x = x.copy()
        if self.mode == 'elem':
            lam = self._mix_elem(x, rng)
        elif self.mode == 'pair':
            lam = self._mix_pair(x, rng)
        else:
            lam = self._mix_batch(x, rng)
        return x, ref_mixup_target(target, self.num_classes, lam, self.label_smoothing)


def batch(rng, B=8, C=3, H=12, W=10, dtype=np.float32, K=7):
    if dtype == np.uint8:
        x = rng.integers(0, 256, (B, H, W, C), dtype=np.uint8)
    else:
        x = rng.standard_normal((B, C, H, W)).astype(np.float32)
    return x, rng.integers(0, K, B)


CASES = {
    "both_batch": dict(mixup_alpha=0.8, cutmix_alpha=1.0, mode="batch"),
    "both_pair": dict(mixup_alpha=0.8, cutmix_alpha=1.0, mode="pair"),
    "both_elem": dict(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem"),
    "mixup_batch": dict(mixup_alpha=0.4, cutmix_alpha=0.0, mode="batch"),
    "cutmix_elem_nocorrect": dict(mixup_alpha=0.0, cutmix_alpha=1.0, mode="elem", correct_lam=False),
    "minmax_pair": dict(mixup_alpha=1.0, cutmix_minmax=(0.2, 0.8), mode="pair", switch_prob=0.7),
    "prob_half_elem": dict(mixup_alpha=1.0, cutmix_alpha=0.5, mode="elem", prob=0.5),
    "prob_half_batch": dict(mixup_alpha=1.0, cutmix_alpha=0.5, mode="batch", prob=0.5),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_equals_numpy_port_of_timm(case, rng):
    """Same Generator -> same draws, the same pixels and the same targets as timm's algorithm.
    The blends are the same float32 operations (x*w1 + p*w2, no FMA), so equality is exact."""
    kw = dict(CASES[case], label_smoothing=0.1, num_classes=7)
    mine, ref = Mixup(**kw), RefMixup(**kw)
    kinds = set()
    for s in range(25):
        x, y = batch(rng)
        xo, t = mine(x, y, np.random.default_rng(s))
        xr, tr = ref(x, y, np.random.default_rng(s))
        np.testing.assert_array_equal(xo, xr)
        np.testing.assert_array_equal(t, tr)
        kinds.update(mine.last_params["kind"].tolist())
    assert kinds - {"copy"}, kinds  # the draws did mix
    if CASES[case].get("prob", 1.0) < 1 or "cutmix_minmax" in CASES[case] or \
            min(CASES[case].get("mixup_alpha", 1), CASES[case].get("cutmix_alpha", 1)) > 0:
        assert len(kinds) >= 2, kinds  # more than one path was exercised


def test_targets_rows_sum_to_one(rng):
    for mode in ("batch", "pair", "elem"):
        m = Mixup(mode=mode, num_classes=13, label_smoothing=0.1)
        for s in range(10):
            x, y = batch(rng, K=13)
            _, t = m(x, y, s)
            assert t.dtype == np.float32 and t.shape == (8, 13)
            np.testing.assert_allclose(t.sum(1), 1.0, atol=3e-7)
            assert (t > 0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_prob_zero_is_plain_smoothed_one_hot(dtype, rng):
    m = Mixup(prob=0.0, num_classes=7, label_smoothing=0.2, mode="elem")
    x, y = batch(rng, dtype=dtype)
    xo, t = m(x, y, 3)
    assert xo is not x and xo.dtype == dtype
    np.testing.assert_array_equal(xo, x)
    want = np.full((8, 7), 0.2 / 7, np.float32)
    want[np.arange(8), y] = 1 - 0.2 + 0.2 / 7
    np.testing.assert_array_equal(t, want)
    np.testing.assert_array_equal(m.last_lam, np.ones(8, np.float32))
    assert (m.last_params["kind"] == "copy").all()


def test_mixup_pixels_are_the_blend_with_the_flipped_batch(rng):
    m = Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, num_classes=7, label_smoothing=0.0)
    x, y = batch(rng, B=6)
    xo, t = m(x, y, 11)
    lam = float(m.last_lam[0])
    assert 0 < lam < 1
    np.testing.assert_allclose(xo, lam * x + (1 - lam) * x[::-1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(t, lam * np.eye(7)[y] + (1 - lam) * np.eye(7)[y[::-1]], atol=1e-6)


def test_pair_partners_read_the_originals(rng):
    """B = 2: each image is the partner of the other; both must blend the unmixed originals."""
    m = Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, num_classes=3, mode="pair")
    x, y = batch(rng, B=2, K=3)
    xo, _ = m(x, y, 5)
    lam = m.last_lam[0]
    np.testing.assert_allclose(xo[0], x[0] * lam + x[1] * (1 - lam), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(xo[1], x[1] * lam + x[0] * (1 - lam), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_cutmix_box_comes_from_the_partner(mode, dtype, rng):
    m = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=7, label_smoothing=0.0, mode=mode)
    B, H, W = 8, 12, 10
    nonempty = 0
    for s in range(20):
        x, y = batch(rng, B=B, H=H, W=W, dtype=dtype)
        xo, t = m(x, y, s)
        for i in range(B):
            j = B - 1 - i
            y0, y1, x0, x1 = m.last_params["box"][i]
            inside = np.zeros((H, W), bool)
            inside[y0:y1, x0:x1] = True
            nonempty += inside.any()
            if dtype == np.uint8:  # NHWC
                np.testing.assert_array_equal(xo[i][inside], x[j][inside])
                np.testing.assert_array_equal(xo[i][~inside], x[i][~inside])
            else:  # NCHW
                np.testing.assert_array_equal(xo[i][:, inside], x[j][:, inside])
                np.testing.assert_array_equal(xo[i][:, ~inside], x[i][:, ~inside])
            # with correct_lam the label weight is exactly the share of the image kept
            share = 1.0 - inside.sum() / (H * W)
            assert m.last_lam[i] == np.float32(share)
            want = np.zeros(7, np.float32)
            want[y[i]] += np.float32(share)
            want[y[j]] += np.float32(1.0 - share)
            np.testing.assert_allclose(t[i], want, atol=1e-7)
    assert nonempty > 0


def test_uint8_blend_rounds_half_to_even(rng):
    m = Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, num_classes=7, mode="elem")
    x, y = batch(rng, dtype=np.uint8)
    xo, _ = m(x, y, 2)
    lam = m.last_lam.astype(np.float32)[:, None, None, None]
    want = np.rint(x.astype(np.float32) * lam + x[::-1].astype(np.float32) * (np.float32(1) - lam))
    np.testing.assert_array_equal(xo, want.astype(np.uint8))


def test_lambda_statistics():
    """Beta(a, a): mean 1/2, variance 1/(4(2a+1)); prob and switch_prob as frequencies."""
    a, n = 0.8, 4000
    m = Mixup(mixup_alpha=a, cutmix_alpha=0.0, mode="elem", num_classes=2)
    x = np.zeros((n, 1, 2, 2), np.float32)
    m(x, np.zeros(n, np.int64), 123)
    lam = m.last_lam.astype(np.float64)
    var = 1 / (4 * (2 * a + 1))
    assert abs(lam.mean() - 0.5) < 4 * np.sqrt(var / n)
    assert abs(lam.var() - var) < 0.01
    # batch mode: one lambda per call
    lams = []
    mb = Mixup(mixup_alpha=a, cutmix_alpha=0.0, num_classes=2)
    for s in range(800):
        mb(x[:2], np.zeros(2, np.int64), s)
        lams.append(mb.last_lam[0])
    assert abs(np.mean(lams) - 0.5) < 4 * np.sqrt(var / 800)
    # prob: the share of untouched images; switch_prob: the share of CutMix among the mixed
    mp = Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.3, switch_prob=0.25, mode="elem", num_classes=2)
    x = np.zeros((n, 1, 8, 8), np.float32)
    mp(x, np.zeros(n, np.int64), 7)
    kind = mp.last_params["kind"]
    mixed = kind != "copy"
    assert abs(mixed.mean() - 0.3) < 4 * np.sqrt(0.21 / n) + 0.01  # (a box can come out empty)
    assert abs((kind[mixed] == "cutmix").mean() - 0.25) < 4 * np.sqrt(0.1875 / mixed.sum())


def test_deterministic_for_a_seed_and_independent_of_threads(rng):
    m = Mixup(mode="elem", num_classes=7)
    x, y = batch(rng, B=16)
    old = polyvit.get_num_threads()
    try:
        polyvit.set_num_threads(1)
        a = m(x, y, 99)
        polyvit.set_num_threads(2)
        b = m(x, y, 99)
        c = m(x, y, np.random.default_rng(99))
        d = m(x, y, [99, 1])
    finally:
        polyvit.set_num_threads(old)
    for u, v in ((a, b), (a, c)):
        np.testing.assert_array_equal(u[0], v[0])
        np.testing.assert_array_equal(u[1], v[1])
    assert not np.array_equal(a[0], d[0])


def test_mixup_target_function():
    t = mixup_target(np.array([0, 1, 2]), 3, 0.75, 0.0)
    np.testing.assert_allclose(t, [[0.75, 0, 0.25], [0, 1, 0], [0.25, 0, 0.75]])


def test_disabled_passes_through(rng):
    m = Mixup(num_classes=7)
    m.mixup_enabled = False
    x, y = batch(rng)
    xo, t = m(x, y, 0)
    np.testing.assert_array_equal(xo, x)
    np.testing.assert_allclose(t.argmax(1), y)


# ---- bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize("kw, msg", [
    (dict(mode="rows"), "mode must be one of"),
    (dict(mixup_alpha=-1.0), "mixup_alpha must be"),
    (dict(mixup_alpha=0.0, cutmix_alpha=0.0), "one of mixup_alpha"),
    (dict(prob=1.5), "prob must be"),
    (dict(switch_prob=-0.1), "switch_prob must be"),
    (dict(label_smoothing=1.0), "label_smoothing"),
    (dict(num_classes=0), "num_classes"),
    (dict(cutmix_minmax=(0.8, 0.2)), "cutmix_minmax"),
    (dict(cutmix_minmax=(0.1,)), "cutmix_minmax"),
])
def test_bad_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg):
        Mixup(**kw)


def test_bad_calls(rng):
    m = Mixup(num_classes=7)
    x, y = batch(rng)
    with pytest.raises(TypeError, match="float32"):
        m(x.astype(np.float64), y, 0)
    with pytest.raises(TypeError, match="numpy array"):
        m(x.tolist(), y, 0)
    with pytest.raises(ValueError, match="4-D"):
        m(x[0], y, 0)
    with pytest.raises(ValueError, match="outside 0..6"):
        m(x, np.full(8, 7), 0)
    with pytest.raises(ValueError, match="one per image"):
        m(x, y[:5], 0)
    with pytest.raises(TypeError, match="integers"):
        m(x, y.astype(np.float32), 0)
    with pytest.raises(TypeError, match="seed is required"):
        m(x, y, None)
    with pytest.raises(ValueError, match="non-negative"):
        m(x, y, -1)
    with pytest.raises(ValueError, match="even batch"):
        Mixup(num_classes=7, mode="pair")(x[:7], y[:7], 0)
    with pytest.raises(ValueError, match="no box size"):
        Mixup(num_classes=7, cutmix_minmax=(0.5, 0.55))(x[:, :, :2, :2], y, 0)


def test_kernel_checks_its_arguments(rng):
    x = rng.standard_normal((4, 3, 5, 6)).astype(np.float32)
    p = np.arange(3, -1, -1, dtype=np.int64)
    k = np.full(4, 1, np.uint8)
    w = np.full((4, 2), 0.5, np.float32)
    bx = np.zeros((4, 4), np.int64)
    out = _C.mix(x, "NCHW", p, k, w, bx)
    np.testing.assert_allclose(out, 0.5 * x + 0.5 * x[::-1], atol=1e-6)
    with pytest.raises(ValueError, match="partner 4 of image 0"):
        _C.mix(x, "NCHW", np.array([4, 0, 1, 2], np.int64), k, w, bx)
    with pytest.raises(ValueError, match="kind 3"):
        _C.mix(x, "NCHW", p, np.full(4, 3, np.uint8), w, bx)
    with pytest.raises(ValueError, match="weights"):
        _C.mix(x, "NCHW", p, k, np.full((4, 2), 1.5, np.float32), bx)
    with pytest.raises(ValueError, match="does not lie inside"):
        _C.mix(x, "NCHW", p, np.full(4, 2, np.uint8), w, np.array([[0, 6, 0, 6]] * 4, np.int64))
    with pytest.raises(ValueError, match="layout"):
        _C.mix(x, "HWCN", p, k, w, bx)
    with pytest.raises(TypeError, match="float32 or uint8"):
        _C.mix(x.astype(np.float64), "NCHW", p, k, w, bx)
    with pytest.raises(TypeError, match="partner must be int64"):
        _C.mix(x, "NCHW", p.astype(np.int32), k, w, bx)
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.mix(np.asfortranarray(x), "NCHW", p, k, w, bx)
    with pytest.raises(ValueError, match="one per image"):
        _C.mix(x, "NCHW", p[:3], k, w, bx)


def test_kernel_parallel_path_matches_numpy(rng):
    """From 8 MB of images the kernel runs in an OpenMP team: same result for 1 or 2 threads."""
    B = 16
    x = rng.standard_normal((B, 3, 256, 256)).astype(np.float32)  # 12.6 MB
    p = np.arange(B - 1, -1, -1, dtype=np.int64)
    k = np.array([0, 1, 2, 1] * 4, np.uint8)
    lam = rng.random(B).astype(np.float32)
    w = np.stack([lam, np.float32(1) - lam], 1)
    bx = np.tile(np.array([[10, 200, 31, 97]], np.int64), (B, 1))
    want = x.copy()
    for i in range(B):
        if k[i] == 1:
            want[i] = x[i] * w[i, 0] + x[p[i]] * w[i, 1]
        elif k[i] == 2:
            want[i][:, 10:200, 31:97] = x[p[i]][:, 10:200, 31:97]
    old = polyvit.get_num_threads()
    try:
        for threads in (1, 2):
            polyvit.set_num_threads(threads)
            np.testing.assert_array_equal(_C.mix(x, "NCHW", p, k, w, bx), want)
    finally:
        polyvit.set_num_threads(old)
