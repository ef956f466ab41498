"""Bad input raises ValueError / TypeError with a readable message (and never crashes).

Each case asserts the exception type and that the message is a sentence (several words) that
mentions the problem (loose regexes: any of a few words a reasonable message would use).
Valid-but-unusual input (float64, ints, nested lists, non-contiguous arrays) must be accepted.
"""
from __future__ import annotations

import contextlib
import re

import numpy as np
import pytest

from helpers import SMALL, make_config, random_images, random_params, set_params

import polyvit  # noqa: E402
from polyvit import losses  # noqa: E402

B = 3


@contextlib.contextmanager
def raises(exc, pattern):
    """pytest.raises plus: the message is a sentence (>= 3 words) matching ``pattern``."""
    with pytest.raises(exc) as info:
        yield info
    msg = str(info.value)
    assert len(msg.split()) >= 3, f"message is not a sentence: {msg!r}"
    assert re.search(pattern, msg, flags=re.IGNORECASE), \
        f"message {msg!r} does not mention the problem (/{pattern}/)"


@pytest.fixture
def cfg():
    return make_config(**SMALL)


@pytest.fixture
def model(cfg):
    m = polyvit.ViT(cfg, max_batch=4, seed=0)
    set_params(m, random_params(cfg, np.random.default_rng(0)))
    return m


@pytest.fixture
def x(cfg):
    return random_images(cfg, B, np.random.default_rng(1))


# ------------------------------------------------------------------------------------------
# forward: accepted input
# ------------------------------------------------------------------------------------------
def test_forward_accepts_other_real_dtypes(model, x):
    want = model.forward(x)
    x64 = x.astype(np.float64)           # exactly representable: same result
    np.testing.assert_allclose(model.forward(x64), want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(model.forward(x.tolist()), want, rtol=1e-6, atol=1e-7)
    xh = x.astype(np.float16)
    np.testing.assert_allclose(model.forward(xh), model.forward(xh.astype(np.float32)),
                               rtol=1e-6, atol=1e-7)


def test_forward_refuses_integer_images_other_than_uint8(model, x):
    """Integer images other than uint8 are ambiguous (scaled how?), so forward refuses them;
    uint8 are raw pixels the model preprocesses itself (tests/test_preprocess.py)."""
    for dt in (np.int32, np.int64, np.uint16):
        xi = np.clip(np.round(3 * x), 0, 100).astype(dt)
        with raises(TypeError, r"floating|float32|uint8|dtype"):
            model.forward(xi)


def test_forward_accepts_non_contiguous(model, cfg):
    rng = np.random.default_rng(2)
    big = rng.standard_normal((B, cfg.in_chans, 2 * cfg.img_size, 2 * cfg.img_size)).astype(
        np.float32)
    cases = {
        "strided": big[:, :, ::2, ::2],
        "fortran": np.asfortranarray(big[:, :, :cfg.img_size, :cfg.img_size]),
        "reversed": big[::-1, :, :cfg.img_size, :cfg.img_size],
        "transposed": np.swapaxes(big[:, :, :cfg.img_size, :cfg.img_size], 2, 3),
    }
    for name, xv in cases.items():
        assert not xv.flags.c_contiguous, name
        out = model.forward(xv)
        np.testing.assert_allclose(out, model.forward(np.ascontiguousarray(xv)), rtol=1e-6,
                                   atol=1e-7, err_msg=name)


def test_backward_accepts_non_contiguous_and_float64(model, x, cfg):
    rng = np.random.default_rng(3)
    R = rng.standard_normal((cfg.num_classes, B)).astype(np.float32).T   # F-ordered view
    model.forward(x)
    model.backward(np.ascontiguousarray(R))
    want = {n: g.copy() for n, g in model.grads.items()}
    for dl in (R, R.astype(np.float64)):
        model.backward(dl)
        for n, g in model.grads.items():
            np.testing.assert_allclose(g, want[n], rtol=1e-6, atol=1e-9, err_msg=n)


# ------------------------------------------------------------------------------------------
# forward: rejected input
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["complex", "object", "str", "bytes"])
def test_forward_bad_dtype(model, x, kind):
    bad = {
        "complex": x.astype(np.complex64),
        "object": x.astype(object),
        "str": x.astype(str),
        "bytes": x.astype("S8"),
    }[kind]
    with raises(TypeError, r"dtype|type|complex|object|str|float|real|numeric"):
        model.forward(bad)


def test_forward_plain_string(model):
    with raises(TypeError, r"dtype|type|str|float|array|numeric"):
        model.forward("an image")


@pytest.mark.parametrize("shape", [(3, 16, 16), (1, 1, 3, 16, 16), (16,), ()])
def test_forward_bad_ndim(model, shape):
    with raises(ValueError, r"dim|shape|4"):
        model.forward(np.zeros(shape, np.float32))


