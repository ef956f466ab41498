"""Image data sets as NumPy arrays: CIFAR-10/100 in their official formats, image folders
(one subfolder per class, or a tar archive of one), with a decoded cache.

Every loader returns a ``Dataset``: ``images`` uint8 (N, H, W, C) C-contiguous, ``labels``
int64 (N,), ``classes`` (label i is ``classes[i]``), plus ``name``, ``source`` and ``split``.

    ds = load_cifar10("~/data", split="train")          # python or binary batches, or .tar.gz
    ds = load_image_folder("photos/", resize=(64, 64))   # photos/<class>/<image>
    ds = load_cifar10_jpeg("test")                       # the shared CIFAR-10 (JPEG q75) archive
"""
from __future__ import annotations

import codecs
import hashlib
import io
import json
import numbers
import os
import pickle
import sys
import tarfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ._fs import atomic_save

from .progress import Progress

__all__ = ["Dataset", "load_cifar10", "load_cifar100", "load_image_folder", "load_cifar10_jpeg",
           "default_cache_dir"]

_CACHE_VERSION = 1
_SPLIT_NAMES = ("train", "test", "val", "valid", "validation")


# ---- the container ---------------------------------------------------------------------------
class Dataset:
    """Images and labels in memory.

    ``len(ds)``; ``ds[i]`` -> ``(image (H, W, C) uint8, label int)``; ``ds[a:b]``, ``ds[index
    array]`` or ``ds[boolean mask]`` -> a ``Dataset`` with the same classes (a slice shares
    memory with its parent, an index array copies)."""

    def __init__(self, images, labels, classes: Sequence[str], name: str = "", source: str = "",
                 split: Optional[str] = None):
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise TypeError("images must be a uint8 numpy array (N, H, W, C)")
        if images.ndim != 4:
            raise ValueError(f"images must have shape (N, H, W, C), got {images.shape}")
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iu" or labels.dtype == np.bool_:
            raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), one per image, got {labels.shape}")
        self.classes = [str(c) for c in classes]
        if len(labels) and self.classes and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise ValueError(f"labels must lie in 0..{len(self.classes) - 1} (one per class), "
                             f"got {int(labels.min())}..{int(labels.max())}")
        self.images = np.ascontiguousarray(images)
        self.labels = np.ascontiguousarray(labels, dtype=np.int64)
        self.name = name
        self.source = source
        self.split = split

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, idx):
        if isinstance(idx, (numbers.Integral, np.integer)) and not isinstance(idx, (bool, np.bool_)):
            i = int(idx)
            if not -len(self) <= i < len(self):
                raise IndexError(f"index {i} is out of range for a data set of {len(self)} images")
            return self.images[i], int(self.labels[i])
        if isinstance(idx, slice):
            return Dataset(self.images[idx], self.labels[idx], self.classes, self.name, self.source, self.split)
        sel = np.asarray(idx)
        if sel.dtype == np.bool_:
            if sel.shape != (len(self),):
                raise IndexError(f"a boolean mask must have shape ({len(self)},), got {sel.shape}")
        elif sel.dtype.kind not in "iu" or sel.ndim != 1:
            raise TypeError("index a Dataset with an int, a slice, a 1-D integer array or a boolean mask")
        return Dataset(np.ascontiguousarray(self.images[sel]), self.labels[sel], self.classes, self.name,
                       self.source, self.split)

    def __repr__(self) -> str:
        n, h, w, c = self.images.shape
        split = f", split={self.split!r}" if self.split else ""
        return (f"Dataset({self.name!r}{split}: {n} images {h}x{w}x{c}, {len(self.classes)} classes, "
                f"source={self.source!r})")


