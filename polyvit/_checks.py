"""Argument checks shared by the Python face: one sentence per problem."""
from __future__ import annotations

import numpy as np


def as_float32(x, name: str) -> np.ndarray:
    """Any real numeric array-like -> C-contiguous float32; complex/object/str -> TypeError."""
    try:
        a = np.asarray(x)
    except Exception as e:  # ragged lists and the like
        raise TypeError(f"{name} could not be read as an array ({e})") from None
    if a.dtype.kind not in "fiu" or a.dtype.kind == "b":
        raise TypeError(f"{name} must hold real numbers (float32 preferred), got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


def check_finite(a: np.ndarray, name: str) -> None:
    if not np.isfinite(a).all():
        bad = int(a.size - np.isfinite(a).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s)")
