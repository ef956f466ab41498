"""Input preprocessing stored with the model, and the exact reproduction of a real third-party
CIFAR-10 ViT (../shared/data/volterra-vit128.safetensors) on all 10,000 test images."""
from __future__ import annotations

import hashlib
import io
import os
import tarfile

import numpy as np
import pytest

from helpers import SMALL, make_config, random_params, set_params, shared_data_dir

import polyvit

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.247, 0.2435, 0.2616)


@pytest.fixture
def model():
    cfg = make_config(**{**SMALL, "mean": MEAN, "std": STD})
    m = polyvit.ViT(cfg, max_batch=4, seed=0)
    set_params(m, random_params(cfg, np.random.default_rng(0)))
    return m


def _manual(u8_nchw):
    # torchvision's ToTensor + Normalize, in float32
    x = u8_nchw.astype(np.float32) / np.float32(255)
    m = np.asarray(MEAN, np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(STD, np.float32).reshape(1, 3, 1, 1)
    return (x - m) / s


def test_uint8_nchw_and_nhwc_are_preprocessed(model):
    rng = np.random.default_rng(1)
    u8 = rng.integers(0, 256, (6, 3, 16, 16), dtype=np.uint8)   # 6 > max_batch: chunked too
    want = model.forward(_manual(u8))
    np.testing.assert_array_equal(model.forward(u8), want)
    np.testing.assert_array_equal(model.forward(np.ascontiguousarray(u8.transpose(0, 2, 3, 1))), want)
    np.testing.assert_array_equal(model.preprocess(u8), _manual(u8))


def test_unit_float_input_with_preprocess_true(model):
    rng = np.random.default_rng(2)
    u8 = rng.integers(0, 256, (3, 3, 16, 16), dtype=np.uint8)
    unit = u8.astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(model.forward(unit, preprocess=True), model.forward(u8))
    # without preprocess=True a float batch is taken as already normalised
    assert not np.array_equal(model.forward(unit), model.forward(u8))


def test_no_stored_normalisation_scales_only():
    cfg = make_config(**SMALL)
    m = polyvit.ViT(cfg, max_batch=4, seed=0)
    u8 = np.random.default_rng(3).integers(0, 256, (2, 3, 16, 16), dtype=np.uint8)
    np.testing.assert_array_equal(m.forward(u8), m.forward(u8.astype(np.float32) / np.float32(255)))


def test_uint8_training_step_uses_preprocessing(model):
    u8 = np.random.default_rng(4).integers(0, 256, (4, 3, 16, 16), dtype=np.uint8)
    opt = polyvit.AdamW(model, lr=0.0)
    loss_u8 = model.train_step(u8, labels=np.arange(4), optimizer=opt)
    loss_f = model.train_step(_manual(u8), labels=np.arange(4), optimizer=opt)
    assert loss_u8 == loss_f


def test_preprocess_bad_input(model):
    with pytest.raises(TypeError, match="uint8"):
        model.forward(np.zeros((2, 3, 16, 16), np.uint8), preprocess=False)
    with pytest.raises(TypeError, match="dtype"):
        model.forward(np.zeros((2, 3, 16, 16), np.int16))
    with pytest.raises(ValueError, match="shape"):
        model.forward(np.zeros((2, 16, 3, 16), np.uint8))
    with pytest.raises(ValueError, match="mean and config.std"):
        make_config(**{**SMALL, "mean": MEAN})
    with pytest.raises(ValueError, match="per input channel"):
        make_config(**{**SMALL, "mean": (0.5,), "std": (0.2,)})


def test_normalisation_round_trips_through_save(model, tmp_path):
    p = tmp_path / "m.safetensors"
    model.save(p)
    again = polyvit.load(p, max_batch=4)
    assert again.config.mean == model.config.mean and again.config.std == model.config.std
    u8 = np.random.default_rng(5).integers(0, 256, (2, 3, 16, 16), dtype=np.uint8)
    np.testing.assert_array_equal(again.forward(u8), model.forward(u8))


# ------------------------------------------------------------------------------------------
# the shared third-party model: same predictions on all 10,000 CIFAR-10 test images
# ------------------------------------------------------------------------------------------
DATA = shared_data_dir("volterra-vit128.safetensors", "volterra-vit128.reference.npz",
                       "cifar10-jpeg.tar.gz")
needs_data = pytest.mark.skipif(DATA is None, reason="../shared/data (or $POLYVIT_DATA) with "
                                "volterra-vit128.safetensors and cifar10-jpeg.tar.gz is absent")
PIXELS_SHA256 = "5a6aa8185204d80b65d3dfb540696dadd5f10d185ded226a96665d3e0fc6259f"


@pytest.fixture(scope="module")
def cifar10_test():
    """The test split decoded with Pillow in the order test/<class>/NNNN.jpg (classes
    alphabetical, files ascending), as the reference file was made."""
    from PIL import Image

    ref = np.load(os.path.join(DATA, "volterra-vit128.reference.npz"))
    with tarfile.open(os.path.join(DATA, "cifar10-jpeg.tar.gz")) as tf:
        members = {m.name: m for m in tf.getmembers()
                   if m.isfile() and m.name.startswith("test/") and m.name.endswith(".jpg")}
        names = sorted(members, key=lambda n: (n.split("/")[1], n.split("/")[2]))
        imgs = np.stack([np.asarray(Image.open(io.BytesIO(tf.extractfile(members[n]).read()))
                                    .convert("RGB")) for n in names])
    return names, imgs, ref


@needs_data
def test_volterra_vit128_reproduces_all_predictions(cifar10_test):
    names, imgs, ref = cifar10_test
    assert names == [str(n) for n in ref["names"]]
    pixels_match = hashlib.sha256(imgs.tobytes()).hexdigest() == PIXELS_SHA256
    model = polyvit.import_weights(os.path.join(DATA, "volterra-vit128.safetensors"))
    assert model.config.ln_eps == 1e-5 and model.config.mean == MEAN
    logits = model.forward(imgs)            # uint8 NHWC: the model's own x/255, mean/std
    pred = logits.argmax(1)
    want = ref["pred_reference_fp64"].astype(np.int64)
    labels = ref["labels"].astype(np.int64)
    top1 = float((pred == labels).mean())
    diff = np.abs(logits.astype(np.float64) - ref["logits_fp64"]).max()
    print(f"volterra-vit128: top-1 {top1:.4f}, {int((pred != want).sum())} predictions differ, "
          f"max |logit diff| {diff:.2e}, decoded pixels identical to the reference: {pixels_match}")
    if not pixels_match:
        pytest.skip("this Pillow/libjpeg decodes the JPEGs differently from the reference "
                    "(Pillow 13.0.0): the exact comparison does not apply")
    assert (pred == want).all()
    assert top1 == pytest.approx(0.7216, abs=1e-9)
    assert diff <= 1e-4
