"""Reading and writing model weights.

polyvit's own files are `safetensors <https://github.com/huggingface/safetensors>`_ files
holding every parameter under its timm name, with the model's :class:`~polyvit.config.ViTConfig`
(as JSON) in the file's metadata, so :func:`load` needs nothing but the path::

    polyvit.io.save(model, "vit.safetensors")
    model = polyvit.io.load("vit.safetensors")

Weights from other code bases are brought in by renaming them to timm's names
(:func:`from_timm`, :func:`from_torchvision`, :func:`from_hf`, or a declarative rename map:
:func:`apply_rename_map`, with built-in maps in :data:`BUILTIN_MAPS` for plain PyTorch
``nn.MultiheadAttention`` ViTs), inferring a config from the tensor shapes
(:func:`infer_config`) plus whatever the shapes cannot tell (heads, LayerNorm eps, GELU form,
pooling, input normalisation: from the caller, a ``config`` in the file's metadata, the rename
map or a Hugging Face ``config.json``) and loading them (:func:`from_state_dict`,
:func:`import_weights`, :func:`convert`; ``python -m polyvit convert`` on the command line)::

    model = polyvit.io.import_weights("vit_b_16.pth")          # torchvision checkpoint
    model = polyvit.io.import_weights("model.safetensors", hf_config="config.json")  # HF ViT
    model = polyvit.io.import_weights("mine.pth", rename_map="my_map.json", num_heads=4)

An architecture polyvit cannot compute exactly (no class token, layer scale, q/k norm, register
or distillation tokens, relative position bias, conv stems, heads with hidden layers, bias-free
norms, post-norm blocks where a config says so, ...) is refused with a ValueError saying what
differs: an import never yields a model that silently computes something else. What no weight
and no config shows (e.g. post-norm code with pre-norm names, ReLU instead of GELU) cannot be
checked: the built-in maps say which forward they assume.

This module only touches ``model.config`` and ``model.params`` (a dict name -> float32 view
into the engine's buffer); the model class is imported lazily, and torch is imported only to
read ``.pth``/``.pt``/``.bin`` files or to convert torch tensors handed in by the caller.
"""
from __future__ import annotations

import errno
import json
import math
import os
import re
import secrets
import struct
import warnings
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple, Union

import numpy as np

from .config import PRESETS, ViTConfig

