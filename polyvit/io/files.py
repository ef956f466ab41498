"""Weights files: polyvit's own safetensors files (:func:`save`, :func:`load`) and reading the
tensors of any ``.safetensors`` or PyTorch ``.pth``/``.pt``/``.bin`` file
(:func:`read_state_dict`)."""
from __future__ import annotations

import errno
import json
import os
import secrets
import struct
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ..config import ViTConfig
from . import _common
from ._common import PathLike, _check_file, _listing, _nonfinite_note, _shape_str, _to_numpy
from .state import load_state_dict


_RESERVED_METADATA = ("polyvit_config", "format", "polyvit_version")
_SAFETENSORS_EXTS = (".safetensors",)
_TORCH_EXTS = (".pth", ".pt", ".bin")
# safetensors dtype codes numpy can hold (BF16 is widened by hand)
_NUMPY_DTYPES = {"F64", "F32", "F16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8",
                 "BOOL"}


def _version() -> str:
    try:
        from .. import __version__  # type: ignore[attr-defined]
    except Exception:
        return "0"
    return str(__version__)


# ----------------------------------------------------------------------------------------------
# polyvit's own files
# ----------------------------------------------------------------------------------------------


def _check_params_match_config(model: Any) -> None:
    specs = {name: tuple(shape) for name, shape, _ in model.config.param_specs()}
    have = {name: tuple(np.shape(arr)) for name, arr in model.params.items()}
    if specs != have:
        diff = sorted(set(specs.items()) ^ set(have.items()))
        raise ValueError("The model's parameters do not match its config, so its weights "
                         f"cannot be saved: {_listing([f'{n} {_shape_str(s)}' for n, s in diff])}.")


def save(model: Any, path: PathLike, metadata: Optional[Mapping[str, str]] = None,
         dtype: str = "float32") -> None:
    """Write ``model``'s parameters and config to a safetensors file at ``path``.

    Each parameter is stored as float32 under its timm name; the file's metadata holds
    ``polyvit_config`` (the config as JSON), ``format`` (``"polyvit"``), ``polyvit_version``
    and the caller's ``metadata`` (str -> str). The file is written to a temporary file in the
    same folder and moved into place, so a failed save never leaves a truncated file (an older
    file at ``path`` survives). Weights holding NaN or Inf are refused with a ValueError, so
    that a diverged run cannot overwrite a good checkpoint. ``dtype="float16"`` stores the
    weights at half the size (``load`` widens them back to float32); weights beyond float16's
    range are refused.
    """
    from safetensors import numpy as st_numpy

    path_str = os.fspath(path)
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}.")
    user_meta: Dict[str, str] = {}
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise TypeError(f"metadata must be a dict of str -> str, got {type(metadata).__name__}.")
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"metadata must map str to str, but {k!r} -> {v!r} does not; "
                                "convert values with str() or json.dumps() first.")
            if k in _RESERVED_METADATA:
                raise ValueError(f"metadata key {k!r} is reserved for polyvit; choose another "
                                 "name.")
        user_meta = dict(metadata)

    _check_params_match_config(model)
    tensors: Dict[str, np.ndarray] = {}
    nonfinite: List[str] = []
    for name, arr in model.params.items():
        a = np.ascontiguousarray(arr, dtype=np.float32)
        note = _nonfinite_note(name, a)
        if note:
            nonfinite.append(note)
        tensors[name] = a
    if nonfinite:
        raise ValueError(f"Refusing to save {path_str}: the model has NaN or Inf weights in "
                         f"{_listing(nonfinite)}.")
    if dtype == "float16":
        big = [n for n, a in tensors.items() if a.size and np.abs(a).max() > np.finfo(np.float16).max]
        if big:
            raise ValueError(f"Refusing to save {path_str} as float16: {_listing(big)} exceed "
                             "float16's range (65504); save as float32.")
        tensors = {n: a.astype(np.float16) for n, a in tensors.items()}

    meta = dict(user_meta)
    meta.update({
        "polyvit_config": model.config.to_json(),
        "format": "polyvit",
        "polyvit_version": _version(),
    })

    target = os.path.realpath(path_str)
    folder = os.path.dirname(target) or "."
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, "Cannot save the weights because the folder "
                                f"{folder} does not exist", path_str)
    if os.path.isdir(target):
        raise IsADirectoryError(errno.EISDIR, "Cannot save the weights over a directory",
                                path_str)

    tmp = os.path.join(folder, f".{os.path.basename(target)}.{secrets.token_hex(6)}.tmp")
    # create it ourselves so the umask applies (mkstemp would make it 0600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.close(fd)
    try:
        # safetensors may recreate the file as 0600: keep the mode of the file being replaced,
        # else what the umask gives a new file
        mode = os.stat(target if os.path.exists(target) else tmp).st_mode & 0o7777
        st_numpy.save_file(tensors, tmp, metadata=meta)
        os.chmod(tmp, mode)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _read_raw_header(path: str) -> Tuple[Dict[str, Any], int]:
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    return header, 8 + n


def _read_bf16(path: str, name: str) -> np.ndarray:
    """numpy has no bfloat16: read the raw bits and widen them to float32 (exact)."""
    header, data_start = _read_raw_header(path)
    info = header[name]
    begin, end = info["data_offsets"]
    shape = tuple(info["shape"])
    with open(path, "rb") as fh:
        fh.seek(data_start + begin)
        buf = fh.read(end - begin)
    bits = np.frombuffer(buf, dtype="<u2").reshape(shape)
    return (bits.astype("<u4") << 16).view("<f4").astype(np.float32)