def balanced_sample(labels, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``n`` items, as even across the classes as ``n`` allows (within a
    class, a seeded random choice; classes with too few items give what they have and the
    rest is spread over the others). For evaluating on part of a test set: archives such as
    the CIFAR-10 JPEG one are stored class by class, so their first ``n`` images are one or
    two classes."""
    labels = np.asarray(labels)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if n >= len(labels):
        return np.arange(len(labels))
    pools = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    take = [0] * len(pools)
    left = int(n)
    while left:   # round-robin over the classes that still have items
        for i, pool in enumerate(pools):
            if left and take[i] < len(pool):
                take[i] += 1
                left -= 1
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.choice(pool, k, replace=False)
                                   for pool, k in zip(pools, take)]).astype(np.int64))


def _note(msg: str) -> None:
    """A one-line note on stderr (for cache rebuilds and the like)."""
    try:
        sys.stderr.write(f"polyvit: {msg}\n")
        sys.stderr.flush()
    except Exception:
        pass


# ---- CIFAR: files of one folder, on disk or inside a tar ---------------------------------------
class _SafeUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR python batches: dicts, lists, ints, bytes and NumPy arrays only.
    Any other global (a class or function a pickle could use to run code) is refused."""

    def find_class(self, module, name):
        key = (module, name)
        if key in (("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                   ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")):
            try:
                from numpy._core import multiarray as ma  # NumPy 2
            except ImportError:  # NumPy 1.x
                from numpy.core import multiarray as ma
            return getattr(ma, name)
        if key == ("numpy", "ndarray"):
            return np.ndarray
        if key == ("numpy", "dtype"):
            return np.dtype
        if key == ("_codecs", "encode"):  # how protocol 2 stores bytes written by Python 3
            return _latin1_encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only "
                                     "dicts, lists, numbers, bytes and NumPy arrays")


def _latin1_encode(obj, encoding="latin1", errors="strict"):
    if encoding not in ("latin1", "latin-1", "iso-8859-1") or not isinstance(obj, str):
        raise pickle.UnpicklingError("refusing a codec call other than latin-1 text to bytes")
    return codecs.encode(obj, encoding, errors)


def _safe_unpickle(data: bytes, where: str) -> dict:
    try:
        obj = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError) as e:
        raise ValueError(f"{where} is not a valid CIFAR python batch: {e}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where} is not a valid CIFAR python batch: expected a dict, got {type(obj).__name__}")
    return obj


class _Folder:
    """Read named files of one folder, from disk or from a tar archive (read in one pass)."""

    def __init__(self, names: List[str], reader: Callable[[List[str]], Dict[str, bytes]], where: Callable[[str], str],
                 source: str):
        self.names = set(names)
        self._reader = reader
        self.where = where  # file name -> a path to show in messages
        self.source = source

    def read(self, wanted: List[str]) -> Dict[str, bytes]:
        missing = [n for n in wanted if n not in self.names]
        if missing:
            raise FileNotFoundError(f"CIFAR file not found: {self.where(missing[0])}")
        return self._reader(wanted)


def _dir_folder(path: str) -> _Folder:
    names = [n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n))]

    def reader(wanted):
        out = {}
        for n in wanted:
            with open(os.path.join(path, n), "rb") as f:
                out[n] = f.read()
        return out

    return _Folder(names, reader, lambda n: os.path.join(path, n), path)


def _open_tar(path: str) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ValueError(f"{path} is not a readable tar archive ({e})") from None


def _tar_members(path: str) -> List[tarfile.TarInfo]:
    with _open_tar(path) as tf:
        try:
            return tf.getmembers()
        except (tarfile.TarError, OSError, EOFError, Exception) as e:  # gzip/zlib errors, truncation
            raise ValueError(f"{path} is not a readable tar archive ({e})") from None


def _tar_folder(path: str, members: List[tarfile.TarInfo], inner: str) -> _Folder:
    files = {os.path.basename(m.name): m.name for m in members
             if m.isfile() and os.path.dirname(_norm(m.name)) == inner}

    def reader(wanted):
        want = {files[n]: n for n in wanted}
        out = {}
        with _open_tar(path) as tf:
            try:
                for m in tf:
                    if m.name in want:
                        out[want[m.name]] = tf.extractfile(m).read()
                        if len(out) == len(want):
                            break
            except (tarfile.TarError, OSError, EOFError, Exception) as e:
                raise ValueError(f"{path} is not a readable tar archive ({e})") from None
        return out

    return _Folder(list(files), reader, lambda n: f"{path}:{files.get(n, inner + '/' + n)}", path)


