"""Data set loaders (polyvit.datasets): CIFAR-10/100 in both official formats (folders and
.tar.gz), image folders and archives, the decoded cache, every bad input, and the shared
CIFAR-10 (JPEG q75) archive against its published pixel hash."""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from polyvit import datasets
from polyvit.datasets import (Dataset, load_cifar10, load_cifar10_jpeg, load_cifar100,
                              load_image_folder)
from polyvit.progress import Progress

N = 6  # images per CIFAR batch in these small fakes
C10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ---- fake CIFAR releases, written the way the official ones are laid out ---------------------
def _rows(rng, n):
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def _pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # bytes keys, as Python 2 str keys load with encoding="bytes"


def make_cifar10(root, fmt, seed=0):
    """root/cifar-10-batches-{py,bin}; returns {split: (rows (n, 3072), labels)}."""
    rng = np.random.default_rng(seed)
    d = os.path.join(root, "cifar-10-batches-py" if fmt == "py" else "cifar-10-batches-bin")
    os.makedirs(d)
    truth = {}
    batches = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b in batches:
        rows, labels = _rows(rng, N), rng.integers(0, 10, N)
        if fmt == "py":
            _pickle(os.path.join(d, b), {b"batch_label": b"x", b"labels": labels.tolist(), b"data": rows,
                                         b"filenames": [b"f.png"] * N})
        else:
            rec = np.concatenate([labels.astype(np.uint8)[:, None], rows], axis=1)
            with open(os.path.join(d, b + ".bin"), "wb") as f:
                f.write(rec.tobytes())
        truth[b] = (rows, labels)
    if fmt == "py":
        _pickle(os.path.join(d, "batches.meta"), {b"label_names": [n.encode() for n in C10_NAMES],
                                                  b"num_cases_per_batch": N, b"num_vis": 3072})
    else:
        with open(os.path.join(d, "batches.meta.txt"), "w") as f:
            f.write("\n".join(C10_NAMES) + "\n\n")
    train = (np.concatenate([truth[b][0] for b in batches[:5]]), np.concatenate([truth[b][1] for b in batches[:5]]))
    return d, {"train": train, "test": truth["test_batch"]}


def make_cifar100(root, fmt, seed=1):
    rng = np.random.default_rng(seed)
    d = os.path.join(root, "cifar-100-python" if fmt == "py" else "cifar-100-binary")
    os.makedirs(d)
    fine = [f"fine{i:02d}" for i in range(100)]
    coarse = [f"coarse{i:02d}" for i in range(20)]
    truth = {}
    for split in ("train", "test"):
        rows, f_lab, c_lab = _rows(rng, N), rng.integers(0, 100, N), rng.integers(0, 20, N)
        if fmt == "py":
            _pickle(os.path.join(d, split), {b"filenames": [b"a"] * N, b"batch_label": b"b",
                                             b"fine_labels": f_lab.tolist(), b"coarse_labels": c_lab.tolist(),
                                             b"data": rows})
        else:
            rec = np.concatenate([c_lab.astype(np.uint8)[:, None], f_lab.astype(np.uint8)[:, None], rows], axis=1)
            with open(os.path.join(d, split + ".bin"), "wb") as f:
                f.write(rec.tobytes())
        truth[split] = (rows, f_lab, c_lab)
    if fmt == "py":
        _pickle(os.path.join(d, "meta"), {b"fine_label_names": [n.encode() for n in fine],
                                          b"coarse_label_names": [n.encode() for n in coarse]})
    else:
        for name, names in (("fine_label_names.txt", fine), ("coarse_label_names.txt", coarse)):
            with open(os.path.join(d, name), "w") as f:
                f.write("\n".join(names) + "\n")
    return d, truth, fine, coarse


def tar_gz(src_dir, dest):
    with tarfile.open(dest, "w:gz") as tf:
        tf.add(src_dir, arcname=os.path.basename(src_dir))
    return dest


def hwc(rows):
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


