"""Configs written by others: a ``config`` in a file's metadata or a rename map
(:func:`_translate_config`) and a Hugging Face ``config.json`` (:func:`_translate_hf_config`),
translated to :class:`~polyvit.config.ViTConfig` fields or refused."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, NamedTuple, Optional

from ..config import ViTConfig
from ._common import _check_file


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
