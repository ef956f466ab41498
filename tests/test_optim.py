"""polyvit.AdamW and ViT.train_step against torch.optim.AdamW on the torch reference.

Both sides start from the same weights and see the same batches; the reference runs in float64
(the exact answer), with param groups built by ``torch_ref.adamw_param_groups`` from the rules
of the spec ("decay" gets weight_decay, "no_decay"/"embed"/"poly" get 0, overrides per group,
frozen groups left out).

Tolerance on parameters, why "update-relative": Adam divides each gradient entry by its own
running RMS, so an entry's update is ~lr whatever the gradient's size, and a float32 error dg in a
gradient entry g moves the update by ~lr * dg / (|g| + eps). For the rare entries with |g| close
to eps that amplifies polyvit's (correct, float32) gradient noise to a visible fraction of lr.
Measured on these configs: torch float32 vs float64 <= 2e-4 * lr per step; the same with an
extra 1e-6 (relative to each tensor's max) of gradient noise, as a different summation order can
give, <= 1e-2 * lr; polyvit's C engine vs float64 <= 6.3e-3 * lr. So parameters must agree to
    |p_polyvit - p_ref| <= UPDATE_TOL * lr * steps + 1e-6 * |p_ref|,   UPDATE_TOL = 3e-2,
while AdamW mistakes move whole tensors by much more: weight decay is 0.5 (2.0 in one test), so a
missing, coupled or misapplied decay changes a weight of size |p| by 0.5 * lr * |p| per step
(~0.1-0.5 lr for these weights), a missing bias correction by up to ~2 lr, eps inside the sqrt
(eps = 1e-3 case) by ~0.1-0.5 lr. (Checked by running the suite against a mock engine with each of
these mistakes injected: every one fails several tests here.)

The k third of every qkv.bias has an exactly zero gradient (softmax is invariant to adding
q.b_k to all logits of a query), so both sides update it from pure rounding noise that Adam
normalises to O(lr) steps; it cannot be compared and is only checked to move by <= 3.5 * lr/step
(Adam's per-step bound, (1-b1)/sqrt(1-b2) ~ 3.2 for betas (0.9, 0.999), plus the small decay).
It does not affect the model's output.
"""
from __future__ import annotations

import numpy as np
import pytest

from helpers import SMALL, make_config, random_images, random_params, set_params

import polyvit  # noqa: E402

torch = pytest.importorskip("torch", reason="torch is the test oracle; optimizer comparisons "
                                            "against torch.optim.AdamW need it")
import torch.nn.functional as F  # noqa: E402
import torch_ref  # noqa: E402

UPDATE_TOL = 3e-2
B = 4
CFG = dict(SMALL, act=("poly", "gelu"), poly_per_channel=(True, False))  # poly + gelu blocks


def _kbias_mask(cfg, name):
    """Boolean mask of the comparable entries of a parameter (all but the k bias)."""
    shape = dict((n, s) for n, s, _ in cfg.param_specs())[name]
    mask = np.ones(shape, dtype=bool)
    if name.endswith("attn.qkv.bias"):
        C = cfg.embed_dim
        mask[C:2 * C] = False
    return mask


def _batches(cfg, n, seed):
    rng = np.random.default_rng(seed)
    return [(random_images(cfg, B, rng), rng.integers(0, cfg.num_classes, size=B).astype(np.int64))
            for _ in range(n)]


def _assert_params_close(cfg, m, ref, p0, lr_of, steps):
    want = torch_ref.params_numpy(ref, np.float64)
    got = m.params
    for n, w in want.items():
        g = got[n].astype(np.float64)
        lr = lr_of(n)
        mask = _kbias_mask(cfg, n)
        tol = UPDATE_TOL * lr * steps + 1e-6 * np.abs(w)
        diff = np.abs(g - w)
        bad = (diff > tol) & mask
        assert not bad.any(), (f"{n} after {steps} step(s): max |diff| {diff[mask].max():.3g} "
                               f"(= {diff[mask].max() / (lr * steps):.3g} lr/step)")
        if not mask.all():   # k bias: only Adam's bound on the distance travelled
            assert np.all(np.abs(g - p0[n])[~mask] <= 3.5 * lr * steps), n


