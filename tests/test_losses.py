"""polyvit.losses and polyvit.Loss against torch.nn.functional (evaluated in float64).

The reference is the float64 value of the torch loss on the same float32 inputs and its
autograd gradient w.r.t. the logits, i.e. the gradient of the *mean* loss (polyvit's dlogits
are what ``backward`` consumes for a mean-reduced loss).

Tolerances: a float32 softmax / log-sum-exp over K <= 10 classes and a mean over B <= 8 rows is
accurate to a few ulps, ~1e-7 relative, so values must agree to 1e-5 relative (plus 1e-7 absolute
for losses near 0). Gradients are compared element-wise with rtol 1e-5 and atol 3e-7: entries
like softmax probabilities of far-from-max classes are tiny (~1e-20 with large logits) and only
need to be right in absolute terms; the largest entries are ~1/B.
"""
from __future__ import annotations

import numpy as np
import pytest

import polyvit  # noqa: E402
from polyvit import losses  # noqa: E402

torch = pytest.importorskip("torch", reason="torch is the test oracle; loss comparisons "
                                            "against torch.nn.functional need it")
import torch_ref  # noqa: E402

VAL_RTOL, VAL_ATOL = 1e-5, 1e-7
GRAD_RTOL, GRAD_ATOL = 1e-5, 3e-7

SHAPES = [(1, 2), (5, 7), (8, 10)]


def _logits(rng, B, K, scale=3.0):
    return (scale * rng.standard_normal((B, K))).astype(np.float32)


def _soft(rng, B, K):
    return rng.dirichlet(np.full(K, 0.5), size=B).astype(np.float32)


def _check(value, dlogits, want_value, want_grad, B, K):
    assert isinstance(value, (float, np.floating)), type(value)
    assert np.isfinite(value)
    assert isinstance(dlogits, np.ndarray) and dlogits.dtype == np.float32
    assert dlogits.shape == (B, K)
    assert abs(float(value) - want_value) <= VAL_RTOL * abs(want_value) + VAL_ATOL, \
        (float(value), want_value)
    np.testing.assert_allclose(dlogits, want_grad, rtol=GRAD_RTOL, atol=GRAD_ATOL)


@pytest.mark.parametrize("B,K", SHAPES)
@pytest.mark.parametrize("ls", [0.0, 0.1])
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_cross_entropy_hard(B, K, ls, scale, rng):
    z = _logits(rng, B, K, scale)
    y = rng.integers(0, K, size=B).astype(np.int64)
    z0, y0 = z.copy(), y.copy()
    v, d = losses.cross_entropy(z, y, label_smoothing=ls)
    np.testing.assert_array_equal(z, z0)
    np.testing.assert_array_equal(y, y0)
    want_v, want_d = torch_ref.loss_and_grad(z, labels=y, label_smoothing=ls)
    _check(v, d, want_v, want_d, B, K)


def test_cross_entropy_default_no_smoothing(rng):
    z, y = _logits(rng, 4, 5), rng.integers(0, 5, size=4).astype(np.int64)
    v0, d0 = losses.cross_entropy(z, y)
    v1, d1 = losses.cross_entropy(z, y, label_smoothing=0.0)
    assert v0 == v1
    np.testing.assert_array_equal(d0, d1)


@pytest.mark.parametrize("B,K", SHAPES)
@pytest.mark.parametrize("ls", [0.0, 0.1])
def test_cross_entropy_soft(B, K, ls, rng):
    """Soft (B, K) float targets, with torch's label-smoothing rule t*(1-ls) + ls/K."""
    z = _logits(rng, B, K)
    t = _soft(rng, B, K)
    v, d = losses.cross_entropy(z, t, label_smoothing=ls)
    want_v, want_d = torch_ref.loss_and_grad(z, labels=t, label_smoothing=ls)
    _check(v, d, want_v, want_d, B, K)