def _read_safetensors(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """All tensors and the metadata of a safetensors file, with friendly errors."""
    from safetensors import SafetensorError, safe_open

    _check_file(path)

    def bad(e: BaseException) -> OSError:
        return OSError(f"{path} is not a valid safetensors file ({e}).")

    tensors: Dict[str, np.ndarray] = {}
    unsupported: List[str] = []
    try:
        with safe_open(path, framework="np") as f:
            metadata = dict(f.metadata() or {})
            for name in f.keys():
                dtype = f.get_slice(name).get_dtype()
                if dtype == "BF16":
                    tensors[name] = _read_bf16(path, name)
                    continue
                if dtype not in _NUMPY_DTYPES:  # float8 variants, ...
                    unsupported.append(f"{name} ({dtype})")
                    continue
                try:
                    tensors[name] = f.get_tensor(name)
                except (TypeError, AttributeError):  # a dtype this numpy does not know
                    unsupported.append(f"{name} ({dtype})")
    except OSError:
        raise
    except (SafetensorError, ValueError, KeyError, struct.error, json.JSONDecodeError) as e:
        raise bad(e) from None
    if unsupported:
        raise ValueError(f"{path} holds tensors in dtypes polyvit cannot read: "
                         f"{_listing(unsupported)}.")
    return tensors, metadata


def load(path: PathLike, max_batch: int = 64, **model_kwargs: Any):
    """Build a model from a file written by :func:`save`, or from a training checkpoint
    (``polyvit train``/``Trainer``/``Distiller``: its model weights, without the optimizer state).

    The config comes from the file's metadata; the model is ``ViT(config, max_batch=max_batch,
    **model_kwargs)`` (with ``seed=None`` unless given: the weights are all overwritten). Raises FileNotFoundError for a missing file, OSError for a file that is
    not valid safetensors, and ValueError for a file without a polyvit config (use
    :func:`import_weights` for those) or with tensors that do not fit the config (wrong names,
    shapes, non-float dtypes, NaN/Inf). float16/bfloat16/float64 tensors are converted.
    """
    path_str = os.fspath(path)
    tensors, metadata = _read_safetensors(path_str)
    cfg_json = metadata.get("polyvit_config")
    if cfg_json is None:
        raise ValueError(
            f"{path_str} has no polyvit config in its metadata, so it was not written by "
            "polyvit.io.save. To use weights from timm, torchvision or Hugging Face, import them "
            f"with polyvit.io.import_weights({path_str!r}, num_heads=...) or "
            "polyvit.io.from_state_dict(state_dict, config=...).")
    try:
        config = ViTConfig.from_json(cfg_json)
    except (ValueError, TypeError) as e:
        raise ValueError(f"The polyvit config stored in {path_str} is invalid: {e}") from None
    if metadata.get("format", "").startswith("polyvit-checkpoint"):
        # a training checkpoint: the model is its "param/" tensors; "adam_m/", "adam_v/" are
        # the optimizer's moments, which a model has no use for
        tensors = {k[len("param/"):]: v for k, v in tensors.items() if k.startswith("param/")}
    model_kwargs.setdefault("seed", None)  # every weight is overwritten: skip the init
    model = _common._model_class()(config, max_batch=max_batch, **model_kwargs)
    load_state_dict(model, tensors, strict=True, source=path_str)
    return model


# ----------------------------------------------------------------------------------------------
# other files
# ----------------------------------------------------------------------------------------------


def read_state_dict(path: PathLike) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """Read the tensors of a weights file: ``(state_dict, metadata)``.

    ``.safetensors`` files are read with safetensors (bfloat16 is widened to float32);
    ``.pth``/``.pt``/``.bin`` files need torch and are read with
    ``torch.load(map_location="cpu", weights_only=True)`` (metadata is then ``{}``); a
    checkpoint dict with a ``"state_dict"`` or ``"model"`` entry is unwrapped. Floating torch
    tensors become float32 numpy arrays.
    """
    path_str = os.fspath(path)
    lower = path_str.lower()
    if lower.endswith(_SAFETENSORS_EXTS):
        return _read_safetensors(path_str)
    if lower.endswith(_TORCH_EXTS):
        return _read_torch(path_str), {}
    raise ValueError(f"Cannot tell the format of {path_str} from its extension; expected one of "
                     f"{', '.join(_SAFETENSORS_EXTS + _TORCH_EXTS)}.")


def _read_torch(path: str) -> Dict[str, np.ndarray]:
    _check_file(path)
    try:
        import torch
    except ImportError:
        raise ImportError(f"Reading {path} needs PyTorch (pip install torch), which is not "
                          "installed; alternatively convert the file to .safetensors.") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise OSError(
                f"{path} could not be read safely with torch.load(weights_only=True) ({msg}). "
                "If you trust the file, load it with torch.load(path, weights_only=False) and "
                "pass the state dict to polyvit.io.from_state_dict(...).") from None
        raise OSError(f"{path} is not a valid PyTorch checkpoint ({msg}).") from None

    for _ in range(3):  # {"state_dict": {...}}, {"model": {...}}, possibly nested once more
        if isinstance(obj, Mapping):
            inner = None
            for key in ("state_dict", "model"):
                if key in obj and isinstance(obj[key], Mapping):
                    inner = obj[key]
                    break
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors.")
    out: Dict[str, np.ndarray] = {}
    not_tensors: List[str] = []
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[str(k)] = _to_numpy(v)
        else:
            not_tensors.append(f"{k} ({type(v).__name__})")
    if not_tensors:
        raise ValueError(f"{path} is not a plain state dict: these entries are not tensors: "
                         f"{_listing(not_tensors)}.")
    return out
