"""Validate the oracle itself: tests/torch_ref.py against an independent numpy forward.

If the reference were wrong (qkv split, patch order, class-token position, layer-norm
variance, ...), every comparison against polyvit would test the wrong thing, so the reference
is checked here against a direct float64 numpy transcription of timm's ViT.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from helpers import CONFIGS, make_config, random_images, random_params

torch = pytest.importorskip("torch", reason="torch is the test oracle; oracle tests need it")
import torch_ref  # noqa: E402


def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)   # biased variance, as torch/timm
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def numpy_vit(cfg, P, x, capture=False):
    """timm ViT forward written out with explicit loops/indices in float64 numpy."""
    P = {k: v.astype(np.float64) for k, v in P.items()}
    x = x.astype(np.float64)
    B, p, C = x.shape[0], cfg.patch_size, cfg.embed_dim
    g = cfg.img_size // p
    # patch embedding: patch (r, c) in row-major order, each patch flattened as (chan, y, x)
    W = P["patch_embed.proj.weight"].reshape(C, -1)
    tokens = np.empty((B, g * g, C))
    for r in range(g):
        for c in range(g):
            patch = x[:, :, r * p:(r + 1) * p, c * p:(c + 1) * p].reshape(B, -1)
            tokens[:, r * g + c] = patch @ W.T + P["patch_embed.proj.bias"]
    h = np.concatenate([np.broadcast_to(P["cls_token"], (B, 1, C)), tokens], 1) + P["pos_embed"]
    acts = {}
    nh, hd = cfg.num_heads, C // cfg.num_heads
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        y = _ln(h, P[b + "norm1.weight"], P[b + "norm1.bias"], cfg.ln_eps)
        qkv = y @ P[b + "attn.qkv.weight"].T + P[b + "attn.qkv.bias"]   # (B, T, 3C)
        q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
        out = np.empty_like(q)
        for head in range(nh):
            sl = slice(head * hd, (head + 1) * hd)
            s = q[..., sl] @ np.swapaxes(k[..., sl], 1, 2) / math.sqrt(hd)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            out[..., sl] = s @ v[..., sl]
        h = h + out @ P[b + "attn.proj.weight"].T + P[b + "attn.proj.bias"]
        y = _ln(h, P[b + "norm2.weight"], P[b + "norm2.bias"], cfg.ln_eps)
        z = y @ P[b + "mlp.fc1.weight"].T + P[b + "mlp.fc1.bias"]
        acts[i] = z
        if cfg.act[i] == "poly":
            a, bb, c, s = (P[b + "mlp.act." + n] for n in "abcs")
            z = s * (a * z * z + bb * z + c)
        else:
            z = _gelu(z)
        h = h + z @ P[b + "mlp.fc2.weight"].T + P[b + "mlp.fc2.bias"]
    h = _ln(h, P["norm.weight"], P["norm.bias"], cfg.ln_eps)
    logits = h[:, 0] @ P["head.weight"].T + P["head.bias"]
    return (logits, acts) if capture else logits


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_reference_matches_numpy(name):
    cfg = make_config(**CONFIGS[name])
    rng = np.random.default_rng(1234)
    P = random_params(cfg, rng)
    x = random_images(cfg, 3, rng)
    ref = torch_ref.from_polyvit((cfg, P), dtype=torch.float64)
    assert list(ref.state_dict()) == [n for n, _, _ in cfg.param_specs()]
    with torch.no_grad():
        logits, acts = ref(torch.from_numpy(x.astype(np.float64)), capture=True)
    want, want_acts = numpy_vit(cfg, P, x, capture=True)
    # both float64, same math: agreement to ~1e-13 relative; 1e-10 leaves room for the
    # different summation orders without letting any real difference through
    np.testing.assert_allclose(logits.numpy(), want, rtol=1e-10, atol=1e-10 * np.abs(want).max())
    for i in range(cfg.depth):
        np.testing.assert_allclose(acts[i].numpy(), want_acts[i], rtol=1e-10, atol=1e-10)


def test_reference_float32_close_to_float64():
    """The float32 reference is within float32 rounding of the float64 one."""
    cfg = make_config(**CONFIGS["img20_p5_d24_h4_mixed"])
    rng = np.random.default_rng(5)
    P = random_params(cfg, rng)
    x = torch.from_numpy(random_images(cfg, 4, rng))
    with torch.no_grad():
        l32 = torch_ref.from_polyvit((cfg, P), torch.float32)(x).double().numpy()
        l64 = torch_ref.from_polyvit((cfg, P), torch.float64)(x.double()).numpy()
    assert np.abs(l32 - l64).max() / np.abs(l64).max() < 1e-5


def test_gelu_fit_and_poly_module():
    a, b, c = torch_ref.gelu_quadratic_fit()
    # GELU(x) - x/2 is even, so a fit on a symmetric interval has b == 1/2 exactly
    assert abs(b - 0.5) < 1e-9 and a > 0 and c > 0
    m = torch_ref.Poly(3, torch.float64, a=0.2, b=0.5, c=0.1, s=1.5)
    x = torch.tensor([[-1.0, 0.0, 2.0]], dtype=torch.float64)
    np.testing.assert_allclose(m(x).detach().numpy(),
                               1.5 * (0.2 * x.numpy() ** 2 + 0.5 * x.numpy() + 0.1))


def test_adamw_groups_rules():
    cfg = make_config(**CONFIGS["img16_p4_d36_h3_poly"])
    ref = torch_ref.RefViT(cfg, torch.float32)
    groups = torch_ref.adamw_param_groups(ref, cfg, lr=1e-3, weight_decay=0.05,
                                          groups={"poly": {"lr": 1e-2},
                                                  "embed": {"frozen": True}})
    by = {g["name"]: g for g in groups}
    assert set(by) == {"decay", "no_decay", "poly"}
    assert by["decay"]["weight_decay"] == 0.05 and by["no_decay"]["weight_decay"] == 0.0
    assert by["poly"]["lr"] == 1e-2 and by["poly"]["weight_decay"] == 0.0
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == len(cfg.param_specs()) - 2   # cls_token and pos_embed frozen