def _run_pair(cfg, P, batches, lr, weight_decay, groups=None, betas=(0.9, 0.999), eps=1e-8,
              clip=None, ls=0.0, step_lr=None, check=True):
    """Run polyvit and the float64 reference side by side with the same hyper-parameters;
    check the parameters after every step. Returns (model, reference, [(loss, ref loss)])."""
    m = polyvit.ViT(cfg, max_batch=B, seed=0)
    set_params(m, P)
    opt = polyvit.AdamW(m, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        groups=groups, clip_grad_norm=clip)
    ref = torch_ref.from_polyvit((cfg, P), dtype=torch.float64)
    pg = torch_ref.adamw_param_groups(ref, cfg, lr, weight_decay, groups)
    topt = torch.optim.AdamW(pg, lr=lr, betas=betas, eps=eps)
    trainable = [p for g in pg for p in g["params"]]
    group_of = torch_ref.param_groups_of(cfg)
    lr_by_group = {g["name"]: g["lr"] for g in pg}   # frozen groups: absent -> lr 0

    def lr_of(n):
        return step_lr if step_lr is not None and group_of[n] in lr_by_group \
            else lr_by_group.get(group_of[n], 0.0)

    losses = []
    for t, (x, y) in enumerate(batches, 1):
        logits = m.forward(x)
        v, d = polyvit.losses.cross_entropy(logits, y, label_smoothing=ls)
        m.backward(d)
        opt.step() if step_lr is None else opt.step(lr=step_lr)

        topt.zero_grad()
        tl = F.cross_entropy(ref(torch.from_numpy(x.astype(np.float64))), torch.from_numpy(y),
                             label_smoothing=ls)
        tl.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(trainable, clip)
        if step_lr is not None:       # only used without per-group lr overrides
            for g in topt.param_groups:
                g["lr"] = step_lr
        topt.step()
        losses.append((float(v), tl.item()))
        if check:
            _assert_params_close(cfg, m, ref, P, lr_of, t)
    return m, ref, losses


@pytest.mark.parametrize("eps", [1e-8, 1e-3])
def test_adamw_matches_torch_5_steps(eps):
    cfg = make_config(**CFG)
    P = random_params(cfg, np.random.default_rng(0))
    _run_pair(cfg, P, _batches(cfg, 5, 1), lr=1e-2, weight_decay=0.5, eps=eps)


def test_adamw_betas_and_group_overrides():
    cfg = make_config(**CFG)
    P = random_params(cfg, np.random.default_rng(2))
    groups = {"poly": {"lr": 5e-2}, "no_decay": {"lr": 3e-3, "weight_decay": 0.2},
              "embed": {"weight_decay": 0.1}}
    _run_pair(cfg, P, _batches(cfg, 5, 3), lr=1e-2, weight_decay=0.5, groups=groups,
              betas=(0.8, 0.99))


def test_adamw_step_lr_override():
    cfg = make_config(**CFG)
    P = random_params(cfg, np.random.default_rng(4))
    _run_pair(cfg, P, _batches(cfg, 3, 5), lr=1e-2, weight_decay=0.5, step_lr=3e-3)


def test_adamw_default_group_decay_rules():
    """Only the "decay" group is decayed by default: with a large weight_decay (2.0) polyvit
    must match torch with decay on the "decay" group only; decaying norms (weights ~1),
    biases, embeddings or poly coefficients as well would move them by ~lr * 2 * |p| per step,
    far outside the tolerance."""
    cfg = make_config(**CFG)
    P = random_params(cfg, np.random.default_rng(6))
    _run_pair(cfg, P, _batches(cfg, 3, 7), lr=1e-2, weight_decay=2.0)


def test_adamw_frozen_group():
    cfg = make_config(**CFG)
    P = random_params(cfg, np.random.default_rng(8))
    groups = {"embed": {"frozen": True}, "poly": {"frozen": True}}
    frozen = [n for n, _, g in cfg.param_specs() if g in ("embed", "poly")]
    m, _, _ = _run_pair(cfg, P, _batches(cfg, 4, 9), lr=1e-2, weight_decay=0.5, groups=groups,
                        clip=0.05)
    for n in frozen:
        np.testing.assert_array_equal(m.params[n], P[n], err_msg=f"frozen {n} changed")


def test_adamw_clip_grad_norm():
    """clip_grad_norm_ over all trainable params before the step. eps = 1e-3 is of the order of
    the clipped gradients, so the update depends on the clipped scale (with eps ~ 0 Adam is
    nearly scale-invariant and clipping would be almost invisible); the test also checks that
    the clipped run differs from an unclipped one by far more than the tolerance."""
    cfg = make_config(**CFG)
    P = random_params(cfg, np.random.default_rng(10))
    batches = _batches(cfg, 4, 11)
    m, _, _ = _run_pair(cfg, P, batches, lr=1e-2, weight_decay=0.5, eps=1e-3, clip=0.02)
    _, ref_noclip, _ = _run_pair(cfg, P, batches, lr=1e-2, weight_decay=0.5, eps=1e-3,
                                 clip=None, check=False)
    unclipped = torch_ref.params_numpy(ref_noclip, np.float64)
    worst = max(np.abs(m.params[n] - unclipped[n]).max() for n in unclipped)
    assert worst > 10 * UPDATE_TOL * 1e-2 * len(batches), "clipping had no visible effect"