def _norm(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.strip("/")


# layout of each official format: marker files (to recognise it), folder and archive names
_CIFAR = {
    "cifar10": {
        "py": dict(folder="cifar-10-batches-py", archive="cifar-10-python.tar.gz",
                   train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"], meta=["batches.meta"]),
        "bin": dict(folder="cifar-10-batches-bin", archive="cifar-10-binary.tar.gz",
                    train=[f"data_batch_{i}.bin" for i in range(1, 6)], test=["test_batch.bin"],
                    meta=["batches.meta.txt"]),
    },
    "cifar100": {
        "py": dict(folder="cifar-100-python", archive="cifar-100-python.tar.gz", train=["train"],
                   test=["test"], meta=["meta"]),
        "bin": dict(folder="cifar-100-binary", archive="cifar-100-binary.tar.gz", train=["train.bin"],
                    test=["test.bin"], meta=["fine_label_names.txt", "coarse_label_names.txt"]),
    },
}


def _looks_like(names, spec) -> bool:
    """A folder holds a format when it has its meta file(s) and a batch of either split."""
    return all(m in names for m in spec["meta"]) and any(n in names for n in spec["train"] + spec["test"])


def _locate_cifar(root, which: str) -> Tuple[str, _Folder]:
    """Find a CIFAR data set under root: the extracted folder, its parent, an official archive, or
    a folder holding that archive. Returns (format 'py' or 'bin', folder)."""
    root = os.path.expanduser(os.fspath(root))
    specs = _CIFAR[which]
    title = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[which]
    if not os.path.exists(root):
        raise FileNotFoundError(f"{title} data not found: {root} does not exist")
    if os.path.isfile(root):
        if not tarfile.is_tarfile(root):
            raise ValueError(f"{root} is neither a folder nor a tar archive: unknown {title} format")
        members = _tar_members(root)
        by_dir: Dict[str, set] = {}
        for m in members:
            if m.isfile():
                n = _norm(m.name)
                by_dir.setdefault(os.path.dirname(n), set()).add(os.path.basename(n))
        for fmt in ("py", "bin"):
            for d, names in sorted(by_dir.items()):
                if _looks_like(names, specs[fmt]):
                    return fmt, _tar_folder(root, members, d)
        raise ValueError(f"{root} is a tar archive but holds no {title} batches in the python "
                         f"({specs['py']['folder']}/) or binary ({specs['bin']['folder']}/) format")
    names = set(os.listdir(root))
    for fmt in ("py", "bin"):
        if _looks_like({n for n in names if os.path.isfile(os.path.join(root, n))}, specs[fmt]):
            return fmt, _dir_folder(root)
    for fmt in ("py", "bin"):
        sub = os.path.join(root, specs[fmt]["folder"])
        if os.path.isdir(sub):
            return fmt, _dir_folder(sub)
    for fmt in ("py", "bin"):
        arc = os.path.join(root, specs[fmt]["archive"])
        if os.path.isfile(arc):
            return _locate_cifar(arc, which)
    raise ValueError(f"no {title} data found in {root}: expected the python batches "
                     f"({specs['py']['folder']}/ or its {specs['py']['archive']}) or the binary ones "
                     f"({specs['bin']['folder']}/ or {specs['bin']['archive']}): unknown format")


def _check_split(split) -> str:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def _chw_to_hwc(data: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _py_batch(blob: bytes, where: str, label_key: bytes) -> Tuple[np.ndarray, np.ndarray]:
    d = _safe_unpickle(blob, where)
    if b"data" not in d or label_key not in d:
        raise ValueError(f"{where} is not a valid CIFAR python batch: it lacks "
                         f"{'data' if b'data' not in d else label_key.decode()}")
    data = d[b"data"]
    if isinstance(data, list):
        data = np.asarray(data)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{where}: 'data' must be a uint8 array (N, 3072), got {desc}")
    labels = d[label_key]
    try:
        labels = np.asarray(labels)
    except Exception:
        labels = None
    if labels is None or labels.dtype.kind not in "iu" or labels.shape != (data.shape[0],):
        raise ValueError(f"{where}: '{label_key.decode()}' must hold {data.shape[0]} integer labels")
    return _chw_to_hwc(data), labels.astype(np.int64)


def _bin_batch(blob: bytes, where: str, n_label_bytes: int, label_index: int) -> Tuple[np.ndarray, np.ndarray]:
    rec = 3072 + n_label_bytes
    if len(blob) == 0 or len(blob) % rec:
        raise ValueError(f"{where} is not a valid CIFAR binary batch: its size ({len(blob)} bytes) is "
                         f"not a multiple of the {rec}-byte record")
    a = np.frombuffer(blob, dtype=np.uint8).reshape(-1, rec)
    return _chw_to_hwc(a[:, n_label_bytes:]), a[:, label_index].astype(np.int64)


def _text_names(blob: bytes, where: str) -> List[str]:
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{where} is not a text file of class names") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _meta_names(blob: bytes, where: str, key: bytes) -> List[str]:
    d = _safe_unpickle(blob, where)
    names = d.get(key)
    if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
        raise ValueError(f"{where} lacks the list '{key.decode()}' of class names")
    return [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]


def _finish(images: List[np.ndarray], labels: List[np.ndarray], classes, name, source, split, where) -> Dataset:
    x = np.concatenate(images) if len(images) > 1 else images[0]
    y = np.concatenate(labels) if len(labels) > 1 else labels[0]
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        raise ValueError(f"{where}: labels run to {int(y.max())} but there are {len(classes)} class names")
    return Dataset(np.ascontiguousarray(x), y, classes, name=name, source=source, split=split)


def load_cifar10(root, split: str = "train") -> Dataset:
    """CIFAR-10 from its official python (``cifar-10-batches-py``) or binary
    (``cifar-10-batches-bin``) release. ``root``: the folder holding either (or its
    ``.tar.gz``), the extracted folder itself, or the ``.tar.gz`` archive (read directly).
    ``split``: 'train' (50,000 images, batches 1..5 in order) or 'test' (10,000)."""
    split = _check_split(split)
    fmt, folder = _locate_cifar(root, "cifar10")
    spec = _CIFAR["cifar10"][fmt]
    files = spec[split] + spec["meta"]
    blobs = folder.read(files)
    xs, ys = [], []
    for f in spec[split]:
        if fmt == "py":
            x, y = _py_batch(blobs[f], folder.where(f), b"labels")
        else:
            x, y = _bin_batch(blobs[f], folder.where(f), 1, 0)
        xs.append(x)
        ys.append(y)
    meta = spec["meta"][0]
    classes = (_meta_names(blobs[meta], folder.where(meta), b"label_names") if fmt == "py"
               else _text_names(blobs[meta], folder.where(meta)))
    return _finish(xs, ys, classes, "cifar10", folder.source, split, folder.where(spec[split][0]))


def load_cifar100(root, split: str = "train", label: str = "fine") -> Dataset:
    """CIFAR-100 from its official python (``cifar-100-python``) or binary (``cifar-100-binary``)
    release, found as for ``load_cifar10``. ``label``: 'fine' (100 classes) or 'coarse' (20
    superclasses)."""
    split = _check_split(split)
    if label not in ("fine", "coarse"):
        raise ValueError(f"label must be 'fine' or 'coarse', got {label!r}")
    fmt, folder = _locate_cifar(root, "cifar100")
    spec = _CIFAR["cifar100"][fmt]
    f = spec[split][0]
    if fmt == "py":
        meta = "meta"
        blobs = folder.read([f, meta])
        x, y = _py_batch(blobs[f], folder.where(f), f"{label}_labels".encode())
        classes = _meta_names(blobs[meta], folder.where(meta), f"{label}_label_names".encode())
    else:
        meta = f"{label}_label_names.txt"
        blobs = folder.read([f, meta])
        x, y = _bin_batch(blobs[f], folder.where(f), 2, 0 if label == "coarse" else 1)
        classes = _text_names(blobs[meta], folder.where(meta))
    return _finish([x], [y], classes, "cifar100" if label == "fine" else "cifar100-coarse", folder.source,
                   split, folder.where(f))


# ---- image folders ---------------------------------------------------------------------------
def default_cache_dir() -> str:
    """``$POLYVIT_CACHE`` or ``~/.cache/polyvit``."""
    return os.environ.get("POLYVIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "polyvit")


def _image_extensions() -> set:
    from PIL import Image

    return {ext.lower() for ext in Image.registered_extensions()}


def _hidden(rel: str) -> bool:
    return any(p.startswith(".") for p in rel.split("/"))


class _Listing:
    """The files of an image folder (or archive) relative to its top: rel path -> (size, mtime),
    the directories, and how to read them."""

    def __init__(self, files: Dict[str, Tuple[int, int]], dirs: set, where: Callable[[str], str]):
        self.files = files
        self.dirs = dirs
        self.where = where


def _scan_dir(top: str) -> _Listing:
    files: Dict[str, Tuple[int, int]] = {}
    dirs = set()
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(top, rel) if rel else top) as it:
            for e in it:
                r = f"{rel}/{e.name}" if rel else e.name
                if e.is_dir():
                    dirs.add(r)
                    stack.append(r)
                elif e.is_file():
                    st = e.stat()
                    files[r] = (st.st_size, st.st_mtime_ns)
    return _Listing(files, dirs, lambda r: os.path.join(top, *r.split("/")))


def _resolve_split_dir(root: str, split: Optional[str]) -> str:
    if split is None:
        return root
    cand = os.path.join(root, split)
    if os.path.isdir(cand):
        return cand
    subs = [d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")]
    if len(subs) == 1 and os.path.isdir(os.path.join(root, subs[0], split)):
        return os.path.join(root, subs[0], split)
    raise FileNotFoundError(f"split folder not found: {cand}")


def _split_prefix(names: List[str], split: Optional[str], archive: str) -> str:
    """The prefix (inside an archive) of the tree holding the class folders."""
    if split is None:
        return ""
    tops = {n.split("/")[0] for n in names}
    if split in tops:
        return split + "/"
    if len(tops) == 1:
        (t,) = tops
        if any(n.startswith(f"{t}/{split}/") for n in names):
            return f"{t}/{split}/"
    raise FileNotFoundError(f"split folder not found: {archive}:{split}/ (the archive's top level holds "
                            f"{', '.join(sorted(tops)[:8]) or 'nothing'})")


def _classify(files: List[str], dirs: set, where: Callable[[str], str], root_desc: str,
              split: Optional[str]) -> Tuple[List[str], List[Tuple[str, int]]]:
    """Class folders (sorted) and the (rel path, label) of every image, classes in order and
    files sorted within each class."""
    exts = _image_extensions()
    class_dirs = {d for d in dirs if "/" not in d and not d.startswith(".")}
    per_class: Dict[str, List[str]] = {c: [] for c in class_dirs}
    for f in files:
        if "/" not in f or _hidden(f):
            continue
        c = f.split("/", 1)[0]
        if os.path.splitext(f)[1].lower() not in exts:
            continue
        per_class.setdefault(c, []).append(f)
    if not per_class:
        raise ValueError(f"no class folders found in {root_desc}: expected <class>/<image> under it")
    if split is None:
        nested = [c for c in per_class if c in _SPLIT_NAMES and per_class[c]
                  and all(f.count("/") >= 2 for f in per_class[c])]
        if nested:
            raise ValueError(f"{root_desc} holds split folders ({', '.join(sorted(nested))}), not class "
                             f"folders: pass split={sorted(nested)[0]!r}")
    classes = sorted(per_class)
    for c in classes:
        if not per_class[c]:
            raise ValueError(f"the class folder {where(c)} holds no images")
    entries = [(f, label) for label, c in enumerate(classes) for f in sorted(per_class[c])]
    return classes, entries


def _decode(blob: bytes, where: str, resize: Optional[Tuple[int, int]]) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as im:
        if im.mode != "RGB":
            im = im.convert("RGB")
        else:
            im.load()
        if resize is not None and im.size != (resize[1], resize[0]):
            im = im.resize((resize[1], resize[0]), Image.BICUBIC)
        return np.asarray(im, dtype=np.uint8)


class _Decoder:
    """Decodes images straight into one (N, H, W, 3) array, serially or in a thread pool (for
    large images, where Pillow's decoding outweighs the Python around it; the result does not
    depend on which). The first image that decodes fixes the size; the pool starts after it."""

    def __init__(self, n: int, resize, skip_corrupt: bool, bar: Progress, workers: Optional[int]):
        self.n = n
        self.resize = resize
        self.skip_corrupt = skip_corrupt
        self.bad: Dict[int, str] = {}
        self.wrong: Dict[int, Tuple[Tuple[int, ...], str]] = {}  # index -> (shape, where)
        self.images: Optional[np.ndarray] = None
        self.ref: Optional[Tuple[int, str]] = None  # (index, where) of the image fixing the size
        self.bar = bar
        self.workers = workers
        self.pool: Optional[ThreadPoolExecutor] = None
        self.futures = []

    def _one(self, i: int, blob: bytes, where: str) -> None:
        try:
            img = _decode(blob, where, self.resize)
        except Exception as e:  # Pillow raises many types for broken files
            if not self.skip_corrupt:
                raise ValueError(f"cannot decode the image {where}: {e}") from None
            self.bad[i] = where
            return
        if self.images is None:
            self.images = np.empty((self.n,) + img.shape, dtype=np.uint8)
            self.ref = (i, where)
        if img.shape != self.images.shape[1:]:
            self.wrong[i] = (img.shape, where)
        else:
            self.images[i] = img

    def submit(self, i: int, blob: bytes, where: str) -> None:
        if self.images is not None and self.workers is None:
            # threads only pay for images of ~128x128 or more
            big = self.images.shape[1] * self.images.shape[2] >= 128 * 128
            self.workers = min(4, os.cpu_count() or 1) if big else 1
        if self.images is not None and self.workers > 1:
            if self.pool is None:
                self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="polyvit-decode")
            self.futures.append(self.pool.submit(self._one, i, blob, where))
            return
        self._one(i, blob, where)
        self.bar.update()

    def finish(self) -> None:
        try:
            for f in self.futures:  # in order: the first failure raised is the first bad file
                f.result()
                self.bar.update()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)

    def result(self, entries) -> Tuple[np.ndarray, np.ndarray, List[str]]:
        if self.images is None:
            raise ValueError("no image could be decoded" + (f": {self.bad[min(self.bad)]} and others"
                                                            if self.bad else ""))
        if self.wrong:
            i = min(self.wrong)
            shape, where = self.wrong[i]
            ref = self.images.shape[1:]
            raise ValueError(f"images differ in size: {where} is {shape[1]}x{shape[0]} (width x height) "
                             f"but {self.ref[1]} is {ref[1]}x{ref[0]}; pass resize=(height, width) to "
                             "resize them all")
        labels = np.array([e[1] for e in entries], dtype=np.int64)
        images = self.images
        if self.bad:
            keep = np.ones(self.n, dtype=bool)
            keep[list(self.bad)] = False
            images, labels = np.ascontiguousarray(images[keep]), labels[keep]
        return images, labels, [self.bad[i] for i in sorted(self.bad)]


def _fingerprint(root_abs: str, is_archive: bool, listing: Optional[_Listing]) -> dict:
    if is_archive:
        st = os.stat(root_abs)
        return {"path": root_abs, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    h = hashlib.sha256()
    for rel in sorted(listing.files):
        size, mtime = listing.files[rel]
        h.update(f"{rel}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
    for d in sorted(listing.dirs):
        h.update(f"{d}/\n".encode("utf-8", "surrogateescape"))
    return {"path": root_abs, "files": len(listing.files), "listing_sha256": h.hexdigest()}


def _cache_paths(cache_dir: str, root_abs: str, split, resize, skip_corrupt) -> Tuple[str, str, str]:
    key = json.dumps({"root": root_abs, "split": split, "resize": list(resize) if resize else None,
                      "skip_corrupt": bool(skip_corrupt), "v": _CACHE_VERSION}, sort_keys=True)
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:20]
    stem = os.path.basename(root_abs.rstrip("/")) or "root"
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)[:40]
    base = os.path.join(cache_dir, f"{stem}-{split or 'all'}-{digest}")
    return base + ".json", base + ".images.npy", base + ".labels.npy"


def _cache_read(paths, fingerprint: dict) -> Optional[dict]:
    jpath, ipath, lpath = paths
    if not os.path.exists(jpath):
        return None
    try:
        with open(jpath, "r", encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("version") != _CACHE_VERSION or meta.get("fingerprint") != fingerprint:
            _note(f"the decoded cache {jpath} is stale ({_what_changed(meta, fingerprint)}); "
                  "rebuilding it")
            return None
        images = np.load(ipath, allow_pickle=False)
        labels = np.load(lpath, allow_pickle=False)
        if (images.dtype != np.uint8 or list(images.shape) != meta["shape"] or labels.dtype != np.int64
                or labels.shape != (images.shape[0],)):
            raise ValueError("the arrays do not match the cache's description")
        meta["images"], meta["labels"] = images, labels
        return meta
    except Exception as e:
        _note(f"the decoded cache {jpath} is unreadable ({type(e).__name__}: {e}); rebuilding it")
        return None


def _what_changed(meta: dict, fingerprint: dict) -> str:
    """Why a cache no longer matches, in words: an archive copied again keeps its size and
    gets a new mtime, which is worth telling apart from an archive that grew or shrank (a
    rewrite of the same size cannot be told from a copy without reading it all)."""
    if meta.get("version") != _CACHE_VERSION:
        return f"written by cache format {meta.get('version')}, this polyvit reads {_CACHE_VERSION}"
    old = meta.get("fingerprint") or {}
    if "mtime_ns" in fingerprint:
        if old.get("size") != fingerprint["size"]:
            return f"the archive's size changed: {old.get('size')} -> {fingerprint['size']} bytes"
        return "the archive's modification time changed, not its size"
    if old.get("files") != fingerprint.get("files"):
        return f"the folder's file count changed: {old.get('files')} -> {fingerprint.get('files')}"
    return "a file in the folder was added, removed, resized or modified"


def _cache_write(paths, fingerprint: dict, ds: Dataset, skipped: List[str]) -> None:
    jpath, ipath, lpath = paths
    try:
        os.makedirs(os.path.dirname(jpath), exist_ok=True)
        atomic_save(ipath, lambda f: np.save(f, ds.images, allow_pickle=False))
        atomic_save(lpath, lambda f: np.save(f, ds.labels, allow_pickle=False))
        meta = {"version": _CACHE_VERSION, "fingerprint": fingerprint, "classes": ds.classes,
                "shape": list(ds.images.shape), "name": ds.name, "source": ds.source, "split": ds.split,
                "skipped": skipped}
        # the description goes last: it is what makes the pair valid
        atomic_save(jpath, lambda f: f.write(json.dumps(meta, indent=1).encode("utf-8")))
    except OSError as e:
        warnings.warn(f"could not write the decoded cache under {os.path.dirname(jpath)} ({e}); "
                      "the next load will decode again", RuntimeWarning, stacklevel=3)


def _check_resize(resize) -> Optional[Tuple[int, int]]:
    if resize is None:
        return None
    try:
        h, w = resize
    except (TypeError, ValueError):
        raise ValueError(f"resize must be (height, width), got {resize!r}") from None
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"resize must be two positive ints (height, width), got {resize!r}")
    return int(h), int(w)


def load_image_folder(root, split: Optional[str] = None, cache: bool = True, cache_dir=None,
                      progress: bool = True, resize: Optional[Tuple[int, int]] = None,
                      skip_corrupt: bool = False, workers: Optional[int] = None,
                      name: Optional[str] = None) -> Dataset:
    """An image-classification folder: ``root/<class>/<image>``, or ``root/<split>/<class>/<image>``
    with ``split`` given. ``root`` may also be a ``.tar``, ``.tar.gz`` or ``.tgz`` archive of
    that layout, read directly (its top level, or one folder wrapping it).

    Classes are the class folders sorted by name (label i = i-th folder); images are sorted by
    path within each class; any format Pillow reads, converted to RGB. All images must have one
    size, unless ``resize=(h, w)`` (Pillow bicubic). ``skip_corrupt``: skip undecodable files
    with a warning instead of raising. ``workers``: decoding threads (default: 1 for small
    images, up to 4 for images of 128x128 or more; the result does not depend on it).

    The decoded arrays are cached (``cache_dir``, default ``$POLYVIT_CACHE`` or
    ``~/.cache/polyvit``) as .npy files with a JSON description, written atomically; the cache
    is used while the archive (path, size, mtime) or the folder listing (paths, sizes, mtimes) is
    unchanged, and rebuilt, with a note on stderr, when it is stale or unreadable.
    """
    if root is None:
        raise TypeError("root must be a path to a folder or a tar archive")
    root = os.path.expanduser(os.fspath(root))
    if split is not None and (not isinstance(split, str) or not split or "/" in split or split in (".", "..")):
        raise ValueError(f"split must be a folder name such as 'train' or 'test', got {split!r}")
    resize = _check_resize(resize)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    if not os.path.exists(root):
        raise FileNotFoundError(f"image folder not found: {root}")
    root_abs = os.path.abspath(root)
    is_archive = os.path.isfile(root_abs)
    if is_archive and not tarfile.is_tarfile(root_abs):
        raise ValueError(f"{root} is neither a folder nor a tar archive (.tar, .tar.gz, .tgz): unknown format")

    listing = None
    if not is_archive:
        top = _resolve_split_dir(root_abs, split)
        listing = _scan_dir(top)
    fingerprint = _fingerprint(root_abs, is_archive, listing)
    cache_paths = None
    if cache:
        cache_paths = _cache_paths(os.path.expanduser(os.fspath(cache_dir or default_cache_dir())), root_abs,
                                   split, resize, skip_corrupt)
        hit = _cache_read(cache_paths, fingerprint)
        if hit is not None:
            if hit.get("skipped"):
                warnings.warn(f"skipped {len(hit['skipped'])} corrupt image(s) (cached decision): "
                              + ", ".join(hit["skipped"][:20]), RuntimeWarning, stacklevel=2)
            return Dataset(hit["images"], hit["labels"], hit["classes"], name=name or hit["name"],
                           source=hit["source"], split=hit["split"])

    ds_name = name or os.path.basename(root_abs.rstrip("/"))
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if ds_name.endswith(suffix):
            ds_name = ds_name[: -len(suffix)]
    if is_archive:
        images, labels, classes, skipped = _decode_archive(root_abs, split, resize, skip_corrupt, progress, workers)
    else:
        images, labels, classes, skipped = _decode_dir(listing, top, split, resize, skip_corrupt, progress, workers)
    ds = Dataset(images, labels, classes, name=ds_name, source=root_abs, split=split)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} corrupt image(s): " + ", ".join(skipped[:20])
                      + (" ..." if len(skipped) > 20 else ""), RuntimeWarning, stacklevel=2)
    if cache:
        _cache_write(cache_paths, fingerprint, ds, skipped)
    return ds


