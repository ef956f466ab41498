"""The batch loader (polyvit.loader.DataLoader): coverage of every image per epoch, drop_last,
orders per seed and epoch, determinism across thread counts and prefetch depths, resuming from
state_dict, clean thread shutdown, errors from the worker."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

import polyvit
from polyvit.datasets import Dataset
from polyvit.loader import DataLoader, augment_seeds, normalize_numpy
from polyvit.mixup import Mixup

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def make_data(n=103, h=8, w=6, k=10, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256  # pixel (0, 0, R) and G carry the image's index
    images[:, 0, 0, 1] = np.arange(n) // 256
    return Dataset(images, np.arange(n) % k, [f"c{i}" for i in range(k)], name="toy")


def ids(x):
    """Image indices of a uint8 NHWC batch made by make_data (no augmentation)."""
    return x[:, 0, 0, 0].astype(int) + 256 * x[:, 0, 0, 1].astype(int)


def shift_augment(images, seeds):
    """A deterministic stand-in for RandAugment: each image rolled by an amount from its seed."""
    assert images.dtype == np.uint8 and seeds.dtype == np.uint64 and len(seeds) == len(images)
    out = np.empty_like(images)
    for i, s in enumerate(seeds):
        out[i] = np.roll(images[i], int(s % np.uint64(5)), axis=1) ^ np.uint8(int(s >> np.uint64(60)))
    return out


def collect(loader):
    return [tuple(np.copy(a) for a in b) for b in loader]


def assert_same(a, b):
    assert len(a) == len(b)
    for (x1, t1), (x2, t2) in zip(a, b):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(t1, t2)


def test_every_image_once_per_epoch_and_drop_last():
    ds = make_data(103)
    loader = DataLoader(ds, 16, drop_last=False, seed=3)
    assert len(loader) == 7
    batches = collect(loader)
    assert [len(x) for x, _ in batches] == [16] * 6 + [7]
    seen = np.concatenate([ids(x) for x, _ in batches])
    assert sorted(seen.tolist()) == list(range(103))
    for x, t in batches:  # labels travel with their images
        np.testing.assert_array_equal(t, ds.labels[ids(x)])
        assert t.dtype == np.int64 and x.dtype == np.uint8 and x.shape[1:] == (8, 6, 3)
    dropped = DataLoader(ds, 16, drop_last=True, seed=3)
    assert len(dropped) == 6
    b2 = collect(dropped)
    assert [len(x) for x, _ in b2] == [16] * 6
    # same seed and epoch: the same order, whatever drop_last says
    np.testing.assert_array_equal(np.concatenate([ids(x) for x, _ in b2]), seen[:96])
    # no shuffle: dataset order
    plain = np.concatenate([ids(x) for x, _ in DataLoader(ds, 10, shuffle=False, drop_last=False)])
    np.testing.assert_array_equal(plain, np.arange(103))


def test_epochs_differ_and_seeds_reproduce():
    ds = make_data(64)
    a = DataLoader(ds, 8, seed=1)
    e0 = np.concatenate([ids(x) for x, _ in a])
    assert a.epoch == 1
    e1 = np.concatenate([ids(x) for x, _ in a])
    assert a.epoch == 2 and not np.array_equal(e0, e1)
    np.testing.assert_array_equal(e0, np.random.default_rng([1, 0]).permutation(64))
    b = DataLoader(ds, 8, seed=1)
    np.testing.assert_array_equal(np.concatenate([ids(x) for x, _ in b]), e0)
    b.set_epoch(1)
    np.testing.assert_array_equal(np.concatenate([ids(x) for x, _ in b]), e1)
    c = DataLoader(ds, 8, seed=2)
    assert not np.array_equal(np.concatenate([ids(x) for x, _ in c]), e0)


def _ra():
    try:
        from polyvit.augment import RandAugment
        return RandAugment(2, 9)
    except Exception:  # not built yet
        return None


@pytest.mark.parametrize("augment", ["shift", "randaugment"])
def test_batches_independent_of_threads_and_prefetch(augment):
    aug = shift_augment if augment == "shift" else _ra()
    if aug is None:
        pytest.skip("polyvit.augment.RandAugment is not available in this build")
    ds = make_data(50, h=12, w=12)
    kw = dict(batch_size=8, seed=5, augment=aug, normalize=(MEAN, STD), drop_last=False,
              mixup=Mixup(num_classes=10, mode="elem"))
    old = polyvit.get_num_threads()
    runs = []
    try:
        for threads, prefetch in ((1, 0), (2, 0), (1, 2), (2, 3)):
            polyvit.set_num_threads(threads)
            loader = DataLoader(ds, prefetch=prefetch, **kw)
            runs.append(collect(loader) + collect(loader))  # two epochs
    finally:
        polyvit.set_num_threads(old)
    for r in runs[1:]:
        assert_same(runs[0], r)
    x, t = runs[0][0]
    assert x.dtype == np.float32 and x.shape == (8, 3, 12, 12)
    assert t.dtype == np.float32 and t.shape == (8, 10)
    np.testing.assert_allclose(t.sum(1), 1, atol=1e-6)
    assert not np.array_equal(runs[0][0][0], runs[0][len(runs[0]) // 2][0])  # epochs differ


def test_augment_gets_the_documented_seeds():
    ds = make_data(30)
    got = []

    def spy(images, seeds):
        got.append((ids(images), seeds.copy()))
        return images

    loader = DataLoader(ds, 7, seed=9, augment=spy, shuffle=True, prefetch=0)
    collect(loader)
    order = np.random.default_rng([9, 0]).permutation(30)
    pos = 0
    for idx, seeds in got:
        np.testing.assert_array_equal(idx, order[pos:pos + len(idx)])
        np.testing.assert_array_equal(seeds, augment_seeds(9, 0, np.arange(pos, pos + len(idx))))
        assert seeds.dtype == np.uint64
        pos += len(idx)
    assert len(set(np.concatenate([s for _, s in got]).tolist())) == pos  # all distinct


def test_normalize_and_mixup_outputs():
    ds = make_data(40)
    x, t = next(iter(DataLoader(ds, 8, seed=0, normalize=(MEAN, STD), shuffle=False)))
    want = ((ds.images[:8].astype(np.float64) / 255 - np.array(MEAN)) / np.array(STD)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(x, want, rtol=1e-6, atol=1e-6)
    assert x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_array_equal(t, ds.labels[:8])
    # uint8 in, mixup on NHWC
    x, t = next(iter(DataLoader(ds, 8, seed=0, mixup=Mixup(num_classes=10))))
    assert x.dtype == np.uint8 and t.shape == (8, 10)
    # the mixing of a batch depends on (seed, epoch, batch) only
    m = Mixup(num_classes=10, mode="elem")
    a = collect(DataLoader(ds, 8, seed=4, mixup=m, normalize=(MEAN, STD), prefetch=0))
    b = collect(DataLoader(ds, 8, seed=4, mixup=m, normalize=(MEAN, STD), prefetch=0))
    assert_same(a, b)


def test_normalize_numpy_matches_definition():
    rng = np.random.default_rng(0)
    im = rng.integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    y = normalize_numpy(im, MEAN, STD)
    assert y.shape == (3, 3, 4, 5) and y.dtype == np.float32
    np.testing.assert_allclose(y[1, 2, 3, 4], (im[1, 3, 4, 2] / 255 - MEAN[2]) / STD[2], rtol=1e-6)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_resume_from_state_dict(prefetch):
    ds = make_data(70)
    kw = dict(batch_size=8, seed=11, augment=shift_augment, mixup=Mixup(num_classes=10), prefetch=prefetch)
    ref = DataLoader(ds, **kw)
    full = collect(ref) + collect(ref)  # epochs 0 and 1: 8 + 8 batches
    run = DataLoader(ds, **kw)
    it = iter(run)
    for _ in range(3):
        next(it)
    state = run.state_dict()
    assert state["epoch"] == 0 and state["batch"] == 3
    del it
    resumed = DataLoader(ds, **kw)
    resumed.load_state_dict(state)
    rest = collect(resumed) + collect(resumed)
    assert_same(full[3:], rest)
    # set_epoch on the epoch being resumed keeps the position (for per-epoch set_epoch loops)
    again = DataLoader(ds, **kw)
    again.load_state_dict(state)
    again.set_epoch(0)
    assert again.batch == 3
    # a state taken after the last batch of an epoch continues with the next epoch
    end = DataLoader(ds, **kw)
    it = iter(end)
    for _ in range(len(end)):
        next(it)
    s = end.state_dict()
    assert (s["epoch"], s["batch"]) == (1, 0)
    del it
    # a break keeps the loader's position: the next pass goes on from there
    brk = DataLoader(ds, **kw)
    for i, _ in enumerate(brk):
        if i == 4:
            break
    assert brk.state_dict()["batch"] == 5
    assert_same(collect(brk), full[5:8])
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(ds, 4, seed=11).load_state_dict(state)
    with pytest.raises(ValueError, match="out of range"):
        DataLoader(ds, **kw).load_state_dict({"epoch": 0, "batch": 99})


def _loader_threads():
    return [t for t in threading.enumerate() if t.name.startswith("polyvit-loader")]


def _wait_no_loader_threads(timeout=5.0):
    t0 = time.perf_counter()
    while _loader_threads() and time.perf_counter() - t0 < timeout:
        time.sleep(0.01)
    return _loader_threads()


def test_break_leaves_no_thread_running():
    ds = make_data(200)
    before = threading.active_count()
    loader = DataLoader(ds, 4, seed=0, augment=shift_augment, prefetch=3)
    for i, _ in enumerate(loader):
        if i == 2:
            assert _loader_threads()  # the prefetch thread is there while iterating
            break
    assert not _wait_no_loader_threads()
    assert threading.active_count() == before
    # an iterator closed explicitly, and a new pass closing an abandoned one
    it = iter(loader)
    next(it)
    it.close()
    assert not _loader_threads()
    it1 = iter(loader)
    next(it1)
    it2 = iter(loader)  # starting a new pass stops the old one
    next(it2)
    assert len(_loader_threads()) == 1
    del it1, it2
    assert not _wait_no_loader_threads()
    assert threading.active_count() == before


def test_exception_in_augment_propagates_with_its_traceback():
    ds = make_data(40)

    def broken_augment(images, seeds):
        if seeds[0] == augment_seeds(0, 0, [8])[0]:  # the second batch
            raise KeyError("augment broke")
        return images

    for prefetch in (0, 2):
        loader = DataLoader(ds, 8, seed=0, augment=broken_augment, prefetch=prefetch)
        it = iter(loader)
        next(it)
        with pytest.raises(KeyError, match="augment broke") as info:
            next(it)
        assert any(tb.name == "broken_augment" for tb in info.traceback)
        assert not _wait_no_loader_threads()
        assert loader.batch == 1  # the failed batch was not consumed
    bad = DataLoader(ds, 8, augment=lambda im, s: im.astype(np.float32), prefetch=2)
    with pytest.raises(TypeError, match="augment must return uint8"):
        collect(bad)


def test_progress_bar_per_epoch(capsys):
    ds = make_data(24)
    collect(DataLoader(ds, 8, progress=True, desc="train"))
    err = capsys.readouterr().err
    assert "train: 100%" in err and "3/3" in err and "batch/s" in err
    collect(DataLoader(ds, 8))
    assert capsys.readouterr().err == ""


def test_bad_arguments():
    ds = make_data(20)
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(ds, 0)
    with pytest.raises(ValueError, match="larger than the data set"):
        DataLoader(ds, 21, drop_last=True)
    assert len(DataLoader(ds, 21, drop_last=False)) == 1
    with pytest.raises(ValueError, match="seed"):
        DataLoader(ds, 4, seed=-1)
    with pytest.raises(ValueError, match="prefetch"):
        DataLoader(ds, 4, prefetch=-1)
    with pytest.raises(TypeError, match="augment must be callable"):
        DataLoader(ds, 4, augment="randaugment")
    with pytest.raises(ValueError, match="num_classes=5"):
        DataLoader(ds, 4, mixup=Mixup(num_classes=5))
    with pytest.raises(ValueError, match="mean"):
        DataLoader(ds, 4, normalize=((0.5, 0.5), STD))
    with pytest.raises(ValueError, match="std must be positive"):
        DataLoader(ds, 4, normalize=(MEAN, (0.2, 0.0, 0.2)))
    with pytest.raises(TypeError, match="dataset"):
        DataLoader("images", 4)
    with pytest.raises(TypeError, match="uint8"):
        DataLoader((ds.images.astype(np.float32), ds.labels), 4)
    with pytest.raises(ValueError, match="epoch"):
        DataLoader(ds, 4).set_epoch(-1)
    # a pair (images, labels) is a data set too
    assert len(DataLoader((ds.images, ds.labels), 5)) == 4


def test_interpreter_exit_with_a_live_iterator(tmp_path):
    """An iterator left open at exit (prefetch thread blocked on a full queue) must not hang."""
    import subprocess
    import sys
    script = tmp_path / "exit.py"
    script.write_text(
        "import numpy as np\n"
        "from polyvit.loader import DataLoader\n"
        "x = np.zeros((64, 4, 4, 3), np.uint8)\n"
        "loader = DataLoader((x, np.zeros(64, np.int64)), 2, prefetch=2)\n"
        "it = iter(loader)\n"
        "next(it)\n"
        "KEEP = [it]\n"
        "print('ok')\n")
    t = time.perf_counter()
    where = os.path.dirname(os.path.dirname(os.path.abspath(polyvit.__file__)))  # this polyvit
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                       cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": where})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok" and time.perf_counter() - t < 30
