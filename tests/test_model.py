"""polyvit.ViT: parameter layout, forward, backward and activation switching.

Numerical checks compare polyvit (float32) against tests/torch_ref.py evaluated in float64,
i.e. against the exact answer for the float32 weights and inputs, so the measured difference is
polyvit's own rounding error (a float32 reference would add torch's rounding error on top).

Tolerances:
  * logits and captured fc1 activations: max|diff| / max|ref| <= 1e-5. A float32 forward of
    these tiny models (reductions of <= ~150 terms, depth <= 3) is accurate to ~1e-6
    relative (polyvit: <= 1.1e-6 over 40 config/seed draws); 1e-5 is ~10x that and still far below any real bug (a wrong eps, a transposed
    weight, a missing bias all give >= 1e-3).
  * gradients: per tensor max|diff| / max|ref| <= 1e-4. Backward reduces over the batch and
    all tokens and goes through softmax / layer-norm backward, whose terms cancel (e.g. the k
    third of qkv.bias has an exactly zero gradient), so float32 errors are larger than in the
    forward: typically 1e-7..1e-6, but a per-block poly coefficient's gradient is one sum over
    B*T*H (~5000) terms that largely cancel, and there both torch float32 (2.6e-5) and polyvit
    (3.7e-5) reach a few 1e-5 (worst of 40 config/seed draws, measured against float64).
    1e-4 covers that; real bugs are >= 1e-3. Normalising by the tensor's max keeps entries
    that are small only through cancellation from dominating.
"""
from __future__ import annotations

import numpy as np
import pytest

from helpers import (SMALL, assert_rel, make_config, random_images, random_params, rel_err,
                     set_params)

import polyvit  # noqa: E402  (a broken build must fail loudly, not skip)

FWD_TOL = 1e-5
GRAD_TOL = 1e-4


def _model(cfg, rng, max_batch=4, seed=0):
    m = polyvit.ViT(cfg, max_batch=max_batch, seed=seed)
    P = random_params(cfg, rng)
    set_params(m, P)
    return m, P


def _ref_forward(tref, torch, cfg, P, x, capture=False):
    ref = tref.from_polyvit((cfg, P), dtype=torch.float64)
    with torch.no_grad():
        out = ref(torch.from_numpy(x.astype(np.float64)), capture=capture)
    if capture:
        return out[0].numpy(), {i: a.numpy() for i, a in out[1].items()}
    return out.numpy()


# ------------------------------------------------------------------------------------------
# layout and construction (no oracle needed)
# ------------------------------------------------------------------------------------------
def test_param_layout(cfg):
    m = polyvit.ViT(cfg, max_batch=3, seed=0)
    assert m.config == cfg
    assert m.max_batch == 3
    specs = {n: tuple(s) for n, s, _ in cfg.param_specs()}
    for what, d in (("params", m.params), ("grads", m.grads)):
        assert set(d) == set(specs), f"{what} names differ from config.param_specs()"
        for n, a in d.items():
            assert isinstance(a, np.ndarray), (what, n, type(a))
            assert a.dtype == np.float32, (what, n, a.dtype)
            assert a.shape == specs[n], (what, n, a.shape, specs[n])


def test_init_is_seeded_and_sane(small_cfg):
    a = polyvit.ViT(small_cfg, max_batch=2, seed=0).params
    b = polyvit.ViT(small_cfg, max_batch=2, seed=0).params
    c = polyvit.ViT(small_cfg, max_batch=2, seed=1).params
    for n in a:
        assert np.all(np.isfinite(a[n])), n
        np.testing.assert_array_equal(a[n], b[n], err_msg=f"{n}: same seed, different init")
    for n, _, g in small_cfg.param_specs():
        if g == "decay":
            assert np.any(a[n] != 0), f"{n} initialised to zeros"
            assert np.any(a[n] != c[n]), f"{n}: seed 0 and seed 1 give the same init"
            assert np.abs(a[n]).max() < 1.0, f"{n}: init is not timm-like (small) ({n})"
    x = random_images(small_cfg, 2, np.random.default_rng(0))
    assert np.all(np.isfinite(polyvit.ViT(small_cfg, max_batch=2, seed=0).forward(x)))


def test_preset_with_overrides():
    m = polyvit.ViT.preset("vit_tiny_patch4_32", max_batch=2, seed=0, depth=2, embed_dim=24,
                           num_heads=2)
    want = polyvit.config.preset_config("vit_tiny_patch4_32", depth=2, embed_dim=24,
                                        num_heads=2)
    assert m.config == want
    assert m.max_batch == 2
    assert {n: a.shape for n, a in m.params.items()} == \
        {n: tuple(s) for n, s, _ in want.param_specs()}
    out = m.forward(np.zeros((1, 3, 32, 32), np.float32))
    assert out.shape == (1, 10) and out.dtype == np.float32