def test_forward_bad_channels(model, cfg):
    with raises(ValueError, r"chan|shape|in_chans|3"):
        model.forward(np.zeros((B, cfg.in_chans + 1, cfg.img_size, cfg.img_size), np.float32))


@pytest.mark.parametrize("hw", [(12, 12), (16, 12), (12, 16), (32, 32)])
def test_forward_bad_image_size(model, cfg, hw):
    with raises(ValueError, r"size|shape|img|image|16|height|width"):
        model.forward(np.zeros((B, cfg.in_chans) + hw, np.float32))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_forward_non_finite(model, x, value):
    x = x.copy()
    x[1, 2, 3, 4] = value
    with raises(ValueError, r"nan|inf|finite"):
        model.forward(x)


def test_forward_capture_bad_block(model, x, cfg):
    with pytest.raises((ValueError, TypeError)):
        model.forward(x, capture=[cfg.depth + 3])


# ------------------------------------------------------------------------------------------
# backward
# ------------------------------------------------------------------------------------------
def test_backward_without_forward(cfg):
    m = polyvit.ViT(cfg, max_batch=4, seed=0)
    with raises((ValueError, RuntimeError), r"forward"):
        m.backward(np.zeros((B, cfg.num_classes), np.float32))


@pytest.mark.parametrize("shape", ["more_classes", "fewer_rows", "more_rows", "1d", "3d"])
def test_backward_bad_shape(model, x, cfg, shape):
    K = cfg.num_classes
    s = dict(more_classes=(B, K + 1), fewer_rows=(B - 1, K), more_rows=(B + 1, K), **{
        "1d": (B * K,), "3d": (B, K, 1)})[shape]
    model.forward(x)
    with raises(ValueError, r"shape|dim|batch|class|logits|\d"):
        model.backward(np.zeros(s, np.float32))


def test_backward_after_chunked_forward(cfg):
    """A forward with B > max_batch keeps no state for backward (B <= max_batch required)."""
    m = polyvit.ViT(cfg, max_batch=2, seed=0)
    xs = random_images(cfg, 5, np.random.default_rng(4))
    m.forward(xs)
    with pytest.raises((ValueError, RuntimeError)):
        m.backward(np.zeros((5, cfg.num_classes), np.float32))


def test_backward_bad_dtype(model, x, cfg):
    model.forward(x)
    with pytest.raises((TypeError, ValueError)):
        model.backward(np.zeros((B, cfg.num_classes), np.complex64))
    with pytest.raises((TypeError, ValueError)):
        model.backward(np.zeros((B, cfg.num_classes), object).astype(str))


# ------------------------------------------------------------------------------------------
# set_activation
# ------------------------------------------------------------------------------------------
def _snapshot(m):
    return m.config, {n: a.copy() for n, a in m.params.items()}


def _assert_unchanged(m, snap):
    cfg, params = snap
    assert m.config == cfg
    assert set(m.params) == set(params)
    for n, v in params.items():
        np.testing.assert_array_equal(m.params[n], v, err_msg=n)


def test_set_activation_unknown_kind(model):
    snap = _snapshot(model)
    with raises(ValueError, r"relu|activation|kind|gelu|poly"):
        model.set_activation(0, "relu")
    _assert_unchanged(model, snap)


def test_set_activation_kind_not_a_string(model):
    with pytest.raises((ValueError, TypeError)):
        model.set_activation(0, 3)


@pytest.mark.parametrize("delta", [-1, 1])
def test_set_activation_wrong_vector_length(model, cfg, delta):
    H = cfg.mlp_hidden
    snap = _snapshot(model)
    coeffs = dict(a=np.full(H + delta, 0.2, np.float32), b=0.5, c=0.1)
    with raises(ValueError, r"length|shape|size|width|hidden|channel|\d"):
        model.set_activation(0, "poly", coeffs=coeffs, per_channel=True)
    _assert_unchanged(model, snap)


def test_set_activation_bad_coeff_containers(model):
    snap = _snapshot(model)
    for coeffs in [(0.2, 0.5), (0.1, 0.2, 0.3, 0.4, 0.5), dict(a=0.2, b=0.5),
                   dict(a=0.2, b=0.5, c=0.1, d=1.0)]:
        with pytest.raises((ValueError, TypeError)):
            model.set_activation(0, "poly", coeffs=coeffs)
    _assert_unchanged(model, snap)


@pytest.mark.parametrize("blocks", [2, -3, [0, 5]])
def test_set_activation_block_out_of_range(model, blocks):
    with raises(ValueError, r"block|range|depth|index"):
        model.set_activation(blocks, "gelu")


# ------------------------------------------------------------------------------------------
# losses
# ------------------------------------------------------------------------------------------
@pytest.fixture
def logits():
    return np.random.default_rng(5).standard_normal((4, 6)).astype(np.float32)


