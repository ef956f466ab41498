"""Reference activations in NumPy float64 and the default quadratic fit of GELU."""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np

_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu(x) -> np.ndarray:
    """Exact (erf) GELU in float64."""
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def poly(x, a, b, c, s=1.0) -> np.ndarray:
    """y = s * (a*x^2 + b*x + c), broadcasting coefficients over the last axis."""
    x = np.asarray(x, dtype=np.float64)
    return s * (a * x * x + b * x + c)


def gelu_quadratic_fit(lo: float = -3.0, hi: float = 3.0, n: int = 4001) -> Tuple[float, float, float]:
    """Least-squares (a, b, c) of GELU on [lo, hi] weighted by the N(0,1) density.

    This is the static fit (V1) and the default coefficients of a freshly switched poly block.
    """
    x = np.linspace(lo, hi, n)
    w = np.sqrt(np.exp(-0.5 * x * x))  # sqrt: lstsq minimises sum (w * residual)^2
    A = np.stack([x * x, x, np.ones_like(x)], axis=1) * w[:, None]
    coef, *_ = np.linalg.lstsq(A, gelu(x) * w, rcond=None)
    return float(coef[0]), float(coef[1]), float(coef[2])