def test_params_are_writable_views(small_cfg, rng):
    m, P = _model(small_cfg, rng)
    x = random_images(small_cfg, 3, rng)
    before = m.forward(x)
    m.params["head.bias"][...] += 2.0      # a view: the engine sees the change
    after = m.forward(x)
    np.testing.assert_allclose(after - before, 2.0, rtol=0, atol=1e-5)
    # reading m.params again shows the changed values
    np.testing.assert_array_equal(m.params["head.bias"], P["head.bias"] + np.float32(2.0))


def test_forward_output_is_a_copy_and_input_untouched(small_cfg, rng):
    m, _ = _model(small_cfg, rng)
    x = random_images(small_cfg, 4, rng)
    x0 = x.copy()
    out = m.forward(x)
    assert out.shape == (4, small_cfg.num_classes) and out.dtype == np.float32
    keep = out.copy()
    out[...] = 123.0
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_allclose(m.forward(x), keep, rtol=1e-6, atol=0)


def test_forward_batch_independence(small_cfg, rng):
    """Each image's logits do not depend on the other images in the batch (or on B)."""
    m, _ = _model(small_cfg, rng)
    x = random_images(small_cfg, 4, rng)
    full = m.forward(x)
    for i in range(4):
        np.testing.assert_allclose(m.forward(x[i:i + 1]), full[i:i + 1], rtol=1e-5,
                                   atol=1e-6 * np.abs(full).max())


def test_grads_overwritten_not_accumulated(small_cfg, rng):
    m, _ = _model(small_cfg, rng)
    x = random_images(small_cfg, 3, rng)
    R = rng.standard_normal((3, small_cfg.num_classes)).astype(np.float32)
    m.forward(x)
    m.backward(R)
    g1 = {n: g.copy() for n, g in m.grads.items()}
    m.backward(R)                       # same forward state, same dlogits: same gradients
    for n, g in m.grads.items():
        np.testing.assert_allclose(g, g1[n], rtol=1e-6, atol=1e-12, err_msg=n)
    m.backward(2 * R)                   # backward is linear in dlogits (x2 is exact)
    for n, g in m.grads.items():
        np.testing.assert_allclose(g, 2 * g1[n], rtol=1e-6, atol=1e-12, err_msg=n)


def test_backward_uses_last_forward(small_cfg, rng):
    m, _ = _model(small_cfg, rng)
    x1, x2 = random_images(small_cfg, 3, rng), random_images(small_cfg, 2, rng)
    R = rng.standard_normal((2, small_cfg.num_classes)).astype(np.float32)
    m.forward(x2)
    m.backward(R)
    want = {n: g.copy() for n, g in m.grads.items()}
    m.forward(x1)
    m.forward(x2)
    m.backward(R)
    for n, g in m.grads.items():
        np.testing.assert_allclose(g, want[n], rtol=1e-6, atol=1e-12, err_msg=n)


def test_thread_count_does_not_change_results(small_cfg, rng):
    m, _ = _model(small_cfg, rng, max_batch=4)
    x = random_images(small_cfg, 4, rng)
    R = rng.standard_normal((4, small_cfg.num_classes)).astype(np.float32)
    old = polyvit.get_num_threads()
    assert isinstance(old, int) and old >= 1
    try:
        res = []
        for n in (1, 2, 3):
            polyvit.set_num_threads(n)
            assert polyvit.get_num_threads() == n
            out = m.forward(x)
            m.backward(R)
            res.append((out, {k: g.copy() for k, g in m.grads.items()}))
    finally:
        polyvit.set_num_threads(old)
    for out, grads in res[1:]:
        assert rel_err(out, res[0][0]) <= FWD_TOL
        for k, g in grads.items():
            assert rel_err(g, res[0][1][k]) <= GRAD_TOL, k


# ------------------------------------------------------------------------------------------
# against the torch reference
# ------------------------------------------------------------------------------------------
def test_forward_matches_reference(cfg, rng, torch, tref):
    m, P = _model(cfg, rng, max_batch=5)
    x = random_images(cfg, 5, rng)
    out = m.forward(x)
    assert out.shape == (5, cfg.num_classes) and out.dtype == np.float32
    assert_rel(out, _ref_forward(tref, torch, cfg, P, x), FWD_TOL, "logits")