# ---- CIFAR ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["py", "bin"])
def test_cifar10_every_way_of_pointing_at_it(fmt, tmp_path):
    inner, truth = make_cifar10(str(tmp_path / "data"), fmt)
    arc = tar_gz(inner, str(tmp_path / f"cifar-10-{'python' if fmt == 'py' else 'binary'}.tar.gz"))
    roots = [str(tmp_path / "data"), inner, arc]
    for root in roots:
        for split in ("train", "test"):
            ds = load_cifar10(root, split)
            rows, labels = truth[split]
            assert isinstance(ds, Dataset) and ds.split == split and ds.name == "cifar10"
            assert ds.images.dtype == np.uint8 and ds.images.flags.c_contiguous
            assert ds.images.shape == (len(labels), 32, 32, 3)
            np.testing.assert_array_equal(ds.images, hwc(rows))
            # the record layout: channel planes of 1024 bytes, rows of 32 pixels
            assert ds.images[1, 2, 3, 1] == rows[1, 1024 + 2 * 32 + 3]
            np.testing.assert_array_equal(ds.labels, labels)
            assert ds.labels.dtype == np.int64
            assert ds.classes == C10_NAMES
    # a folder holding only the official archive
    only = tmp_path / "only"
    only.mkdir()
    os.replace(arc, only / os.path.basename(arc))
    np.testing.assert_array_equal(load_cifar10(str(only), "test").labels, truth["test"][1])


@pytest.mark.parametrize("fmt", ["py", "bin"])
def test_cifar100_fine_and_coarse(fmt, tmp_path):
    inner, truth, fine, coarse = make_cifar100(str(tmp_path), fmt)
    arc = tar_gz(inner, str(tmp_path / "c100.tar.gz"))
    for root in (str(tmp_path), inner, arc):
        for split in ("train", "test"):
            rows, f_lab, c_lab = truth[split]
            ds = load_cifar100(root, split)
            np.testing.assert_array_equal(ds.images, hwc(rows))
            np.testing.assert_array_equal(ds.labels, f_lab)
            assert ds.classes == fine
            dc = load_cifar100(root, split, label="coarse")
            np.testing.assert_array_equal(dc.labels, c_lab)
            assert dc.classes == coarse


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > PWNED",))


def test_cifar_pickles_are_unpickled_safely(tmp_path, monkeypatch):
    inner, _ = make_cifar10(str(tmp_path), "py")
    monkeypatch.chdir(tmp_path)
    _pickle(os.path.join(inner, "test_batch"), {b"data": _Evil(), b"labels": [0]})
    with pytest.raises(ValueError, match="refusing to load (posix|os|nt).system"):
        load_cifar10(inner, "test")
    assert not (tmp_path / "PWNED").exists()
    # a dict of the wrong things
    _pickle(os.path.join(inner, "test_batch"), {b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]})
    with pytest.raises(ValueError, match=r"'data' must be a uint8 array \(N, 3072\)"):
        load_cifar10(inner, "test")
    _pickle(os.path.join(inner, "test_batch"), [1, 2, 3])
    with pytest.raises(ValueError, match="expected a dict"):
        load_cifar10(inner, "test")
    with open(os.path.join(inner, "test_batch"), "wb") as f:
        f.write(b"not a pickle at all")
    with pytest.raises(ValueError, match="test_batch is not a valid CIFAR python batch"):
        load_cifar10(inner, "test")


def test_cifar_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_cifar10(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="unknown format"):
        load_cifar10(str(tmp_path / "empty"))
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="junk.tar.gz"):
        load_cifar10(str(junk))
    with pytest.raises(ValueError, match="split must be"):
        load_cifar10(str(tmp_path), "val")
    with pytest.raises(ValueError, match="label must be"):
        load_cifar100(str(tmp_path), "train", label="medium")
    inner, _ = make_cifar10(str(tmp_path / "b"), "bin")
    os.remove(os.path.join(inner, "data_batch_3.bin"))
    with pytest.raises(FileNotFoundError, match="data_batch_3.bin"):
        load_cifar10(inner, "train")
    with open(os.path.join(inner, "test_batch.bin"), "ab") as f:
        f.write(b"\x01\x02")
    with pytest.raises(ValueError, match="test_batch.bin is not a valid CIFAR binary batch"):
        load_cifar10(inner, "test")
    # an archive with something else inside
    other = tmp_path / "other"
    other.mkdir()
    (other / "readme.txt").write_text("hi")
    arc = tar_gz(str(other), str(tmp_path / "other.tar.gz"))
    with pytest.raises(ValueError, match="holds no CIFAR-10 batches"):
        load_cifar10(arc)
    # labels beyond the class names
    inner, _ = make_cifar10(str(tmp_path / "c"), "bin")
    with open(os.path.join(inner, "batches.meta.txt"), "w") as f:
        f.write("a\nb\n")
    with pytest.raises(ValueError, match="class names"):
        load_cifar10(inner, "test")


