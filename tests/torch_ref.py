"""Reference Vision Transformer in plain PyTorch: the oracle for polyvit's tests and benchmarks.

The module tree mirrors timm's ``VisionTransformer`` (pre-norm blocks, class token, qkv bias,
head on the class token) so that ``RefViT.state_dict()`` names are exactly polyvit's parameter
names (``polyvit.ViTConfig.param_specs()``), including the polynomial activation's
coefficients ``blocks.{i}.mlp.act.{a,b,c,s}``.

Only ``torch`` and ``numpy`` are imported here; a config is any object with ViTConfig's
attributes (``img_size``, ``patch_size``, ... ``act``, ``poly_per_channel``, ``mlp_hidden``) so
this file never imports polyvit and can be used by scripts that compare against it.

Contents:
  * ``Poly``, ``Attention``, ``Mlp``, ``Block``, ``RefViT``: the model (float32 or float64).
  * ``from_polyvit(model_or_(config, params), dtype)``: build a RefViT holding the same weights.
  * ``params_numpy`` / ``grads_numpy``: read weights / gradients back as numpy dicts by name.
  * ``cross_entropy``, ``mse``, ``kl_div``, ``combined_loss``: polyvit's losses written with
    torch.nn.functional; ``loss_and_grad``: value and d(loss)/d(logits) in float64 numpy.
  * ``adamw_param_groups``: torch.optim.AdamW param groups following polyvit's group rules.
  * ``gelu_quadratic_fit``: least-squares quadratic fit of exact GELU (for building poly models).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "Poly", "Attention", "Mlp", "Block", "RefViT", "from_polyvit", "params_numpy", "grads_numpy",
    "load_params", "cross_entropy", "mse", "kl_div", "combined_loss", "loss_and_grad",
    "adamw_param_groups", "param_groups_of", "gelu_quadratic_fit", "POLY_COEFFS",
]

POLY_COEFFS = ("a", "b", "c", "s")


# ------------------------------------------------------------------------------------------
# model
# ------------------------------------------------------------------------------------------
class Poly(nn.Module):
    """y = s * (a*x^2 + b*x + c); a, b, c, s have shape (P,) and broadcast over the last dim
    (P == 1: one coefficient set per block; P == hidden width: one per channel)."""

    def __init__(self, width: int, dtype: torch.dtype = torch.float32,
                 a: float = 0.0, b: float = 1.0, c: float = 0.0, s: float = 1.0) -> None:
        super().__init__()
        self.width = int(width)
        for name, v in zip(POLY_COEFFS, (a, b, c, s)):
            setattr(self, name, nn.Parameter(torch.full((self.width,), float(v), dtype=dtype)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.s * (self.a * x * x + self.b * x + self.c)

    def extra_repr(self) -> str:
        return f"width={self.width}"


class Attention(nn.Module):
    """timm's Attention (qkv_bias=True, no qk-norm, no dropout)."""

    def __init__(self, dim: int, num_heads: int, dtype: torch.dtype, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, dtype=dtype)
        self.proj = nn.Linear(dim, dim, bias=True, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        # exactly timm's layout: the 3*C qkv outputs are [q | k | v], each split into heads
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                       # (B, heads, N, hd) each
        attn = (q * self.scale) @ k.transpose(-2, -1)  # softmax(q k^T / sqrt(hd))
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str, poly_width: int,
                 dtype: torch.dtype, gelu: str = "erf") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=True, dtype=dtype)
        if act == "gelu":
            # exact erf form, or torch's tanh approximation
            self.act = nn.GELU(approximate="none" if gelu == "erf" else "tanh")
        elif act == "poly":
            self.act = Poly(poly_width, dtype=dtype)
        else:
            raise ValueError(f"unknown activation {act!r}")
        self.fc2 = nn.Linear(hidden, dim, bias=True, dtype=dtype)
        self.last_fc1: Optional[torch.Tensor] = None  # set when the ViT captures activations

    def forward(self, x: torch.Tensor, capture: bool = False) -> torch.Tensor:
        h = self.fc1(x)
        if capture:
            self.last_fc1 = h
        return self.fc2(self.act(h))


class Block(nn.Module):
    def __init__(self, cfg: Any, i: int, dtype: torch.dtype) -> None:
        super().__init__()
        C, eps = cfg.embed_dim, cfg.ln_eps
        act = cfg.act[i] if cfg.act is not None else "gelu"
        per_channel = bool(cfg.poly_per_channel[i]) if cfg.poly_per_channel is not None else False
        H = getattr(cfg, "mlp_hidden", int(cfg.embed_dim * cfg.mlp_ratio))
        self.norm1 = nn.LayerNorm(C, eps=eps, dtype=dtype)
        self.attn = Attention(C, cfg.num_heads, dtype, qkv_bias=getattr(cfg, "qkv_bias", True))
        self.norm2 = nn.LayerNorm(C, eps=eps, dtype=dtype)
        self.mlp = Mlp(C, H, act, H if per_channel else 1, dtype, gelu=getattr(cfg, "gelu", "erf"))

    def forward(self, x: torch.Tensor, capture: bool = False) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x), capture=capture)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: Any, dtype: torch.dtype) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=cfg.patch_size,
                              stride=cfg.patch_size, bias=True, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, C), patches in row-major order


