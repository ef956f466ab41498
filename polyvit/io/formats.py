"""Layouts of other code bases: the formats :func:`~polyvit.io.from_state_dict` understands,
:func:`detect_format`, the renamers :func:`from_timm`, :func:`from_torchvision` and
:func:`from_hf`, and the architecture features refused in every layout."""
from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np

from ._common import _check_mapping, _listing, _strip_common_prefixes, _to_numpy


#: Layouts :func:`from_state_dict` understands (``"polyvit"`` is timm's names plus poly
#: activation coefficients; ``"torch_mha"`` is the built-in rename map for plain PyTorch ViTs;
#: ``"map"``, with ``rename_map=``, is anybody's layout).
FORMATS = ("timm", "polyvit", "torchvision", "hf", "torch_mha", "vit_pytorch", "map")

#: LayerNorm epsilon each layout's models are built with when nothing says otherwise
#: (rename maps: PyTorch's nn.LayerNorm default).
DEFAULT_LN_EPS = {"timm": 1e-6, "polyvit": 1e-6, "torchvision": 1e-6, "hf": 1e-12,
                  "torch_mha": 1e-5, "vit_pytorch": 1e-5, "map": 1e-5}


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