# ---- image folders -------------------------------------------------------------------------
def _save(path, arr, fmt, mode="RGB"):
    im = Image.fromarray(arr)
    if mode != "RGB":
        im = im.convert(mode)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im.save(path, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))


def _decode_like_pillow(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def make_folder(root, rng, size=(7, 9), per_class=None):
    """root/<class>/<file>: PNG and JPEG, several modes; returns [(path, label)] in load order."""
    per_class = per_class or {"dog": 3, "ant": 2, "cat": 4}
    out = []
    for label, cls in enumerate(sorted(per_class)):
        for k in range(per_class[cls]):
            arr = rng.integers(0, 256, size + (3,), dtype=np.uint8)
            fmt, ext = (("PNG", "png"), ("JPEG", "jpg"))[k % 2]
            mode = ("RGB", "L", "RGBA", "P")[k % 4] if fmt == "PNG" else "RGB"
            p = os.path.join(root, cls, f"{k:03d}.{ext}")
            _save(p, arr, fmt, mode)
            out.append((p, label))
    return sorted(out, key=lambda t: (t[1], t[0]))


def test_image_folder_classes_order_and_pixels(tmp_path, rng):
    files = make_folder(str(tmp_path / "imgs"), rng)
    (tmp_path / "imgs" / "notes.txt").write_text("not a class")  # files at the top are ignored
    (tmp_path / "imgs" / "cat" / ".DS_Store").write_bytes(b"\0")  # hidden files too
    ds = load_image_folder(str(tmp_path / "imgs"), cache=False, progress=False)
    assert ds.classes == ["ant", "cat", "dog"]
    assert ds.images.shape == (9, 7, 9, 3) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.labels, [t[1] for t in files])
    for i, (p, _) in enumerate(files):
        np.testing.assert_array_equal(ds.images[i], _decode_like_pillow(p))
    # indexing
    img, lab = ds[3]
    assert lab == files[3][1] and img.shape == (7, 9, 3)
    sub = ds[2:5]
    assert isinstance(sub, Dataset) and len(sub) == 3 and sub.classes == ds.classes
    np.testing.assert_array_equal(ds[np.array([0, 8])].labels, [0, 2])
    assert len(ds[ds.labels == 1]) == 4
    with pytest.raises(IndexError):
        ds[9]


def test_image_folder_archive_and_splits(tmp_path, rng):
    top = tmp_path / "set"
    tr = make_folder(str(top / "train"), rng)
    te = make_folder(str(top / "test"), rng, per_class={"ant": 1, "cat": 2, "dog": 1})
    for name, mode in (("set.tar.gz", "w:gz"), ("set.tar", "w"), ("set.tgz", "w:gz")):
        arc = str(tmp_path / name)
        with tarfile.open(arc, mode) as tf:  # members at the top level, as the shared archive
            for sub in ("train", "test"):
                tf.add(str(top / sub), arcname=sub)
        for split, files in (("train", tr), ("test", te)):
            ds = load_image_folder(arc, split=split, cache=False, progress=False)
            assert ds.classes == ["ant", "cat", "dog"] and ds.split == split
            np.testing.assert_array_equal(ds.labels, [t[1] for t in files])
            for i, (p, _) in enumerate(files):
                np.testing.assert_array_equal(ds.images[i], _decode_like_pillow(p))
    # the folder itself, with split; and an archive wrapping it in one more folder
    ds = load_image_folder(str(top), split="test", cache=False, progress=False)
    assert len(ds) == 4
    wrapped = tar_gz(str(top), str(tmp_path / "wrapped.tar.gz"))
    assert len(load_image_folder(wrapped, split="test", cache=False, progress=False)) == 4
    # split folders are not classes
    with pytest.raises(ValueError, match="split folders .* pass split="):
        load_image_folder(str(tmp_path / "set.tar.gz"), cache=False, progress=False)
    with pytest.raises(ValueError, match="split folders"):
        load_image_folder(str(top), cache=False, progress=False)
    with pytest.raises(FileNotFoundError, match="val"):
        load_image_folder(str(top), split="val", cache=False, progress=False)
    with pytest.raises(FileNotFoundError, match="val"):
        load_image_folder(str(tmp_path / "set.tar.gz"), split="val", cache=False, progress=False)