def test_cross_entropy_one_hot_soft_equals_hard(rng):
    B, K = 6, 9
    z = _logits(rng, B, K)
    y = rng.integers(0, K, size=B).astype(np.int64)
    onehot = np.eye(K, dtype=np.float32)[y]
    for ls in (0.0, 0.1):
        vh, dh = losses.cross_entropy(z, y, label_smoothing=ls)
        vs, ds = losses.cross_entropy(z, onehot, label_smoothing=ls)
        assert abs(float(vh) - float(vs)) <= 1e-6 * abs(float(vh))
        np.testing.assert_allclose(ds, dh, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("B,K", SHAPES)
def test_mse(B, K, rng):
    z, t = _logits(rng, B, K), _logits(rng, B, K)
    v, d = losses.mse(z, t)
    want_v, want_d = torch_ref.loss_and_grad(z, teacher=t, ce=0.0, mse_w=1.0)
    _check(v, d, want_v, want_d, B, K)


@pytest.mark.parametrize("B,K", SHAPES)
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kl_div(B, K, T, rng):
    z, t = _logits(rng, B, K), _logits(rng, B, K)
    v, d = losses.kl_div(z, t, temperature=T)
    want_v, want_d = torch_ref.loss_and_grad(z, teacher=t, ce=0.0, kl=1.0, temperature=T)
    _check(v, d, want_v, want_d, B, K)


def test_kl_div_default_temperature_and_zero_at_teacher(rng):
    z = _logits(rng, 4, 6)
    v0, d0 = losses.kl_div(z, z.copy())
    assert abs(float(v0)) <= 1e-6
    np.testing.assert_allclose(d0, 0.0, atol=1e-7)
    t = _logits(rng, 4, 6)
    va, da = losses.kl_div(z, t)
    vb, db = losses.kl_div(z, t, temperature=1.0)
    assert va == vb
    np.testing.assert_array_equal(da, db)


LOSS_CASES = {
    "ce": dict(ce=1.0),
    "ce_ls": dict(ce=1.0, label_smoothing=0.1),
    "mse": dict(ce=0.0, mse=1.0),
    "kl_T4": dict(ce=0.0, kl=1.0, temperature=4.0),
    "ce_mse": dict(ce=0.7, mse=0.3),
    "all": dict(ce=0.5, mse=0.25, kl=2.0, label_smoothing=0.1, temperature=2.0),
}


@pytest.mark.parametrize("case", sorted(LOSS_CASES))
@pytest.mark.parametrize("soft", [False, True])
def test_weighted_loss(case, soft, rng):
    kw = LOSS_CASES[case]
    B, K = 6, 10
    z, t = _logits(rng, B, K), _logits(rng, B, K)
    y = _soft(rng, B, K) if soft else rng.integers(0, K, size=B).astype(np.int64)
    loss = polyvit.Loss(**kw)
    v, d = loss(z, labels=y if kw.get("ce", 1.0) else None,
                teacher_logits=t if kw.get("mse") or kw.get("kl") else None)
    want_v, want_d = torch_ref.loss_and_grad(
        z, labels=y, teacher=t, ce=kw.get("ce", 1.0), mse_w=kw.get("mse", 0.0),
        kl=kw.get("kl", 0.0), label_smoothing=kw.get("label_smoothing", 0.0),
        temperature=kw.get("temperature", 1.0))
    _check(v, d, want_v, want_d, B, K)


def test_weighted_loss_is_sum_of_parts(rng):
    B, K = 5, 8
    z, t = _logits(rng, B, K), _logits(rng, B, K)
    y = rng.integers(0, K, size=B).astype(np.int64)
    v, d = polyvit.Loss(ce=0.5, mse=0.25, kl=2.0, label_smoothing=0.1, temperature=3.0)(
        z, labels=y, teacher_logits=t)
    parts = [losses.cross_entropy(z, y, label_smoothing=0.1), losses.mse(z, t),
             losses.kl_div(z, t, temperature=3.0)]
    w = (0.5, 0.25, 2.0)
    want_v = sum(wi * float(p[0]) for wi, p in zip(w, parts))
    want_d = sum(wi * p[1].astype(np.float64) for wi, p in zip(w, parts))
    assert abs(float(v) - want_v) <= 1e-6 * abs(want_v)
    np.testing.assert_allclose(d, want_d, rtol=1e-5, atol=1e-7)


def test_default_loss_is_cross_entropy(rng):
    z, y = _logits(rng, 3, 4), rng.integers(0, 4, size=3).astype(np.int64)
    v, d = polyvit.Loss()(z, labels=y)
    v2, d2 = losses.cross_entropy(z, y)
    assert abs(float(v) - float(v2)) <= 1e-7 * abs(float(v2))
    np.testing.assert_allclose(d, d2, rtol=1e-6, atol=1e-9)
