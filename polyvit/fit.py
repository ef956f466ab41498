"""Fitting the quadratic that replaces GELU: the static fit (V1) and DirectFit + Scale Fix (V2).

Both set the coefficients of the chosen blocks of a model (switching them to ``poly``) and
return one :class:`FitReport` per block. Least squares are solved in float64 from power sums
of standardised samples (so millions of activations cost one pass), which is the same
minimiser as ``numpy.linalg.lstsq`` on the design matrix ``[x^2, x, 1]``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .activations import gelu, gelu_quadratic_fit
from .config import normalise_blocks

PERCENTILES = (0.1, 1.0, 5.0, 50.0, 95.0, 99.0, 99.9)


@dataclasses.dataclass
class FitReport:
    """What one block's fit did. Coefficient fields are floats (per block) or lists (per
    channel); ``y = s * (a x^2 + b x + c)``."""

    block: int
    method: str                      # "static" or "directfit"
    a: Any
    b: Any
    c: Any
    s: Any
    per_channel: bool
    range: Tuple[float, float]       # min, max of the samples fitted on (static: the interval)
    percentiles: Dict[str, float]    # of the samples (empty for static)
    fit_rmse: float                  # RMS of s*poly(x) - gelu(x) over the samples (after the scale)
    fit_rmse_unscaled: float         # the same before the Scale Fix
    scale: Any                       # the Scale Fix factor(s) (1.0 without it)
    n_samples: int

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# ---- least squares -----------------------------------------------------------------------
def _lstsq_columns(x: np.ndarray, w: Optional[np.ndarray] = None) -> np.ndarray:
    """Least-squares (a, b, c) of GELU per column of x (N, P) -> (3, P), optional weights.

    Solved on z = (x - mu) / sd per column (well conditioned), then mapped back."""
    x = np.asarray(x, np.float64)
    if x.ndim == 1:
        x = x[:, None]
    mu = x.mean(0)
    sd = x.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    z = (x - mu) / sd
    g = gelu(x) if x.size < 50_000_000 else None
    if g is None:  # pragma: no cover - very large inputs
        raise ValueError("too many samples for one fit; subsample first")
    ww = np.ones_like(z) if w is None else np.broadcast_to(np.asarray(w, np.float64).reshape(
        (-1, 1) if np.ndim(w) == 1 else np.shape(w)), z.shape)
    # normal equations in z: M (3x3 per column) [A, B, C]^T = r
    S = [(ww * z ** k).sum(0) for k in range(5)]
    R = [(ww * z ** k * g).sum(0) for k in range(3)]
    P = x.shape[1]
    out = np.empty((3, P))
    for p in range(P):
        M = np.array([[S[4][p], S[3][p], S[2][p]],
                      [S[3][p], S[2][p], S[1][p]],
                      [S[2][p], S[1][p], S[0][p]]])
        r = np.array([R[2][p], R[1][p], R[0][p]])
        A, B, C = np.linalg.lstsq(M, r, rcond=None)[0]
        # y = A z^2 + B z + C with z = (x - mu)/sd
        m, s = mu[p], sd[p]
        out[:, p] = (A / s ** 2, B / s - 2 * A * m / s ** 2, A * m ** 2 / s ** 2 - B * m / s + C)
    return out


def lstsq_gelu(x, weights=None) -> Tuple[float, float, float]:
    """Least-squares quadratic (a, b, c) of exact GELU over the samples ``x``."""
    a, b, c = _lstsq_columns(np.ravel(x), None if weights is None else np.ravel(weights))[:, 0]
    return float(a), float(b), float(c)


# ---- V1 ----------------------------------------------------------------------------------
def static(model, blocks="all", lo: float = -3.0, hi: float = 3.0) -> List[FitReport]:
    """V1: one least-squares fit of GELU under N(0, 1) on [lo, hi], the same in every chosen
    block (no data, no scale)."""
    idx = normalise_blocks(blocks, model.config.depth)
    a, b, c = gelu_quadratic_fit(lo, hi)
    model.set_activation(idx, "poly", coeffs=(a, b, c, 1.0))
    grid = np.linspace(lo, hi, 4001)
    w = np.exp(-0.5 * grid ** 2)
    err = float(np.sqrt(np.sum(w * (a * grid ** 2 + b * grid + c - gelu(grid)) ** 2) / w.sum()))
    return [FitReport(i, "static", a, b, c, 1.0, False, (lo, hi), {}, err, err, 1.0, 0)
            for i in idx]


# ---- V2 ----------------------------------------------------------------------------------
def collect_preactivations(teacher, images, blocks, batch_size: Optional[int] = None,
                           max_samples: int = 2_000_000, per_channel: bool = False,
                           seed: int = 0) -> Dict[int, np.ndarray]:
    """MLP pre-activations (fc1 outputs) of ``blocks`` on ``images``.

    Per block: a uniform random subsample of at most ``max_samples`` values (1-d); per
    channel: at most ``max_samples // H`` token rows, shape (rows, H)."""
    idx = normalise_blocks(blocks, teacher.config.depth)
    H = teacher.config.mlp_hidden
    rng = np.random.default_rng(seed)
    _, acts = teacher.forward(images, capture=idx)
    out = {}
    for i in idx:
        a = acts[i].reshape(-1, H)
        if per_channel:
            keep = max(1, max_samples // H)
            rows = a if a.shape[0] <= keep else a[rng.choice(a.shape[0], keep, replace=False)]
            out[i] = np.ascontiguousarray(rows, dtype=np.float32)
        else:
            flat = a.reshape(-1)
            out[i] = flat if flat.size <= max_samples else flat[rng.choice(flat.size, max_samples,
                                                                           replace=False)]
    return out


def _scale_fix(x: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """Per column: std(GELU(x)) / std(poly(x)), so the output spread matches GELU's."""
    a, b, c = coef
    y = a * x * x + b * x + c
    sg, sp = gelu(x).std(0), y.std(0)
    return np.where(sp > 0, sg / np.where(sp > 0, sp, 1.0), 1.0)


def directfit(student, teacher, images, blocks="all", scale_fix: bool = True,
              per_channel: bool = False, clip_percentiles: Optional[Tuple[float, float]] = None,
              weighting: str = "density", max_samples: int = 2_000_000,
              seed: int = 0) -> List[FitReport]:
    """V2: fit each chosen block's quadratic to GELU over that block's real pre-activations
    (collected from ``teacher`` on the calibration ``images``), then Scale Fix.

    ``clip_percentiles=(lo, hi)`` fits only samples between those percentiles;
    ``weighting="density"`` fits the empirical distribution as it is (dense regions count
    most), ``"uniform"`` fits GELU uniformly over the samples' (clipped) range instead.
    ``per_channel`` fits one quadratic per hidden channel. ``student`` (which may be the
    teacher itself) gets the coefficients; returns one FitReport per block.
    """
    if weighting not in ("density", "uniform"):
        raise ValueError(f"weighting must be 'density' or 'uniform', got {weighting!r}")
    if student.config.mlp_hidden != teacher.config.mlp_hidden or \
            student.config.depth != teacher.config.depth:
        raise ValueError("student and teacher must have the same depth and MLP width")
    if clip_percentiles is not None:
        lo_p, hi_p = clip_percentiles
        if not (0 <= lo_p < hi_p <= 100):
            raise ValueError(f"clip_percentiles must satisfy 0 <= lo < hi <= 100, got "
                             f"{clip_percentiles}")
    idx = normalise_blocks(blocks, teacher.config.depth)
    samples = collect_preactivations(teacher, images, idx, max_samples=max_samples,
                                     per_channel=per_channel, seed=seed)
    reports = []
    for i in idx:
        x = samples[i].astype(np.float64)
        x2 = x if per_channel else x[:, None]
        pct = {f"p{q:g}": float(np.percentile(x2, q)) for q in PERCENTILES}
        fit_x, w = x2, None
        if clip_percentiles is not None:
            lo_v = np.percentile(x2, clip_percentiles[0], axis=0)
            hi_v = np.percentile(x2, clip_percentiles[1], axis=0)
            w = ((x2 >= lo_v) & (x2 <= hi_v)).astype(np.float64)
        if weighting == "uniform":
            lo_v = np.percentile(x2, clip_percentiles[0], axis=0) if clip_percentiles else x2.min(0)
            hi_v = np.percentile(x2, clip_percentiles[1], axis=0) if clip_percentiles else x2.max(0)
            fit_x = np.linspace(0, 1, 2001)[:, None] * (hi_v - lo_v) + lo_v
            w = None
        coef = _lstsq_columns(fit_x, w)
        scale = _scale_fix(x2, coef) if scale_fix else np.ones(x2.shape[1])
        y = coef[0] * x2 ** 2 + coef[1] * x2 + coef[2]
        g = gelu(x2)
        rmse_u = float(np.sqrt(np.mean((y - g) ** 2)))
        rmse = float(np.sqrt(np.mean((scale * y - g) ** 2)))
        if per_channel:
            coeffs = {"a": coef[0], "b": coef[1], "c": coef[2], "s": scale}
            student.set_activation(i, "poly", coeffs=coeffs, per_channel=True)
            rep = FitReport(i, "directfit", *(coef[k].tolist() for k in range(3)), scale.tolist(),
                            True, (float(x2.min()), float(x2.max())), pct, rmse, rmse_u,
                            scale.tolist(), int(x2.size))
        else:
            a, b, c = (float(v) for v in coef[:, 0])
            s = float(scale[0])
            student.set_activation(i, "poly", coeffs=(a, b, c, s))
            rep = FitReport(i, "directfit", a, b, c, s, False, (float(x.min()), float(x.max())),
                            pct, rmse, rmse_u, s, int(x.size))
        reports.append(rep)
    return reports