def _decode_dir(listing: _Listing, top: str, split, resize, skip_corrupt, progress, workers):
    classes, entries = _classify(list(listing.files), listing.dirs, listing.where, top, split)
    bar = Progress(len(entries), desc=f"decoding {os.path.basename(top)}", unit="img", enabled=progress)
    dec = _Decoder(len(entries), resize, skip_corrupt, bar, workers)
    try:
        for i, (rel, _) in enumerate(entries):
            path = listing.where(rel)
            with open(path, "rb") as f:
                dec.submit(i, f.read(), path)
        dec.finish()
    finally:
        bar.close()
    images, labels, skipped = dec.result(entries)
    return images, labels, classes, skipped


def _decode_archive(path: str, split, resize, skip_corrupt, progress, workers):
    """One pass over the archive keeping the candidate files' bytes, then decoding in order."""
    blobs: Dict[str, bytes] = {}
    dirs = set()
    base = os.path.basename(path)
    bar = Progress(None, desc=f"reading {base}", unit="file", enabled=progress)
    try:
        with _open_tar(path) as tf:
            try:
                for m in tf:
                    n = _norm(m.name)
                    if not n:
                        continue
                    parts = n.split("/")
                    if split is not None and not (parts[0] == split or (len(parts) > 1 and parts[1] == split)):
                        continue
                    if m.isdir():
                        dirs.add(n)
                    elif m.isfile():
                        blobs[n] = tf.extractfile(m).read()
                        for k in range(1, len(parts)):  # archives may omit directory entries
                            dirs.add("/".join(parts[:k]))
                        bar.update()
            except Exception as e:  # tarfile.ReadError, zlib.error, EOFError, OSError
                raise ValueError(f"{path} is not a readable tar archive ({type(e).__name__}: {e})") from None
    finally:
        bar.close()
    names = list(blobs) + list(dirs)
    prefix = _split_prefix(names, split, path) if (split is not None) else ""
    if split is None and not names:
        raise ValueError(f"no class folders found in {path}: the archive is empty")
    rel_files = [n[len(prefix):] for n in blobs if n.startswith(prefix)]
    rel_dirs = {d[len(prefix):] for d in dirs if d.startswith(prefix) and len(d) > len(prefix)}
    where = (lambda r: f"{path}:{prefix}{r}")
    classes, entries = _classify(rel_files, rel_dirs, where, f"{path}:{prefix}" if prefix else path, split)
    bar = Progress(len(entries), desc=f"decoding {base}" + (f" [{split}]" if split else ""), unit="img",
                   enabled=progress)
    dec = _Decoder(len(entries), resize, skip_corrupt, bar, workers)
    try:
        for i, (rel, _) in enumerate(entries):
            dec.submit(i, blobs.pop(prefix + rel), where(rel))
        dec.finish()
    finally:
        bar.close()
    images, labels, skipped = dec.result(entries)
    return images, labels, classes, skipped


