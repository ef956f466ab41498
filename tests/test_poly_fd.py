"""Gradients of the polynomial activation's coefficients (a, b, c, s) by finite differences.

Scalar loss: L(theta) = sum(logits * R) for a fixed random R, so dL/dlogits = R and polyvit's
``backward(R)`` returns dL/dtheta.

Finite differences are taken in float64 on the torch reference (tests/torch_ref.py): central
differences (L(t+h) - L(t-h)) / 2h with h = 1e-5 * max(1, |t|). In float64 the truncation error
is ~h^2 |L'''| / 6 and the rounding error ~1e-16 |L| / h ~ 1e-10; measured against float64
autograd the FD values agree to <= 1.5e-9 relative (h = 1e-4 gives 1.4e-7: truncation; h = 1e-6
gives 1.4e-9: rounding takes over). Two checks:

  1. torch float64 autograd == float64 FD within 1e-6 (per tensor, relative to its max): this
     validates the FD harness itself; a harness bug (wrong element, wrong step, wrong loss)
     gives O(1).
  2. polyvit's float32 analytic gradient == float64 FD within 1e-3 (per tensor, relative to its
     max). A per-block coefficient's gradient is a float32 sum over B*T*H ~ 1e3 terms of mixed
     sign (e.g. dL/da = sum s * x^2 * g), each term itself carrying the float32 error of the
     backward pass through up to 3 blocks, layer norms and softmax; the expected error is
     ~sqrt(n) * 6e-8 * (sum|terms| / |sum terms|), i.e. 1e-6 .. 1e-4 with cancellation (measured:
     1.4e-6 on these configs; test_model sees up to 3.7e-5 on others), so 1e-3 bounds it with
     margin while a wrong factor (missing s, 2a instead of a, wrong
     broadcasting over channels, a sign) shows up as O(1).

A torch-free variant checks polyvit against its *own* float32 finite differences with a
coarse step and a loose tolerance, so the coefficients' gradients are checked even without
the oracle.
"""
from __future__ import annotations

import numpy as np
import pytest

from helpers import make_config, random_images, random_params, rel_err, set_params

import polyvit  # noqa: E402

FD_CONFIGS = {
    # per-channel poly, GELU, per-block poly
    "chan_gelu_block": dict(img_size=12, patch_size=3, in_chans=2, embed_dim=12, depth=3,
                            num_heads=2, mlp_ratio=2.0, num_classes=5,
                            act=("poly", "gelu", "poly"), poly_per_channel=(True, False, False)),
    # per-block then per-channel, odd width
    "block_chan": dict(img_size=10, patch_size=5, in_chans=3, embed_dim=18, depth=2,
                       num_heads=3, mlp_ratio=1.5, num_classes=4,
                       act=("poly", "poly"), poly_per_channel=(False, True)),
}
B = 3
AUTOGRAD_VS_FD_TOL = 1e-6   # both float64: validates the FD harness
POLYVIT_VS_FD_TOL = 1e-3    # float32 analytic vs exact; see module docstring


def _poly_names(cfg):
    return [n for n, _, g in cfg.param_specs() if g == "poly"]


def _setup(name, seed):
    cfg = make_config(**FD_CONFIGS[name])
    rng = np.random.default_rng(seed)
    P = random_params(cfg, rng)
    x = random_images(cfg, B, rng)
    R = rng.standard_normal((B, cfg.num_classes)).astype(np.float32)
    return cfg, P, x, R


def fd_grads_float64(torch, tref, cfg, P, x, R, names):
    """Central finite differences of L = sum(ref64(x) * R) for every element of ``names``."""
    ref = tref.from_polyvit((cfg, P), dtype=torch.float64)
    xt = torch.from_numpy(x.astype(np.float64))
    Rt = torch.from_numpy(R.astype(np.float64))
    params = dict(ref.named_parameters())

    def L():
        with torch.no_grad():
            return float((ref(xt) * Rt).sum())

    out = {}
    for n in names:
        p = params[n]
        g = np.empty(p.shape, dtype=np.float64)
        for j in range(p.numel()):
            with torch.no_grad():
                t0 = float(p.view(-1)[j])
                h = 1e-5 * max(1.0, abs(t0))
                p.view(-1)[j] = t0 + h
                lp = L()
                p.view(-1)[j] = t0 - h
                lm = L()
                p.view(-1)[j] = t0
            g.reshape(-1)[j] = (lp - lm) / (2 * h)
        out[n] = g
    return out


