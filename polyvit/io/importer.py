"""One-stop import: rename, gather the config from every source and load
(:func:`from_state_dict`, :func:`import_weights`), and :func:`convert` a weights file to a
polyvit file (``python -m polyvit convert``)."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

from ..config import ViTConfig
from . import _common
from ._common import PathLike, _check_mapping
from .configs import _check_head, _translate_config, _translate_hf_config
from .files import read_state_dict, save
from .formats import _RENAMERS, DEFAULT_LN_EPS, FORMATS, detect_format
from .infer import infer_config
from .maps import BUILTIN_MAPS, apply_rename_map, load_rename_map
from .state import load_state_dict


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
    model = _common._model_class()(prep.config, max_batch=max_batch, seed=None)
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
        model = _common._model_class()(prep.config, max_batch=max_batch, seed=None)
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
