"""The host side of GPU models, tested without a GPU.

A model on a GPU keeps host mirrors of its buffers and moves them to and from the device engine
only when needed. That bookkeeping (polyvit/model.py: _host, _device, to) is plain Python, so it
is tested here against a stand-in device engine: a second CPU engine with its own memory, behind
the CUDA engine's interface (download/upload/forward(images, scale, shift)/...). A missed upload
or download shows up as a model that disagrees with the same model kept on the CPU. The CUDA
kernels themselves are tested by tests/test_cuda.py, on a GPU.
"""
import numpy as np
import pytest

import polyvit
from polyvit import _C, cuda
from polyvit.config import ViTConfig


class StandInEngine:
    """polyvit._C_cuda.Engine's interface over a separate CPU engine ("device" memory)."""

    instances = []

    def __init__(self, config, max_batch, device):
        self._e = _C.Engine(config, max_batch)
        self.device = device
        self.precision = 0
        self.uploads = 0
        self.downloads = 0
        self._buf = {b: self._e.buffer(b) for b in ("params", "grads", "m", "v")}
        StandInEngine.instances.append(self)

    max_batch = property(lambda self: self._e.max_batch)
    last_batch = property(lambda self: self._e.last_batch)
    device_bytes = property(lambda self: 4 * 4 * self._buf["params"].size)
    n_params = property(lambda self: self._buf["params"].size)

    def tensors(self):
        return self._e.tensors()

    def download(self, which, out):
        assert out.dtype == np.float32 and out.shape == self._buf[which].shape
        out[...] = self._buf[which]
        self.downloads += 1
        return out

    def upload(self, which, arr):
        assert arr.dtype == np.float32 and arr.shape == self._buf[which].shape
        self._buf[which][...] = arr
        self.uploads += 1

    def forward(self, images, scale, shift):
        x = images
        if x.dtype == np.uint8:
            if x.shape[-1] == scale.shape[0] and x.shape[1] != scale.shape[0]:
                x = x.transpose(0, 3, 1, 2)
            x = x.astype(np.float32)
        x = x * scale[None, :, None, None] + shift[None, :, None, None]
        return self._e.forward(np.ascontiguousarray(x, dtype=np.float32))

    def preact(self, i):
        return self._e.preact(i)

    def backward(self, g):
        self._e.backward(g)

    def grad_norm(self, hp):
        return self._e.grad_norm(hp)

    def grad_scale(self, hp, c):
        self._e.grad_scale(hp, c)

    def adamw(self, *a):
        self._e.adamw(*a)

    def set_precision(self, mode):
        self.precision = mode

    def synchronize(self):
        pass


@pytest.fixture
def standin(monkeypatch):
    StandInEngine.instances = []
    monkeypatch.setattr(cuda, "_new_engine", lambda cfg, mb, dev: StandInEngine(cfg, mb, dev))
    return StandInEngine


def small_config(**kw):
    base = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, num_classes=5,
                mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    base.update(kw)
    return ViTConfig(**base)


def batch(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8),
            rng.integers(0, 5, n).astype(np.int64))


def test_training_on_the_device_matches_the_cpu(standin):
    cfg = small_config(act=["poly", "gelu"])
    cpu = polyvit.ViT(cfg, max_batch=8, seed=1)
    dev = polyvit.ViT(cfg, max_batch=8, seed=1, device="cuda", precision="bf16")
    assert dev.device == "cuda:0" and dev.precision == "bf16" and cpu.device == "cpu"
    assert standin.instances[-1].precision == 2
    opt_c = polyvit.AdamW(cpu, lr=1e-2, clip_grad_norm=0.5, groups={"embed": {"frozen": True}})
    opt_d = polyvit.AdamW(dev, lr=1e-2, clip_grad_norm=0.5, groups={"embed": {"frozen": True}})
    # float input: the stand-in computes exactly what the CPU does, so the two must agree bit
    # for bit; any buffer left stale on either side breaks that
    for step in range(4):
        x, y = batch(seed=step)
        x = cpu.preprocess(x)
        lc = cpu.train_step(x, labels=y, optimizer=opt_c)
        ld = dev.train_step(x, labels=y, optimizer=opt_d)
        assert ld == lc
    for n, v in cpu.params.items():
        np.testing.assert_array_equal(dev.params[n], v, err_msg=n)
    for n, v in cpu._moments[1].items():
        np.testing.assert_array_equal(dev._moments[1][n], v, err_msg=n)
    # uint8 images are normalised on the device: x * scale + shift, within float32 rounding;
    # float images in [0, 1] with preprocess=True too (NHWC is transposed on the host)
    x, y = batch(seed=9)
    np.testing.assert_allclose(dev(x), cpu(x), rtol=1e-5, atol=1e-5)
    unit = x.astype(np.float32) / 255.0
    np.testing.assert_allclose(dev(unit, preprocess=True), cpu(unit, preprocess=True),
                               rtol=1e-5, atol=1e-5)
    lc = cpu.train_step(unit, labels=y, optimizer=opt_c, preprocess=True)
    ld = dev.train_step(unit, labels=y, optimizer=opt_d, preprocess=True)
    assert ld == pytest.approx(lc, rel=1e-4)
    # the host engine of a GPU model only mirrors: it holds no activations for max_batch
    assert dev._engine.max_batch == 1 and dev.max_batch == 8