class RefViT(nn.Module):
    """timm VisionTransformer (class token, global_pool='token', pre-norm, no dropout)."""

    def __init__(self, cfg: Any, dtype: torch.dtype = torch.float32, init: bool = True,
                 seed: int = 0) -> None:
        super().__init__()
        self.config = cfg
        self.dtype = dtype
        C = cfg.embed_dim
        T = (cfg.img_size // cfg.patch_size) ** 2 + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, C, dtype=dtype))
        self.pos_embed = nn.Parameter(torch.zeros(1, T, C, dtype=dtype))
        self.patch_embed = PatchEmbed(cfg, dtype)
        self.blocks = nn.ModuleList(Block(cfg, i, dtype) for i in range(cfg.depth))
        # timm: norm (every token, before pooling) or Identity; pooling by class token or the
        # mean of the patch tokens; fc_norm (after pooling) or Identity
        self.global_pool = getattr(cfg, "global_pool", "token")
        self.norm = (nn.LayerNorm(C, eps=cfg.ln_eps, dtype=dtype)
                     if getattr(cfg, "final_norm", True) else nn.Identity())
        self.fc_norm = (nn.LayerNorm(C, eps=cfg.ln_eps, dtype=dtype)
                        if getattr(cfg, "fc_norm", False) else nn.Identity())
        self.head = nn.Linear(C, cfg.num_classes, bias=True, dtype=dtype)
        if init:
            self.timm_init(seed)

    @torch.no_grad()
    def timm_init(self, seed: int = 0) -> None:
        """timm-like init (trunc-normal 0.02 weights, zero biases, unit norms, class token
        1e-6 normal, GELU-fitted poly coefficients); for standalone (benchmark) use only."""
        g = torch.Generator().manual_seed(seed)

        def tn(t: torch.Tensor, std: float) -> None:
            w = torch.randn(t.shape, generator=g, dtype=torch.float64) * std
            t.copy_(w.clamp(-2 * std, 2 * std))

        a, b, c = gelu_quadratic_fit()
        for name, p in self.named_parameters():
            if name == "cls_token":
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 1e-6)
            elif name == "pos_embed" or name.endswith(".weight") and p.ndim >= 2:
                tn(p, 0.02)
            elif ".norm" in name or name.startswith("norm.") or name.startswith("fc_norm."):
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif ".mlp.act." in name:
                p.fill_(dict(a=a, b=b, c=c, s=1.0)[name.rsplit(".", 1)[1]])
            else:
                p.zero_()

    def forward(self, x: torch.Tensor, capture: bool = False
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, Dict[int, torch.Tensor]]]:
        """Logits (B, num_classes); with ``capture=True`` also {block: fc1 output (B, T, H)}."""
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x, capture=capture)
        x = self.norm(x)
        x = x[:, 1:].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        logits = self.head(self.fc_norm(x))
        if not capture:
            return logits
        acts = {i: blk.mlp.last_fc1 for i, blk in enumerate(self.blocks)}
        for blk in self.blocks:
            blk.mlp.last_fc1 = None
        return logits, acts


# ------------------------------------------------------------------------------------------
# weights in and out
# ------------------------------------------------------------------------------------------
def load_params(ref: RefViT, params: Mapping[str, Any], strict: bool = True) -> RefViT:
    """Copy numpy arrays into ``ref`` by name (shapes must match exactly)."""
    sd = ref.state_dict()
    if strict:
        missing = sorted(set(sd) - set(params))
        extra = sorted(set(params) - set(sd))
        if missing or extra:
            raise KeyError(f"parameter names differ: missing {missing}, unexpected {extra}")
    with torch.no_grad():
        for name, t in sd.items():
            if name not in params:
                continue
            v = np.asarray(params[name])
            if tuple(v.shape) != tuple(t.shape):
                raise ValueError(f"{name}: shape {v.shape} != reference shape {tuple(t.shape)}")
            t.copy_(torch.from_numpy(np.array(v, dtype=np.float64)).to(t.dtype))
    return ref


def from_polyvit(src: Any, dtype: torch.dtype = torch.float32) -> RefViT:
    """A RefViT with the config and weights of ``src``: a polyvit model (``.config``,
    ``.params``) or a ``(config, params_dict)`` pair. Weights are copied (not shared)."""
    if isinstance(src, (tuple, list)):
        cfg, params = src
    else:
        cfg, params = src.config, src.params
    ref = RefViT(cfg, dtype=dtype, init=False)
    if hasattr(cfg, "param_specs"):  # the name/shape layout must be polyvit's, in both ways
        specs = {n: tuple(s) for n, s, _ in cfg.param_specs()}
        mine = {n: tuple(t.shape) for n, t in ref.state_dict().items()}
        if specs != mine:
            raise AssertionError(f"torch_ref layout differs from config.param_specs(): "
                                 f"{sorted(set(specs.items()) ^ set(mine.items()))}")
    return load_params(ref, params)