def test_image_folder_cache(tmp_path, rng, monkeypatch, capsys):
    root = tmp_path / "imgs"
    make_folder(str(root), rng)
    cache = tmp_path / "cache"
    a = load_image_folder(str(root), cache_dir=str(cache), progress=False)
    files = sorted(os.listdir(cache))
    assert len(files) == 3 and any(f.endswith(".images.npy") for f in files)
    assert not any(f.startswith(".tmp") for f in files)

    def no_decoding(*a, **k):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(datasets, "_decode", no_decoding)
    t = time.perf_counter()
    b = load_image_folder(str(root), cache_dir=str(cache), progress=False)
    assert time.perf_counter() - t < 1.0
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.classes == b.classes and b.source == a.source
    monkeypatch.undo()

    # a modified folder invalidates it: a new image in a class
    _save(str(root / "cat" / "zzz.png"), np.zeros((7, 9, 3), np.uint8), "PNG")
    capsys.readouterr()
    c = load_image_folder(str(root), cache_dir=str(cache), progress=False)
    err = capsys.readouterr().err
    assert len(c) == len(a) + 1 and "stale (the folder's file count changed" in err, err
    np.testing.assert_array_equal(c.images[6], 0)  # the last of "cat"
    # ... and a file rewritten in place (same name, new content and mtime)
    p = root / "ant" / "000.png"
    _save(str(p), np.full((7, 9, 3), 200, np.uint8), "PNG")
    os.utime(p, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    capsys.readouterr()
    d = load_image_folder(str(root), cache_dir=str(cache), progress=False)
    np.testing.assert_array_equal(d.images[0], 200)
    assert "stale (a file in the folder was added, removed, resized or modified)" in \
        capsys.readouterr().err
    # a corrupt cache is rebuilt, with a note
    npy = next(f for f in os.listdir(cache) if f.endswith(".images.npy"))
    (cache / npy).write_bytes(b"garbage")
    capsys.readouterr()
    e = load_image_folder(str(root), cache_dir=str(cache), progress=False)
    assert "unreadable" in capsys.readouterr().err
    np.testing.assert_array_equal(e.images, d.images)
    # the environment variable names the default cache folder
    monkeypatch.setenv("POLYVIT_CACHE", str(tmp_path / "envcache"))
    load_image_folder(str(root), progress=False)
    assert len(os.listdir(tmp_path / "envcache")) == 3


def test_image_folder_bad_input(tmp_path, rng):
    kw = dict(cache=False, progress=False)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_image_folder(str(tmp_path / "missing"), **kw)
    notar = tmp_path / "data.tar.gz"
    notar.write_bytes(b"this is not an archive")
    with pytest.raises(ValueError, match="data.tar.gz is neither a folder nor a tar archive"):
        load_image_folder(str(notar), **kw)
    # an archive without class folders
    flat = tmp_path / "flat"
    flat.mkdir()
    _save(str(flat / "a.png"), np.zeros((4, 4, 3), np.uint8), "PNG")
    arc = str(tmp_path / "flat.tar.gz")
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(str(flat / "a.png"), arcname="a.png")
    with pytest.raises(ValueError, match="no class folders found in .*flat.tar.gz"):
        load_image_folder(arc, **kw)
    with pytest.raises(ValueError, match="no class folders found"):
        load_image_folder(str(flat), **kw)
    # an empty class folder
    root = tmp_path / "r"
    make_folder(str(root), rng)
    (root / "bee").mkdir()
    with pytest.raises(ValueError, match="class folder .*bee holds no images"):
        load_image_folder(str(root), **kw)
    os.rmdir(root / "bee")
    # a corrupt image: named; or skipped with a warning
    bad = root / "cat" / "001b.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(ValueError, match="cannot decode the image .*001b.png"):
        load_image_folder(str(root), **kw)
    with pytest.warns(RuntimeWarning, match="skipped 1 corrupt image.*001b.png"):
        ds = load_image_folder(str(root), skip_corrupt=True, **kw)
    assert len(ds) == 9
    trunc = root / "cat" / "001b.png"
    jpg = io.BytesIO()
    Image.fromarray(np.zeros((7, 9, 3), np.uint8)).save(jpg, format="JPEG")
    trunc.write_bytes(jpg.getvalue()[:60])  # a truncated JPEG fails when decoded, not opened
    with pytest.raises(ValueError, match="001b.png"):
        load_image_folder(str(root), **kw)
    os.remove(trunc)
    # mixed sizes: the first file (in load order) that differs is named
    _save(str(root / "dog" / "000a.png"), np.zeros((5, 5, 3), np.uint8), "PNG")
    _save(str(root / "dog" / "002a.png"), np.zeros((6, 6, 3), np.uint8), "PNG")
    with pytest.raises(ValueError, match=r"dog.000a\.png is 5x5 .* resize="):
        load_image_folder(str(root), **kw)
    ds = load_image_folder(str(root), resize=(7, 9), **kw)
    assert ds.images.shape == (11, 7, 9, 3)
    with Image.open(root / "dog" / "000a.png") as im:
        want = np.asarray(im.convert("RGB").resize((9, 7), Image.BICUBIC))
    dogs = sorted(os.listdir(root / "dog"))  # the load order within a class
    first_dog = list(ds.labels).index(2)
    np.testing.assert_array_equal(ds.images[first_dog + dogs.index("000a.png")], want)
    for bad_resize in ((7,), (0, 3), "big"):
        with pytest.raises(ValueError, match="resize"):
            load_image_folder(str(root), resize=bad_resize, **kw)
    with pytest.raises(ValueError, match="split"):
        load_image_folder(str(root), split="../x", **kw)


def test_large_images_decode_in_threads_identically(tmp_path, rng):
    """From 128x128 up the decoding runs in a thread pool; the result is the same."""
    make_folder(str(tmp_path / "big"), rng, size=(130, 129), per_class={"a": 3, "b": 2})
    serial = load_image_folder(str(tmp_path / "big"), cache=False, progress=False, workers=1)
    auto = load_image_folder(str(tmp_path / "big"), cache=False, progress=False)
    pool = load_image_folder(str(tmp_path / "big"), cache=False, progress=False, workers=3)
    assert serial.images.shape == (5, 130, 129, 3)
    for other in (auto, pool):
        np.testing.assert_array_equal(serial.images, other.images)
        np.testing.assert_array_equal(serial.labels, other.labels)
    (tmp_path / "big" / "b" / "002.png").write_bytes(b"broken")
    with pytest.raises(ValueError, match="002.png"):
        load_image_folder(str(tmp_path / "big"), cache=False, progress=False, workers=2)


def test_progress_bar(capsys):
    load_bar = Progress(3, desc="decoding", unit="img")  # stderr is not a TTY under pytest
    for _ in range(3):
        load_bar.update()
    load_bar.close()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "decoding: 100%" in err and "3/3" in err and "img/s" in err
    Progress(3, enabled=False).close()
    assert capsys.readouterr().err == ""

    class Tty(io.StringIO):
        def isatty(self):
            return True

    f = Tty()
    bar = Progress(5, desc="x", file=f, min_interval=0.0)
    bar.update(2)
    bar.close()
    assert f.getvalue().count("\r") >= 2 and "2/5" in f.getvalue() and f.getvalue().endswith("\n")


# ---- the shared CIFAR-10 (JPEG q75) archive -------------------------------------------------
SHARED = os.environ.get("POLYVIT_DATA") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
SHARED_ARCHIVE = os.path.join(SHARED, "cifar10-jpeg.tar.gz")
TEST_SHA256 = "5a6aa8185204d80b65d3dfb540696dadd5f10d185ded226a96665d3e0fc6259f"


@pytest.fixture(scope="module")
def jpeg_test(tmp_path_factory):
    if not os.path.isfile(SHARED_ARCHIVE):
        pytest.skip(f"the shared data folder is absent ({SHARED_ARCHIVE} not found; set $POLYVIT_DATA)")
    cache = tmp_path_factory.mktemp("pvcache")
    ds = load_cifar10_jpeg("test", data_dir=SHARED, cache_dir=str(cache), progress=False)
    return ds, str(cache)


def test_shared_archive_test_split_hash(jpeg_test):
    ds, _ = jpeg_test
    assert ds.images.shape == (10000, 32, 32, 3) and ds.images.flags.c_contiguous
    assert ds.classes == C10_NAMES
    np.testing.assert_array_equal(np.bincount(ds.labels), [1000] * 10)
    assert (np.diff(ds.labels) >= 0).all()
    digest = hashlib.sha256(ds.images.tobytes()).hexdigest()
    import PIL
    if PIL.__version__ != "13.0.0" and digest != TEST_SHA256:
        pytest.skip(f"Pillow {PIL.__version__}: the published hash is for Pillow 13.0.0's libjpeg")
    assert digest == TEST_SHA256


def test_shared_archive_cache_is_instant(jpeg_test):
    ds, cache = jpeg_test
    t = time.perf_counter()
    again = load_cifar10_jpeg("test", data_dir=SHARED, cache_dir=cache, progress=False)
    assert time.perf_counter() - t < 1.0
    np.testing.assert_array_equal(again.images, ds.images)
    assert again.name == "cifar10-jpeg"


def test_shared_archive_missing(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="cifar10-jpeg.tar.gz not found: looked in .*nothing_here"):
        load_cifar10_jpeg("test", data_dir=str(tmp_path / "nothing_here"))
    monkeypatch.setenv("POLYVIT_DATA", str(tmp_path / "env_dir"))
    cands = datasets._shared_data_candidates()
    assert cands[0].startswith(str(tmp_path / "env_dir")) and cands[-1].endswith(
        os.path.join("shared", "data", "cifar10-jpeg.tar.gz"))
    with pytest.raises(ValueError, match="split"):
        load_cifar10_jpeg("valid")


def test_a_stale_archive_cache_says_what_changed(tmp_path, capsys):
    """An archive copied again (same bytes, new mtime) and an archive with new content are told
    apart in the rebuild note; both rebuild."""
    src = tmp_path / "src"
    for c in ("ant", "bee"):
        for i in range(2):
            _save(str(src / c / f"{i}.png"), np.full((4, 4, 3), 10 * i, np.uint8), "PNG")
    arc, cache = tmp_path / "set.tar", tmp_path / "cache"

    def pack(extra=False):
        with tarfile.open(arc, "w") as t:
            for c in ("ant", "bee"):
                t.add(src / c, arcname=c)
            if extra:   # enough members to outgrow the tar's 10,240-byte record
                for k in range(12):
                    t.add(src / "ant" / "0.png", arcname=f"bee/9{k:02d}.png")

    pack()
    load_image_folder(str(arc), cache_dir=str(cache), progress=False)
    st = os.stat(arc)
    os.utime(arc, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    capsys.readouterr()
    assert len(load_image_folder(str(arc), cache_dir=str(cache), progress=False)) == 4
    assert "the archive's modification time changed, not its size" in capsys.readouterr().err
    pack(extra=True)
    assert len(load_image_folder(str(arc), cache_dir=str(cache), progress=False)) == 16
    assert "the archive's size changed" in capsys.readouterr().err
