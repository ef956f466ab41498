"""The method's pieces: fits (V1 static, V2 DirectFit + Scale Fix), student configurations,
evaluation metrics and MPC accounting."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import make_config, random_images, random_params, set_params

import polyvit
from polyvit import fit, metrics, mpc, students
from polyvit.activations import gelu, gelu_quadratic_fit

CFG = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=24, depth=3, num_heads=2,
           mlp_ratio=2.0, num_classes=6)


@pytest.fixture
def teacher():
    cfg = make_config(**CFG)
    m = polyvit.ViT(cfg, max_batch=16, seed=0)
    set_params(m, random_params(cfg, np.random.default_rng(0)))
    for i in range(cfg.depth):  # random_params may make blocks poly: the teacher is all GELU
        assert cfg.act[i] == "gelu"
    return m


def _lstsq(x, w=None):
    A = np.stack([x * x, x, np.ones_like(x)], 1)
    g = gelu(x)
    if w is not None:
        A, g = A * np.sqrt(w)[:, None], g * np.sqrt(w)
    return np.linalg.lstsq(A, g, rcond=None)[0]


def test_lstsq_matches_numpy_on_shifted_wide_samples():
    rng = np.random.default_rng(1)
    for mu, sd in [(0, 1), (-2.5, 4.0), (3.0, 0.1)]:
        x = rng.normal(mu, sd, 50_000)
        np.testing.assert_allclose(fit.lstsq_gelu(x), _lstsq(x), rtol=1e-9, atol=1e-12)


def test_static_fit_is_the_normal_weighted_fit(teacher):
    s = teacher.copy()
    reps = fit.static(s, [0, 2])
    a, b, c = gelu_quadratic_fit(-3, 3)
    grid = np.linspace(-3, 3, 4001)
    np.testing.assert_allclose((a, b, c), _lstsq(grid, np.exp(-0.5 * grid ** 2)), rtol=1e-9)
    assert [r.block for r in reps] == [0, 2] and s.config.act == ("poly", "gelu", "poly")
    for i in (0, 2):
        co = s.coefficients(i)
        np.testing.assert_allclose([co[k][0] for k in "abcs"], [a, b, c, 1.0], rtol=1e-6)


def test_directfit_fits_the_real_preactivations_and_scale_fix(teacher):
    rng = np.random.default_rng(2)
    x = random_images(teacher.config, 12, rng)
    s = teacher.copy()
    reps = fit.directfit(s, teacher, x, blocks=[1], max_samples=10**9)
    _, acts = teacher.forward(x, capture=[1])
    v = acts[1].reshape(-1).astype(np.float64)
    a, b, c = _lstsq(v)
    r = reps[0]
    np.testing.assert_allclose((r.a, r.b, r.c), (a, b, c), rtol=1e-5, atol=1e-7)
    # Scale Fix: the scaled polynomial's output std equals GELU's on the same samples
    y = r.s * (r.a * v * v + r.b * v + r.c)
    assert y.std() == pytest.approx(gelu(v).std(), rel=1e-6)
    assert r.range == (pytest.approx(v.min()), pytest.approx(v.max()))
    assert r.n_samples == v.size and r.fit_rmse >= 0
    co = s.coefficients(1)
    np.testing.assert_allclose([co[k][0] for k in "abcs"], [r.a, r.b, r.c, r.s], rtol=1e-6)
    # without scale fix s == 1
    s2 = teacher.copy()
    assert fit.directfit(s2, teacher, x, blocks=[1], scale_fix=False)[0].s == 1.0


def test_directfit_per_channel_and_options(teacher):
    rng = np.random.default_rng(3)
    x = random_images(teacher.config, 8, rng)
    s = teacher.copy()
    reps = fit.directfit(s, teacher, x, blocks="all", per_channel=True, max_samples=10**9)
    _, acts = teacher.forward(x, capture=True)
    H = teacher.config.mlp_hidden
    for r in reps:
        v = acts[r.block].reshape(-1, H).astype(np.float64)
        for j in (0, H // 2, H - 1):
            np.testing.assert_allclose((r.a[j], r.b[j], r.c[j]), _lstsq(v[:, j]), rtol=1e-5,
                                       atol=1e-7)
        assert s.params[f"blocks.{r.block}.mlp.act.a"].shape == (H,)
    # clipping to percentiles: the fit ignores samples outside them
    s3 = teacher.copy()
    r = fit.directfit(s3, teacher, x, blocks=[0], clip_percentiles=(5, 95), max_samples=10**9)[0]
    v = acts[0].reshape(-1).astype(np.float64)
    lo, hi = np.percentile(v, [5, 95])
    keep = v[(v >= lo) & (v <= hi)]
    np.testing.assert_allclose((r.a, r.b, r.c), _lstsq(keep), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="weighting"):
        fit.directfit(teacher.copy(), teacher, x, weighting="nope")
    with pytest.raises(ValueError, match="clip_percentiles"):
        fit.directfit(teacher.copy(), teacher, x, clip_percentiles=(50, 10))


def test_students_start_from_teacher_weights(teacher):
    h = students.hybrid(teacher, 2)
    assert h.config.act == ("poly", "poly", "gelu")
    f = students.full(teacher)
    assert f.config.act == ("poly",) * 3
    for n, v in teacher.params.items():
        np.testing.assert_array_equal(h.params[n], v)
    h.params["head.bias"][...] += 1  # independent copies
    assert not np.array_equal(h.params["head.bias"], teacher.params["head.bias"])
    with pytest.raises(ValueError):
        students.hybrid(teacher, 0)
    with pytest.raises(ValueError):
        students.hybrid(teacher, 4)


def test_evaluate_metrics_by_hand(teacher):
    rng = np.random.default_rng(4)
    x = random_images(teacher.config, 20, rng)
    y = rng.integers(0, 6, 20)
    s = students.full(teacher)
    r = metrics.evaluate(s, teacher, (x, y), batch_size=7)
    S, T = s.forward(x).astype(np.float64), teacher.forward(x).astype(np.float64)
    assert r["student_top1"] == pytest.approx((S.argmax(1) == y).mean())
    assert r["teacher_top1"] == pytest.approx((T.argmax(1) == y).mean())
    top5 = np.argsort(-S, 1)[:, :5]
    assert r["student_top5"] == pytest.approx(np.mean([y[i] in top5[i] for i in range(20)]))
    assert r["fidelity"] == pytest.approx((S.argmax(1) == T.argmax(1)).mean())
    cos = (S * T).sum(1) / np.linalg.norm(S, axis=1) / np.linalg.norm(T, axis=1)
    assert r["logit_cosine"] == pytest.approx(cos.mean(), rel=1e-9)
    pt = np.exp(T - T.max(1, keepdims=True)); pt /= pt.sum(1, keepdims=True)
    ps = np.exp(S - S.max(1, keepdims=True)); ps /= ps.sum(1, keepdims=True)
    assert r["kl"] == pytest.approx((pt * np.log(pt / ps)).sum(1).mean(), rel=1e-6)
    _, acts = s.forward(x, capture=True)
    for b in r["blocks"]:
        assert b["min"] == pytest.approx(float(acts[b["block"]].min()))
        assert b["max"] == pytest.approx(float(acts[b["block"]].max()))
        assert set(b["coefficients"]) == set("abcs")
    sr, tr = S.argmax(1) == y, T.argmax(1) == y
    assert r["student_only_correct"] == int((sr & ~tr).sum())
    assert r["teacher_only_correct"] == int((tr & ~sr).sum())
    d = sr.astype(float) - tr.astype(float)
    assert r["gap_se"] == pytest.approx(np.sqrt(((d - d.mean()) ** 2).sum() / 19 / 20), rel=1e-12)
    same = metrics.evaluate(teacher, teacher, (x, y))
    assert same["fidelity"] == 1.0 and same["logit_cosine"] == pytest.approx(1.0)
    assert same["kl"] == pytest.approx(0.0, abs=1e-12)
    assert same["student_only_correct"] == same["teacher_only_correct"] == 0 and same["gap_se"] == 0


def test_paired_gap_by_hand():
    """10 images: 2 only the student gets right, 4 only the teacher, 3 both, 1 neither: the
    gap is -0.2 and its paired standard error sqrt(var(d, ddof=1) / 10)."""
    s = np.array([1, 1, 0, 0, 0, 0, 1, 1, 1, 0], bool)
    t = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 0], bool)
    p = metrics.paired_gap(s, t)
    assert p["student_only_correct"] == 2 and p["teacher_only_correct"] == 4
    d = np.array([1, 1, -1, -1, -1, -1, 0, 0, 0, 0.0])          # mean -0.2
    var = ((d + 0.2) ** 2).sum() / 9
    assert p["gap_se"] == pytest.approx(np.sqrt(var / 10), rel=1e-12)
    assert metrics.paired_gap(s[:1], t[:1])["gap_se"] is None      # one image: no spread
    with pytest.raises(ValueError, match="two equal 1-D arrays"):
        metrics.paired_gap(s, t[:5])


def test_evaluate_without_activations(teacher, monkeypatch):
    """activations=False: the same scores, no per-block part, and no capture asked of the
    engine (the per-epoch evaluation of a training run uses it)."""
    rng = np.random.default_rng(5)
    x = random_images(teacher.config, 20, rng)
    y = rng.integers(0, 6, 20)
    s = students.full(teacher)
    full = metrics.evaluate(s, teacher, (x, y), batch_size=7)
    real, captures = s.forward, []

    def spy(xb, capture=False, **kw):
        captures.append(capture)
        return real(xb, capture=capture, **kw)

    monkeypatch.setattr(s, "forward", spy)
    lean = metrics.evaluate(s, teacher, (x, y), batch_size=7, activations=False)
    assert captures == [False] * 3
    assert "blocks" not in lean
    assert lean == {k: v for k, v in full.items() if k != "blocks"}


def test_mpc_counts_by_hand():
    cfg = make_config(**CFG)  # T = 17, H = 48, heads 2, depth 3
    m = polyvit.ViT(cfg, max_batch=2, seed=0)
    m.set_activation([0], "poly")
    r = mpc.count(m, batch=2)
    T, H, NH = 17, 48, 2
    p = mpc.PROFILES["spu-semi2k"]
    b0, b1 = r["blocks"][0], r["blocks"][1]
    assert b0["gelu_elements"] == 0 and b0["poly_elements"] == 2 * T * H
    assert b1["gelu_elements"] == 2 * T * H and b1["gelu_comparisons"] == 3 * 2 * T * H
    assert b0["poly_mults"] == 2 * T * H
    assert b1["softmax_comparisons"] == 2 * NH * T * (T - 1)
    assert b1["bytes"] == 2 * T * H * p.gelu_bytes + 2 * NH * T * T * p.softmax_bytes
    assert b0["rounds"] == p.poly_rounds + p.softmax_rounds
    assert r["gelu_comparison_pct"] == pytest.approx(100 * 2 / 3)
    g, sm = 3 * 2 * T * H, 2 * NH * T * (T - 1)
    assert r["model_comparison_pct"] == pytest.approx(100 * (2 * g + 3 * sm) / (3 * g + 3 * sm))
    with pytest.raises(ValueError, match="profile"):
        mpc.count(m, profile="nope")