def params_numpy(ref: nn.Module, dtype: Any = None) -> Dict[str, np.ndarray]:
    return {n: p.detach().cpu().numpy().astype(dtype or p.detach().numpy().dtype, copy=True)
            for n, p in ref.named_parameters()}


def grads_numpy(ref: nn.Module, dtype: Any = None) -> Dict[str, np.ndarray]:
    out = {}
    for n, p in ref.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        out[n] = g.detach().cpu().numpy().astype(dtype or g.detach().numpy().dtype, copy=True)
    return out


# ------------------------------------------------------------------------------------------
# losses (polyvit.losses semantics, written with torch.nn.functional)
# ------------------------------------------------------------------------------------------
def cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean over the batch; ``target`` int64 class indices (B,) or soft probabilities (B, K)."""
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing)


def mse(logits: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(logits, teacher)  # mean over all B*K elements


def kl_div(logits: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    T = float(temperature)
    return F.kl_div(F.log_softmax(logits / T, dim=-1), F.softmax(teacher / T, dim=-1),
                    reduction="batchmean") * T * T


def combined_loss(logits: torch.Tensor, labels: Optional[torch.Tensor] = None,
                  teacher: Optional[torch.Tensor] = None, ce: float = 1.0, mse_w: float = 0.0,
                  kl: float = 0.0, label_smoothing: float = 0.0,
                  temperature: float = 1.0) -> torch.Tensor:
    """``polyvit.Loss(ce, mse, kl, label_smoothing, temperature)``: the weighted sum (terms
    with weight 0 are left out entirely)."""
    total = logits.new_zeros(())
    if ce:
        total = total + ce * cross_entropy(logits, labels, label_smoothing)
    if mse_w:
        total = total + mse_w * mse(logits, teacher)
    if kl:
        total = total + kl * kl_div(logits, teacher, temperature)
    return total


def _t(a: Any, dtype: torch.dtype) -> Optional[torch.Tensor]:
    if a is None:
        return None
    a = np.asarray(a)
    if a.dtype.kind in "iu":
        return torch.from_numpy(a.astype(np.int64))
    return torch.from_numpy(np.array(a, dtype=np.float64)).to(dtype)


def loss_and_grad(logits: Any, labels: Any = None, teacher: Any = None, ce: float = 1.0,
                  mse_w: float = 0.0, kl: float = 0.0, label_smoothing: float = 0.0,
                  temperature: float = 1.0, dtype: torch.dtype = torch.float64
                  ) -> Tuple[float, np.ndarray]:
    """(loss value, d loss / d logits) of ``combined_loss`` on numpy inputs, computed in
    ``dtype`` (float64 by default, i.e. the exact answer for float32 inputs)."""
    z = _t(logits, dtype).requires_grad_(True)
    loss = combined_loss(z, _t(labels, dtype), _t(teacher, dtype), ce, mse_w, kl,
                         label_smoothing, temperature)
    loss.backward()
    return float(loss.detach()), z.grad.numpy().copy()


# ------------------------------------------------------------------------------------------
# optimizer groups (polyvit.AdamW rules)
# ------------------------------------------------------------------------------------------
def param_groups_of(cfg: Any) -> Dict[str, str]:
    """name -> group ("decay", "no_decay", "embed", "poly") from ``cfg.param_specs()``."""
    return {n: g for n, _, g in cfg.param_specs()}


def adamw_param_groups(ref: nn.Module, cfg: Any, lr: float, weight_decay: float,
                       groups: Optional[Mapping[str, Mapping[str, Any]]] = None
                       ) -> List[Dict[str, Any]]:
    """torch.optim param groups equivalent to ``polyvit.AdamW(m, lr, weight_decay=..,
    groups=..)``: "decay" gets ``weight_decay``, the other groups 0, every group ``lr``;
    entries of ``groups`` override per group; ``{"frozen": True}`` leaves a group out."""
    groups = dict(groups or {})
    by_group: Dict[str, List[nn.Parameter]] = {}
    named = dict(ref.named_parameters())
    for n, g in param_groups_of(cfg).items():
        by_group.setdefault(g, []).append(named[n])
    out = []
    for g, ps in by_group.items():
        opts = dict(groups.get(g, {}))
        if opts.pop("frozen", False):
            continue
        out.append(dict(params=ps, lr=float(opts.pop("lr", lr)),
                        weight_decay=float(opts.pop("weight_decay",
                                                    weight_decay if g == "decay" else 0.0)),
                        name=g))
        if opts:
            raise ValueError(f"unsupported options for group {g}: {sorted(opts)}")
    return out


# ------------------------------------------------------------------------------------------
# misc
# ------------------------------------------------------------------------------------------
def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU in numpy float64."""
    x = np.asarray(x, dtype=np.float64)
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def gelu_quadratic_fit(lo: float = -4.0, hi: float = 4.0, n: int = 4001
                       ) -> Tuple[float, float, float]:
    """(a, b, c) of the least-squares quadratic a*x^2 + b*x + c to exact GELU on [lo, hi]."""
    x = np.linspace(lo, hi, n)
    a, b, c = np.polyfit(x, gelu(x), 2)
    return float(a), float(b), float(c)
