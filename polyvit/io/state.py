"""Loading a state dict into a model: :func:`load_state_dict`, which checks every tensor and
reports every problem in one ValueError, and :class:`LoadResult`."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, NamedTuple

import numpy as np

from ._common import _check_mapping, _is_float_dtype, _lines, _nonfinite_note, _shape_str, _to_numpy
from .formats import detect_format


class LoadResult(NamedTuple):
    """What :func:`load_state_dict` left out (always empty when ``strict=True``)."""

    missing_keys: List[str]
    unexpected_keys: List[str]


def load_state_dict(model: Any, state_dict: Mapping[str, Any], strict: bool = True, *,
                    source: str = "the state dict") -> LoadResult:
    """Copy ``state_dict`` (timm names -> arrays or torch tensors) into ``model.params``.

    Every problem is collected first -- missing names, unexpected names (both only with
    ``strict=True``), wrong shapes, non-floating-point dtypes and NaN/Inf values -- and reported
    in ONE :class:`ValueError`; the model is written only when everything checks out, so a failed
    call leaves it untouched. float16/bfloat16/float64 values are converted to float32. Shapes
    must match exactly, except that a poly coefficient of shape ``(1,)`` also accepts a scalar.

    ``source`` names where the tensors came from in error messages. Returns the missing and
    unexpected names (both empty when ``strict=True``).
    """
    _check_mapping(state_dict)
    params = model.params
    expected = {name: tuple(arr.shape) for name, arr in params.items()}

    missing = [n for n in expected if n not in state_dict]
    unexpected = [n for n in state_dict if n not in expected]
    wrong_shape: List[str] = []
    wrong_dtype: List[str] = []
    nonfinite: List[str] = []
    ready: Dict[str, np.ndarray] = {}

    for name, shape in expected.items():
        if name not in state_dict:
            continue
        value = state_dict[name]
        try:
            arr = _to_numpy(value)
        except Exception as e:  # an object numpy cannot make sense of
            wrong_dtype.append(f"{name} is a {type(value).__name__} that cannot be converted "
                               f"to an array ({e})")
            continue
        if not _is_float_dtype(arr.dtype):
            wrong_dtype.append(f"{name} has dtype {arr.dtype}")
            continue
        got = tuple(arr.shape)
        if got != shape:
            if got == () and shape == (1,) and ".mlp.act." in name:
                arr = arr.reshape(1)
            else:
                wrong_shape.append(f"{name}: expected {_shape_str(shape)}, got {_shape_str(got)}")
                continue
        with np.errstate(over="ignore"):
            arr = np.asarray(arr, dtype=np.float32)
        note = _nonfinite_note(name, arr)
        if note:
            nonfinite.append(note)
            continue
        ready[name] = arr

    problems: List[str] = []
    if strict and missing:
        problems.append(f"  missing from {source} ({len(missing)}):")
        problems += _lines(missing)
    if strict and unexpected:
        problems.append(f"  not parameters of this model ({len(unexpected)}):")
        problems += _lines(unexpected)
    if wrong_shape:
        problems.append(f"  wrong shape ({len(wrong_shape)}):")
        problems += _lines(wrong_shape)
    if wrong_dtype:
        problems.append(f"  not floating point ({len(wrong_dtype)}):")
        problems += _lines(wrong_dtype)
    if nonfinite:
        problems.append(f"  NaN or Inf values ({len(nonfinite)}):")
        problems += _lines(nonfinite)
    if problems:
        head = f"The tensors in {source} do not fit the model, so nothing was loaded:"
        hint = ""
        if strict and unexpected:
            try:
                fmt = detect_format({k: None for k in unexpected})
            except ValueError:
                fmt = None
            if fmt in ("torchvision", "hf"):
                hint = (f"\nThe unexpected names look like the {fmt} layout; convert them with "
                        f"polyvit.io.from_{fmt}(...) or use polyvit.io.from_state_dict(...).")
        raise ValueError("\n".join([head] + problems) + hint)

    for name, arr in ready.items():
        params[name][...] = arr
    return LoadResult(missing_keys=[] if strict else missing,
                      unexpected_keys=[] if strict else unexpected)