def test_backward_matches_reference(cfg, rng, torch, tref):
    B = 4
    m, P = _model(cfg, rng, max_batch=B)
    x = random_images(cfg, B, rng)
    R = rng.standard_normal((B, cfg.num_classes)).astype(np.float32)
    m.forward(x)
    m.backward(R)

    ref = tref.from_polyvit((cfg, P), dtype=torch.float64)
    logits = ref(torch.from_numpy(x.astype(np.float64)))
    logits.backward(torch.from_numpy(R.astype(np.float64)))
    want = tref.grads_numpy(ref)
    assert set(m.grads) == set(want)
    errs = {n: rel_err(m.grads[n], want[n]) for n in want}
    bad = {n: e for n, e in errs.items() if not e <= GRAD_TOL}
    assert not bad, f"gradients off (relative error per tensor): {bad}"
    # the test is only meaningful if the gradients are non-trivial
    for n, g in want.items():
        assert np.abs(g).max() > 1e-6, f"reference gradient of {n} is ~0; test is vacuous"


def test_capture_matches_reference_fc1(cfg, rng, torch, tref):
    m, P = _model(cfg, rng, max_batch=3)
    x = random_images(cfg, 3, rng)
    logits, acts = m.forward(x, capture=True)
    want_logits, want = _ref_forward(tref, torch, cfg, P, x, capture=True)
    assert_rel(logits, want_logits, FWD_TOL, "logits with capture")
    assert sorted(acts) == list(range(cfg.depth))
    for i in range(cfg.depth):
        a = np.asarray(acts[i])
        assert a.dtype == np.float32
        assert a.shape == (3, cfg.seq_len, cfg.mlp_hidden)
        assert_rel(a, want[i], FWD_TOL, f"fc1 output of block {i}")
    # a subset of blocks
    sub = sorted({0, cfg.depth - 1})
    _, acts2 = m.forward(x, capture=sub)
    assert sorted(acts2) == sub
    for i in sub:
        np.testing.assert_allclose(acts2[i], acts[i], rtol=1e-6, atol=1e-6)


def test_chunked_forward_matches_reference(cfg, rng, torch, tref):
    """B > max_batch is processed in chunks (3 + 3 + 2 here) with the same result."""
    m, P = _model(cfg, rng, max_batch=3)
    x = random_images(cfg, 8, rng)
    out = m.forward(x)
    assert out.shape == (8, cfg.num_classes)
    assert_rel(out, _ref_forward(tref, torch, cfg, P, x), FWD_TOL, "chunked logits")


def test_chunked_capture(small_cfg, rng, torch, tref):
    m, P = _model(small_cfg, rng, max_batch=2)
    x = random_images(small_cfg, 5, rng)
    logits, acts = m.forward(x, capture=True)
    want_logits, want = _ref_forward(tref, torch, small_cfg, P, x, capture=True)
    assert_rel(logits, want_logits, FWD_TOL, "chunked logits")
    for i in range(small_cfg.depth):
        assert acts[i].shape == (5, small_cfg.seq_len, small_cfg.mlp_hidden)
        assert_rel(acts[i], want[i], FWD_TOL, f"chunked fc1 output of block {i}")


# ------------------------------------------------------------------------------------------
# set_activation
# ------------------------------------------------------------------------------------------
def _non_poly(m):
    return {n: a.copy() for n, a in m.params.items() if ".mlp.act." not in n}


def _assert_kept(m, before):
    now = m.params
    for n, v in before.items():
        np.testing.assert_array_equal(now[n], v, err_msg=f"{n} changed by set_activation")


def test_set_activation_scalar_tuple(rng, torch, tref):
    cfg = make_config(**{**SMALL, "act": ("gelu", "gelu"), "poly_per_channel": None})
    m, _ = _model(cfg, rng)
    kept = _non_poly(m)
    m.set_activation(0, "poly", coeffs=(0.2, 0.45, 0.1))
    assert m.config.act == ("poly", "gelu")
    assert m.config.poly_per_channel == (False, False)
    P = {n: a.copy() for n, a in m.params.items()}
    assert set(P) == {n for n, _, _ in m.config.param_specs()}
    for leaf, v in zip("abcs", (0.2, 0.45, 0.1, 1.0)):     # s defaults to 1
        a = P[f"blocks.0.mlp.act.{leaf}"]
        assert a.shape == (1,)
        np.testing.assert_allclose(a, v, rtol=1e-7)
    _assert_kept(m, kept)
    x = random_images(cfg, 3, rng)
    assert_rel(m.forward(x), _ref_forward(tref, torch, m.config, P, x), FWD_TOL, "logits")


