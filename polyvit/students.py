"""Configurations: students that start from a GELU teacher's weights with chosen blocks
quadratic. Hybrid-k replaces the first k blocks, Full replaces all of them."""
from __future__ import annotations

from typing import Any, Optional

from .config import normalise_blocks


def student(teacher, blocks, coeffs=None, per_channel: bool = False,
            max_batch: Optional[int] = None):
    """A copy of ``teacher`` whose ``blocks`` use the quadratic activation (default
    coefficients: the static least-squares fit of GELU; see polyvit.fit to fit them)."""
    idx = normalise_blocks(blocks, teacher.config.depth)
    if not idx:
        raise ValueError("a student needs at least one quadratic block")
    s = teacher.copy(max_batch=max_batch)
    s.set_activation(idx, "poly", coeffs=coeffs, per_channel=per_channel)
    return s


def hybrid(teacher, k: int, **kw: Any):
    """Hybrid-k: the first k blocks quadratic, the rest GELU."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= teacher.config.depth:
        raise ValueError(f"k must be an integer in 1..{teacher.config.depth}, got {k!r}")
    return student(teacher, list(range(k)), **kw)


def full(teacher, **kw: Any):
    """Full: every block quadratic."""
    return student(teacher, "all", **kw)
