"""Helpers shared by the modules of :mod:`polyvit.io`: the path type, how lists are shown in
error messages, array conversion, ``module.``/``model.`` prefix stripping, argument checks and
the lazily imported model class."""
from __future__ import annotations

import errno
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np


PathLike = Union[str, "os.PathLike[str]"]

_MAX_LISTED = 20


def _model_class():
    """The model constructor, imported lazily (the engine may not be built when io is imported)."""
    from ..model import ViT

    return ViT


def _listing(items: List[str], limit: int = _MAX_LISTED) -> str:
    """``a, b, c`` capped at ``limit`` entries with ``... and N more``."""
    items = list(items)
    shown = ", ".join(items[:limit])
    if len(items) > limit:
        shown += f", ... and {len(items) - limit} more"
    return shown


def _lines(items: List[str], limit: int = _MAX_LISTED) -> List[str]:
    out = [f"    {s}" for s in items[:limit]]
    if len(items) > limit:
        out.append(f"    ... and {len(items) - limit} more")
    return out


def _to_numpy(value: Any) -> np.ndarray:
    """An ndarray for a numpy array, a torch tensor or any array-like.

    Floating torch tensors (including bfloat16, which numpy lacks) become float32; other torch
    tensors keep their dtype so that the caller can refuse them by name.
    """
    if hasattr(value, "detach") and hasattr(value, "is_floating_point"):
        t = value.detach().cpu()
        if t.is_floating_point():
            t = t.float()
        return t.numpy()
    return np.asarray(value)


def _is_float_dtype(dtype: np.dtype) -> bool:
    # ml_dtypes' bfloat16 is a numpy dtype of kind "V"; accept it by name
    return dtype.kind == "f" or dtype.name == "bfloat16"


def _shape_str(shape: Tuple[int, ...]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _strip_common_prefixes(keys: Iterable[str]) -> Dict[str, str]:
    """Map each key to itself minus ``module.``/``model.`` prefixes that ALL keys share.

    (``module.`` comes from DataParallel/DDP wrappers, ``model.`` from Lightning-style and
    EMA wrappers.) Prefixes are stripped repeatedly, e.g. ``module.model.``.
    """
    keys = list(keys)
    mapping = {k: k for k in keys}
    if not keys:
        return mapping
    changed = True
    while changed:
        changed = False
        for prefix in ("module.", "model."):
            if all(v.startswith(prefix) and len(v) > len(prefix) for v in mapping.values()):
                mapping = {k: v[len(prefix):] for k, v in mapping.items()}
                changed = True
    return mapping


def _check_mapping(sd: Any, what: str = "state_dict") -> None:
    if not isinstance(sd, Mapping):
        raise TypeError(f"{what} must be a dict of name -> array, got {type(sd).__name__}.")
    bad = [repr(k) for k in sd if not isinstance(k, str)]
    if bad:
        raise TypeError(f"{what} keys must be strings; these are not: {_listing(bad)}.")


def _nonfinite_note(name: str, arr: np.ndarray) -> Optional[str]:
    finite = np.isfinite(arr)
    if finite.all():
        return None
    n_nan = int(np.isnan(arr).sum())
    n_inf = int(arr.size - finite.sum()) - n_nan
    parts = []
    if n_nan:
        parts.append(f"{n_nan} NaN")
    if n_inf:
        parts.append(f"{n_inf} Inf")
    return f"{name} ({', '.join(parts)} of {arr.size} values)"


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "The weights file does not exist", path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "Expected a weights file but found a directory",
                                path)
