"""A polyvit model as a JAX function, ready for SecretFlow SPU.

``export(model)`` returns an :class:`Exported`: ``fn(params, x)`` computes the same logits as the
C engine's forward (float32 JAX vs the engine: about 1e-6 relative), written the way MPC wants it:

- GELU in the erf form ``0.5*x*(1 + erf(x/sqrt(2)))`` (SPU: ~750 B/element) rather than
  ``jax.nn.gelu`` (~1950 B); the tanh form when the model uses it.
- the quadratic in Horner form ``x*(A*x + B) + C`` with the model's scale folded in
  (A = s*a, B = s*b, C = s*c): one truncation fewer than ``A*x*x + B*x + C``.
- free algebra done on the host, once (``fold=True``): each LayerNorm's affine (gamma, beta)
  folded into the linear layer that reads it, and the attention scale 1/sqrt(head_dim) folded
  into the query weights; under MPC each saves a multiplication and a truncation per element.
- the image normalisation ``(x/255 - mean)/std`` is the client's own plaintext step
  (``Exported.preprocess``), done before its images are secret-shared.

Every operation goes through one recorder, so the same code gives the whole function and the list
of its operations with their shapes (``Exported.ops``): SPU profiles each operation at its exact
shape, which is how costs are attributed per block and per op kind.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

__all__ = ["export", "Exported", "OpRecord", "KINDS"]

#: op kinds of the cost breakdown
KINDS = ("matmul", "softmax", "layernorm", "activation")


def _jax():
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("polyvit.mpc.export needs JAX: pip install \"polyvit[mpc]\" "
                          "(Python 3.10-3.11; it pins spu 0.9.5, jax 0.4.34 and numpy<2)") from e
    return jax, jnp


@dataclasses.dataclass
class OpRecord:
    """One operation of the exported forward: ``fn(*args)`` with ``args`` the shapes of its
    inputs; ``param_args`` says which inputs are model parameters (the rest are activations,
    always secret under MPC)."""

    name: str
    kind: str
    block: Optional[int]
    fn: Callable
    shapes: Tuple[Tuple[int, ...], ...]
    param_args: Tuple[bool, ...]
    variant: str = ""   # distinguishes ops of one kind whose functions differ (gelu vs poly)

    def key(self, weights: str) -> Tuple:
        """Ops with equal keys cost the same under SPU."""
        vis = tuple("public" if (p and weights == "public") else "secret" for p in self.param_args)
        return (self.kind, self.variant, self.shapes, vis)


# ---- the primitives (pure functions of arrays) ------------------------------------------------

def _linear(x, w, b=None):
    y = x @ w
    return y if b is None else y + b


def _normalize(x, eps):
    """LayerNorm without its affine (folded into the next linear layer)."""
    jax, jnp = _jax()
    mu = jnp.mean(x, axis=-1, keepdims=True)
    d = x - mu
    var = jnp.mean(d * d, axis=-1, keepdims=True)
    return d * jax.lax.rsqrt(var + eps)


def _layernorm(x, w, b, eps):
    return _normalize(x, eps) * w + b


def _softmax(s):
    jax, _ = _jax()
    return jax.nn.softmax(s, axis=-1)


def _gelu_erf(x):
    jax, _ = _jax()
    return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


def _gelu_tanh(x):
    _, jnp = _jax()
    k0, k1 = math.sqrt(2.0 / math.pi), 0.044715
    return 0.5 * x * (1.0 + jnp.tanh(k0 * (x + k1 * (x * x * x))))


def _poly_horner(x, A, B, C):
    return x * (A * x + B) + C


def _matmul(a, b):
    return a @ b


def _matmul_t(a, b):
    _, jnp = _jax()
    return a @ jnp.swapaxes(b, -1, -2)


# ---- the recorder -----------------------------------------------------------------------------

class _Runner:
    """Calls each op; in record mode also notes its name, kind, block and input shapes."""

    def __init__(self, params: Dict[str, Any], record: bool):
        self.params = params
        self.record = record
        self.ops: List[OpRecord] = []

    def __call__(self, name, kind, block, fn, *args, variant=""):
        vals, is_param = [], []
        for a in args:
            if isinstance(a, str):          # a parameter, by name
                vals.append(self.params[a])
                is_param.append(True)
            else:
                vals.append(a)
                is_param.append(False)
        if self.record:
            self.ops.append(OpRecord(name, kind, block, fn, tuple(tuple(v.shape) for v in vals),
                                     tuple(is_param), variant))
        return fn(*vals)


# ---- folding the model's parameters -----------------------------------------------------------

def _fold(model, fold: bool) -> Dict[str, np.ndarray]:
    """The exported parameters (float32): linear weights transposed to (in, out); LayerNorm
    affines folded into the next linear layer and the attention scale into the queries when
    ``fold``; poly coefficients as Horner's (A, B, C)."""
    cfg = model.config
    sd = {k: np.asarray(v, np.float64) for k, v in model.state_dict().items()}
    D, nh = cfg.embed_dim, cfg.num_heads
    scale = (D // nh) ** -0.5
    out: Dict[str, np.ndarray] = {}

    def lin(dst, w, b, ln=None, col_scale=None):
        W = w.T.copy()                     # (in, out)
        bias = b.copy() if b is not None else np.zeros(W.shape[1])
        if col_scale is not None:
            W *= col_scale
            bias *= col_scale
        if ln is not None and fold:
            g, beta = ln
            bias = bias + beta @ W
            W = g[:, None] * W
        out[dst + ".w"] = W
        out[dst + ".b"] = bias

    C, p = cfg.in_chans, cfg.patch_size
    out["patch.w"] = sd["patch_embed.proj.weight"].reshape(D, C * p * p).T.copy()
    out["patch.b"] = sd["patch_embed.proj.bias"]
    out["cls"] = sd["cls_token"].reshape(1, 1, D)
    out["pos"] = sd["pos_embed"]
    for i in range(cfg.depth):
        pre = f"blocks.{i}."
        n1 = (sd[pre + "norm1.weight"], sd[pre + "norm1.bias"])
        n2 = (sd[pre + "norm2.weight"], sd[pre + "norm2.bias"])
        qs = np.ones(3 * D)
        if fold:
            qs[:D] = scale
        qkv_b = sd.get(pre + "attn.qkv.bias") if cfg.qkv_bias else None
        lin(pre + "qkv", sd[pre + "attn.qkv.weight"], qkv_b, n1, qs)
        lin(pre + "proj", sd[pre + "attn.proj.weight"], sd[pre + "attn.proj.bias"])
        lin(pre + "fc1", sd[pre + "mlp.fc1.weight"], sd[pre + "mlp.fc1.bias"], n2)
        lin(pre + "fc2", sd[pre + "mlp.fc2.weight"], sd[pre + "mlp.fc2.bias"])
        if not fold:
            out[pre + "norm1.w"], out[pre + "norm1.b"] = n1
            out[pre + "norm2.w"], out[pre + "norm2.b"] = n2
        if cfg.act[i] == "poly":
            a, b, c, s = (sd[pre + f"mlp.act.{k}"].reshape(-1) for k in "abcs")
            out[pre + "act.A"], out[pre + "act.B"], out[pre + "act.C"] = s * a, s * b, s * c
    head_ln = None
    if cfg.fc_norm:
        head_ln = (sd["fc_norm.weight"], sd["fc_norm.bias"])
    lin("head", sd["head.weight"], sd["head.bias"], head_ln)
    if cfg.final_norm:
        out["norm.w"], out["norm.b"] = sd["norm.weight"], sd["norm.bias"]
        if fold and not cfg.fc_norm:
            # fold the final norm's affine into the head (pooling is linear, so it commutes)
            g, beta = out.pop("norm.w"), out.pop("norm.b")
            out["head.b"] = out["head.b"] + beta @ out["head.w"]
            out["head.w"] = g[:, None] * out["head.w"]
    if cfg.fc_norm and not fold:
        out["fc_norm.w"], out["fc_norm.b"] = head_ln
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


# ---- the forward --------------------------------------------------------------------------------

def _forward(cfg, params, x, record: bool = False):
    """Logits of float NCHW images ``x``; with ``record`` also the list of ops."""
    _, jnp = _jax()
    run = _Runner(params, record)
    B = x.shape[0]
    C, p, D, nh = cfg.in_chans, cfg.patch_size, cfg.embed_dim, cfg.num_heads
    g = cfg.img_size // p
    hd = D // nh
    eps = cfg.ln_eps
    folded = "blocks.0.norm1.w" not in params

    def norm(name, block, h, prefix):
        if folded:
            return run(name, "layernorm", block, lambda v: _normalize(v, eps), h)
        return run(name, "layernorm", block, lambda v, w, b: _layernorm(v, w, b, eps), h,
                   prefix + ".w", prefix + ".b", variant="affine")

    # patches in (C, p, p) order, as the convolution weight is laid out
    patches = x.reshape(B, C, g, p, g, p).transpose(0, 2, 4, 1, 3, 5).reshape(B, g * g, C * p * p)
    tok = run("patch_embed", "matmul", None, _linear, patches, "patch.w", "patch.b")
    cls = jnp.broadcast_to(params["cls"], (B, 1, D))
    h = jnp.concatenate([cls, tok], axis=1) + params["pos"]
    T = h.shape[1]
    for i in range(cfg.depth):
        pre = f"blocks.{i}."
        a = norm(pre + "norm1", i, h, pre + "norm1")
        qkv = run(pre + "attn.qkv", "matmul", i, _linear, a, pre + "qkv.w", pre + "qkv.b")
        qkv = qkv.reshape(B, T, 3, nh, hd).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if not folded:
            q = q * (hd ** -0.5)
        s = run(pre + "attn.scores", "matmul", i, _matmul_t, q, k)
        pr = run(pre + "attn.softmax", "softmax", i, _softmax, s)
        o = run(pre + "attn.av", "matmul", i, _matmul, pr, v)
        o = o.transpose(0, 2, 1, 3).reshape(B, T, D)
        h = h + run(pre + "attn.proj", "matmul", i, _linear, o, pre + "proj.w", pre + "proj.b")
        a = norm(pre + "norm2", i, h, pre + "norm2")
        u = run(pre + "mlp.fc1", "matmul", i, _linear, a, pre + "fc1.w", pre + "fc1.b")
        if cfg.act[i] == "poly":
            y = run(pre + "mlp.act", "activation", i, _poly_horner, u, pre + "act.A",
                    pre + "act.B", pre + "act.C", variant="poly")
        elif cfg.gelu == "tanh":
            y = run(pre + "mlp.act", "activation", i, _gelu_tanh, u, variant="gelu-tanh")
        else:
            y = run(pre + "mlp.act", "activation", i, _gelu_erf, u, variant="gelu-erf")
        h = h + run(pre + "mlp.fc2", "matmul", i, _linear, y, pre + "fc2.w", pre + "fc2.b")
    if cfg.global_pool == "token":
        h = h[:, 0]
        if cfg.final_norm:
            h = norm("norm", None, h, "norm")
    else:
        if cfg.final_norm:
            h = norm("norm", None, h, "norm")
        h = jnp.mean(h[:, 1:], axis=1)
    if cfg.fc_norm:
        h = norm("fc_norm", None, h, "fc_norm")
    logits = run("head", "matmul", None, _linear, h, "head.w", "head.b")
    return (logits, run.ops) if record else logits


@dataclasses.dataclass
class Exported:
    """The exported model: ``fn(params, x)`` with ``x`` float32 NCHW model input (see
    :meth:`preprocess`) and ``params`` a dict of float32 arrays."""

    config: Any
    params: Dict[str, np.ndarray]
    fold: bool

    def fn(self, params, x):
        return _forward(self.config, params, x)

    def __call__(self, x):
        """Logits of images (uint8 pixels or float NCHW model input), computed by JAX."""
        _, jnp = _jax()
        x = self.preprocess(x)
        return np.asarray(self.fn({k: jnp.asarray(v) for k, v in self.params.items()},
                                  jnp.asarray(x)))

    def preprocess(self, images) -> np.ndarray:
        """The client's plaintext step: uint8 pixels -> normalised float32 NCHW (float input is
        taken as model input already)."""
        a = np.asarray(images)
        c = self.config
        if a.dtype == np.uint8:
            if a.ndim == 4 and a.shape[1:] == (c.img_size, c.img_size, c.in_chans):
                a = a.transpose(0, 3, 1, 2)
            if a.ndim != 4 or a.shape[1:] != (c.in_chans, c.img_size, c.img_size):
                raise ValueError(f"uint8 images must be (B, {c.in_chans}, {c.img_size}, "
                                 f"{c.img_size}) or (B, {c.img_size}, {c.img_size}, "
                                 f"{c.in_chans}), got {a.shape}")
            x = a.astype(np.float32) / np.float32(255.0)
            if c.mean is not None:
                x = (x - np.asarray(c.mean, np.float32).reshape(1, -1, 1, 1)) / \
                    np.asarray(c.std, np.float32).reshape(1, -1, 1, 1)
            return np.ascontiguousarray(x, np.float32)
        if a.dtype.kind != "f":
            raise TypeError(f"images must be uint8 pixels or float32 model input, got {a.dtype}")
        if a.ndim != 4 or a.shape[1:] != (c.in_chans, c.img_size, c.img_size):
            raise ValueError(f"float images must be NCHW (B, {c.in_chans}, {c.img_size}, "
                             f"{c.img_size}), got {a.shape}")
        return np.ascontiguousarray(a, np.float32)

    def ops(self, batch: int = 1) -> List[OpRecord]:
        """The forward's operations, in order, with their shapes for ``batch`` images."""
        jax, jnp = _jax()
        c = self.config
        x = jax.ShapeDtypeStruct((batch, c.in_chans, c.img_size, c.img_size), jnp.float32)
        box: List[List[OpRecord]] = []

        def f(params, x):
            logits, ops = _forward(c, params, x, record=True)
            box.append(ops)
            return logits

        shapes = {k: jax.ShapeDtypeStruct(v.shape, jnp.float32) for k, v in self.params.items()}
        jax.eval_shape(f, shapes, x)
        return box[0]


def export(model, fold: bool = True) -> Exported:
    """The model as a JAX function plus parameters (see the module docstring).

    ``fold=False`` keeps LayerNorm affines, the attention scale and the ordering of the C
    engine's forward literally (more MPC work; useful to check the folding)."""
    from ..model import ViT

    if not isinstance(model, ViT):
        raise TypeError(f"export takes a polyvit.ViT, got {type(model).__name__}")
    cfg = model.config
    if cfg.img_size % cfg.patch_size:
        raise ValueError("image size must be a multiple of the patch size")
    for i, kind in enumerate(cfg.act):
        if kind not in ("gelu", "poly"):
            raise ValueError(f"block {i}: activation {kind!r} cannot be exported")
    _jax()
    return Exported(config=cfg, params=_fold(model, fold), fold=fold)