def test_train_step_matches_manual_sequence():
    cfg = make_config(**CFG)
    P = random_params(cfg, np.random.default_rng(12))
    loss = polyvit.Loss(ce=1.0, label_smoothing=0.1)
    a = polyvit.ViT(cfg, max_batch=B, seed=0)
    b = polyvit.ViT(cfg, max_batch=B, seed=0)
    set_params(a, P)
    set_params(b, P)
    oa = polyvit.AdamW(a, lr=1e-2, weight_decay=0.5)
    ob = polyvit.AdamW(b, lr=1e-2, weight_decay=0.5)
    for x, y in _batches(cfg, 3, 13):
        va = a.train_step(x, labels=y, loss=loss, optimizer=oa)
        vb, d = loss(b.forward(x), labels=y)
        b.backward(d)
        ob.step()
        assert isinstance(va, float)
        assert abs(va - float(vb)) <= 1e-6 * abs(float(vb))
        for n in P:
            mask = _kbias_mask(cfg, n)
            np.testing.assert_allclose(a.params[n][mask], b.params[n][mask],
                                       rtol=1e-6, atol=UPDATE_TOL * 1e-2, err_msg=n)


def test_train_step_distillation_losses():
    """train_step with a teacher (MSE + KL) against the reference."""
    cfg = make_config(**CFG)
    P = random_params(cfg, np.random.default_rng(14))
    rng = np.random.default_rng(15)
    m = polyvit.ViT(cfg, max_batch=B, seed=0)
    set_params(m, P)
    opt = polyvit.AdamW(m, lr=1e-2, weight_decay=0.5)
    ref = torch_ref.from_polyvit((cfg, P), dtype=torch.float64)
    topt = torch.optim.AdamW(torch_ref.adamw_param_groups(ref, cfg, 1e-2, 0.5), lr=1e-2)
    lossw = dict(ce=0.5, mse_w=0.2, kl=1.0, label_smoothing=0.1, temperature=2.0)
    loss = polyvit.Loss(ce=0.5, mse=0.2, kl=1.0, label_smoothing=0.1, temperature=2.0)
    for t, (x, y) in enumerate(_batches(cfg, 3, 16), 1):
        teacher = rng.standard_normal((B, cfg.num_classes)).astype(np.float32)
        v = m.train_step(x, labels=y, teacher_logits=teacher, loss=loss, optimizer=opt)
        topt.zero_grad()
        tl = torch_ref.combined_loss(ref(torch.from_numpy(x.astype(np.float64))),
                                     torch.from_numpy(y),
                                     torch.from_numpy(teacher.astype(np.float64)), **lossw)
        tl.backward()
        topt.step()
        assert abs(v - tl.item()) <= 1e-5 * abs(tl.item()), (v, tl.item())
        _assert_params_close(cfg, m, ref, P, lambda n: 1e-2, t)


def test_training_trajectory_10_steps():
    """10 train_steps (CE with label smoothing, default AdamW settings) against torch: the loss
    of every step within 1e-4 relative. Loss values are insensitive to the per-entry Adam noise
    discussed above (it is O(lr * noise) in a few entries), while the forward in float32 is good
    to ~1e-6, so 1e-4 leaves a wide margin and still catches any systematic difference."""
    cfg = make_config(**CFG)
    P = random_params(cfg, np.random.default_rng(20))
    m = polyvit.ViT(cfg, max_batch=B, seed=0)
    set_params(m, P)
    loss = polyvit.Loss(ce=1.0, label_smoothing=0.1)
    opt = polyvit.AdamW(m, lr=3e-3)     # defaults: betas, eps, weight_decay 0.05
    ref = torch_ref.from_polyvit((cfg, P), dtype=torch.float64)
    topt = torch.optim.AdamW(torch_ref.adamw_param_groups(ref, cfg, 3e-3, 0.05), lr=3e-3,
                             betas=(0.9, 0.999), eps=1e-8)
    got, want = [], []
    for x, y in _batches(cfg, 10, 21):
        got.append(m.train_step(x, labels=y, loss=loss, optimizer=opt))
        topt.zero_grad()
        tl = F.cross_entropy(ref(torch.from_numpy(x.astype(np.float64))), torch.from_numpy(y),
                             label_smoothing=0.1)
        tl.backward()
        topt.step()
        want.append(tl.item())
    got, want = np.array(got), np.array(want)
    assert np.all(np.abs(got - want) <= 1e-4 * np.abs(want)), np.c_[got, want]
    assert abs(want[-1] - want[0]) > 1e-3, "the trajectory does not move; test is vacuous"


def test_train_step_nonfinite_loss_raises_and_keeps_params():
    cfg = make_config(**CFG)
    P = random_params(cfg, np.random.default_rng(30))
    # the final norm's output has mean ~1 per image with bias 1, so a head weight of 1e38
    # overflows every logit to inf; the loss is then nan/inf
    P["norm.weight"][...] = 0.1
    P["norm.bias"][...] = 1.0
    P["head.weight"][...] = 1e38
    m = polyvit.ViT(cfg, max_batch=B, seed=0)
    set_params(m, P)
    opt = polyvit.AdamW(m, lr=1e-2)
    (x, y), = _batches(cfg, 1, 31)
    with pytest.raises(FloatingPointError, match=r"(?i)finite|nan|inf|overflow"):
        m.train_step(x, labels=y, loss=polyvit.Loss(), optimizer=opt)
    for n, v in P.items():
        np.testing.assert_array_equal(m.params[n], v, err_msg=f"{n} changed by a failed step")
