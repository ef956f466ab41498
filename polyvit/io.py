"""Reading and writing model weights.

polyvit's own files are `safetensors <https://github.com/huggingface/safetensors>`_ files
holding every parameter under its timm name, with the model's :class:`~polyvit.config.ViTConfig`
(as JSON) in the file's metadata, so :func:`load` needs nothing but the path::

    polyvit.io.save(model, "vit.safetensors")
    model = polyvit.io.load("vit.safetensors")

Weights from other code bases are brought in by renaming them to timm's names
(:func:`from_timm`, :func:`from_torchvision`, :func:`from_hf`), inferring a config from the
tensor shapes (:func:`infer_config`) and loading them (:func:`from_state_dict`,
:func:`import_weights`)::

    model = polyvit.io.import_weights("vit_b_16.pth")          # torchvision checkpoint
    model = polyvit.io.import_weights("model.safetensors")     # Hugging Face ViT

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
]

PathLike = Union[str, "os.PathLike[str]"]

#: Layouts :func:`from_state_dict` understands (``"polyvit"`` is timm's names plus poly
#: activation coefficients).
FORMATS = ("timm", "polyvit", "torchvision", "hf")

#: LayerNorm epsilon each layout's models are built with.
DEFAULT_LN_EPS = {"timm": 1e-6, "polyvit": 1e-6, "torchvision": 1e-6, "hf": 1e-12}

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


def detect_format(state_dict: Mapping[str, Any]) -> str:
    """``"timm"``, ``"polyvit"`` (timm names plus poly coefficients), ``"torchvision"`` or
    ``"hf"``, from the names in ``state_dict`` (``module.``/``model.`` prefixes are ignored)."""
    _check_mapping(state_dict)
    if not state_dict:
        raise ValueError("Cannot detect the layout of an empty state dict.")
    keys = list(_strip_common_prefixes(state_dict).values())
    counts = {fmt: sum(1 for k in keys if rx.search(k)) for fmt, rx in _MARKERS.items()}
    found = [fmt for fmt, n in counts.items() if n]
    if not found:
        raise ValueError("Cannot tell the layout of the state dict from its names (e.g. "
                         f"{_listing(sorted(keys), 5)}); expected timm, torchvision or "
                         "Hugging Face ViT names.")
    if len(found) > 1:
        desc = ", ".join(f"{counts[f]} {f}" for f in found)
        raise ValueError(f"The state dict mixes names of several layouts ({desc}); pass "
                         "format= explicitly or clean it up first.")
    fmt = found[0]
    if fmt == "timm" and any(_POLY_KEY.match(k) for k in keys):
        return "polyvit"
    return fmt


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
        refused = next((why for rx, why in refuse if rx.search(key)), None)
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


def _rx(s: str) -> "re.Pattern[str]":
    return re.compile(s)


_TIMM_REFUSE = [
    (_rx(r"^fc_norm\."), "a norm after global average pooling (fc_norm); polyvit pools the "
                         "class token"),
    (_rx(r"^norm_pre\."), "a LayerNorm before the blocks (norm_pre, as in CLIP ViTs)"),
    (_rx(r"^reg_token$"), "register tokens (reg_token)"),
    (_rx(r"^(dist_token$|head_dist\.)"), "a distillation token and head (DeiT distilled)"),
    (_rx(r"\.attn\.[qk]_norm\."), "query/key normalisation (attn.q_norm/k_norm)"),
    (_rx(r"\.attn\.norm\."), "a norm inside attention (attn.norm)"),
    (_rx(r"\.mlp\.norm\."), "a norm inside the MLP (mlp.norm)"),
    (_rx(r"\.mlp\.fc1_[gx]\."), "a gated MLP (fc1_g/fc1_x)"),
    (_rx(r"\.ls[12]\.(gamma|scale)$"), "layer scale (ls1/ls2)"),
    (_rx(r"^(pre_logits\.|head\.fc\.)"), "a pre-logits layer"),
    (_rx(r"^attn_pool\."), "attention pooling (attn_pool)"),
    (_rx(r"^patch_embed\.norm\."), "a norm after the patch embedding"),
    (_rx(r"^patch_embed\.backbone\."), "a CNN stem (hybrid ViT)"),
]
_TIMM_DROP = [_rx(r"^mask_token$"), _rx(r"\.num_batches_tracked$")]


def from_timm(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """timm ``VisionTransformer`` names are polyvit's: strip ``module.``/``model.`` prefixes,
    drop inert entries (``mask_token``), and refuse features polyvit cannot express
    (``fc_norm``, ``norm_pre``, ``reg_token``, layer scale, q/k norm, ...) with a ValueError
    naming them. Returns a new dict."""
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
    as is. A ``heads.pre_logits`` layer cannot be expressed and is refused. Returns a new dict.
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
# configs from shapes
# ----------------------------------------------------------------------------------------------
def _known_heads() -> Dict[int, int]:
    # widths of timm's presets and polyvit's; ViT-H/g/G use 16 heads of width 80/88/104
    table = {1024: 16, 1280: 16, 1408: 16, 1664: 16}
    for p in PRESETS.values():
        table.setdefault(p["embed_dim"], p["num_heads"])
    return table


def _mlp_ratio_for(hidden: int, dim: int) -> float:
    """A float ratio r with ``int(dim * r) == hidden`` (what ViTConfig.mlp_hidden computes)."""
    r = hidden / dim
    for _ in range(8):
        if int(dim * r) == hidden:
            return r
        r = float(np.nextafter(r, math.inf))
    raise ValueError(f"Cannot express an MLP width of {hidden} for embed_dim {dim} as a ratio.")


def infer_config(state_dict: Mapping[str, Any], num_heads: Optional[int] = None,
                 **overrides: Any) -> ViTConfig:
    """A :class:`ViTConfig` matching the shapes of a timm-named state dict.

    embed_dim comes from ``cls_token``, patch_size and in_chans from the patch embedding,
    depth from the blocks, mlp_ratio from ``fc1``, num_classes from ``head`` and img_size from
    the length of ``pos_embed`` (which must be a square grid plus the class token). Blocks with
    ``mlp.act.*`` coefficients are poly blocks, per-channel when those have the MLP width.
    Heads do not show in any shape: pass ``num_heads``, or the usual count for the width is used
    (timm's and polyvit's presets, else ``embed_dim // 64``). ``overrides`` (e.g. ``ln_eps``)
    replace inferred fields.
    """
    _check_mapping(state_dict)
    shapes = {k: tuple(np.shape(v)) if not hasattr(v, "shape") else tuple(v.shape)
              for k, v in state_dict.items()}

    def need(name: str, ndim: int) -> Tuple[int, ...]:
        if name not in shapes:
            raise ValueError(f"Cannot infer a config: the state dict has no {name!r} tensor "
                             "(polyvit models always have one).")
        s = shapes[name]
        if len(s) != ndim:
            raise ValueError(f"Cannot infer a config: {name} has shape {_shape_str(s)}, expected "
                             f"{ndim} dimensions.")
        return s

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

    if num_heads is None:
        num_heads = overrides.pop("num_heads", None)
    else:
        overrides.pop("num_heads", None)
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
                  depth=depth, num_heads=num_heads, mlp_ratio=_mlp_ratio_for(H, C),
                  num_classes=int(head[0]), act=act, poly_per_channel=per_channel)
    fields.update(overrides)
    return ViTConfig.from_dict(fields)


# ----------------------------------------------------------------------------------------------
# one-stop import
# ----------------------------------------------------------------------------------------------
def from_state_dict(state_dict: Mapping[str, Any], config: Optional[ViTConfig] = None,
                    format: str = "auto", max_batch: int = 64, num_heads: Optional[int] = None,
                    **config_overrides: Any):
    """Build a model from a timm / polyvit / torchvision / Hugging Face state dict.

    The layout is detected (or given as ``format``), the names are converted to timm's, a config
    is inferred from the shapes when ``config`` is not given (``num_heads`` and
    ``config_overrides`` are passed on; ``ln_eps`` defaults to the layout's own: 1e-6 for
    timm/torchvision, 1e-12 for Hugging Face), and the tensors are loaded strictly.
    """
    _check_mapping(state_dict)
    fmt = detect_format(state_dict) if format == "auto" else format
    if fmt not in _RENAMERS:
        raise ValueError(f"Unknown format {format!r}; choose 'auto' or one of {', '.join(FORMATS)}.")
    sd = _RENAMERS[fmt](state_dict)
    if config is None:
        config_overrides.setdefault("ln_eps", DEFAULT_LN_EPS[fmt])
        config = infer_config(sd, num_heads=num_heads, **config_overrides)
    else:
        if not isinstance(config, ViTConfig):
            raise TypeError(f"config must be a ViTConfig, got {type(config).__name__}.")
        changes = dict(config_overrides)
        if num_heads is not None:
            changes["num_heads"] = num_heads
        if changes:
            config = config.replace(**changes)
    model = _model_class()(config, max_batch=max_batch, seed=None)
    load_state_dict(model, sd, strict=True, source=f"the {fmt} state dict")
    return model


def import_weights(path: PathLike, config: Optional[ViTConfig] = None, format: str = "auto",
                   max_batch: int = 64, num_heads: Optional[int] = None,
                   **config_overrides: Any):
    """:func:`read_state_dict` then :func:`from_state_dict`. A polyvit file's stored config is
    used when ``config`` is not given."""
    path_str = os.fspath(path)
    sd, metadata = read_state_dict(path_str)
    if config is None and "polyvit_config" in metadata:
        try:
            config = ViTConfig.from_json(metadata["polyvit_config"])
        except (ValueError, TypeError) as e:
            raise ValueError(f"The polyvit config stored in {path_str} is invalid: {e}") from None
    try:
        return from_state_dict(sd, config=config, format=format, max_batch=max_batch,
                               num_heads=num_heads, **config_overrides)
    except ValueError as e:
        raise ValueError(f"Could not import {path_str}: {e}") from e