@pytest.mark.parametrize("bad", [6, -1, 100])
def test_cross_entropy_label_out_of_range(logits, bad):
    y = np.array([0, 1, bad, 2], np.int64)
    with raises(ValueError, r"label|range|class|target"):
        losses.cross_entropy(logits, y)


def test_cross_entropy_bad_label_shapes(logits):
    with raises(ValueError, r"shape|label|target|batch|\d"):
        losses.cross_entropy(logits, np.zeros(5, np.int64))
    with raises(ValueError, r"shape|label|target|class|\d"):
        losses.cross_entropy(logits, np.full((4, 7), 1 / 7, np.float32))
    with pytest.raises((ValueError, TypeError)):
        losses.cross_entropy(logits, np.zeros((4, 6, 1), np.float32))


def test_losses_bad_logits(logits):
    with pytest.raises(ValueError):
        losses.cross_entropy(logits[0], np.zeros(1, np.int64))
    with pytest.raises((TypeError, ValueError)):
        losses.cross_entropy(logits.astype(np.complex64), np.zeros(4, np.int64))


def test_mse_kl_shape_mismatch(logits):
    with raises(ValueError, r"shape|teacher|\d"):
        losses.mse(logits, logits[:, :5])
    with raises(ValueError, r"shape|teacher|\d"):
        losses.kl_div(logits, logits[:3])


def test_loss_missing_inputs(logits):
    with pytest.raises((ValueError, TypeError)):
        polyvit.Loss(ce=1.0)(logits)                       # no labels
    with pytest.raises((ValueError, TypeError)):
        polyvit.Loss(ce=0.0, kl=1.0)(logits, labels=np.zeros(4, np.int64))  # no teacher


def test_loss_bad_hyperparameters(logits):
    with pytest.raises((ValueError, TypeError)):
        losses.kl_div(logits, logits, temperature=0.0)
    with pytest.raises((ValueError, TypeError)):
        losses.cross_entropy(logits, np.zeros(4, np.int64), label_smoothing=1.5)


# ------------------------------------------------------------------------------------------
# train_step: bad input leaves the model untouched
# ------------------------------------------------------------------------------------------
def test_train_step_bad_labels_keep_params(model, x, cfg):
    opt = polyvit.AdamW(model, lr=1e-2)
    snap = _snapshot(model)
    y = np.array([0, cfg.num_classes, 1], np.int64)
    with raises(ValueError, r"label|range|class|target"):
        model.train_step(x, labels=y, loss=polyvit.Loss(), optimizer=opt)
    _assert_unchanged(model, snap)


def test_train_step_nan_input_keeps_params(model, x):
    opt = polyvit.AdamW(model, lr=1e-2)
    snap = _snapshot(model)
    x = x.copy()
    x[0, 0, 0, 0] = np.nan
    with raises(ValueError, r"nan|inf|finite"):
        model.train_step(x, labels=np.zeros(B, np.int64), loss=polyvit.Loss(), optimizer=opt)
    _assert_unchanged(model, snap)


# ------------------------------------------------------------------------------------------
# construction, optimizer, threads
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mb", [0, -2])
def test_bad_max_batch(cfg, mb):
    with raises(ValueError, r"max_batch|batch|positive"):
        polyvit.ViT(cfg, max_batch=mb, seed=0)


def test_bad_max_batch_type(cfg):
    with pytest.raises((TypeError, ValueError)):
        polyvit.ViT(cfg, max_batch=2.5, seed=0)


@pytest.mark.parametrize("bad", ["vit_tiny_patch4_32", 42, None])
def test_bad_config_object(bad):
    with pytest.raises((TypeError, ValueError)):
        polyvit.ViT(bad, max_batch=2)


def test_unknown_preset():
    with raises(ValueError, r"preset|unknown|available"):
        polyvit.ViT.preset("vit_gigantic_patch1_7", max_batch=2)
    with pytest.raises(ValueError):
        polyvit.ViT.preset("vit_tiny_patch4_32", max_batch=2, depth=0)


def test_adamw_bad_arguments(model):
    with pytest.raises(ValueError):
        polyvit.AdamW(model, lr=-1.0)
    with pytest.raises(ValueError):
        polyvit.AdamW(model, betas=(0.9, 1.5))
    with pytest.raises((ValueError, TypeError)):
        polyvit.AdamW(model, groups={"not_a_group": {"lr": 1.0}})
    with pytest.raises((ValueError, TypeError)):
        polyvit.AdamW(model, groups={"poly": {"learning_rate": 1.0}})


@pytest.mark.parametrize("n", [0, -1])
def test_set_num_threads_bad(n):
    old = polyvit.get_num_threads()
    with raises(ValueError, r"thread|positive|least|>"):
        polyvit.set_num_threads(n)
    assert polyvit.get_num_threads() == old


def test_set_num_threads_type():
    old = polyvit.get_num_threads()
    with pytest.raises((TypeError, ValueError)):
        polyvit.set_num_threads("2")
    assert polyvit.get_num_threads() == old
