"""Rename maps: declarative conversions for anybody's own ViT code (:func:`load_rename_map`,
:func:`apply_rename_map`; the built-in maps are in :mod:`polyvit.io.builtin_maps`)."""
from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from ._common import (_check_file, _check_mapping, _listing, _shape_str, _strip_common_prefixes,
                      _to_numpy)
from .builtin_maps import BUILTIN_MAPS
from .formats import _ARCH_REFUSE


#: Keys a rename map may hold.
_MAP_KEYS = ("rules", "drop", "refuse", "transpose", "config", "extends", "head_norm",
             "patch_linear", "description")

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
