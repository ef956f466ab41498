"""Batches for training and evaluation: shuffling, augmentation, normalisation, Mixup/CutMix,
with a background thread preparing the next batches.

Everything random is a function of the loader's ``seed`` alone, never of thread counts,
prefetching or timing:

- epoch ``e``'s order is ``np.random.default_rng([seed, e]).permutation(N)`` (when shuffling);
- the image at position ``p`` of epoch ``e`` gets the augmentation seed
  ``augment_seeds(seed, e, p)`` (uint64, a SplitMix64 hash of the three);
- batch ``b`` of epoch ``e`` is mixed with the Generator of ``SeedSequence([seed, e, b, MIX])``.

So a run resumed from ``state_dict()`` continues with exactly the batches it would have seen.
"""
from __future__ import annotations

import atexit
import numbers
import queue
import threading
import weakref
from typing import Callable, Optional, Tuple

import numpy as np

from ._lib import _C
from .progress import Progress

__all__ = ["DataLoader", "augment_seeds", "normalize_numpy"]

_MIX_TAG = 0x4D4958  # "MIX": keeps the mixing streams apart from any other use of the seed
_M64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function over a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def augment_seeds(seed: int, epoch: int, positions) -> np.ndarray:
    """uint64 seeds for the images at ``positions`` (0-based, in the epoch's order) of ``epoch``."""
    h = _splitmix64(np.array([seed & _M64], dtype=np.uint64))
    h = _splitmix64(h ^ np.uint64(epoch & _M64))
    return _splitmix64(np.asarray(positions, dtype=np.uint64) ^ h)


def normalize_numpy(images: np.ndarray, mean, std) -> np.ndarray:
    """uint8 (B, H, W, C) -> float32 (B, C, H, W): ``(x / 255 - mean) / std`` per channel,
    computed in double and rounded once (as ``polyvit.augment.normalize`` does in C)."""
    x = images.astype(np.float64) * (1.0 / 255.0)
    x -= np.asarray(mean, dtype=np.float64)
    x /= np.asarray(std, dtype=np.float64)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def _pick_normalize(mean, std, C: int) -> Callable:
    """``polyvit.augment.normalize`` (C) when it is there and agrees with the NumPy definition on
    a probe batch; the NumPy version otherwise."""
    try:
        from .augment import normalize as c_normalize  # type: ignore
        probe = (np.arange(2 * 3 * 5 * C) * 37 % 256).astype(np.uint8).reshape(2, 3, 5, C)
        got = c_normalize(probe, mean, std)
        want = normalize_numpy(probe, mean, std)
        if isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == want.shape \
                and np.allclose(got, want, rtol=1e-6, atol=1e-6):
            return lambda images: c_normalize(images, mean, std)
    except Exception:
        pass
    return lambda images: normalize_numpy(images, mean, std)


def _channel_vector(v, C: int, name: str) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    if a.size == 1:
        a = np.repeat(a, C)
    if a.size != C or not np.isfinite(a).all():
        raise ValueError(f"normalize {name} must be a finite number or {C} numbers (one per channel), got {v!r}")
    return a


# every live iterator, so that interpreter exit can stop their threads
_LIVE: "weakref.WeakSet[_BatchIterator]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for it in list(_LIVE):
        it.close(timeout=5.0)