__all__ = [
    "save",
    "load",
    "load_state_dict",
    "LoadResult",
    "read_state_dict",
    "detect_format",
    "from_timm",
    "from_torchvision",
    "from_hf",
    "infer_config",
    "from_state_dict",
    "import_weights",
    "FORMATS",
    "BUILTIN_MAPS",
    "load_rename_map",
    "apply_rename_map",
    "convert",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Layouts :func:`from_state_dict` understands (``"polyvit"`` is timm's names plus poly
#: activation coefficients; ``"torch_mha"`` is the built-in rename map for plain PyTorch ViTs;
#: ``"map"``, with ``rename_map=``, is anybody's layout).
FORMATS = ("timm", "polyvit", "torchvision", "hf", "torch_mha", "vit_pytorch", "map")

#: LayerNorm epsilon each layout's models are built with when nothing says otherwise
#: (rename maps: PyTorch's nn.LayerNorm default).
DEFAULT_LN_EPS = {"timm": 1e-6, "polyvit": 1e-6, "torchvision": 1e-6, "hf": 1e-12,
                  "torch_mha": 1e-5, "vit_pytorch": 1e-5, "map": 1e-5}

_RESERVED_METADATA = ("polyvit_config", "format", "polyvit_version")
_MAX_LISTED = 20
_SAFETENSORS_EXTS = (".safetensors",)
_TORCH_EXTS = (".pth", ".pt", ".bin")
# safetensors dtype codes numpy can hold (BF16 is widened by hand)
_NUMPY_DTYPES = {"F64", "F32", "F16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8",
                 "BOOL"}


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------
def _model_class():
    """The model constructor, imported lazily (the engine may not be built when io is imported)."""
    from .model import ViT

    return ViT


def _version() -> str:
    try:
        from . import __version__  # type: ignore[attr-defined]
    except Exception:
        return "0"
    return str(__version__)


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


# ----------------------------------------------------------------------------------------------
# loading arrays into a model
# ----------------------------------------------------------------------------------------------
class LoadResult(NamedTuple):
    """What :func:`load_state_dict` left out (always empty when ``strict=True``)."""

    missing_keys: List[str]
    unexpected_keys: List[str]


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


def save(model: Any, path: PathLike, metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write ``model``'s parameters and config to a safetensors file at ``path``.

    Each parameter is stored as float32 under its timm name; the file's metadata holds
    ``polyvit_config`` (the config as JSON), ``format`` (``"polyvit"``), ``polyvit_version``
    and the caller's ``metadata`` (str -> str). The file is written to a temporary file in the
    same folder and moved into place, so a failed save never leaves a truncated file (an older
    file at ``path`` survives). Weights holding NaN or Inf are refused with a ValueError, so
    that a diverged run cannot overwrite a good checkpoint.
    """
    from safetensors import numpy as st_numpy

    path_str = os.fspath(path)
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


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "The weights file does not exist", path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "Expected a weights file but found a directory",
                                path)


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
    """Build a model from a file written by :func:`save`.

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
    model_kwargs.setdefault("seed", None)  # every weight is overwritten: skip the init
    model = _model_class()(config, max_batch=max_batch, **model_kwargs)
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


# ----------------------------------------------------------------------------------------------
# layouts
# ----------------------------------------------------------------------------------------------
_MARKERS = {
    "hf": re.compile(r"^(vit\.)?(embeddings\.(cls_token$|position_embeddings$|mask_token$|"
                     r"patch_embeddings\.)|encoder\.layer\.\d+\.|layernorm\.|pooler\.)"
                     r"|^classifier\."),
    "torchvision": re.compile(r"^(class_token$|conv_proj\.|encoder\.(pos_embedding$|"
                              r"layers\.encoder_layer_\d+\.|ln\.)|heads\.)"),
    "timm": re.compile(r"^(cls_token$|pos_embed$|patch_embed\.|blocks\.\d+\.|norm\.|head\.)"),
}
_POLY_KEY = re.compile(r"^blocks\.\d+\.mlp\.act\.[abcs]$")
# names that only plain PyTorch code has (nn.MultiheadAttention, nn.Sequential MLPs and heads,
# vit-pytorch-style embeddings): the built-in "torch_mha" rename map
_TORCH_MHA_MARKER = re.compile(
    r"(^|\.)(in_proj_weight|in_proj_bias|out_proj\.(weight|bias))$"
    r"|^(pos_embedding|position_embeddings?|to_patch_embedding\.|mlp_head\.)"
    r"|\.(mlp|ffn|ff|feed_forward|feedforward)(\.net|\.layers)?\.\d+\.(weight|bias)$")


# lucidrains/vit-pytorch: the built-in "vit_pytorch" rename map
_VIT_PYTORCH_MARKER = re.compile(r"^transformer\.layers\.\d+\.0\.(fn\.)?to_qkv\.weight$")


def detect_format(state_dict: Mapping[str, Any]) -> str:
    """``"timm"``, ``"polyvit"`` (timm names plus poly coefficients), ``"torchvision"``,
    ``"hf"``, ``"torch_mha"`` (plain PyTorch: ``nn.MultiheadAttention`` + ``nn.Sequential``
    MLP) or ``"vit_pytorch"`` (lucidrains' vit-pytorch; both built-in rename maps, see
    :data:`BUILTIN_MAPS`), from the names in ``state_dict`` (``module.``/``model.``
    prefixes are ignored)."""
    _check_mapping(state_dict)
    if not state_dict:
        raise ValueError("Cannot detect the layout of an empty state dict.")
    keys = list(_strip_common_prefixes(state_dict).values())
    counts = {fmt: sum(1 for k in keys if rx.search(k)) for fmt, rx in _MARKERS.items()}
    found = [fmt for fmt, n in counts.items() if n]
    if set(found) <= {"timm"}:
        if any(_VIT_PYTORCH_MARKER.search(k) for k in keys):
            return "vit_pytorch"
        if any(_TORCH_MHA_MARKER.search(k) for k in keys):
            return "torch_mha"
    if not found:
        raise ValueError("Cannot tell the layout of the state dict from its names (e.g. "
                         f"{_listing(sorted(keys), 5)}); expected timm, torchvision, Hugging Face "
                         "or plain nn.MultiheadAttention ViT names. For other code, write a "
                         "rename map (polyvit.io.apply_rename_map, rename_map=...).")
    if len(found) > 1:
        desc = ", ".join(f"{counts[f]} {f}" for f in found)
        raise ValueError(f"The state dict mixes names of several layouts ({desc}); pass "
                         "format= explicitly or clean it up first.")
    fmt = found[0]
    if fmt == "timm" and any(_POLY_KEY.match(k) for k in keys):
        return "polyvit"
    return fmt


def _rx(s: str) -> "re.Pattern[str]":
    return re.compile(s)


# Architecture features polyvit cannot express, refused by name in every layout (the layouts'
# own lists follow). Each entry: (pattern searched in the name, what it is).
_ARCH_REFUSE = [
    (_rx(r"(^|\.)(reg_token|reg_tokens|register_tokens?|registers)$"),
     "register tokens (reg_token)"),
    (_rx(r"(^|\.)(dist_token|head_dist\.(weight|bias))$"),
     "a distillation token and head (DeiT distilled: dist_token/head_dist)"),
    (_rx(r"relative_position_(bias_table|index)$|(^|\.)rel_pos(_[hw]|_bias)?(\.|$)"),
     "relative position bias"),
    (_rx(r"(^|\.)rope(\.|$)|rotary"), "rotary position embedding (RoPE)"),
    (_rx(r"(^|\.)(ls[12]\.(gamma|scale)|gamma_[12]|layer_?scale\w*)(\.|$)"),
     "layer scale (ls1/ls2, gamma_1/gamma_2)"),
    (_rx(r"(^|\.)(q_norm|k_norm|qk_norm|q_ln|k_ln)\."),
     "query/key normalisation (q_norm/k_norm)"),
    (_rx(r"(^|\.)\w*rms_?norm\w*\."), "RMSNorm"),
    (_rx(r"\.running_(mean|var)$"), "batch normalisation (BatchNorm running statistics)"),
    (_rx(r"(^|\.)(norm_pre|ln_pre)\."),
     "a LayerNorm before the blocks (norm_pre/ln_pre, as in CLIP ViTs)"),
]


def _rename(state_dict: Mapping[str, Any], rules, refuse, drop, fmt: str) -> Dict[str, np.ndarray]:
    """Apply ``rules`` (list of (regex, replacement)) to every key; collect every problem."""
    _check_mapping(state_dict)
    stripped = _strip_common_prefixes(state_dict)
    out: Dict[str, Any] = {}
    origin: Dict[str, str] = {}
    reasons: Dict[str, List[str]] = {}
    unknown: List[str] = []
    clashes: List[str] = []
    for orig, key in stripped.items():
        if any(rx.search(key) for rx in drop):
            continue
        refused = next((why for rx, why in list(_ARCH_REFUSE) + list(refuse) if rx.search(key)),
                       None)
        if refused is not None:
            reasons.setdefault(refused, []).append(orig)
            continue
        for rx, repl in rules:
            m = rx.fullmatch(key)
            if m:
                new = m.expand(repl) if isinstance(repl, str) else repl(m)
                break
        else:
            if fmt == "timm":
                new = key  # unknown timm names pass through and are reported when loading
            else:
                unknown.append(orig)
                continue
        if new in out:
            clashes.append(f"{origin[new]} and {orig} both map to {new}")
            continue
        out[new] = state_dict[orig]
        origin[new] = orig
    problems = [f"  {why}: {_listing(keys, 5)}" for why, keys in reasons.items()]
    if unknown:
        problems.append(f"  names with no {fmt} -> timm mapping ({len(unknown)}): "
                        f"{_listing(unknown)}")
    if clashes:
        problems.append(f"  clashing names: {_listing(clashes)}")
    if problems:
        raise ValueError(f"The {fmt} state dict cannot be converted to polyvit's names:\n"
                         + "\n".join(problems))
    return out


_TIMM_REFUSE = [
    (_rx(r"\.attn\.norm\."), "a norm inside attention (attn.norm)"),
    (_rx(r"\.mlp\.norm\."), "a norm inside the MLP (mlp.norm)"),
    (_rx(r"\.mlp\.fc1_[gx]\."), "a gated MLP (fc1_g/fc1_x)"),
    (_rx(r"^(pre_logits\.|head\.fc\.)"), "a pre-logits layer (a head with a hidden layer)"),
    (_rx(r"^attn_pool\."), "attention pooling (attn_pool)"),
    (_rx(r"^patch_embed\.norm\."), "a norm after the patch embedding"),
    (_rx(r"^patch_embed\.backbone\."), "a CNN stem (hybrid ViT)"),
    (_rx(r"^patch_embed\.(stem|conv|proj\.\d)"), "a convolutional stem (several conv layers)"),
]
_TIMM_DROP = [_rx(r"^mask_token$"), _rx(r"\.num_batches_tracked$")]


def from_timm(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """timm ``VisionTransformer`` names are polyvit's: strip ``module.``/``model.`` prefixes,
    drop inert entries (``mask_token``), and refuse features polyvit cannot express
    (``norm_pre``, ``reg_token``, layer scale, q/k norm, relative position bias, a distillation
    token, ...) with a ValueError naming them. ``fc_norm`` is kept (polyvit has it; the pooling
    must then be given, see :func:`infer_config`). Returns a new dict."""
    return _rename(state_dict, [], _TIMM_REFUSE, _TIMM_DROP, "timm")


_TV_BLOCK = r"encoder\.layers\.encoder_layer_(\d+)\."
_TV_RULES = [
    (_rx(r"class_token"), "cls_token"),
    (_rx(r"encoder\.pos_embedding"), "pos_embed"),
    (_rx(r"conv_proj\.(weight|bias)"), r"patch_embed.proj.\1"),
    (_rx(_TV_BLOCK + r"ln_1\.(weight|bias)"), r"blocks.\1.norm1.\2"),
    (_rx(_TV_BLOCK + r"self_attention\.in_proj_(weight|bias)"), r"blocks.\1.attn.qkv.\2"),
    (_rx(_TV_BLOCK + r"self_attention\.out_proj\.(weight|bias)"), r"blocks.\1.attn.proj.\2"),
    (_rx(_TV_BLOCK + r"ln_2\.(weight|bias)"), r"blocks.\1.norm2.\2"),
    (_rx(_TV_BLOCK + r"mlp\.(?:0|linear_1)\.(weight|bias)"), r"blocks.\1.mlp.fc1.\2"),
    (_rx(_TV_BLOCK + r"mlp\.(?:3|linear_2)\.(weight|bias)"), r"blocks.\1.mlp.fc2.\2"),
    (_rx(r"encoder\.ln\.(weight|bias)"), r"norm.\1"),
    (_rx(r"heads\.head\.(weight|bias)"), r"head.\1"),
]
_TV_REFUSE = [
    (_rx(r"^heads\.pre_logits\."), "a pre-logits layer (heads.pre_logits, representation_size)"),
    (_rx(r"^conv_proj\.conv_"), "a convolutional stem (conv_stem_configs)"),
    (_rx(r"self_attention\.[qkv]_proj_weight$"), "separate q/k/v projections with other "
                                                 "key/value widths"),
    (_rx(r"self_attention\.bias_[kv]$"), "extra key/value biases (add_bias_kv)"),
]


def from_torchvision(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """Rename a torchvision ``VisionTransformer`` (``vit_b_16`` ...) state dict to timm names.

    ``in_proj_weight`` stacks q, k, v along dim 0 exactly like timm's ``qkv``, so it is copied
    as is. A ``heads.pre_logits`` layer or a conv stem cannot be expressed and is refused.
    torchvision's ViTs always have the final ``encoder.ln`` and use LayerNorm eps 1e-6.
    Returns a new dict.
    """
    return _rename(state_dict, _TV_RULES, _TV_REFUSE, [], "torchvision")


_HF_BLOCK = r"(?:vit\.)?encoder\.layer\.(\d+)\."
_HF_RULES = [
    (_rx(r"(?:vit\.)?embeddings\.cls_token"), "cls_token"),
    (_rx(r"(?:vit\.)?embeddings\.position_embeddings"), "pos_embed"),
    (_rx(r"(?:vit\.)?embeddings\.patch_embeddings\.projection\.(weight|bias)"),
     r"patch_embed.proj.\1"),
    (_rx(_HF_BLOCK + r"layernorm_before\.(weight|bias)"), r"blocks.\1.norm1.\2"),
    (_rx(_HF_BLOCK + r"attention\.attention\.(query|key|value)\.(weight|bias)"),
     r"blocks.\1.attn.\2.\3"),  # merged into qkv below
    (_rx(_HF_BLOCK + r"attention\.output\.dense\.(weight|bias)"), r"blocks.\1.attn.proj.\2"),
    (_rx(_HF_BLOCK + r"layernorm_after\.(weight|bias)"), r"blocks.\1.norm2.\2"),
    (_rx(_HF_BLOCK + r"intermediate\.dense\.(weight|bias)"), r"blocks.\1.mlp.fc1.\2"),
    (_rx(_HF_BLOCK + r"output\.dense\.(weight|bias)"), r"blocks.\1.mlp.fc2.\2"),
    (_rx(r"(?:vit\.)?layernorm\.(weight|bias)"), r"norm.\1"),
    (_rx(r"classifier\.(weight|bias)"), r"head.\1"),
]
_HF_REFUSE = [
    (_rx(r"^(vit\.)?pooler\."), "a pooler layer (ViTModel with add_pooling_layer=True); "
                                "polyvit has a classifier head on the normed class token instead"),
]
_HF_DROP = [_rx(r"^(vit\.)?embeddings\.mask_token$")]
_HF_QKV = re.compile(r"^blocks\.(\d+)\.attn\.(query|key|value)\.(weight|bias)$")


def from_hf(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """Rename a Hugging Face ``ViTForImageClassification`` state dict to timm names.

    ``query``/``key``/``value`` are concatenated (in that order, along dim 0) into timm's
    ``attn.qkv``. Keys may come with or without the leading ``vit.``. A ViTModel pooler
    cannot be expressed and is refused. Returns a new dict.
    """
    renamed = _rename(state_dict, _HF_RULES, _HF_REFUSE, _HF_DROP, "hf")
    out: Dict[str, Any] = {}
    parts: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for k, v in renamed.items():
        m = _HF_QKV.match(k)
        if m:
            parts.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = v
        else:
            out[k] = v
    incomplete = []
    for (block, kind), d in sorted(parts.items(), key=lambda t: (int(t[0][0]), t[0][1])):
        absent = [p for p in ("query", "key", "value") if p not in d]
        if absent:
            incomplete.append(f"block {block} {kind} lacks {'/'.join(absent)}")
            continue
        out[f"blocks.{block}.attn.qkv.{kind}"] = np.concatenate(
            [_to_numpy(d[p]) for p in ("query", "key", "value")], axis=0)
    if incomplete:
        raise ValueError("The hf state dict has incomplete attention projections: "
                         f"{_listing(incomplete)}.")
    return out


_RENAMERS = {"timm": from_timm, "polyvit": from_timm, "torchvision": from_torchvision,
             "hf": from_hf}


# ----------------------------------------------------------------------------------------------
# rename maps: declarative conversions for anybody's own ViT code
# ----------------------------------------------------------------------------------------------
#: Keys a rename map may hold.
_MAP_KEYS = ("rules", "drop", "refuse", "transpose", "config", "extends", "head_norm",
             "patch_linear", "description")

_B = r"^(?:blocks|layers|encoder\.layers|encoder\.blocks|transformer\.layers|" \
     r"transformer\.blocks|transformer\.encoder\.layers|encoder)\.(\d+)\."
_ATTN = r"(?:attn|self_attn|attention|self_attention|mha|msa)"

#: Built-in rename maps, by name (use one as ``rename_map="torch_mha"`` or
#: ``format="torch_mha"``, or extend it from your own map with ``"extends": "torch_mha"``).
BUILTIN_MAPS: Dict[str, Dict[str, Any]] = {
    "torch_mha": {
        "description": (
            "Plain PyTorch pre-norm ViTs: a Conv2d patch embedding (patch_embed / "
            "to_patch_embedding / patch_embedding, optionally .proj/.conv/.0), cls_token or "
            "class_token ((C,), (1, C) or (1, 1, C)), pos_embed or pos_embedding ((T, C) or "
            "(1, T, C)), blocks in blocks/layers/encoder.layers/transformer.layers.{i} with "
            "norm1/ln1/ln_1 and norm2/ln2/ln_2 LayerNorms, nn.MultiheadAttention as "
            "attn/self_attn/attention (in_proj_weight, in_proj_bias, out_proj), an nn.Sequential "
            "MLP as mlp/ffn/ff[.net].{j} (Linear, GELU[, Dropout], Linear[, Dropout]), a final "
            "norm/ln/transformer.norm LayerNorm and a Linear head/mlp_head/fc/classifier. The "
            "forward must be x = x + attn(norm1(x)); x = x + mlp(norm2(x)), exact GELU, the "
            "class token first, the head on the (final-normed) class token; LayerNorm eps "
            "defaults to PyTorch's 1e-5. None of this shows in the weights: check it in the "
            "model's code."),
        "rules": [
            [r"^(?:class_token|cls_token|cls)$", "cls_token"],
            [r"^(?:pos_embed|pos_embedding|position_embedding|position_embeddings|pos_emb)$",
             "pos_embed"],
            [r"^(?:patch_embed|to_patch_embedding|patch_embedding|patch_embeddings|patch_emb)"
             r"(?:\.proj|\.conv|\.0)?\.(weight|bias)$", r"patch_embed.proj.\1"],
            [_B + r"(?:norm1|norm_1|ln1|ln_1|layernorm1|layer_norm1|attn_norm|norm_attn|"
                  r"attention_norm)\.(weight|bias)$", r"blocks.\1.norm1.\2"],
            [_B + r"(?:norm2|norm_2|ln2|ln_2|layernorm2|layer_norm2|mlp_norm|ffn_norm|norm_mlp|"
                  r"norm_ffn)\.(weight|bias)$", r"blocks.\1.norm2.\2"],
            [_B + _ATTN + r"\.(in_proj_weight|in_proj_bias)$", r"blocks.\1.attn.\2"],
            [_B + _ATTN + r"\.out_proj\.(weight|bias)$", r"blocks.\1.attn.out_proj.\2"],
            [_B + r"(?:mlp|ffn|ff|feed_forward|feedforward|mlp_block)(?:\.net|\.layers|\.block)?"
                  r"\.(\d+)\.(weight|bias)$", r"blocks.\1.mlp.\2.\3"],
            [r"^(?:norm|ln|ln_f|norm_f|final_norm|final_ln|encoder_norm|encoder\.norm|encoder\.ln|"
             r"transformer\.norm|transformer\.ln|layernorm|layer_norm)\.(weight|bias)$",
             r"norm.\1"],
            [r"^(?:head|mlp_head|fc|classifier|cls_head|linear_head)\.(weight|bias)$",
             r"head.\1"],
            [r"^(?:head|mlp_head|classifier|cls_head)\.(\d+)\.(weight|bias)$", r"head.\1.\2"],
        ],
        "drop": [r"\.num_batches_tracked$", r"^mask_token$"],
        "refuse": [
            [r"\.(?:q_proj_weight|k_proj_weight|v_proj_weight)$",
             "separate q/k/v projections (nn.MultiheadAttention with kdim/vdim other than "
             "embed_dim)"],
            [r"\.bias_[kv]$", "extra key/value biases (nn.MultiheadAttention add_bias_kv=True)"],
            [r"\.(?:linear1|linear2)\.(weight|bias)$",
             "nn.TransformerEncoderLayer (linear1/linear2), which defaults to post-norm blocks "
             "and ReLU; if yours has norm_first=True and activation='gelu', write a map with "
             "\"extends\": \"torch_mha\" and rules for linear1 -> mlp.fc1, linear2 -> mlp.fc2 "
             "and norm1/norm2"],
            [r"^(?:patch_embed|to_patch_embedding|patch_embedding|patch_embeddings|patch_emb)\.",
             "a patch embedding with more than one layer (a convolutional stem, or a norm "
             "around the projection)"],
        ],
        "config": {"ln_eps": 1e-5, "global_pool": "token"},
    },
    "vit_pytorch": {
        "description": (
            "lucidrains/vit-pytorch's ViT (vit_pytorch.vit.ViT), in its older form (PreNorm "
            "wrappers: layers.{i}.0.norm/.0.fn.to_qkv, layers.{i}.1.norm/.1.fn.net; mlp_head = "
            "LayerNorm + Linear on the class token) and its newer one (the norms inside "
            "Attention and FeedForward: layers.{i}.0.norm, layers.{i}.1.net.0; transformer.norm; "
            "a Linear mlp_head). Assumes pool='cls' (its 'mean' pooling averages the class token "
            "too, which polyvit cannot express); heads * dim_head must equal dim (else the "
            "shapes do not fit). The patch embedding is a Linear over einops '(p1 p2 c)' "
            "patches, made into a Conv2d: give img_size (or patch_size). Versions with "
            "LayerNorms around the patch embedding are refused."),
        "rules": [
            [r"^to_patch_embedding\.1\.(weight|bias)$", r"patch_embed.proj.\1"],
            [r"^pos_embedding$", "pos_embed"],
            [r"^transformer\.layers\.(\d+)\.0\.norm\.(weight|bias)$", r"blocks.\1.norm1.\2"],
            [r"^transformer\.layers\.(\d+)\.0\.(?:fn\.)?to_qkv\.(weight|bias)$",
             r"blocks.\1.attn.qkv.\2"],
            [r"^transformer\.layers\.(\d+)\.0\.(?:fn\.)?to_out\.0\.(weight|bias)$",
             r"blocks.\1.attn.proj.\2"],
            [r"^transformer\.layers\.(\d+)\.1\.(?:net\.0|norm)\.(weight|bias)$",
             r"blocks.\1.norm2.\2"],
            [r"^transformer\.layers\.(\d+)\.1\.(?:fn\.)?net\.(\d+)\.(weight|bias)$",
             r"blocks.\1.mlp.\2.\3"],
            [r"^transformer\.norm\.(weight|bias)$", r"norm.\1"],
            [r"^mlp_head\.(weight|bias)$", r"head.\1"],
            [r"^mlp_head\.(\d+)\.(weight|bias)$", r"head.\1.\2"],
        ],
        "refuse": [
            [r"^to_patch_embedding\.",
             "LayerNorms around the patch embedding (newer vit-pytorch versions)"],
        ],
        "head_norm": "final_norm",
        "patch_linear": "p1 p2 c",
        "config": {"ln_eps": 1e-5, "global_pool": "token"},
    },
}

_TARGET = re.compile(
    r"cls_token|pos_embed|patch_embed\.proj\.(weight|bias)"
    r"|blocks\.\d+\.(norm[12]\.(weight|bias)"
    r"|attn\.(qkv|proj|out_proj|q|k|v|query|key|value)\.(weight|bias)|attn\.in_proj_(weight|bias)"
    r"|mlp\.(fc[12]\.(weight|bias)|act\.[abcs]|\d+\.(weight|bias)))"
    r"|(norm|fc_norm)\.(weight|bias)|head\.(\d+\.)?(weight|bias)")

_PATCH_ORDERS = {"c p1 p2": "c p1 p2", "p1 p2 c": "p1 p2 c"}


def _map_error(source: str, msg: str) -> ValueError:
    return ValueError(f"Invalid rename map ({source}): {msg}")


def _compile(pattern: Any, where: str, source: str) -> "re.Pattern[str]":
    if not isinstance(pattern, str):
        raise _map_error(source, f"{where} must be a regular expression string, got {pattern!r}")
    try:
        return re.compile(pattern)
    except re.error as e:
        raise _map_error(source, f"{where} {pattern!r} is not a valid regular expression "
                                 f"({e})") from None


def load_rename_map(rename_map: Union[str, "os.PathLike[str]", Mapping[str, Any]],
                    _seen: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """A checked rename map from a built-in name (:data:`BUILTIN_MAPS`), a JSON file or a dict.

    A map is ``{"rules": [[regex, replacement], ...], "drop": [regex, ...], "refuse":
    [[regex, reason], ...], "transpose": [regex, ...], "config": {...}, "extends": name,
    "head_norm": "final_norm" | "fc_norm", "patch_linear": "c p1 p2" | "p1 p2 c",
    "description": text}``, every key optional; see :func:`apply_rename_map` for what each
    does. ``extends`` puts a built-in map's rules, drops, refusals and transposes after this
    map's own (so this map's rules win) and its config under this one's. Returns a new dict
    with every key present; regexes are checked here, so a bad map fails before any tensor is
    touched.
    """
    if isinstance(rename_map, str) and rename_map in BUILTIN_MAPS:
        source = f"built-in map {rename_map!r}"
        raw: Any = json.loads(json.dumps(BUILTIN_MAPS[rename_map]))
    elif isinstance(rename_map, (str, os.PathLike)):
        path = os.fspath(rename_map)
        source = path
        if not os.path.exists(path) and not path.lower().endswith(".json") and \
                os.sep not in path and "/" not in path:
            raise ValueError(f"Unknown rename map {path!r}: not a built-in map "
                             f"({', '.join(sorted(BUILTIN_MAPS))}) and no such file.")
        _check_file(path)
        try:
            with open(path, "r", encoding="utf-8") as fh:
                raw = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"The rename map {path} is not valid JSON ({e}).") from None
    elif isinstance(rename_map, Mapping):
        source = "the rename map given"
        raw = dict(rename_map)
    else:
        raise TypeError("rename_map must be a built-in map name, a path to a JSON file or a "
                        f"dict, got {type(rename_map).__name__}.")
    if not isinstance(raw, Mapping):
        raise _map_error(source, f"expected a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_MAP_KEYS))
    if unknown:
        raise _map_error(source, f"unknown keys {unknown}; a map may hold {', '.join(_MAP_KEYS)}")

    def str_list(key: str) -> List[str]:
        v = raw.get(key, [])
        if isinstance(v, str) or not isinstance(v, (list, tuple)):
            raise _map_error(source, f"{key!r} must be a list of regular expressions")
        for i, p in enumerate(v):
            _compile(p, f"{key}[{i}]", source)
        return list(v)

    def pair_list(key: str, second: str) -> List[List[str]]:
        v = raw.get(key, [])
        if isinstance(v, str) or not isinstance(v, (list, tuple)):
            raise _map_error(source, f"{key!r} must be a list of [regex, {second}] pairs")
        out = []
        for i, pair in enumerate(v):
            if isinstance(pair, str) or not isinstance(pair, (list, tuple)) or len(pair) != 2 \
                    or not isinstance(pair[1], str):
                raise _map_error(source, f"{key}[{i}] must be a [regex, {second}] pair of "
                                         f"strings, got {pair!r}")
            _compile(pair[0], f"{key}[{i}]", source)
            out.append([pair[0], pair[1]])
        return out

    m: Dict[str, Any] = {
        "rules": pair_list("rules", "replacement"),
        "drop": str_list("drop"),
        "refuse": pair_list("refuse", "reason"),
        "transpose": str_list("transpose"),
        "config": raw.get("config", {}),
        "head_norm": raw.get("head_norm"),
        "patch_linear": raw.get("patch_linear"),
        "description": raw.get("description", ""),
        "extends": raw.get("extends"),
    }
    if not isinstance(m["config"], Mapping):
        raise _map_error(source, f"'config' must be an object of ViTConfig keys, got "
                                 f"{m['config']!r}")
    m["config"] = dict(m["config"])
    if m["head_norm"] not in (None, "final_norm", "fc_norm"):
        raise _map_error(source, f"'head_norm' must be 'final_norm' or 'fc_norm', got "
                                 f"{m['head_norm']!r}")
    if m["patch_linear"] is not None:
        order = " ".join(str(m["patch_linear"]).replace("(", " ").replace(")", " ").split())
        if order not in _PATCH_ORDERS:
            raise _map_error(source, "'patch_linear' must be 'c p1 p2' (a Conv2d's order) or "
                                     f"'p1 p2 c' (einops '(p1 p2 c)'), got {m['patch_linear']!r}")
        m["patch_linear"] = order
    if not isinstance(m["description"], str):
        raise _map_error(source, "'description' must be a string")
    base_name = m.pop("extends")
    if base_name is not None:
        if not isinstance(base_name, str) or base_name not in BUILTIN_MAPS:
            raise _map_error(source, f"'extends' must name a built-in map "
                                     f"({', '.join(sorted(BUILTIN_MAPS))}), got {base_name!r}")
        if base_name in _seen:
            raise _map_error(source, f"'extends' loops through {base_name!r}")
        base = load_rename_map(base_name, _seen + (base_name,))
        for key in ("rules", "drop", "refuse", "transpose"):
            m[key] = m[key] + base[key]
        m["config"] = {**base["config"], **m["config"]}
        for key in ("head_norm", "patch_linear"):
            if m[key] is None:
                m[key] = base[key]
        m["description"] = m["description"] or base["description"]
    return m


def apply_rename_map(state_dict: Mapping[str, Any],
                     rename_map: Union[str, "os.PathLike[str]", Mapping[str, Any]]
                     ) -> Dict[str, np.ndarray]:
    """Rename ``state_dict`` to polyvit's (timm's) names with a declarative map.

    ``rename_map`` is a built-in name (``"torch_mha"``, ``"vit_pytorch"``), a path to a JSON file or a dict (see
    :func:`load_rename_map`). Each name, after ``module.``/``model.`` prefixes shared by all
    names are stripped, goes through:

    1. ``drop``: a name any of these regexes finds is left out (inert buffers);
    2. architecture features polyvit cannot express (layer scale, q/k norm, register or
       distillation tokens, relative position bias, RoPE, RMSNorm, BatchNorm, norm_pre) are
       refused, whatever the map says;
    3. ``rules``: the FIRST rule whose regex is found in the name rewrites it with
       ``re.sub(regex, replacement, name, count=1)`` (so ``"^transformer\\.layers\\.(\\d+)\\."``
       -> ``"blocks.\\1."`` renames a prefix and keeps the rest); a name no rule matches is
       kept if it already is a polyvit name, refused with the reason of the first ``refuse``
       entry that matches, else reported as unknown;
    4. ``transpose``: 2-d tensors whose NEW name one of these regexes finds are transposed
       (for code that stores Linear weights as (in, out)).

    The new names must be polyvit's, or these intermediate forms, resolved afterwards:
    ``blocks.{i}.attn.in_proj_weight``/``in_proj_bias`` (nn.MultiheadAttention: q, k, v stacked
    along dim 0 exactly like timm's ``qkv``), ``blocks.{i}.attn.out_proj.*`` (-> ``attn.proj``),
    ``blocks.{i}.attn.{q,k,v,query,key,value}.*`` (concatenated into ``qkv``),
    ``blocks.{i}.mlp.{j}.*`` (an nn.Sequential MLP: exactly two Linear layers, which become
    ``fc1`` and ``fc2`` in index order; anything else with weights is refused) and
    ``head.{j}.*`` (an nn.Sequential head: one Linear, optionally after a LayerNorm; the
    LayerNorm is refused unless ``head_norm`` says what it is: ``"final_norm"`` -- the class
    token's LayerNorm, the same as timm's final norm with token pooling -- or ``"fc_norm"``).
    ``cls_token`` of shape (C,) or (1, C) and ``pos_embed`` of shape (T, C) are given their
    leading ones. A 2-d ``patch_embed.proj.weight`` (a Linear over flattened patches) is made
    into the Conv2d form when ``patch_linear`` gives the order of its inputs (``"c p1 p2"``, or
    ``"p1 p2 c"`` as einops' ``b c (h p1) (w p2) -> b (h w) (p1 p2 c)``) and the map's config
    (or, through :func:`from_state_dict`, the caller) gives ``img_size``, ``patch_size`` or
    ``in_chans``.

    The map's ``config`` (ViTConfig keys, or the aliases :func:`import_weights` accepts in file
    metadata) is used by :func:`from_state_dict`; this function only renames. Every problem is
    collected and reported in ONE ValueError. Returns a new dict of numpy arrays.
    """
    _check_mapping(state_dict)
    m = load_rename_map(rename_map)
    rules = [(re.compile(p), r) for p, r in m["rules"]]
    drop = [re.compile(p) for p in m["drop"]]
    refuse = [(re.compile(p), why) for p, why in m["refuse"]]
    transpose = [re.compile(p) for p in m["transpose"]]

    stripped = _strip_common_prefixes(state_dict)
    out: Dict[str, np.ndarray] = {}
    origin: Dict[str, str] = {}
    reasons: Dict[str, List[str]] = {}
    unknown: List[str] = []
    bad_targets: List[str] = []
    clashes: List[str] = []
    problems: List[str] = []
    for orig, key in stripped.items():
        if any(rx.search(key) for rx in drop):
            continue
        refused = next((why for rx, why in _ARCH_REFUSE if rx.search(key)), None)
        if refused is None:
            for rx, repl in rules:
                if rx.search(key):
                    try:
                        new = rx.sub(repl, key, count=1)
                    except (re.error, IndexError) as e:
                        raise _map_error("rules", f"the replacement {repl!r} of rule "
                                                  f"{rx.pattern!r} fails on {key!r} ({e})") from None
                    break
            else:
                refused = next((why for rx, why in refuse if rx.search(key)), None)
                if refused is None:
                    if _TARGET.fullmatch(key):
                        new = key
                    else:
                        unknown.append(orig)
                        continue
        if refused is not None:
            reasons.setdefault(refused, []).append(orig)
            continue
        if not _TARGET.fullmatch(new):
            bad_targets.append(f"{orig} -> {new}")
            continue
        if new in out:
            clashes.append(f"{origin[new]} and {orig} both map to {new}")
            continue
        arr = _to_numpy(state_dict[orig])
        if any(rx.search(new) for rx in transpose):
            if arr.ndim != 2:
                problems.append(f"  {orig} is to be transposed but has shape "
                                f"{_shape_str(arr.shape)}, not 2-d")
                continue
            arr = np.ascontiguousarray(arr.T)
        out[new] = arr
        origin[new] = orig
    problems = [f"  {why}: {_listing(keys, 5)}" for why, keys in reasons.items()] + problems
    if unknown:
        problems.append(f"  names no rule maps to a polyvit name ({len(unknown)}): "
                        f"{_listing(unknown)}")
    if bad_targets:
        problems.append(f"  rules that produce names which are not polyvit's "
                        f"({len(bad_targets)}): {_listing(bad_targets)}")
    if clashes:
        problems.append(f"  clashing names: {_listing(clashes)}")
    if not problems:
        out = _resolve_forms(out, origin, m, problems)
    if problems:
        raise ValueError("The state dict cannot be converted with the rename map:\n"
                         + "\n".join(problems))
    return out


def _resolve_forms(sd: Dict[str, np.ndarray], origin: Dict[str, str], m: Dict[str, Any],
                   problems: List[str]) -> Dict[str, np.ndarray]:
    """The intermediate names of :func:`apply_rename_map` -> polyvit's; appends problems."""
    res: Dict[str, np.ndarray] = {}
    res_origin: Dict[str, str] = {}
    qkv: Dict[Tuple[int, str], Dict[str, np.ndarray]] = {}
    mlp: Dict[int, Dict[int, Dict[str, np.ndarray]]] = {}
    head: Dict[int, Dict[str, np.ndarray]] = {}
    letter = {"q": "q", "k": "k", "v": "v", "query": "q", "key": "k", "value": "v"}

    def put(name: str, arr: np.ndarray, orig: str) -> None:
        if name in res:
            problems.append(f"  clashing names: {res_origin[name]} and {orig} both map to {name}")
            return
        res[name] = arr
        res_origin[name] = orig

    for name, arr in sd.items():
        o = origin.get(name, name)
        mt = re.fullmatch(r"blocks\.(\d+)\.attn\.in_proj_(weight|bias)", name)
        if mt:
            put(f"blocks.{mt.group(1)}.attn.qkv.{mt.group(2)}", arr, o)
            continue
        mt = re.fullmatch(r"blocks\.(\d+)\.attn\.out_proj\.(weight|bias)", name)
        if mt:
            put(f"blocks.{mt.group(1)}.attn.proj.{mt.group(2)}", arr, o)
            continue
        mt = re.fullmatch(r"blocks\.(\d+)\.attn\.(q|k|v|query|key|value)\.(weight|bias)", name)
        if mt:
            qkv.setdefault((int(mt.group(1)), mt.group(3)), {})[letter[mt.group(2)]] = arr
            continue
        mt = re.fullmatch(r"blocks\.(\d+)\.mlp\.(\d+)\.(weight|bias)", name)
        if mt:
            mlp.setdefault(int(mt.group(1)), {}).setdefault(int(mt.group(2)), {})[mt.group(3)] = arr
            continue
        mt = re.fullmatch(r"head\.(\d+)\.(weight|bias)", name)
        if mt:
            head.setdefault(int(mt.group(1)), {})[mt.group(2)] = arr
            continue
        put(name, arr, o)

    for (block, kind), parts in sorted(qkv.items()):
        absent = [p for p in "qkv" if p not in parts]
        shapes = {tuple(parts[p].shape) for p in parts}
        if absent:
            problems.append(f"  block {block}: the attention {kind} lacks {'/'.join(absent)}")
        elif len(shapes) != 1:
            problems.append(f"  block {block}: the q/k/v {kind}s have different shapes "
                            f"({', '.join(_shape_str(parts[p].shape) for p in 'qkv')})")
        else:
            put(f"blocks.{block}.attn.qkv.{kind}",
                np.concatenate([parts[p] for p in "qkv"], axis=0), f"blocks.{block}.attn.q/k/v")

    for block, layers in sorted(mlp.items()):
        where = f"blocks.{block}.mlp"
        weighted = [j for j in sorted(layers) if "weight" in layers[j]]
        bias_only = [j for j in sorted(layers) if "weight" not in layers[j]]
        not_linear = [f"{origin.get(f'{where}.{j}.weight', f'{where}.{j}')} (weight "
                      f"{_shape_str(layers[j]['weight'].shape)})"
                      for j in weighted if layers[j]["weight"].ndim != 2]
        if not_linear:
            problems.append(f"  a norm or a parametrised activation inside the MLP (polyvit's "
                            f"MLP is Linear, GELU, Linear): {_listing(not_linear)}")
        elif bias_only:
            problems.append(f"  {where}: layers {bias_only} have a bias but no weight")
        elif len(weighted) != 2:
            names = [origin.get(f"{where}.{j}.weight", f"{where}.{j}") for j in weighted]
            problems.append(f"  an MLP with {len(weighted)} Linear layers ({_listing(names)}); "
                            "polyvit's MLP has exactly two (Linear, GELU, Linear)")
        else:
            for j, fc in zip(weighted, ("fc1", "fc2")):
                for kind, arr in layers[j].items():
                    put(f"{where}.{fc}.{kind}", arr, f"{where}.{j}.{kind}")

    if head:
        idx = sorted(head)
        linears = [j for j in idx if "weight" in head[j] and head[j]["weight"].ndim == 2]
        norms = [j for j in idx if "weight" in head[j] and head[j]["weight"].ndim == 1]
        other = [j for j in idx if j not in linears and j not in norms]
        if len(linears) != 1:
            names = [origin.get(f"head.{j}.weight", f"head.{j}") for j in linears]
            problems.append(f"  a head with hidden layers ({len(linears)} Linear layers: "
                            f"{_listing(names)}); polyvit's head is one Linear layer")
        elif other or len(norms) > 1 or any(j > linears[0] for j in norms):
            problems.append(f"  a head polyvit cannot express (layers {idx}: a norm after the "
                            "Linear, several norms, or layers with odd tensors)")
        else:
            for kind, arr in head[linears[0]].items():
                put(f"head.{kind}", arr, f"head.{linears[0]}.{kind}")
            if norms:
                j = norms[0]
                target = {"final_norm": "norm", "fc_norm": "fc_norm"}.get(m.get("head_norm") or "")
                if target is None:
                    problems.append(
                        f"  a LayerNorm inside the head (head.{j}, before the Linear); if it is "
                        "a LayerNorm on the pooled class token, say so in the map with "
                        "\"head_norm\": \"final_norm\" (the same as timm's final norm when the "
                        "class token is pooled) or \"fc_norm\"")
                elif target + ".weight" in res:
                    problems.append(f"  the head's LayerNorm (head.{j}) is to be {target}, but "
                                    f"the model already has a {target}: two norms in a row")
                else:
                    for kind, arr in head[j].items():
                        put(f"{target}.{kind}", arr, f"head.{j}.{kind}")

    cls = res.get("cls_token")
    if cls is not None and cls.ndim in (1, 2) and (cls.ndim == 1 or cls.shape[0] == 1):
        res["cls_token"] = cls.reshape(1, 1, cls.shape[-1])
    pos = res.get("pos_embed")
    if pos is not None and pos.ndim == 2:
        res["pos_embed"] = pos.reshape((1,) + pos.shape)

    pw = res.get("patch_embed.proj.weight")
    if pw is not None and pw.ndim == 2:
        order = m.get("patch_linear")
        cfg = m.get("config") or {}
        C, K = pw.shape

        def given(*keys: str) -> Optional[int]:
            for k in keys:
                v = cfg.get(k)
                if isinstance(v, (list, tuple)) and len(v) == 2 and v[0] == v[1]:
                    v = v[0]
                if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                    return v
            return None

        p = given("patch_size")
        c = given("in_chans", "in_channels", "num_channels")
        img = given("img_size", "image_size")
        pe = res.get("pos_embed")
        grid = math.isqrt(pe.shape[1] - 1) if pe is not None and pe.ndim == 3 and \
            pe.shape[1] > 1 else 0
        if p is None and img is not None and grid and img % grid == 0:
            p = img // grid
        if p is None and c is not None and K % c == 0 and math.isqrt(K // c) ** 2 * c == K:
            p = math.isqrt(K // c)
        if c is None and p is not None and K % (p * p) == 0:
            c = K // (p * p)
        if order is None:
            problems.append("  patch_embed.proj.weight is 2-d: a Linear over flattened patches; "
                            "say in the map in which order it reads a patch: \"patch_linear\": "
                            "\"c p1 p2\" or \"p1 p2 c\" (einops '(p1 p2 c)')")
        elif not (p is not None and c is not None and p * p * c == K):
            problems.append(f"  patch_embed.proj.weight has shape {_shape_str(pw.shape)}, a "
                            "Linear over flattened patches: give img_size, patch_size or "
                            f"in_chans (with patch_size^2 * in_chans = {K}) to make it a Conv2d")
        elif order == "p1 p2 c":
            res["patch_embed.proj.weight"] = np.ascontiguousarray(
                pw.reshape(C, p, p, c).transpose(0, 3, 1, 2))
        else:
            res["patch_embed.proj.weight"] = pw.reshape(C, c, p, p)
    return res


# ----------------------------------------------------------------------------------------------
# configs written by others: file metadata, rename maps, Hugging Face config.json
# ----------------------------------------------------------------------------------------------
_CFG_ALIASES = {
    "img_size": "img_size", "image_size": "img_size",
    "patch_size": "patch_size",
    "in_chans": "in_chans", "in_channels": "in_chans", "num_channels": "in_chans",
    "embed_dim": "embed_dim", "hidden_size": "embed_dim", "dim": "embed_dim", "width": "embed_dim",
    "depth": "depth", "num_layers": "depth", "num_hidden_layers": "depth",
    "num_heads": "num_heads", "heads": "num_heads", "num_attention_heads": "num_heads",
    "mlp_ratio": "mlp_ratio",
    "mlp_dim": "mlp_dim", "intermediate_size": "mlp_dim", "mlp_hidden": "mlp_dim",
    "num_classes": "num_classes", "num_labels": "num_classes",
    "ln_eps": "ln_eps", "layer_norm_eps": "ln_eps", "norm_eps": "ln_eps", "eps": "ln_eps",
    "gelu": "gelu", "qkv_bias": "qkv_bias", "final_norm": "final_norm", "fc_norm": "fc_norm",
    "mean": "mean", "std": "std", "act": "act", "poly_per_channel": "poly_per_channel",
}
# keys that must hold one value (what polyvit computes), else the model is refused
_CFG_REQUIRED = {
    "class_token": (True, "a model without a class token"),
    "cls_token": (True, "a model without a class token"),
    "pre_norm": (True, "post-norm blocks (LayerNorm after the residual additions)"),
    "norm_first": (True, "post-norm blocks (LayerNorm after the residual additions)"),
    "no_embed_class": (False, "position embeddings without a class-token slot (no_embed_class)"),
    "reg_tokens": (0, "register tokens"),
    "num_reg_tokens": (0, "register tokens"),
    "num_register_tokens": (0, "register tokens"),
    "init_values": (None, "layer scale (init_values)"),
    "layer_scale": (None, "layer scale"),
    "layer_scale_init_value": (None, "layer scale"),
    "qk_norm": (False, "query/key normalisation (qk_norm)"),
    "representation_size": (None, "a pre-logits layer (representation_size)"),
    "distilled": (False, "a distillation token (distilled)"),
    "num_prefix_tokens": (1, "extra prefix tokens besides the class token"),
    "dynamic_img_size": (False, "dynamic image sizes (interpolated position embeddings)"),
    "use_abs_pos_emb": (True, "no learned absolute position embedding"),
    "use_relative_position_bias": (False, "relative position bias"),
    "use_shared_relative_position_bias": (False, "relative position bias"),
    "add_pooling_layer": (False, "a pooler layer"),
}
# dropout and initialisation settings: no effect on what a trained model computes
_CFG_NEUTRAL = {"drop_rate", "attn_drop_rate", "drop_path_rate", "proj_drop_rate",
                "pos_drop_rate", "patch_drop_rate", "hidden_dropout_prob",
                "attention_probs_dropout_prob", "dropout", "emb_dropout", "attention_dropout",
                "initializer_range", "weight_init", "init"}
# purely informational keys
_CFG_INFO = {"name", "model_name", "arch", "architecture", "description", "notes", "note",
             "source", "license", "dataset", "framework", "version", "comment", "id2label",
             "label2id", "labels", "classes"}
_TANH_ACTS = ("gelu_new", "gelu_pytorch_tanh", "gelu_tanh", "tanh")


def _as_square(v: Any, key: str, source: str) -> Any:
    if isinstance(v, (list, tuple)):
        if len(v) == 2 and v[0] == v[1]:
            return v[0]
        raise ValueError(f"{source}: {key} {v!r} is not square; polyvit needs square "
                         "images and patches.")
    return v


def _gelu_from_act(value: Any, key: str, source: str) -> str:
    v = str(value).lower() if isinstance(value, str) else value
    if v in ("gelu", "gelu_erf", "erf", "exact"):
        return "erf"
    if v in _TANH_ACTS:
        return "tanh"
    raise ValueError(f"{source}: {key} {value!r} is an activation polyvit does not have; it "
                     "computes exact GELU (\"gelu\") or its tanh approximation (\"gelu_new\", "
                     "\"gelu_pytorch_tanh\").")


def _describe_head(cfg: ViTConfig) -> str:
    pooled = "class token" if cfg.global_pool == "token" else "mean of the patch tokens"
    return (f"linear on the {'final-normed ' if cfg.final_norm else ''}{pooled}"
            f"{' after fc_norm' if cfg.fc_norm else ''}")


class _ExternalConfig(NamedTuple):
    fields: Dict[str, Any]
    notes: List[str]
    head: Optional[str]   # a descriptive "head" value, checked against the final config


def _translate_config(d: Any, source: str) -> _ExternalConfig:
    """ViTConfig fields from a config written by someone else (file metadata, a rename map).

    ViTConfig's own keys and common aliases (``layer_norm_eps``, ``image_size``,
    ``hidden_size``, ``num_attention_heads``, ``hidden_act``, ...) are translated; keys that
    describe a structure polyvit has (``class_token``, ``pre_norm``, ...) must say so; dropout
    and init settings and informational keys are noted and ignored; a ``head`` description must
    be "linear" or what polyvit computes; any other key is refused (it may change the
    computation).
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"{source} must be a JSON object, got {type(d).__name__}.")
    fields: Dict[str, Any] = {}
    notes: List[str] = []
    refused: List[str] = []
    unknown: List[str] = []
    head = None
    for key, value in d.items():
        k = str(key)
        if k in _CFG_ALIASES:
            field = _CFG_ALIASES[k]
            if field in ("img_size", "patch_size"):
                value = _as_square(value, k, source)
            if field in fields and fields[field] != value:
                raise ValueError(f"{source} gives {field} twice with different values "
                                 f"({fields[field]!r} and {value!r}).")
            fields[field] = value
        elif k in ("hidden_act", "act_layer", "activation"):
            fields["gelu"] = _gelu_from_act(value, k, source)
        elif k in ("global_pool", "pool"):
            v = value.lower() if isinstance(value, str) else value
            if v in ("token", "cls"):
                fields["global_pool"] = "token"
            elif v == "avg":
                fields["global_pool"] = "avg"
            elif v == "mean":
                raise ValueError(f"{source}: {k} 'mean' is ambiguous: polyvit's 'avg' (timm's) "
                                 "averages the patch tokens only, some code averages the class "
                                 "token too. Give 'avg' if the class token was left out.")
            else:
                refused.append(f"{k}={value!r} (polyvit pools the class token, 'token', or the "
                               "mean of the patch tokens, 'avg')")
        elif k in _CFG_REQUIRED:
            want, what = _CFG_REQUIRED[k]
            ok = (value in (None, 0, False)) if want is None else \
                (value == want and type(value) is not str)
            if not ok:
                refused.append(f"{k}={value!r}: {what}")
        elif k == "head":
            head = value
        elif k in _CFG_NEUTRAL:
            notes.append(f"ignored {k}={value!r} (no effect on a trained model's outputs)")
        elif k in _CFG_INFO:
            notes.append(f"ignored {k} (informational)")
        else:
            unknown.append(k)
    problems = []
    if refused:
        problems.append("it describes an architecture polyvit cannot express exactly: "
                        + "; ".join(refused))
    if unknown:
        problems.append(f"unknown keys that may change the computation: {', '.join(unknown)} "
                        "(remove them if they are only descriptive)")
    if problems:
        raise ValueError(f"{source} is refused: " + "; and ".join(problems) + ".")
    return _ExternalConfig(fields, notes, head)


def _check_head(head: Any, cfg: ViTConfig, source: str) -> None:
    if head is None:
        return
    want = _describe_head(cfg)
    if not isinstance(head, str) or " ".join(head.lower().split()) not in ("linear", want):
        raise ValueError(f"{source} describes the head as {head!r}, which is not what polyvit "
                         f"computes with this config ({want!r}).")


def _load_hf_config(hf_config: Any) -> Dict[str, Any]:
    if isinstance(hf_config, (str, os.PathLike)):
        path = os.fspath(hf_config)
        _check_file(path)
        try:
            with open(path, "r", encoding="utf-8") as fh:
                d = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"The Hugging Face config {path} is not valid JSON ({e}).") from None
    elif isinstance(hf_config, Mapping):
        d = dict(hf_config)
    else:
        raise TypeError("hf_config must be a dict or the path of a config.json, got "
                        f"{type(hf_config).__name__}.")
    if not isinstance(d, dict):
        raise ValueError("The Hugging Face config must be a JSON object.")
    return d


def _translate_hf_config(hf_config: Any) -> _ExternalConfig:
    """ViTConfig fields from a Hugging Face ViT ``config.json`` (dict or path).

    Only the keys transformers' ViT modelling code reads change what it computes; the rest of a
    config.json (generation settings, label names, versions) is inert and ignored.
    """
    d = _load_hf_config(hf_config)
    src = "the Hugging Face config"
    mt = d.get("model_type")
    if mt is not None and mt != "vit":
        raise ValueError(f"{src} has model_type {mt!r}; polyvit imports Hugging Face 'vit' "
                         "models (ViTForImageClassification) only.")
    archs = d.get("architectures") or []
    bad = [a for a in archs if a != "ViTForImageClassification"]
    if bad:
        raise ValueError(f"{src} is for {', '.join(bad)}; polyvit needs a "
                         "ViTForImageClassification (a ViTModel has no classifier head).")
    f: Dict[str, Any] = {}
    pairs = [("hidden_size", "embed_dim"), ("num_hidden_layers", "depth"),
             ("num_attention_heads", "num_heads"), ("intermediate_size", "mlp_dim"),
             ("layer_norm_eps", "ln_eps"), ("image_size", "img_size"),
             ("patch_size", "patch_size"), ("num_channels", "in_chans"),
             ("qkv_bias", "qkv_bias")]
    for k, field in pairs:
        if k in d:
            f[field] = _as_square(d[k], k, src) if field in ("img_size", "patch_size") else d[k]
    f["gelu"] = _gelu_from_act(d.get("hidden_act", "gelu"), "hidden_act", src)
    if "id2label" in d and isinstance(d["id2label"], Mapping):
        f["num_classes"] = len(d["id2label"])
    if "num_labels" in d:
        f["num_classes"] = d["num_labels"]
    f.setdefault("ln_eps", 1e-12)
    return _ExternalConfig(f, [], None)


# ----------------------------------------------------------------------------------------------
# configs from shapes
# ----------------------------------------------------------------------------------------------
def _known_heads() -> Dict[int, int]:
    # widths of timm's presets and polyvit's; ViT-H/g/G use 16 heads of width 80/88/104
    table = {1024: 16, 1280: 16, 1408: 16, 1664: 16}
    for p in PRESETS.values():
        table.setdefault(p["embed_dim"], p["num_heads"])
    return table


def _clean_ratio(hidden: int, dim: int) -> Optional[float]:
    """``hidden / dim`` when it is a plain ratio (at most 6 decimals) that
    ``int(dim * ratio)`` maps back to ``hidden``; else None (use ``mlp_dim``)."""
    r = hidden / dim
    if round(r, 6) == r and int(dim * r) == hidden:
        return r
    return None


_NORM_NAMES = re.compile(r"^(blocks\.\d+\.norm[12]|norm|fc_norm)\.(weight|bias)$")
_LINEAR_NAMES = re.compile(r"^(patch_embed\.proj|blocks\.\d+\.attn\.proj|blocks\.\d+\.mlp\.fc[12]"
                           r"|head)\.(weight|bias)$")


def _structure_problems(shapes: Mapping[str, Tuple[int, ...]]) -> List[str]:
    """What a timm-named state dict says about its architecture that polyvit cannot compute."""
    out: List[str] = []
    bias_free_norms, weightless_norms, bias_free_linears = [], [], []
    for name in shapes:
        m = _NORM_NAMES.match(name)
        if m:
            other = f"{m.group(1)}.{'bias' if m.group(2) == 'weight' else 'weight'}"
            if other not in shapes:
                (bias_free_norms if m.group(2) == "weight" else weightless_norms).append(m.group(1))
            continue
        m = _LINEAR_NAMES.match(name)
        if m and m.group(2) == "weight" and f"{m.group(1)}.bias" not in shapes:
            bias_free_linears.append(m.group(1))
    if bias_free_norms:
        out.append("norms with a scale but no bias (a bias-free LayerNorm, or an RMSNorm): "
                   + _listing(sorted(bias_free_norms)))
    if weightless_norms:
        out.append("norms with a bias but no scale: " + _listing(sorted(weightless_norms)))
    if bias_free_linears:
        out.append("layers without a bias (only the qkv projection may go without one in "
                   "polyvit): " + _listing(sorted(bias_free_linears)))
    blocks = sorted({int(m.group(1)) for k in shapes
                     for m in [re.match(r"^blocks\.(\d+)\.attn\.qkv\.weight$", k)] if m})
    with_bias = [b for b in blocks if f"blocks.{b}.attn.qkv.bias" in shapes]
    if with_bias and len(with_bias) != len(blocks):
        out.append(f"a qkv bias in blocks {with_bias} but not in the others: polyvit's blocks "
                   "either all have one or none")
    widths = {shapes[f"blocks.{b}.mlp.fc1.weight"][0] for b in blocks
              if f"blocks.{b}.mlp.fc1.weight" in shapes and len(shapes[f"blocks.{b}.mlp.fc1.weight"]) == 2}
    if len(widths) > 1:
        out.append(f"MLP widths that differ between blocks ({sorted(int(w) for w in widths)})")
    return out


def infer_config(state_dict: Mapping[str, Any], num_heads: Optional[int] = None,
                 **overrides: Any) -> ViTConfig:
    """A :class:`ViTConfig` matching the shapes of a timm-named state dict.

    From the tensors: embed_dim (``cls_token``), patch_size and in_chans (the patch
    embedding), depth (the blocks), the MLP width (``fc1``: ``mlp_ratio`` when ``width / dim``
    is a plain ratio that reproduces it, else ``mlp_dim``), num_classes (``head``), img_size
    (``pos_embed``: a square grid plus the class token), ``qkv_bias`` (``attn.qkv.bias``
    present), ``final_norm`` (``norm.*`` present) and ``fc_norm`` (``fc_norm.*`` present).
    Blocks with ``mlp.act.*`` coefficients are poly blocks, per-channel when those have the
    MLP width.

    Not in any shape: ``num_heads`` (pass it, or the usual count for the width is used:
    timm's and polyvit's presets, else ``embed_dim // 64``), ``ln_eps``, ``gelu``, ``mean``/
    ``std`` and the pooling: ``global_pool`` defaults to "token", but a model with ``fc_norm``
    (timm's ``global_pool="avg"`` models) is refused unless ``global_pool`` is given.
    ``overrides`` give those; an override of a field the shapes determine must agree with
    them (one ValueError lists every disagreement). Architectures polyvit cannot express
    (bias-free norms, layers without biases, a qkv bias in some blocks only, MLP widths that
    differ per block, no class token) are refused.
    """
    _check_mapping(state_dict)
    shapes = {k: tuple(np.shape(v)) if not hasattr(v, "shape") else tuple(v.shape)
              for k, v in state_dict.items()}
    problems = _structure_problems(shapes)
    if problems:
        raise ValueError("The weights describe an architecture polyvit cannot express exactly:\n"
                         + "\n".join(f"  {p}" for p in problems))

    def need(name: str, ndim: int) -> Tuple[int, ...]:
        if name not in shapes:
            raise ValueError(f"Cannot infer a config: the state dict has no {name!r} tensor "
                             "(polyvit models always have one).")
        s = shapes[name]
        if len(s) != ndim:
            raise ValueError(f"Cannot infer a config: {name} has shape {_shape_str(s)}, expected "
                             f"{ndim} dimensions.")
        return s

    if "cls_token" not in shapes and "pos_embed" in shapes:
        raise ValueError("The model has no class token (cls_token): polyvit's ViT always "
                         "prepends one, so a model without it (timm class_token=False) cannot "
                         "be expressed.")
    if "head.weight" not in shapes and "head.bias" not in shapes:
        raise ValueError("The model has no classification head (head.weight): a backbone "
                         "without classifier (timm num_classes=0, Hugging Face ViTModel) "
                         "cannot be imported; polyvit needs the trained head.")
    cls = need("cls_token", 3)
    if cls[:2] != (1, 1):
        raise ValueError(f"cls_token has shape {_shape_str(cls)}; polyvit expects (1, 1, C) "
                         "(a single class token).")
    C = int(cls[2])
    pw = need("patch_embed.proj.weight", 4)
    if pw[0] != C:
        raise ValueError(f"patch_embed.proj.weight has {pw[0]} output channels but cls_token has "
                         f"width {C}.")
    if pw[2] != pw[3]:
        raise ValueError(f"patch_embed.proj.weight has a non-square {pw[2]}x{pw[3]} kernel; "
                         "polyvit needs square patches.")
    patch, in_chans = int(pw[2]), int(pw[1])
    pos = need("pos_embed", 3)
    T = int(pos[1])
    grid = math.isqrt(max(T - 1, 0))
    if pos[0] != 1 or pos[2] != C or T < 2 or grid * grid != T - 1:
        extra = ""
        if math.isqrt(T) ** 2 == T:
            extra = (" It looks like it has no slot for the class token (timm's "
                     "no_embed_class), which polyvit does not support.")
        raise ValueError(f"pos_embed has shape {_shape_str(pos)}, which is not (1, 1 + n*n, {C}) "
                         f"for a square grid of patches, so img_size cannot be inferred.{extra}")
    head = need("head.weight", 2)

    block_ids = sorted({int(m.group(1)) for k in shapes
                        for m in [re.match(r"^blocks\.(\d+)\.", k)] if m})
    if not block_ids:
        raise ValueError("Cannot infer a config: the state dict has no blocks.N.* tensors.")
    if block_ids != list(range(len(block_ids))):
        raise ValueError(f"The state dict's blocks are numbered {_listing([str(b) for b in block_ids])}"
                         ", not 0..depth-1.")
    depth = len(block_ids)
    fc1 = need("blocks.0.mlp.fc1.weight", 2)
    H = int(fc1[0])
    act, per_channel = [], []
    for i in block_ids:
        coef = [shapes[f"blocks.{i}.mlp.act.{c}"] for c in "abcs"
                if f"blocks.{i}.mlp.act.{c}" in shapes]
        if coef:
            act.append("poly")
            per_channel.append(any(s not in ((), (1,)) for s in coef))
        else:
            act.append("gelu")
            per_channel.append(False)
    qkv_bias = "blocks.0.attn.qkv.bias" in shapes
    final_norm = "norm.weight" in shapes
    fc_norm = "fc_norm.weight" in shapes

    if num_heads is None:
        num_heads = overrides.pop("num_heads", None)
    else:
        overrides.pop("num_heads", None)
    if overrides.get("global_pool", "token") is None:
        del overrides["global_pool"]
    if fc_norm and "global_pool" not in overrides:
        raise ValueError(
            "The model has fc_norm (a LayerNorm after pooling"
            f"{'' if final_norm else ' and no final norm'}, as timm's global_pool='avg' models "
            "have), and the pooling does not show in the weights: pass global_pool='avg' (the "
            "mean of the patch tokens) or global_pool='token' (the class token).")

    shape_fields = {
        "img_size": (grid * patch, f"pos_embed has a {grid}x{grid} grid of {patch}x{patch} "
                                   "patches"),
        "patch_size": (patch, "patch_embed.proj.weight"),
        "in_chans": (in_chans, "patch_embed.proj.weight"),
        "embed_dim": (C, "cls_token"),
        "depth": (depth, "the blocks"),
        "num_classes": (int(head[0]), "head.weight"),
        "qkv_bias": (qkv_bias, "attn.qkv.bias is " + ("present" if qkv_bias else "absent")),
        "final_norm": (final_norm, "norm.* is " + ("present" if final_norm else "absent")),
        "fc_norm": (fc_norm, "fc_norm.* is " + ("present" if fc_norm else "absent")),
    }
    conflicts = []
    for k, (v, why) in shape_fields.items():
        if k in overrides:
            given = overrides.pop(k)
            if given != v or (isinstance(v, bool) and not isinstance(given, (bool, int))):
                conflicts.append(f"{k}: given {given!r}, but the weights say {v!r} ({why})")
    ratio = _clean_ratio(H, C)
    # with mlp_dim set, mlp_ratio is unused: leave it at ViTConfig's default, as a config
    # written by hand would
    mlp_fields: Dict[str, Any] = (
        dict(mlp_ratio=ratio, mlp_dim=None) if ratio is not None
        else dict(mlp_ratio=ViTConfig.__dataclass_fields__["mlp_ratio"].default, mlp_dim=H))
    given_dim = overrides.pop("mlp_dim", None)
    given_ratio = overrides.pop("mlp_ratio", None)
    if given_dim is not None and given_dim != H:
        conflicts.append(f"mlp_dim: given {given_dim!r}, but fc1 has {H} outputs")
    elif given_dim is None and given_ratio is not None:
        try:
            ok = int(C * float(given_ratio)) == H
        except (TypeError, ValueError):
            ok = False
        if not ok:
            conflicts.append(f"mlp_ratio: given {given_ratio!r}, but fc1 has {H} outputs for "
                             f"embed_dim {C}")
    if conflicts:
        raise ValueError("The config given disagrees with the weights:\n"
                         + "\n".join(f"  {c}" for c in conflicts))

    if num_heads is None:
        table = _known_heads()
        if C in table:
            num_heads = table[C]
        elif C % 64 == 0:
            num_heads = C // 64
            warnings.warn(f"num_heads is not given; guessing {num_heads} heads of width 64 for "
                          f"embed_dim {C}. Pass num_heads= if the model used another count.",
                          stacklevel=2)
        else:
            raise ValueError(f"The number of attention heads cannot be read from the weights "
                             f"and embed_dim {C} is not a multiple of 64; pass num_heads=.")
    fields = dict(img_size=grid * patch, patch_size=patch, in_chans=in_chans, embed_dim=C,
                  depth=depth, num_heads=num_heads, num_classes=int(head[0]), act=act,
                  poly_per_channel=per_channel, qkv_bias=qkv_bias, final_norm=final_norm,
                  fc_norm=fc_norm, **mlp_fields)
    fields.update(overrides)
    return ViTConfig.from_dict(fields)


# ----------------------------------------------------------------------------------------------
# one-stop import
# ----------------------------------------------------------------------------------------------
class _Prepared(NamedTuple):
    state_dict: Dict[str, Any]
    config: ViTConfig
    format: str
    notes: List[str]


def _prepare(state_dict: Mapping[str, Any], config: Optional[ViTConfig], format: str,
             num_heads: Optional[int], rename_map: Any, hf_config: Any,
             metadata_config: Optional[Tuple[Any, str]], overrides: Dict[str, Any]) -> _Prepared:
    """Rename, gather the config from every source, infer the rest; no model is built."""
    _check_mapping(state_dict)
    if not isinstance(format, str):
        raise TypeError(f"format must be a string, got {type(format).__name__}.")
    if rename_map is not None:
        if format not in ("auto", "map"):
            raise ValueError(f"rename_map= goes with format='map' (or 'auto'), not {format!r}.")
        fmt = "map"
    else:
        fmt = detect_format(state_dict) if format == "auto" else format
        if fmt == "map":
            raise ValueError("format='map' needs a rename map: pass rename_map= (a built-in "
                             f"name: {', '.join(sorted(BUILTIN_MAPS))}, a JSON file or a dict).")
        if fmt in BUILTIN_MAPS:
            rename_map = fmt
        elif fmt not in _RENAMERS:
            raise ValueError(f"Unknown format {format!r}; choose 'auto' or one of "
                             f"{', '.join(FORMATS)}.")
    if hf_config is not None and fmt != "hf":
        raise ValueError(f"hf_config= is for Hugging Face checkpoints, but this one is in the "
                         f"{fmt} layout.")
    notes: List[str] = []
    the_map = None
    if rename_map is not None:
        the_map = load_rename_map(rename_map)
        # sizes the caller gives help resolve a Linear patch embedding
        sizes = {k: overrides[k] for k in ("img_size", "patch_size", "in_chans")
                 if overrides.get(k) is not None}
        the_map["config"] = {**the_map["config"], **sizes}
        sd = apply_rename_map(state_dict, the_map)
    else:
        sd = _RENAMERS[fmt](state_dict)
    if fmt == "hf" and not any(k.startswith("head.") for k in sd):
        raise ValueError("The Hugging Face state dict has no classifier (classifier.weight): a "
                         "ViTModel without a classification head cannot be imported; polyvit "
                         "needs a ViTForImageClassification.")

    if config is not None:
        if not isinstance(config, ViTConfig):
            raise TypeError(f"config must be a ViTConfig, got {type(config).__name__}.")
        changes = dict(overrides)
        if num_heads is not None:
            changes["num_heads"] = num_heads
        if changes:
            config = config.replace(**changes)
        return _Prepared(sd, config, fmt, notes)

    fields: Dict[str, Any] = {"ln_eps": DEFAULT_LN_EPS.get(fmt, 1e-5)}
    if fmt in ("torchvision", "hf"):
        # these architectures always have the final norm (torchvision's encoder.ln, HF's
        # layernorm), and torchvision's attention always has its in_proj bias: a checkpoint
        # without them is incomplete, not a different model
        fields["final_norm"] = True
        if fmt == "torchvision":
            fields["qkv_bias"] = True
    heads_to_check: List[Tuple[Any, str]] = []
    if the_map is not None:
        ext = _translate_config(the_map["config"], "the rename map's config")
        fields.update(ext.fields)
        notes += ext.notes
        heads_to_check.append((ext.head, "the rename map's config"))
    if metadata_config is not None:
        ext = _translate_config(*metadata_config)
        fields.update(ext.fields)
        notes += ext.notes
        heads_to_check.append((ext.head, metadata_config[1]))
    if hf_config is not None:
        fields.update(_translate_hf_config(hf_config).fields)
    fields.update(overrides)
    if num_heads is not None:
        fields["num_heads"] = num_heads
    config = infer_config(sd, **fields)
    for head, source in heads_to_check:
        _check_head(head, config, source)
    if the_map is not None and the_map.get("head_norm") == "final_norm" and \
            config.global_pool != "token":
        raise ValueError("The rename map says the head's LayerNorm is the final norm, which is "
                         "only the same computation when the class token is pooled "
                         "(global_pool='token'); with average pooling it is an fc_norm "
                         "(\"head_norm\": \"fc_norm\").")
    return _Prepared(sd, config, fmt, notes)


def from_state_dict(state_dict: Mapping[str, Any], config: Optional[ViTConfig] = None,
                    format: str = "auto", max_batch: int = 64, num_heads: Optional[int] = None,
                    *, rename_map: Any = None, hf_config: Any = None, **config_overrides: Any):
    """Build a model from a timm / polyvit / torchvision / Hugging Face / plain-PyTorch state
    dict, or anybody's with a rename map.

    The layout is detected (or given as ``format``: ``"timm"``, ``"polyvit"``,
    ``"torchvision"``, ``"hf"``, ``"torch_mha"`` or ``"map"`` with ``rename_map``), the names
    are converted to timm's, and, when ``config`` is not given, a config is inferred from the
    shapes (:func:`infer_config`), from the rename map's ``config``, from ``hf_config`` (a
    Hugging Face ``config.json``, as a dict or a path: ``num_attention_heads``,
    ``layer_norm_eps``, ``hidden_act`` ...) and from ``num_heads`` and ``config_overrides``
    (``ln_eps``, ``gelu``, ``global_pool``, ``mean``/``std`` ...), later sources winning.
    ``ln_eps`` defaults to the layout's own: 1e-6 for timm/torchvision, 1e-12 for Hugging Face,
    1e-5 (PyTorch's nn.LayerNorm) for rename maps. The tensors are then loaded strictly.
    """
    prep = _prepare(state_dict, config, format, num_heads, rename_map, hf_config, None,
                    dict(config_overrides))
    model = _model_class()(prep.config, max_batch=max_batch, seed=None)
    load_state_dict(model, prep.state_dict, strict=True, source=f"the {prep.format} state dict")
    return model


def _parse_metadata_config(metadata: Mapping[str, str], path: str) -> Optional[Tuple[Any, str]]:
    raw = metadata.get("config")
    if raw is None:
        return None
    try:
        d = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"The config in the metadata of {path} is not valid JSON ({e}).") from None
    return d, f"the config in the metadata of {path}"


def _import_file(path: PathLike, config: Optional[ViTConfig], format: str, max_batch: int,
                 num_heads: Optional[int], rename_map: Any, hf_config: Any,
                 overrides: Dict[str, Any]):
    path_str = os.fspath(path)
    sd, metadata = read_state_dict(path_str)
    if config is None and "polyvit_config" in metadata:
        try:
            config = ViTConfig.from_json(metadata["polyvit_config"])
        except (ValueError, TypeError) as e:
            raise ValueError(f"The polyvit config stored in {path_str} is invalid: {e}") from None
    meta_cfg = None if config is not None else _parse_metadata_config(metadata, path_str)
    try:
        prep = _prepare(sd, config, format, num_heads, rename_map, hf_config, meta_cfg,
                        dict(overrides))
        model = _model_class()(prep.config, max_batch=max_batch, seed=None)
        load_state_dict(model, prep.state_dict, strict=True, source=f"the {prep.format} state dict")
    except ValueError as e:
        raise ValueError(f"Could not import {path_str}: {e}") from e
    return model, prep, metadata


def import_weights(path: PathLike, config: Optional[ViTConfig] = None, format: str = "auto",
                   max_batch: int = 64, num_heads: Optional[int] = None, *,
                   rename_map: Any = None, hf_config: Any = None, **config_overrides: Any):
    """:func:`read_state_dict` then :func:`from_state_dict`.

    A polyvit file's stored config (``polyvit_config``) is used when ``config`` is not given.
    A safetensors file converted by someone else may carry a ``config`` JSON in its metadata
    instead: its keys are translated (``layer_norm_eps`` -> ``ln_eps``, ``image_size`` ->
    ``img_size``, ``hidden_act`` -> ``gelu``, ...); keys describing structure must match
    polyvit's (``class_token`` true, ``pre_norm`` true, ``global_pool`` "token" or "avg", no
    register tokens or layer scale ...); a ``head`` description must be ``"linear"`` or what
    polyvit computes (e.g. "linear on the final-normed class token"); dropout/init settings and
    informational keys are ignored; any other key is refused, listed. Caller arguments win over
    the metadata; shape-derived values must agree with the tensors.
    """
    model, _, _ = _import_file(path, config, format, max_batch, num_heads, rename_map, hf_config,
                               config_overrides)
    return model


def _convert_file(src: PathLike, out: PathLike, config: Optional[ViTConfig], format: str,
                  num_heads: Optional[int], rename_map: Any, hf_config: Any,
                  overrides: Dict[str, Any]):
    model, prep, metadata = _import_file(src, config, format, 1, num_heads, rename_map,
                                         hf_config, overrides)
    meta = {"converted_from": os.path.basename(os.fspath(src)), "source_format": prep.format}
    if metadata:
        meta["source_metadata"] = json.dumps(metadata, sort_keys=True)
    save(model, out, metadata=meta)
    return model, prep


def convert(src: PathLike, out: PathLike, *, config: Optional[ViTConfig] = None,
            format: str = "auto", num_heads: Optional[int] = None, rename_map: Any = None,
            hf_config: Any = None, **config_overrides: Any):
    """Import the weights file ``src`` (as :func:`import_weights`) and write them as a polyvit
    safetensors file at ``out`` (atomically, see :func:`save`); returns the model.

    The new file's metadata records where it came from: ``converted_from`` (the file name),
    ``source_format`` (the layout it was read as) and ``source_metadata`` (the source file's
    own metadata, as JSON, when it had any).
    """
    model, _ = _convert_file(src, out, config, format, num_heads, rename_map, hf_config,
                             config_overrides)
    return model
