"""MPC fixed-point simulation (polyvit._C.fx_*, polyvit.mpc.fixedpoint) against independent
references: Python integers and NumPy uint64 for the ring (wrapping, floor truncation), a NumPy
ring port of every kernel and of the whole model (bit-exact), a float64 NumPy forward pass, and
the float32 engine (model.forward)."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

import polyvit
from polyvit import _C
from polyvit.mpc import fixedpoint as fp

from helpers import CONFIGS, make_config, random_params

I64, U64 = np.int64, np.uint64
M64 = 1 << 64


# ---- a NumPy reference of the ring ----------------------------------------------------------
# uint64 array arithmetic wraps mod 2^64 (NumPy does not check array integer overflow); an int64
# view of it is the signed value, and >> on int64 is an arithmetic shift (floor).

def r_enc(x, f):
    return np.rint(np.asarray(x, np.float64) * 2.0 ** f).astype(I64)


def r_dec(v, f):
    return np.asarray(v, I64).astype(np.float64) / 2.0 ** f


def r_add(a, b):
    return (np.asarray(a, I64).view(U64) + np.asarray(b, I64).view(U64)).view(I64)


def r_sub(a, b):
    return (np.asarray(a, I64).view(U64) - np.asarray(b, I64).view(U64)).view(I64)


def r_mul(a, b, f):  # trunc(a * b)
    return (np.asarray(a, I64).view(U64) * np.asarray(b, I64).view(U64)).view(I64) >> f


def r_sum(a, axis):
    return np.asarray(a, I64).view(U64).sum(axis, keepdims=True, dtype=U64).view(I64)


def r_matmul(x, w, f):  # trunc(x @ w), x (..., K), w (K, N) or batched
    return (np.asarray(x, I64).view(U64) @ np.asarray(w, I64).view(U64)).view(I64) >> f


# the C kernels call libm's exp/erf/tanh; math.* calls the same libm, so these are bit-identical
_exp, _erf, _tanh = np.vectorize(math.exp), np.vectorize(math.erf), np.vectorize(math.tanh)


def r_layernorm(x, g, b, f, eps):
    inv_d = r_enc(1.0 / x.shape[-1], f)
    mean = r_mul(r_sum(x, -1), inv_d, f)
    d = r_sub(x, mean)
    var = r_mul(r_sum(r_mul(d, d, f), -1), inv_d, f)
    rstd = r_enc(1.0 / np.sqrt(np.maximum(r_dec(var, f), 0.0) + eps), f)
    return r_add(r_mul(r_mul(d, rstd, f), g, f), b)


def r_softmax(x, f):
    z = np.minimum(r_dec(r_sub(x, x.max(-1, keepdims=True)), f), 0.0)
    e = r_enc(_exp(z), f)
    r = r_enc(1.0 / r_dec(r_sum(e, -1), f), f)
    return r_mul(e, r, f)


def r_gelu(x, f, tanh_form=False):
    v = r_dec(x, f)
    if tanh_form:
        e = _tanh(0.79788456080286535588 * (v + 0.044715 * v * v * v))
    else:
        e = _erf(v * 0.70710678118654752440)
    return r_enc(0.5 * v * (1.0 + e), f)


def r_poly(x, a, b, c, s, f):
    A, B, C = (r_enc(np.asarray(s, np.float64) * np.asarray(k, np.float64), f) for k in (a, b, c))
    return r_add(r_mul(r_add(r_mul(A, x, f), B), x, f), C)


def r_attention(qkv, heads, f):
    B, T, C3 = qkv.shape
    C = C3 // 3
    hd = C // heads
    q, k, v = (qkv[:, :, i * C:(i + 1) * C].reshape(B, T, heads, hd).transpose(0, 2, 1, 3)
               for i in range(3))
    q = r_mul(q, r_enc(hd ** -0.5, f), f)
    s = r_matmul(q, np.swapaxes(k, -1, -2), f)
    o = r_matmul(r_softmax(s, f), v, f)
    return np.ascontiguousarray(o.transpose(0, 2, 1, 3).reshape(B, T, C))


def r_forward(model, x, f, input_scale=None):
    """The whole model in the ring, from the state dict: an independent port of what
    polyvit.mpc.fixedpoint.evaluate is documented to compute."""
    cfg, sd = model.config, model.state_dict()
    e = lambda n: r_enc(sd[n], f)  # noqa: E731
    B, p, C, T = x.shape[0], cfg.patch_size, cfg.embed_dim, cfg.seq_len
    G = cfg.img_size // p
    pt = x.reshape(B, cfg.in_chans, G, p, G, p).transpose(0, 2, 4, 1, 3, 5).reshape(B, G * G, -1)
    h = r_add(r_matmul(r_enc(pt, f), e("patch_embed.proj.weight").reshape(C, -1).T, f),
              e("patch_embed.proj.bias"))
    h = np.concatenate([np.broadcast_to(e("cls_token").reshape(1, 1, C), (B, 1, C)), h], 1)
    h = r_add(h, e("pos_embed"))
    for i in range(cfg.depth):
        n = f"blocks.{i}."
        z = r_layernorm(h, e(n + "norm1.weight"), e(n + "norm1.bias"), f, cfg.ln_eps)
        qkv = r_matmul(z, e(n + "attn.qkv.weight").T, f)
        if cfg.qkv_bias:
            qkv = r_add(qkv, e(n + "attn.qkv.bias"))
        o = r_attention(qkv, cfg.num_heads, f)
        h = r_add(h, r_add(r_matmul(o, e(n + "attn.proj.weight").T, f), e(n + "attn.proj.bias")))
        z = r_layernorm(h, e(n + "norm2.weight"), e(n + "norm2.bias"), f, cfg.ln_eps)
        u = r_add(r_matmul(z, e(n + "mlp.fc1.weight").T, f), e(n + "mlp.fc1.bias"))
        if cfg.act[i] == "poly":
            a, b, c, s = (sd[n + f"mlp.act.{k}"].astype(np.float64) for k in "abcs")
            sig = 1.0 if input_scale is None else input_scale
            if sig != 1.0:
                u = r_mul(u, r_enc(1.0 / sig, f), f)
            act = r_poly(u, a * sig * sig, b * sig, c, s, f)
        else:
            act = r_gelu(u, f, cfg.gelu == "tanh")
        h = r_add(h, r_add(r_matmul(act, e(n + "mlp.fc2.weight").T, f), e(n + "mlp.fc2.bias")))
    if cfg.global_pool == "token":
        z = h[:, 0]
        if cfg.final_norm:
            z = r_layernorm(z, e("norm.weight"), e("norm.bias"), f, cfg.ln_eps)
    else:
        if cfg.final_norm:
            h = r_layernorm(h, e("norm.weight"), e("norm.bias"), f, cfg.ln_eps)
        z = r_mul(r_sum(h[:, 1:], 1)[:, 0], r_enc(1.0 / (T - 1), f), f)
    if cfg.fc_norm:
        z = r_layernorm(z, e("fc_norm.weight"), e("fc_norm.bias"), f, cfg.ln_eps)
    return r_dec(r_add(r_matmul(z, e("head.weight").T, f), e("head.bias")), f)


# ---- a float64 reference of the network -----------------------------------------------------

def float_forward(model, x):
    cfg, sd = model.config, {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    B, p, C, T, H = x.shape[0], cfg.patch_size, cfg.embed_dim, cfg.seq_len, cfg.num_heads
    G, hd = cfg.img_size // p, cfg.embed_dim // cfg.num_heads

    def lin(v, n, bias=True):  # 2-d products: NumPy's BLAS is slow on small 3-d ones here
        y = (v.reshape(-1, v.shape[-1]) @ sd[n + ".weight"].reshape(sd[n + ".weight"].shape[0], -1).T)
        return y.reshape(v.shape[:-1] + (-1,)) + (sd[n + ".bias"] if bias else 0.0)

    def ln(v, n):
        mu = v.mean(-1, keepdims=True)
        return (v - mu) / np.sqrt(((v - mu) ** 2).mean(-1, keepdims=True) + cfg.ln_eps) \
            * sd[n + ".weight"] + sd[n + ".bias"]

    pt = x.astype(np.float64).reshape(B, cfg.in_chans, G, p, G, p).transpose(0, 2, 4, 1, 3, 5) \
        .reshape(B, G * G, -1)
    h = lin(pt, "patch_embed.proj")
    h = np.concatenate([np.broadcast_to(sd["cls_token"], (B, 1, C)), h], 1) + sd["pos_embed"]
    for i in range(cfg.depth):
        n = f"blocks.{i}."
        qkv = lin(ln(h, n + "norm1"), n + "attn.qkv", cfg.qkv_bias)
        q, k, v = (qkv[:, :, j * C:(j + 1) * C].reshape(B, T, H, hd).transpose(0, 2, 1, 3)
                   for j in range(3))
        s = np.einsum("bhtd,bhsd->bhts", q, k) * hd ** -0.5
        s = np.exp(s - s.max(-1, keepdims=True))
        o = np.einsum("bhts,bhsd->bhtd", s / s.sum(-1, keepdims=True), v)
        h = h + lin(o.transpose(0, 2, 1, 3).reshape(B, T, C), n + "attn.proj")
        u = lin(ln(h, n + "norm2"), n + "mlp.fc1")
        if cfg.act[i] == "poly":
            a, b, c, s_ = (sd[n + f"mlp.act.{k_}"] for k_ in "abcs")
            act = s_ * (a * u * u + b * u + c)
        elif cfg.gelu == "tanh":
            act = 0.5 * u * (1 + np.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))
        else:
            act = 0.5 * u * (1 + _erf(u / math.sqrt(2)))
        h = h + lin(act, n + "mlp.fc2")
    if cfg.final_norm:
        h = ln(h, "norm")
    z = h[:, 0] if cfg.global_pool == "token" else h[:, 1:].mean(1)
    if cfg.fc_norm:
        z = ln(z, "fc_norm")
    return lin(z, "head")


def random_model(rng, **cfg):
    c = make_config(**cfg)
    m = polyvit.ViT(c, max_batch=8, seed=None)
    m.load_state_dict(random_params(c, rng))
    return m


def images_for(model, rng, n):
    c = model.config
    return rng.integers(0, 256, (n, c.in_chans, c.img_size, c.img_size), dtype=np.uint8)


MINI = dict(img_size=32, patch_size=4, embed_dim=128, depth=2, num_heads=4, num_classes=10)


# ---- the ring -------------------------------------------------------------------------------

def test_truncation_is_floor_of_the_signed_value():
    x = np.array([-3, -2, -1, 0, 1, 2, 3, -(1 << 63), (1 << 63) - 1], I64)
    one = np.array([1], I64)
    got = _C.fx_mul(x, one, 1)  # x * 1, truncated by one bit: floor(x / 2)
    assert got.tolist() == [v // 2 for v in x.tolist()]  # Python's // is floor division
    assert got.tolist()[:7] == [-2, -1, -1, 0, 0, 1, 1]
    assert (_C.fx_mul(x, one, 0) == x).all()


def test_encode_decode_round_trip(rng):
    for f in (0, 1, 18, 30, 40):
        x = rng.normal(0, 50, 1000)
        v = _C.fx_encode(x, f)
        assert (v == np.rint(x * 2.0 ** f).astype(I64)).all()  # round to nearest, ties to even
        back = _C.fx_decode(v, f)
        assert np.abs(back - x).max() <= 2.0 ** -(f + 1)
        assert (_C.fx_encode(back, f) == v).all()  # decoded values are exact ring points
    assert _C.fx_encode(np.array([0.5, 1.5, 2.5, -0.5]), 0).tolist() == [0, 2, 2, 0]
    x32 = rng.normal(0, 3, 100).astype(np.float32)
    assert (_C.fx_encode(x32, 18) == _C.fx_encode(x32.astype(np.float64), 18)).all()
    assert _C.fx_encode(np.zeros((2, 0, 3)), 18).shape == (2, 0, 3)


def test_encode_wraps_modulo_2_64_and_rejects_non_finite():
    f = 18
    vals = [2.0 ** 45, -(2.0 ** 45), 2.0 ** 46 + 3.0, 3.0 * 2 ** 60, -1e30, 1e300, 2.0 ** 70 + 2.0 ** 50]
    got = _C.fx_encode(np.array(vals), f).tolist()
    for g, v in zip(got, vals):
        r = int(round(v * 2 ** f)) % M64
        assert g % M64 == r, v
    assert got[0] == -(1 << 63)  # 2^63 read as signed
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="non-finite"):
            _C.fx_encode(np.array([1.0, bad]), f)


@pytest.mark.parametrize("kernel", ["auto", "u64", "i32"])
def test_matmul_matches_the_ring_reference(rng, kernel):
    lo, hi = (-(1 << 31), 1 << 31) if kernel == "i32" else (-(1 << 63), 1 << 63)
    for (M, K, N) in [(1, 1, 1), (7, 5, 33), (13, 64, 65), (50, 40, 3)]:
        x = rng.integers(lo, hi, (M, K), dtype=I64)
        w = rng.integers(lo, hi, (K, N), dtype=I64)
        b = rng.integers(lo, hi, N, dtype=I64)
        res = rng.integers(lo, hi, (M, N), dtype=I64)
        for f in (0, 18, 62):
            want = r_add(r_add(r_matmul(x, w, f), b), res)
            got = _C.fx_matmul(x, w, b, f, residual=res, kernel=kernel)
            assert (got == want).all(), (M, K, N, f)
            got_t = _C.fx_matmul(x, np.ascontiguousarray(w.T), b, f, transpose_b=True,
                                 residual=res, kernel=kernel)
            assert (got_t == want).all()
        assert (_C.fx_matmul(x, w, None, 18, kernel=kernel) == r_matmul(x, w, 18)).all()
    # batched operands, leading dimensions
    x = rng.integers(lo, hi, (3, 9, 17), dtype=I64)
    w = rng.integers(lo, hi, (3, 17, 35), dtype=I64)
    want = r_matmul(x, w, 12)
    assert (_C.fx_matmul(x, w, None, 12, kernel=kernel) == want).all()
    wt = np.ascontiguousarray(np.swapaxes(w, 1, 2))
    assert (_C.fx_matmul(x, wt, None, 12, transpose_b=True, kernel=kernel) == want).all()
    w2 = w[0].copy()
    assert (_C.fx_matmul(x, w2, None, 12, kernel=kernel) == r_matmul(x, w2, 12)).all()


def test_matmul_wraps_exactly_like_python_integers():
    # every product is 2^62: the 4-term sum is 2^64 = 0 in the ring, 3 terms wrap to -2^62
    f = 18
    x = np.array([[1 << 31] * 4, [1 << 31] * 3 + [0], [-(1 << 31)] * 4], I64)
    w = np.array([[1 << 31, 3], [1 << 31, 5], [1 << 31, 7], [1 << 31, (1 << 62) + 1]], I64)
    got = _C.fx_matmul(x, w, None, f)

    def py(i, j):
        s = sum(int(x[i, k]) * int(w[k, j]) for k in range(4)) % M64
        s = s - M64 if s >= 1 << 63 else s
        return s >> f  # Python's >> on a negative int is floor

    want = [[py(i, j) for j in range(2)] for i in range(3)]
    assert got.tolist() == want
    assert got[0, 0] == 0 and got[1, 0] == -(1 << 62) >> f


def test_elementwise_kernels_match_the_ring_reference(rng):
    f = 18
    x = r_enc(rng.normal(0, 3, (6, 37)), f)
    g, b = r_enc(rng.normal(1, 0.3, 37), f), r_enc(rng.normal(0, 0.3, 37), f)
    assert (_C.fx_layernorm(x, g, b, f, 1e-6) == r_layernorm(x, g, b, f, 1e-6)).all()
    assert (_C.fx_softmax(x, f) == r_softmax(x, f)).all()
    for tanh_form in (False, True):
        assert (_C.fx_gelu(x, f, tanh_form) == r_gelu(x, f, tanh_form)).all()
    assert (_C.fx_mul(x, g, f) == r_mul(x, g, f)).all()
    assert (_C.fx_mul(x, x, f) == r_mul(x, x, f)).all()
    assert (_C.fx_mul(x, g[:1], f) == r_mul(x, g[:1], f)).all()
    a, bb, c, s = 0.11, 0.5, 0.09, 1.3
    assert (_C.fx_poly(x, a, bb, c, s, f) == r_poly(x, a, bb, c, s, f)).all()
    va, vb = rng.uniform(0.1, 0.3, 37), rng.uniform(0.4, 0.6, 37)
    assert (_C.fx_poly(x, va, vb, c, s, f) == r_poly(x, va, vb, c, s, f)).all()
    # the fused range statistics are the separate kernel's
    for y, mi, mo in (_C.fx_gelu(x, f, stats=True), _C.fx_poly(x, va, vb, c, s, f, stats=True)):
        assert mi == _C.fx_maxabs(x, f) and mo == _C.fx_maxabs(y, f)
    m = np.abs(r_dec(x, f)).max()
    assert _C.fx_maxabs(x, f) == m and _C.fx_maxabs(x[:0], f) == 0.0
    # GELU of ring values near 2^63 (decoded ~2^45): gelu(v) = v, re-encoded mod 2^64
    big = np.array([(1 << 63) - 1, (1 << 62) + 12345, -(1 << 62)], I64)
    y, _, mo = _C.fx_gelu(big, f, stats=True)
    want = [int(round(max(float(v) / 2 ** f, 0.0) * 2 ** f)) % M64 for v in big.tolist()]
    assert [v % M64 for v in y.tolist()] == want and mo == _C.fx_maxabs(y, f)
    assert _C.fx_maxabs(np.array([-(1 << 63)], I64), 0) == 2.0 ** 63


def test_kernels_follow_float64_to_the_resolution(rng):
    f = 20
    ulp = 2.0 ** -f
    xf = rng.normal(0.2, 2.0, (8, 64))
    x = _C.fx_encode(xf, f)
    xf = _C.fx_decode(x, f)  # the exact inputs the kernels see
    g, b = rng.normal(1, 0.2, 64), rng.normal(0, 0.2, 64)
    mu, sd = xf.mean(-1, keepdims=True), xf.std(-1, keepdims=True)
    want = (xf - mu) / np.sqrt(sd ** 2 + 1e-6) * g + b
    got = _C.fx_decode(_C.fx_layernorm(x, _C.fx_encode(g, f), _C.fx_encode(b, f), f), f)
    # mean/var/rstd and three truncations each off by <= 1 ulp, amplified by rstd*|g| (< 2)
    assert np.abs(got - want).max() < 16 * ulp
    e = np.exp(xf - xf.max(-1, keepdims=True))
    got = _C.fx_decode(_C.fx_softmax(x, f), f)
    assert np.abs(got - e / e.sum(-1, keepdims=True)).max() < 4 * ulp
    gelu = 0.5 * xf * (1 + _erf(xf / math.sqrt(2)))
    assert np.abs(_C.fx_decode(_C.fx_gelu(x, f), f) - gelu).max() <= 0.5 * ulp
    got = _C.fx_decode(_C.fx_poly(x, 0.1, 0.5, 0.2, 1.5, f), f)
    # coefficient encodings (1/2 ulp each, times |x|^2, |x|) and two truncations
    assert np.abs(got - 1.5 * (0.1 * xf ** 2 + 0.5 * xf + 0.2)).max() < (2 + np.abs(xf).max() ** 2) * ulp


def test_attention_is_the_composition_of_the_kernels(rng):
    f = 18
    for B, T, C, H in [(2, 17, 24, 3), (1, 65, 128, 4), (3, 5, 6, 2), (1, 70, 40, 1)]:
        qkv = r_enc(rng.normal(0, 1.5, (B, T, 3 * C)), f)
        y, st = _C.fx_attention(qkv, H, f)
        assert (y == r_attention(qkv, H, f)).all(), (B, T, C, H)
        # the same from the generic kernels: batched matmuls with a transposed operand
        hd = C // H
        q, k, v = (np.ascontiguousarray(qkv[:, :, i * C:(i + 1) * C].reshape(B, T, H, hd)
                                        .transpose(0, 2, 1, 3).reshape(B * H, T, hd)) for i in range(3))
        q = _C.fx_mul(q, r_enc(hd ** -0.5, f).reshape(1), f)
        p = _C.fx_softmax(_C.fx_matmul(q, k, None, f, transpose_b=True), f)
        o = _C.fx_matmul(p, v, None, f).reshape(B, H, T, hd).transpose(0, 2, 1, 3).reshape(B, T, C)
        assert (o == y).all()
        s = _C.fx_matmul(q, k, None, f, transpose_b=True)
        assert st["scores_in"] == max(_C.fx_maxabs(q, f), _C.fx_maxabs(k, f))
        assert st["softmax_in"] == _C.fx_maxabs(s, f)
        assert st["v"] == _C.fx_maxabs(v, f) and st["out"] == _C.fx_maxabs(y, f)


def test_kernel_argument_errors():
    x = np.zeros((4, 3), I64)
    with pytest.raises(TypeError, match="int64"):
        _C.fx_matmul(x.astype(np.float64), x.T.copy(), None, 18)
    with pytest.raises(TypeError, match="numpy int64 array"):
        _C.fx_matmul([[1]], x, None, 18)
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.fx_matmul(x, x.T, None, 18)
    with pytest.raises(ValueError, match="byte order"):
        _C.fx_decode(x.astype(">i8"), 18)
    with pytest.raises(ValueError, match="inner dimension"):
        _C.fx_matmul(x, x, None, 18)
    with pytest.raises(ValueError, match="bias"):
        _C.fx_matmul(x, np.zeros((3, 5), I64), np.zeros(4, I64), 18)
    with pytest.raises(ValueError, match="residual"):
        _C.fx_matmul(x, np.zeros((3, 5), I64), None, 18, residual=np.zeros((4, 4), I64))
    with pytest.raises(ValueError, match="batched"):
        _C.fx_matmul(x, np.zeros((2, 3, 5), I64), None, 18)
    with pytest.raises(ValueError, match="0..62"):
        _C.fx_matmul(x, np.zeros((3, 5), I64), None, 63)
    with pytest.raises(ValueError, match="kernel"):
        _C.fx_matmul(x, np.zeros((3, 5), I64), None, 18, kernel="fast")
    with pytest.raises(ValueError, match="int32"):
        _C.fx_matmul(x + (1 << 40), np.zeros((3, 5), I64), None, 18, kernel="i32")
    with pytest.raises(TypeError, match="float32 or float64"):
        _C.fx_encode(np.zeros(3, np.int32), 18)
    with pytest.raises(ValueError, match="gamma"):
        _C.fx_layernorm(x, np.zeros(4, I64), np.zeros(3, I64), 18)
    with pytest.raises(ValueError, match="eps"):
        _C.fx_layernorm(x, np.zeros(3, I64), np.zeros(3, I64), 18, -1.0)
    with pytest.raises(ValueError, match="last axis"):
        _C.fx_softmax(np.zeros((3, 0), I64), 18)
    with pytest.raises(ValueError, match="single value"):
        _C.fx_mul(x, np.zeros(2, I64), 18)
    with pytest.raises(ValueError, match="coefficient a"):
        _C.fx_poly(x, np.zeros(2), 0.5, 0.1, 1.0, 18)
    with pytest.raises(ValueError, match="not finite"):
        _C.fx_poly(x, np.nan, 0.5, 0.1, 1.0, 18)
    with pytest.raises(ValueError, match="num_heads"):
        _C.fx_attention(np.zeros((1, 4, 12), I64), 3, 18)
    with pytest.raises(ValueError, match="B, T, 3C"):
        _C.fx_attention(np.zeros((1, 4, 12, 1), I64), 1, 18)
    # a vector times a matrix; empty products are fine
    v = np.arange(3, dtype=I64) << 18
    assert _C.fx_matmul(v, np.eye(3, dtype=I64) << 18, None, 18).tolist() == v.tolist()
    assert _C.fx_attention(np.zeros((0, 4, 12), I64), 2, 18)[0].shape == (0, 4, 4)
    assert _C.fx_matmul(np.zeros((0, 3), I64), np.zeros((3, 5), I64), None, 18).shape == (0, 5)
    y = _C.fx_matmul(np.zeros((2, 0), I64), np.zeros((0, 5), I64), np.arange(5, dtype=I64), 18)
    assert y.tolist() == [list(range(5))] * 2


# ---- the whole model --------------------------------------------------------------------------

VARIANTS = {
    "default": {},
    "no_final_norm": dict(final_norm=False),
    "avg_pool": dict(global_pool="avg"),
    "avg_fc_norm": dict(global_pool="avg", final_norm=False, fc_norm=True),
    "tanh_no_qkv_bias": dict(gelu="tanh", qkv_bias=False),
    "poly_mixed": dict(act=("poly", "gelu"), poly_per_channel=(True, False)),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_model_is_bit_exact_with_the_ring_reference(rng, variant):
    m = random_model(rng, **{**CONFIGS["img16_p4_d36_h3_poly"], "act": ("gelu", "gelu"),
                             "poly_per_channel": (False, False), **VARIANTS[variant]})
    imgs = images_for(m, rng, 3)
    r = fp.evaluate(m, imgs, frac_bits=18, progress=False)
    assert (r.logits == r_forward(m, m.preprocess(imgs), 18)).all()
    # and the float64 network it approximates is the engine's
    ref = float_forward(m, m.preprocess(imgs))
    assert np.abs(ref - m.forward(imgs)).max() < 1e-4 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_odd_configs_are_bit_exact(rng, name):
    m = random_model(rng, **CONFIGS[name])
    imgs = images_for(m, rng, 2)
    r = fp.evaluate(m, imgs, frac_bits=16, progress=False)
    assert (r.logits == r_forward(m, m.preprocess(imgs), 16)).all()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_model_follows_the_float_model(rng, variant):
    """Fixed point against float, on vit_mini (dim 128, 4 heads, 65 tokens) with O(1) random
    weights. Error budget: every encoding rounds by <= 2^-(f+1) and every truncation by < 2^-f,
    so each op adds O(2^-f) absolute error per element; a matmul sums K of them weighted by the
    weights (|w| ~ 1/sqrt(K): ~sqrt(K) * 2^-f, a few ulp), LayerNorm rescales by gamma/std (std of
    these streams >= ~0.3: a gain <= ~4), and 2 blocks + head stack ~10 such stages, giving
    ~2^(6..8) * 2^-f at worst; the tolerance is 2^(10 - f). Observed (f = 12..24, these six
    variants): 28..83 * 2^-f, i.e. at least 12x below it. float32 (the engine) is ~1e-6 relative: negligible at f <= 20."""
    m = random_model(rng, **{**MINI, **VARIANTS[variant]})
    if variant == "default":
        m.set_activation(1, "poly", coeffs=(rng.uniform(0.1, 0.3, 512), 0.5, 0.1), per_channel=True)
    imgs = images_for(m, rng, 6)
    ref = float_forward(m, m.preprocess(imgs))
    errs = {}
    for f in (16, 20):
        r = fp.evaluate(m, imgs, frac_bits=f, progress=False)
        errs[f] = np.abs(r.logits - ref).max()
        assert errs[f] < 2.0 ** (10 - f), (f, errs[f])
        assert np.abs(r.logits - r.float_logits).max() < 2.0 ** (10 - f) + 1e-4
        assert r.fidelity == 1.0 and r.logit_cosine > 1 - 1e-6
    # the error is a fixed-point error: 4 more bits shrink it by ~16 (not a float-model mismatch)
    assert errs[20] < errs[16] / 4


def test_tiny_frac_bits_lose_accuracy(rng):
    m = random_model(rng, **MINI)
    imgs = images_for(m, rng, 8)
    r18 = fp.evaluate(m, imgs, frac_bits=18, progress=False)
    with pytest.warns(fp.FixedPointOverflowWarning, match="fixed-point error"):
        # at f = 6, enc(1/128) = round(64/128) = 0: LayerNorm's mean and variance become 0,
        # rstd = 1/sqrt(eps) and the stream explodes until it leaves the ring
        r6 = fp.evaluate(m, imgs, frac_bits=6, progress=False)
    assert r6.max_abs_error > 30 * r18.max_abs_error
    assert r6.mean_abs_error > 30 * r18.mean_abs_error
    assert r6.logit_cosine < r18.logit_cosine


def test_fidelity_on_a_trained_model():
    from polyvit import demo

    teacher, _, (x, y), _ = demo.load_assets(max_batch=100)
    r = fp.evaluate(teacher, x[:100], frac_bits=18, labels=y[:100], progress=False)
    assert r.fidelity == 1.0
    assert r.top1 == r.float_top1 and r.top1 > 0.3
    assert r.logit_cosine > 1 - 1e-6 and r.max_abs_error < 1e-2
    assert not r.exceeded and r.safe_bound == 2.0 ** 13
    d = json.loads(json.dumps(r.to_dict()))
    assert d["quantisation_error"]["max_abs"] == r.max_abs_error
    assert len(d["blocks"]) == teacher.config.depth
    assert set(d["blocks"][0]["max_abs"]) == set(fp.RANGE_KEYS)
    b0 = r.blocks[0].max_abs
    # LN1's input is the token embedding, LN2's the residual after attention: both O(1..10)
    assert 0.1 < b0["ln1_in"] < 100 and 0.1 < b0["ln2_in"] < 100
    assert b0["act_in"] == b0["mlp_u"]  # GELU multiplies u itself
    assert "fidelity 100.00%" in r.summary()


def test_ranges_are_the_float_ranges(rng):
    m = random_model(rng, **{**MINI, "act": ("poly", "gelu")})
    imgs = images_for(m, rng, 4)
    r = fp.evaluate(m, imgs, frac_bits=20, progress=False)
    _, caps = m.forward(imgs, capture=True)
    for i in range(2):
        assert abs(r.blocks[i].max_abs["mlp_u"] - np.abs(caps[i]).max()) < 1e-3


def test_input_scale(rng):
    m = random_model(rng, **{**MINI, "act": ("poly", "poly")})
    imgs = images_for(m, rng, 4)
    plain = fp.evaluate(m, imgs, frac_bits=18, progress=False)
    r = fp.evaluate(m, imgs, frac_bits=18, input_scale=4.0, progress=False)
    assert r.input_scale == {0: 4.0, 1: 4.0}
    for b in r.blocks:
        assert abs(b.max_abs["act_in"] - b.max_abs["mlp_u"] / 4) <= 2.0 ** -18
        assert b.input_scale == 4.0
    # the same polynomial, with u resolved to 4 * 2^-f: still the float model's logits
    assert np.abs(r.logits - plain.float_logits).max() < 2.0 ** (10 - 18) * 4
    ref = r_forward(m, m.preprocess(imgs), 18, input_scale=4.0)
    assert (r.logits == ref).all()
    r1 = fp.evaluate(m, imgs, frac_bits=18, input_scale={1: 2.0}, progress=False)
    assert r1.input_scale == {1: 2.0} and r1.blocks[0].input_scale == 1.0


def test_overflow_warns_with_block_bound_and_remedies(rng):
    m = random_model(rng, **{**MINI, "act": ("gelu", "poly")})
    imgs = images_for(m, rng, 2)
    m.params["blocks.1.mlp.fc2.weight"][...] *= 3e4  # the residual stream after block 1 explodes
    with pytest.warns(fp.FixedPointOverflowWarning) as rec:
        r = fp.evaluate(m, imgs, frac_bits=18, progress=False)
    msg = str(rec[0].message)
    assert "head" in msg and "8192" in msg and "frac_bits <=" in msg
    assert r.exceeded and r.head_exceeded["norm_in"]
    assert not r.blocks[0].any_exceeded
    # input_scale < 1 magnifies the poly input past the bound: the warning names the block
    m2 = random_model(rng, **{**MINI, "act": ("gelu", "poly")})
    with pytest.warns(fp.FixedPointOverflowWarning, match=r"block 1 activation input.*input_scale"):
        r = fp.evaluate(m2, imgs, frac_bits=18, input_scale=1e-4, progress=False)
    assert r.blocks[1].exceeded["act_in"] and not r.blocks[0].any_exceeded
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fp.evaluate(m2, imgs, frac_bits=18, progress=False)  # in range: no warning


def test_evaluate_argument_errors(rng):
    m = random_model(rng, **CONFIGS["img12_p3_d12_h1_gelu"])
    imgs = images_for(m, rng, 2)
    for bad, exc in [(0, ValueError), (31, ValueError), (18.0, TypeError), (True, TypeError)]:
        with pytest.raises(exc, match="frac_bits"):
            fp.evaluate(m, imgs, frac_bits=bad, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        fp.evaluate(m, imgs, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="shape"):
        fp.evaluate(m, imgs[:, :, :5], progress=False)
    with pytest.raises(TypeError, match="dtype"):
        fp.evaluate(m, imgs.astype(np.int16), progress=False)
    with pytest.raises(TypeError, match="polyvit.ViT"):
        fp.evaluate("model", imgs)
    with pytest.raises(ValueError, match="poly"):
        fp.evaluate(m, imgs, input_scale=2.0, progress=False)  # no poly block
    with pytest.raises(ValueError, match="labels"):
        fp.evaluate(m, imgs, labels=[0, 1, 2], progress=False)
    with pytest.raises(ValueError, match="labels"):
        fp.evaluate(m, imgs, labels=[0, 9], progress=False)
    mp = random_model(rng, **CONFIGS["img8_p8_d12_h2_gelu_poly"])
    ip = images_for(mp, rng, 2)
    for bad, exc in [(-1.0, ValueError), (0, ValueError), (float("nan"), ValueError),
                     ("2", TypeError), ({0: 2.0}, ValueError), ({1: -2.0}, ValueError),
                     ({5: 2.0}, ValueError)]:
        with pytest.raises(exc, match="input_scale"):
            fp.evaluate(mp, ip, input_scale=bad, progress=False)


def test_progress_bar_and_batches(rng, capsys):
    m = random_model(rng, **CONFIGS["img12_p3_d12_h1_gelu"])
    imgs = images_for(m, rng, 5)
    r = fp.evaluate(m, imgs, batch_size=2, progress=True, labels=np.arange(5) % 5)
    err = capsys.readouterr().err
    assert "fixed point f=18" in err and "5/5" in err
    whole = fp.evaluate(m, imgs, batch_size=64, progress=False)
    assert (r.logits == whole.logits).all()  # batching never changes the ring values
    assert r.top1 is not None and r.predictions.shape == (5,)