class DataLoader:
    """Iterate over a data set in batches: ``for x, targets in loader: ...``.

    Args:
        dataset: a ``polyvit.datasets.Dataset`` or a pair ``(images uint8 (N, H, W, C), labels)``.
        batch_size: images per batch.
        shuffle: a new order every epoch (from ``seed`` and the epoch), else dataset order.
        seed: int >= 0; the only source of randomness.
        drop_last: drop the last, incomplete batch (else it comes out smaller).
        augment: ``augment(images uint8 (B, H, W, C), seeds uint64 (B,)) -> images uint8`` of the
            same shape, e.g. ``polyvit.augment.RandAugment(2, 9)``; seeded per image.
        mixup: a ``polyvit.mixup.Mixup``; the targets become float32 (B, K) soft labels.
        normalize: ``(mean, std)`` per channel, in units of ``x / 255``: the batches come out
            float32 (B, C, H, W) ``(x / 255 - mean) / std``; ``None``: uint8 (B, H, W, C).
        prefetch: batches prepared ahead by a background thread (0: none, all in the caller).
        progress: a progress bar per epoch on stderr; ``desc`` its label.

    Yields ``(x, targets)``: targets are int64 labels (B,), or float32 (B, K) with ``mixup``.
    The loader is a cursor: ``epoch`` is the epoch the next iteration runs, ``state_dict()``
    the (epoch, next batch) a resumed loader continues from. A full pass moves to the next
    epoch; leaving a pass early (``break``) keeps the position, and the next iteration goes on
    from there. ``set_epoch(e)`` starts epoch ``e`` from its beginning (unless the loader is
    already inside epoch ``e``, as after ``load_state_dict``).
    """

    def __init__(self, dataset, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = True,
                 augment: Optional[Callable] = None, mixup=None, normalize: Optional[Tuple] = None,
                 prefetch: int = 2, progress: bool = False, desc: Optional[str] = None):
        if hasattr(dataset, "images") and hasattr(dataset, "labels"):
            images, labels = dataset.images, dataset.labels
            self.num_classes = len(getattr(dataset, "classes", []) or []) or None
        elif isinstance(dataset, (tuple, list)) and len(dataset) == 2:
            images, labels = dataset
            self.num_classes = None
        else:
            raise TypeError("dataset must be a polyvit Dataset or a pair (images, labels)")
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
            raise TypeError("the images must be a uint8 numpy array (N, H, W, C)")
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iu" or labels.dtype == np.bool_ or labels.shape != (images.shape[0],):
            raise ValueError(f"the labels must be {images.shape[0]} integers, one per image")
        self.images = np.ascontiguousarray(images)
        self.labels = labels.astype(np.int64)
        for name, v, lo in (("batch_size", batch_size, 1), ("seed", seed, 0), ("prefetch", prefetch, 0)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        if int(seed) > _M64:
            raise ValueError(f"seed must be below 2**64, got {seed}")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.prefetch = int(prefetch)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        n = len(self.labels)
        if n == 0:
            raise ValueError("the data set is empty")
        if self.drop_last and n < self.batch_size:
            raise ValueError(f"batch_size {self.batch_size} is larger than the data set ({n} images): with "
                             "drop_last=True there would be no batch at all")
        if augment is not None and not callable(augment):
            raise TypeError(f"augment must be callable as augment(images, seeds), got {type(augment).__name__}")
        self.augment = augment
        if mixup is not None:
            if not callable(mixup) or not hasattr(mixup, "num_classes"):
                raise TypeError("mixup must be a polyvit.mixup.Mixup")
            top = int(self.labels.max())
            if top >= mixup.num_classes:
                raise ValueError(f"the labels run to {top} but mixup has num_classes={mixup.num_classes}")
        self.mixup = mixup
        C = images.shape[3]
        if normalize is not None:
            try:
                mean, std = normalize
            except (TypeError, ValueError):
                raise ValueError("normalize must be (mean, std) or None") from None
            mean, std = _channel_vector(mean, C, "mean"), _channel_vector(std, C, "std")
            if (std <= 0).any():
                raise ValueError(f"normalize std must be positive, got {std.tolist()}")
            self.normalize = (mean, std)
        else:
            self.normalize = None
        self._normalize_fn = _pick_normalize(*self.normalize, C) if self.normalize is not None else None
        self.progress = bool(progress)
        self.desc = desc
        self.epoch = 0
        self._batch = 0
        self._perm_cache: dict = {}
        self._active: Optional[weakref.ref] = None

    # ---- sizes and state ----------------------------------------------------------------------
    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def batch(self) -> int:
        """Index (within ``epoch``) of the next batch an iteration yields."""
        return self._batch

    def _close_active(self) -> None:
        it = self._active() if self._active is not None else None
        if it is not None:
            it.close()
        self._active = None

    def set_epoch(self, epoch: int) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self._close_active()
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self._batch = 0

    def state_dict(self) -> dict:
        """Where the loader stands: the next iteration yields batch ``batch`` of ``epoch``."""
        epoch, batch = self.epoch, self._batch
        if batch >= len(self):
            epoch, batch = epoch + 1, 0
        return {"epoch": epoch, "batch": batch, "seed": self.seed, "batch_size": self.batch_size,
                "num_samples": len(self.labels), "shuffle": self.shuffle, "drop_last": self.drop_last}

    def load_state_dict(self, state: dict) -> None:
        try:
            epoch, batch = int(state["epoch"]), int(state["batch"])
        except (KeyError, TypeError, ValueError):
            raise ValueError("a loader state must hold integer 'epoch' and 'batch'") from None
        for key, mine in (("seed", self.seed), ("batch_size", self.batch_size),
                          ("num_samples", len(self.labels)), ("shuffle", self.shuffle),
                          ("drop_last", self.drop_last)):
            if key in state and state[key] != mine:
                raise ValueError(f"this state was saved by a loader with {key}={state[key]!r}, but this one "
                                 f"has {key}={mine!r}: it would not continue the same sequence of batches")
        if epoch < 0 or not 0 <= batch <= len(self):
            raise ValueError(f"loader state out of range: epoch {epoch}, batch {batch} of {len(self)}")
        self._close_active()
        self.epoch, self._batch = epoch, batch

    # ---- the batches --------------------------------------------------------------------------
    def order(self, epoch: int) -> np.ndarray:
        """The dataset indices in epoch ``epoch``'s order."""
        p = self._perm_cache.get(epoch)
        if p is None:
            n = len(self.labels)
            p = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            if len(self._perm_cache) >= 2:
                self._perm_cache.pop(next(iter(self._perm_cache)))
            self._perm_cache[epoch] = p
        return p

    def get_batch(self, epoch: int, b: int):
        """Batch ``b`` of epoch ``epoch`` (what the iteration yields there), computed now."""
        if not 0 <= b < len(self):
            raise IndexError(f"batch {b} is out of range: an epoch has {len(self)}")
        lo = b * self.batch_size
        hi = min(lo + self.batch_size, len(self.labels))
        idx = self.order(epoch)[lo:hi]
        images = self.images[idx]
        labels = self.labels[idx]
        if self.augment is not None:
            seeds = augment_seeds(self.seed, epoch, np.arange(lo, hi))
            out = self.augment(images, seeds)
            if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.ndim != 4 or out.shape[0] != len(idx):
                raise TypeError(f"augment must return uint8 images ({len(idx)}, H, W, C), got "
                                + (f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__))
            images = np.ascontiguousarray(out)
        x = self._normalize_fn(images) if self._normalize_fn is not None else images
        if self.mixup is not None:
            ss = np.random.SeedSequence([self.seed, epoch, b, _MIX_TAG])
            x, targets = self.mixup(x, labels, np.random.default_rng(ss))
            return x, targets
        return x, labels

    def __iter__(self) -> "_BatchIterator":
        self._close_active()
        if self._batch >= len(self):
            self.epoch, self._batch = self.epoch + 1, 0
        it = _BatchIterator(self, self.epoch, self._batch)
        self._active = weakref.ref(it)
        return it

    def __repr__(self) -> str:
        return (f"DataLoader({len(self.labels)} images, batch_size={self.batch_size}, {len(self)} batches, "
                f"shuffle={self.shuffle}, seed={self.seed}, epoch={self.epoch}, batch={self._batch})")


def _worker(make: Callable, epoch: int, start: int, stop: int, q: "queue.Queue", halt: threading.Event,
            nthreads: int) -> None:
    """Prepare batches start..stop-1 of an epoch into q; ends on halt, after an error, or done."""
    try:
        _C.set_num_threads(nthreads)  # OpenMP's thread count is per calling thread
    except Exception:
        pass
    for b in range(start, stop):
        if halt.is_set():
            return
        try:
            item = ("ok", b, make(epoch, b))
        except BaseException as e:  # handed to the consumer with its traceback
            item = ("err", b, e)
        while not halt.is_set():
            try:
                q.put(item, timeout=0.05)
                break
            except queue.Full:
                continue
        if item[0] == "err":
            return


class _BatchIterator:
    """One pass over the rest of an epoch. Holds its prefetch thread; the thread holds no
    reference back to it, so dropping the iterator (a ``break`` out of a for loop) stops it."""

    def __init__(self, loader: DataLoader, epoch: int, start: int):
        self._loader = loader
        self.epoch = epoch
        self._next = start
        self._stop = len(loader)
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        self._halt = threading.Event()
        self._bar = Progress(len(loader) - start, desc=loader.desc or f"epoch {epoch}", unit="batch",
                             enabled=loader.progress)
        if loader.prefetch > 0 and start < self._stop:
            self._q: "queue.Queue" = queue.Queue(maxsize=loader.prefetch)
            self._thread = threading.Thread(
                # one OpenMP thread: the worker runs beside the training step, whose own threads
                # already fill the cores (2 cores: 6.4-6.7 -> 6.85 distillation steps/s measured);
                # results do not depend on the thread count
                target=_worker, args=(loader.get_batch, epoch, start, self._stop, self._q, self._halt,
                                      1),
                name=f"polyvit-loader-e{epoch}", daemon=True)
            self._thread.start()
            _LIVE.add(self)

    def __iter__(self) -> "_BatchIterator":
        return self

    def _take(self):
        """The next prepared batch from the thread (never waits on a thread that has died)."""
        while True:
            try:
                return self._q.get(timeout=0.1)
            except queue.Empty:
                if not self._thread.is_alive() and self._q.empty():
                    raise RuntimeError("the loader's prefetch thread stopped without a batch") from None

    def __next__(self):
        if self._closed:
            raise StopIteration
        if self._next >= self._stop:
            self._finish_epoch()
            raise StopIteration
        b = self._next
        try:
            if self._thread is None:
                batch = self._loader.get_batch(self.epoch, b)
            else:
                kind, got, payload = self._take()
                if kind == "err":
                    raise payload
                assert got == b, (got, b)
                batch = payload
        except BaseException:
            self.close()
            raise
        self._next = b + 1
        if self._is_active():
            self._loader._batch = b + 1
        self._bar.update()
        return batch

    def _is_active(self) -> bool:
        a = self._loader._active
        return a is not None and a() is self

    def _finish_epoch(self) -> None:
        if self._is_active():
            self._loader.epoch = self.epoch + 1
            self._loader._batch = 0
        self.close()

    def close(self, timeout: Optional[float] = None) -> None:
        """Stop the prefetch thread (it finishes the batch in hand, if any) and end the pass."""
        if self._closed:
            return
        self._closed = True
        self._halt.set()
        t = self._thread
        if t is not None:
            try:
                while True:
                    self._q.get_nowait()
            except queue.Empty:
                pass
            if t is not threading.current_thread():
                t.join(timeout)
            self._thread = None
        self._bar.close()
        _LIVE.discard(self)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