def test_set_activation_per_channel_dict(rng, torch, tref):
    cfg = make_config(**{**SMALL, "act": ("gelu", "gelu"), "poly_per_channel": None})
    H = cfg.mlp_hidden
    m, _ = _model(cfg, rng)
    kept = _non_poly(m)
    coeffs = {k: rng.uniform(lo, hi, H).astype(np.float32)
              for k, (lo, hi) in dict(a=(0.1, 0.3), b=(0.4, 0.6), c=(0.0, 0.2),
                                      s=(0.9, 1.2)).items()}
    m.set_activation([0, 1], "poly", coeffs=coeffs, per_channel=True)
    assert m.config.act == ("poly", "poly")
    assert m.config.poly_per_channel == (True, True)
    for i in (0, 1):
        for k in "abcs":
            np.testing.assert_array_equal(m.params[f"blocks.{i}.mlp.act.{k}"], coeffs[k])
    _assert_kept(m, kept)
    P = {n: a.copy() for n, a in m.params.items()}
    x = random_images(cfg, 3, rng)
    assert_rel(m.forward(x), _ref_forward(tref, torch, m.config, P, x), FWD_TOL, "logits")


def test_set_activation_scalars_per_channel_broadcast(rng):
    """Scalar coefficients with per_channel=True fill a vector of the MLP width."""
    cfg = make_config(**SMALL)
    m, _ = _model(cfg, rng)
    m.set_activation(0, "poly", coeffs=(0.25, 0.5, 0.05, 1.5), per_channel=True)
    for k, v in zip("abcs", (0.25, 0.5, 0.05, 1.5)):
        a = m.params[f"blocks.0.mlp.act.{k}"]
        assert a.shape == (cfg.mlp_hidden,)
        np.testing.assert_allclose(a, v, rtol=1e-7)


def test_set_activation_default_fit(rng):
    cfg = make_config(**{**SMALL, "act": ("gelu", "gelu"), "poly_per_channel": None})
    m, _ = _model(cfg, rng)
    m.set_activation("all", "poly")
    for i in range(cfg.depth):
        a, b, c, s = (float(m.params[f"blocks.{i}.mlp.act.{k}"][0]) for k in "abcs")
        # a quadratic least-squares fit of GELU on any roughly symmetric interval has
        # a > 0, b = 1/2 (GELU(x) - x/2 is even) and c >= 0; s defaults to 1
        assert 0 < a < 0.5 and abs(b - 0.5) < 0.1 and 0 <= c < 0.75, (a, b, c)
        assert s == 1.0


def test_set_activation_back_to_gelu(rng, torch, tref):
    cfg = make_config(**SMALL)            # block 1 is per-channel poly
    m, _ = _model(cfg, rng)
    kept = _non_poly(m)
    m.set_activation("all", "gelu")
    assert m.config.act == ("gelu", "gelu")
    assert not any(".mlp.act." in n for n in m.params)
    assert not any(".mlp.act." in n for n in m.grads)
    _assert_kept(m, kept)
    P = {n: a.copy() for n, a in m.params.items()}
    x = random_images(cfg, 3, rng)
    assert_rel(m.forward(x), _ref_forward(tref, torch, m.config, P, x), FWD_TOL, "logits")
    # and backward still covers every parameter of the new layout
    m.backward(rng.standard_normal((3, cfg.num_classes)).astype(np.float32))
    assert set(m.grads) == set(P)


def test_set_activation_then_backward_matches_reference(rng, torch, tref):
    """After a layout change (gelu -> per-channel poly) the gradients are still right."""
    cfg = make_config(**{**SMALL, "act": ("gelu", "gelu"), "poly_per_channel": None})
    m, _ = _model(cfg, rng)
    H = cfg.mlp_hidden
    m.set_activation(1, "poly", coeffs=(rng.uniform(0.1, 0.3, H), 0.5,
                                        rng.uniform(0.0, 0.2, H), 1.1), per_channel=True)
    P = {n: a.copy() for n, a in m.params.items()}
    x = random_images(cfg, 3, rng)
    R = rng.standard_normal((3, cfg.num_classes)).astype(np.float32)
    m.forward(x)
    m.backward(R)
    ref = tref.from_polyvit((m.config, P), dtype=torch.float64)
    ref(torch.from_numpy(x.astype(np.float64))).backward(torch.from_numpy(R.astype(np.float64)))
    want = tref.grads_numpy(ref)
    for n in want:
        assert_rel(m.grads[n], want[n], GRAD_TOL, n)