def test_no_transfers_inside_a_training_loop(standin):
    dev = polyvit.ViT(small_config(), max_batch=8, seed=0, device="cuda")
    eng = standin.instances[-1]
    opt = polyvit.AdamW(dev, lr=1e-3)
    x, y = batch()
    dev.train_step(x, labels=y, optimizer=opt)
    up, down = eng.uploads, eng.downloads
    for _ in range(3):
        dev.train_step(x, labels=y, optimizer=opt)
    assert (eng.uploads, eng.downloads) == (up, down)


def floats(x):
    """Model input as the CPU preprocesses it (float input passes the stand-in unchanged, so
    the comparisons below can be exact)."""
    return polyvit.ViT(small_config(), max_batch=1, seed=None).preprocess(x)


def test_host_writes_reach_the_device_and_reads_see_device_updates(standin):
    cpu = polyvit.ViT(small_config(), max_batch=8, seed=3)
    dev = polyvit.ViT(small_config(), max_batch=8, seed=3, device="cuda")
    x = floats(batch()[0])
    np.testing.assert_array_equal(dev(x), cpu(x))
    # an in-place write into a mirror takes effect at the next forward
    dev.params["head.bias"][...] += 1.0
    cpu.params["head.bias"][...] += 1.0
    np.testing.assert_array_equal(dev(x), cpu(x))
    # gradients read after backward are the device's
    for m in (cpu, dev):
        m.forward(x)
        m.backward(np.ones((6, 5), np.float32))
    for n, g in cpu.grads.items():
        np.testing.assert_array_equal(dev.grads[n], g, err_msg=n)


def test_move_between_devices_keeps_everything(standin, tmp_path):
    m = polyvit.ViT(small_config(act=["poly", "poly"]), max_batch=4, seed=5)
    x, y = batch(4)
    x = floats(x)
    opt = polyvit.AdamW(m, lr=1e-2)
    m.train_step(x, labels=y, optimizer=opt)
    ref = m(x)
    moments = {n: v.copy() for n, v in m._moments[0].items()}
    assert m.to("cuda:0") is m and m.device == "cuda:0"
    np.testing.assert_array_equal(m(x), ref)
    m.train_step(x, labels=y, optimizer=opt)  # moves the device copy on
    after = m(x)
    m.to("cpu")
    assert m.device == "cpu" and m.precision == "fp32" and m._engine.max_batch == 4
    np.testing.assert_array_equal(m(x), after)
    assert any(not np.array_equal(m._moments[0][n], v) for n, v in moments.items())
    # save on the GPU, load on the CPU
    m.to("cuda")
    m.save(tmp_path / "m.safetensors")
    back = polyvit.load(tmp_path / "m.safetensors", max_batch=4)
    np.testing.assert_array_equal(back(x), after)


def test_set_activation_and_copy_on_the_device(standin):
    cpu = polyvit.ViT(small_config(), max_batch=8, seed=2)
    dev = polyvit.ViT(small_config(), max_batch=8, seed=2, device="cuda")
    for m in (cpu, dev):
        m.set_activation([1], "poly", coeffs=(0.1, 0.5, 0.2), per_channel=True)
    x = floats(batch()[0])
    assert dev.device == "cuda:0"
    np.testing.assert_array_equal(dev(x), cpu(x))
    c = dev.copy(max_batch=2)
    assert c.device == "cuda:0" and c.max_batch == 2
    # evaluated in chunks of 2: the GEMMs split differently, so float32 rounding differs
    np.testing.assert_allclose(c(x), cpu(x), rtol=1e-5, atol=1e-6)
    _, caps = dev.forward(x, capture=[1])
    _, caps_c = cpu.forward(x, capture=[1])
    np.testing.assert_array_equal(caps[1], caps_c[1])


def test_a_failed_move_leaves_the_model_where_it_was(monkeypatch):
    def full(*a):
        raise MemoryError("cudaMalloc: out of memory allocating the activations")

    monkeypatch.setattr(cuda, "_new_engine", full)
    m = polyvit.ViT(small_config(), max_batch=8, seed=0)
    x, _ = batch()
    ref = m(x)
    with pytest.raises(MemoryError):
        m.to("cuda")
    assert m.device == "cpu" and m._engine.max_batch == 8
    np.testing.assert_array_equal(m(x), ref)


def test_device_and_precision_arguments():
    cfg = small_config()
    with pytest.raises(ValueError, match="unknown device"):
        polyvit.ViT(cfg, device="gpu")
    with pytest.raises(ValueError, match="unknown precision"):
        polyvit.ViT(cfg, precision="fp16")
    with pytest.raises(ValueError, match="applies to CUDA models"):
        polyvit.ViT(cfg, precision="bf16")
    with pytest.raises(TypeError):
        polyvit.ViT(cfg, device=0)


@pytest.mark.skipif(cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_gpu_without_one_says_why():
    with pytest.raises(RuntimeError, match="CUDA engine|no usable GPU"):
        polyvit.ViT(small_config(), device="cuda")
    assert cuda.device_count() == 0 and not cuda.is_available()
    assert polyvit.HAS_CUDA == cuda.is_built()
