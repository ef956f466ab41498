"""Configs from shapes: :func:`infer_config` reads a :class:`~polyvit.config.ViTConfig` off
the tensor shapes of a timm-named state dict and refuses architectures polyvit cannot compute."""
from __future__ import annotations

import math
import re
import warnings
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ..config import PRESETS, ViTConfig
from ._common import _check_mapping, _listing, _shape_str


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
