"""Losses over logits with their gradients, computed by the C engine.

Each function returns ``(loss, dlogits)`` where ``dlogits`` is the gradient of the batch-mean
loss with respect to the logits (float32, same shape), ready for ``model.backward``.
Semantics follow PyTorch: ``F.cross_entropy`` (hard labels or probabilities, label smoothing),
``F.mse_loss`` (mean over every element) and ``F.kl_div(log_softmax(s/T), softmax(t/T),
reduction="batchmean") * T**2``.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np

from ._lib import _C
from ._checks import as_float32, check_finite


def _logits(x, name="logits") -> np.ndarray:
    a = as_float32(x, name)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{name} must have shape (batch, classes), got {a.shape}")
    check_finite(a, name)
    return a


def _target(target, B: int, K: int):
    t = np.asarray(target)
    if t.dtype.kind in "iu":
        if t.shape != (B,):
            raise ValueError(f"integer labels must have shape ({B},), got {t.shape}")
        if t.size and (t.min() < 0 or t.max() >= K):
            raise ValueError(f"labels must lie in 0..{K - 1}; got values from {t.min()} to {t.max()}")
        return np.ascontiguousarray(t, dtype=np.int64)
    if t.dtype.kind == "f":
        if t.shape != (B, K):
            raise ValueError(f"soft targets must have shape ({B}, {K}), got {t.shape}")
        t = np.ascontiguousarray(t, dtype=np.float32)
        check_finite(t, "soft targets")
        if (t < 0).any():
            raise ValueError("soft targets must be non-negative probabilities")
        return t
    raise TypeError(f"targets must be integer labels or float probabilities, got dtype {t.dtype}")


def _smoothing(label_smoothing: float) -> float:
    if not (0.0 <= float(label_smoothing) <= 1.0):
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    return float(label_smoothing)


def cross_entropy(logits, target, label_smoothing: float = 0.0) -> Tuple[float, np.ndarray]:
    """Softmax cross-entropy with integer labels (B,) or soft/mixed targets (B, K)."""
    l = _logits(logits)
    t = _target(target, *l.shape)
    return _C.cross_entropy(l, t, _smoothing(label_smoothing))


def mse(logits, teacher_logits) -> Tuple[float, np.ndarray]:
    """Mean squared error between student and teacher logits (mean over all elements)."""
    l = _logits(logits)
    t = _logits(teacher_logits, "teacher_logits")
    if t.shape != l.shape:
        raise ValueError(f"teacher_logits shape {t.shape} differs from logits shape {l.shape}")
    return _C.mse(l, t)


def kl_div(logits, teacher_logits, temperature: float = 1.0) -> Tuple[float, np.ndarray]:
    """KL(teacher || student) of the softened distributions, batch mean, times T^2."""
    l = _logits(logits)
    t = _logits(teacher_logits, "teacher_logits")
    if t.shape != l.shape:
        raise ValueError(f"teacher_logits shape {t.shape} differs from logits shape {l.shape}")
    T = float(temperature)
    if not (T > 0 and math.isfinite(T)):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    return _C.kl(l, t, T)


class Loss:
    """A weighted sum ``ce * CE(labels) + mse * MSE(teacher) + kl * KL(teacher, T)``.

    ``Loss(mse=1.0, ce=0.0)`` is pure logit distillation; ``Loss()`` is label cross-entropy.
    """

    def __init__(self, ce: float = 1.0, mse: float = 0.0, kl: float = 0.0,
                 label_smoothing: float = 0.0, temperature: float = 1.0):
        for name, w in (("ce", ce), ("mse", mse), ("kl", kl)):
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise ValueError(f"loss weight {name} must be a non-negative number, got {w!r}")
        if ce == 0 and mse == 0 and kl == 0:
            raise ValueError("at least one loss weight (ce, mse, kl) must be positive")
        self.ce, self.mse, self.kl = float(ce), float(mse), float(kl)
        self.label_smoothing = _smoothing(label_smoothing)
        if not (temperature > 0):
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    @property
    def needs_labels(self) -> bool:
        return self.ce > 0

    @property
    def needs_teacher(self) -> bool:
        return self.mse > 0 or self.kl > 0

    def __call__(self, logits, labels=None, teacher_logits=None) -> Tuple[float, np.ndarray]:
        l = _logits(logits)
        if self.needs_labels and labels is None:
            raise ValueError("this loss has a cross-entropy term and needs labels")
        if self.needs_teacher and teacher_logits is None:
            raise ValueError("this loss has an MSE/KL term and needs teacher_logits")
        total, grad = 0.0, np.zeros_like(l)
        parts = []
        if self.ce:
            parts.append((self.ce, cross_entropy(l, labels, self.label_smoothing)))
        if self.mse:
            parts.append((self.mse, mse(l, teacher_logits)))
        if self.kl:
            parts.append((self.kl, kl_div(l, teacher_logits, self.temperature)))
        for w, (v, g) in parts:
            total += w * v
            grad += np.float32(w) * g
        return total, grad

    def __repr__(self) -> str:
        return (f"Loss(ce={self.ce}, mse={self.mse}, kl={self.kl}, "
                f"label_smoothing={self.label_smoothing}, temperature={self.temperature})")