def autograd_float64(torch, tref, cfg, P, x, R):
    ref = tref.from_polyvit((cfg, P), dtype=torch.float64)
    out = ref(torch.from_numpy(x.astype(np.float64)))
    (out * torch.from_numpy(R.astype(np.float64))).sum().backward()
    return tref.grads_numpy(ref)


@pytest.mark.parametrize("name", sorted(FD_CONFIGS))
def test_poly_coefficient_grads_vs_fd(name, torch, tref):
    cfg, P, x, R = _setup(name, seed=7)
    names = _poly_names(cfg)
    assert names, "config has no poly block"
    fd = fd_grads_float64(torch, tref, cfg, P, x, R, names)

    # 1. the FD harness is right: float64 autograd agrees with it tightly
    ag = autograd_float64(torch, tref, cfg, P, x, R)
    for n in names:
        e = rel_err(ag[n], fd[n])
        assert e <= AUTOGRAD_VS_FD_TOL, f"{n}: torch float64 autograd vs FD {e:.2g}"
        assert np.abs(fd[n]).max() > 1e-3, f"{n}: gradient ~0, the check would be vacuous"

    # 2. polyvit's float32 analytic gradients
    m = polyvit.ViT(cfg, max_batch=B, seed=0)
    set_params(m, P)
    m.forward(x)
    m.backward(R)
    for n in names:
        g = m.grads[n]
        assert g.shape == fd[n].shape, (n, g.shape, fd[n].shape)
        e = rel_err(g, fd[n])
        assert e <= POLYVIT_VS_FD_TOL, f"{n}: polyvit vs float64 FD relative error {e:.2g}"


def test_poly_per_channel_grads_are_per_channel(torch, tref):
    """Per-channel coefficient gradients differ between channels (no accidental reduction
    over channels or broadcasting of one channel's gradient)."""
    cfg, P, x, R = _setup("block_chan", seed=8)
    m = polyvit.ViT(cfg, max_batch=B, seed=0)
    set_params(m, P)
    m.forward(x)
    m.backward(R)
    H = cfg.mlp_hidden
    for k in "abcs":
        g = m.grads[f"blocks.1.mlp.act.{k}"]
        assert g.shape == (H,)
        assert np.unique(g).size > H // 2, f"{k}: per-channel gradients look broadcast"
    ag = autograd_float64(torch, tref, cfg, P, x, R)
    for k in "abcs":
        n = f"blocks.1.mlp.act.{k}"
        assert rel_err(m.grads[n], ag[n]) <= 1e-4, n   # as test_model's GRAD_TOL


@pytest.mark.parametrize("name", sorted(FD_CONFIGS))
def test_poly_grads_vs_polyvit_own_fd(name):
    """Torch-free: polyvit's analytic gradients of the per-block coefficients against central
    differences of polyvit's own float32 forward.

    Float32 forward noise in L = sum(logits * R) is ~1e-6 absolute, so with h = 1e-2 the FD
    rounding error is ~1e-4 and the truncation error h^2 |L'''| / 6 ~ 2e-5 |L'''|; measured
    worst 4.1e-3 relative to the gradient's scale (truncation: L''' is large for a and s), so
    a 2e-2 tolerance is 5x above that and still catches any factor or sign error.
    """
    cfg, P, x, R = _setup(name, seed=9)
    m = polyvit.ViT(cfg, max_batch=B, seed=0)
    set_params(m, P)
    m.forward(x)
    m.backward(R)
    analytic = {n: m.grads[n].astype(np.float64) for n in _poly_names(cfg)}

    def L():
        return float(np.sum(m.forward(x).astype(np.float64) * R))

    for n, g in analytic.items():
        view = m.params[n]
        idx = [0] if view.size == 1 else [0, view.size // 2, view.size - 1]
        for j in idx:
            t0 = float(view.flat[j])
            h = 1e-2 * max(1.0, abs(t0))
            view.flat[j] = t0 + h          # m.params are views: this changes the model
            lp = L()
            view.flat[j] = t0 - h
            lm = L()
            view.flat[j] = t0
            # the step actually taken after rounding t0 +- h to float32
            fd = (lp - lm) / (float(np.float32(t0 + h)) - float(np.float32(t0 - h)))
            scale = max(np.abs(g).max(), 1e-6)
            assert abs(fd - g.flat[j]) <= 2e-2 * scale, \
                f"{n}[{j}]: analytic {g.flat[j]:.6g} vs float32 FD {fd:.6g}"