# ------------------------------------------------------------------------------------------
# the bar, literally: against the float32 torch reference, also at a realistic size
# ------------------------------------------------------------------------------------------
def _compare_to_reference(m, P, cfg, x, R, torch, tref, dtype):
    m.forward(x)
    out = m.forward(x)
    m.backward(R)
    ref = tref.from_polyvit((cfg, P), dtype=dtype)
    logits = ref(torch.from_numpy(x).to(dtype))
    logits.backward(torch.from_numpy(R).to(dtype))
    want = tref.grads_numpy(ref)
    assert_rel(out, logits.detach().double().numpy(), FWD_TOL, "logits")
    errs = {n: rel_err(m.grads[n], want[n].astype(np.float64)) for n in want}
    bad = {n: e for n, e in errs.items() if not e <= GRAD_TOL}
    assert not bad, f"gradients off (relative error per tensor): {bad}"


def test_matches_float32_reference(cfg, rng, torch, tref):
    m, P = _model(cfg, rng, max_batch=4)
    x = random_images(cfg, 4, rng)
    R = rng.standard_normal((4, cfg.num_classes)).astype(np.float32)
    _compare_to_reference(m, P, cfg, x, R, torch, tref, torch.float32)


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_realistic_size_matches_reference(dtype_name, torch, tref):
    """Width 192, 65 tokens, MLP 768 (vit_tiny_patch4_32, two blocks, one GELU and one
    per-channel poly): long reductions and the vectorised exp/erf at real sizes."""
    rng = np.random.default_rng(5)
    cfg = polyvit.ViTConfig(img_size=32, patch_size=4, embed_dim=192, depth=2, num_heads=3,
                            num_classes=10, act=("gelu", "poly"), poly_per_channel=(False, True))
    m, P = _model(cfg, rng, max_batch=6)
    x = random_images(cfg, 6, rng)
    R = rng.standard_normal((6, cfg.num_classes)).astype(np.float32)
    _compare_to_reference(m, P, cfg, x, R, torch, tref, getattr(torch, dtype_name))


# ------------------------------------------------------------------------------------------
# architecture options of third-party checkpoints (eps, tanh GELU, no final norm, mean
# pooling, fc_norm, no qkv bias, explicit MLP width), each against the torch reference
# ------------------------------------------------------------------------------------------
OPTION_CASES = {
    "eps1e-12": dict(ln_eps=1e-12),
    "gelu_tanh": dict(gelu="tanh"),
    "no_final_norm": dict(final_norm=False),
    "avg_pool_fc_norm": dict(global_pool="avg", final_norm=False, fc_norm=True),  # timm's avg
    "avg_pool_norm": dict(global_pool="avg"),
    "avg_pool_bare": dict(global_pool="avg", final_norm=False),
    "token_norm_and_fc_norm": dict(fc_norm=True),
    "no_qkv_bias": dict(qkv_bias=False),
    "mlp_dim_13": dict(mlp_dim=13),
    "all_at_once": dict(ln_eps=1e-5, gelu="tanh", global_pool="avg", final_norm=False,
                        fc_norm=True, qkv_bias=False, mlp_dim=10),
}


@pytest.mark.parametrize("opts", list(OPTION_CASES.values()), ids=list(OPTION_CASES))
@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_architecture_options_match_reference(opts, dtype_name, torch, tref):
    rng = np.random.default_rng(len(str(opts)))
    base = dict(SMALL, act=("gelu", "poly"), poly_per_channel=(False, True))
    cfg = make_config(**{**base, **opts})
    m, P = _model(cfg, rng, max_batch=4)
    x = random_images(cfg, 4, rng)
    R = rng.standard_normal((4, cfg.num_classes)).astype(np.float32)
    _compare_to_reference(m, P, cfg, x, R, torch, tref, getattr(torch, dtype_name))


@pytest.mark.parametrize("opts", list(OPTION_CASES.values()), ids=list(OPTION_CASES))
def test_architecture_options_round_trip_through_safetensors(opts, tmp_path):
    """Every option is stored in the file's metadata and comes back: same config, same
    logits bit for bit."""
    rng = np.random.default_rng(7)
    cfg = make_config(**{**SMALL, **opts, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.3, 0.25)})
    m, _ = _model(cfg, rng, max_batch=3)
    p = tmp_path / "m.safetensors"
    m.save(p)
    again = polyvit.load(p, max_batch=3)
    assert again.config == cfg
    x = random_images(cfg, 3, rng)
    np.testing.assert_array_equal(again.forward(x), m.forward(x))