# ---- the shared CIFAR-10 (JPEG q75) archive -------------------------------------------------
_JPEG_ARCHIVE = "cifar10-jpeg.tar.gz"


def _shared_data_candidates(data_dir=None) -> List[str]:
    if data_dir is not None:
        return [os.path.join(os.path.expanduser(os.fspath(data_dir)), _JPEG_ARCHIVE)]
    out = []
    env = os.environ.get("POLYVIT_DATA")
    if env:
        out.append(os.path.join(os.path.expanduser(env), _JPEG_ARCHIVE))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out.append(os.path.normpath(os.path.join(repo, "..", "shared", "data", _JPEG_ARCHIVE)))
    return out


def load_cifar10_jpeg(split: str = "train", data_dir=None, **kwargs) -> Dataset:
    """CIFAR-10 (JPEG q75), the shared ``cifar10-jpeg.tar.gz`` (``train/<class>/NNNN.jpg``,
    ``test/<class>/NNNN.jpg``), from ``data_dir``, else ``$POLYVIT_DATA``, else
    ``<repo>/../shared/data``. Other arguments go to ``load_image_folder`` (cache, progress...)."""
    split = _check_split(split)
    cands = _shared_data_candidates(data_dir)
    for p in cands:
        if os.path.isfile(p):
            kwargs.setdefault("name", "cifar10-jpeg")
            return load_image_folder(p, split=split, **kwargs)
    if data_dir is not None:
        where = cands[0]
    else:
        env = os.environ.get("POLYVIT_DATA")
        where = (f"$POLYVIT_DATA ({cands[0]})" if env else "$POLYVIT_DATA (not set)") + f" and {cands[-1]}"
    raise FileNotFoundError(f"{_JPEG_ARCHIVE} not found: looked in {where}")
