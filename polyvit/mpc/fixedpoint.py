"""The whole ViT in MPC fixed-point arithmetic, simulated in plaintext.

Secure computation (SecretFlow SPU: the ring Z_{2^64}, ``f`` fractional bits, 18 by default)
holds a real ``x`` as the ring element ``round(x * 2^f) mod 2^64``. A product of two fixed-point
values has ``2f`` fractional bits and is truncated by ``f`` bits (an arithmetic shift: floor)
after each product; a matmul sums the ``2f``-bit products in the ring and truncates once; overflow
wraps silently. :func:`evaluate` runs a :class:`polyvit.ViT` in exactly this arithmetic (the ring
kernels are ``polyvit._C.fx_*``, C + OpenMP) and measures what it costs in accuracy: top-1,
fidelity to the float model, logit cosine and error, and, per block, the largest ``|x|`` of the
tensors that enter products against the safe bound ``2^(31 - f)``.

What is simulated, op by op (``enc(v) = round(v * 2^f)``, ``trunc`` = arithmetic shift by f):

- input: the float model input (``model.preprocess``), encoded;
- patch embedding: patches (C, p, p order) @ W^T, truncated, + bias; tokens + position;
- LayerNorm: ``mean = trunc(sum(x) * enc(1/D))``, ``d = x - mean``,
  ``var = trunc(sum(trunc(d*d)) * enc(1/D))``, ``rstd = enc(1/sqrt(dec(var) + eps))``,
  ``y = trunc(trunc(d * rstd) * gamma) + beta``;
- attention: ``q' = trunc(q * enc(hd^-0.5))`` (the scale folded into q: one public multiply),
  ``S = trunc(q' @ k^T)``, softmax as ``e = enc(exp(dec(S - max)))``, ``r = enc(1/dec(sum e))``,
  ``P = trunc(e * r)``, then ``trunc(P @ v)``; the projection adds into the residual;
- GELU: ``enc(gelu(dec(u)))`` (erf or tanh form, as the model's config says);
- poly: ``s*(a*u^2 + b*u + c)`` with ``A = s*a, B = s*b, C = s*c`` folded in float and encoded,
  then Horner in the ring: ``t = trunc(A*u) + B``, ``y = trunc(t*u) + C``;
- head: final LayerNorm (only the class token with token pooling), pooling (class token, or
  ``trunc(sum of patch tokens * enc(1/(T-1)))``), ``fc_norm``, head matmul.

The nonlinear kernels (exp, 1/x, 1/sqrt, GELU) are evaluated exactly (in double) on the decoded
fixed-point value and re-encoded: MPC evaluates approximations there; this simulates the ring
arithmetic around them, so what it measures is the cost of fixed point itself.

Truncation here is exact (floor). SPU's probabilistic truncation may add +-1 in the last bit and,
for values near the bound, fail with a probability that grows with ``|x| * 2^(2f) / 2^64``: the
``safe_bound`` check below is that precondition.
"""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
from typing import Any, Dict, List, Mapping, Optional, Union

import numpy as np

from .._lib import _C
from ..progress import Progress

__all__ = ["evaluate", "FixedPointReport", "BlockRanges", "FixedPointOverflowWarning",
           "encode", "decode", "safe_bound", "RANGE_KEYS", "HEAD_KEYS"]

#: per-block tensors whose largest |x| is measured (see :class:`BlockRanges`)
RANGE_KEYS = ("ln1_in", "scores_in", "softmax_in", "attn_v", "ln2_in", "mlp_u", "act_in",
              "act_out")
#: the ones checked against the safe bound: every tensor that enters a product. ``mlp_u`` (the
#: raw fc1 output) enters no product but the activation's, and is checked as ``act_in``, what
#: the activation multiplies (u itself, or u / input_scale for a rescaled poly block).
CHECKED_KEYS = ("ln1_in", "scores_in", "softmax_in", "attn_v", "ln2_in", "act_in", "act_out")
#: the head's tensors: the residual stream entering the head, what the head matmul multiplies,
#: and the logits (not multiplied again: reported, not checked)
HEAD_KEYS = ("norm_in", "head_in", "logits")
HEAD_CHECKED = ("norm_in", "head_in")

_DESCRIBE = {
    "ln1_in": "LayerNorm-1 input", "scores_in": "attention q'/k (score product input)",
    "softmax_in": "softmax input (scores)", "attn_v": "attention v", "ln2_in": "LayerNorm-2 input",
    "mlp_u": "MLP pre-activation u", "act_in": "activation input", "act_out": "activation output",
    "norm_in": "head input (residual stream)", "head_in": "head matmul input",
    "logits": "logits",
}


class FixedPointOverflowWarning(RuntimeWarning):
    """Some tensor's largest |x| reaches the safe bound 2^(31 - f): a square of it no longer fits
    SPU's truncation precondition (|x|^2 * 2^(2f) < 2^62), so an MPC run may overflow."""


def safe_bound(frac_bits: int) -> float:
    """The largest |x| whose square x*x still fits: |x|^2 * 2^(2f) < 2^62, i.e. 2^(31 - f)."""
    return float(2.0 ** (31 - int(frac_bits)))


def encode(x, frac_bits: int = 18) -> np.ndarray:
    """``round(x * 2^f) mod 2^64`` as int64 (ValueError on NaN or inf)."""
    a = np.asarray(x)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    return _C.fx_encode(np.ascontiguousarray(a), int(frac_bits))


def decode(x, frac_bits: int = 18) -> np.ndarray:
    """The real values (float64) of int64 ring elements with ``f`` fractional bits."""
    return _C.fx_decode(np.ascontiguousarray(x, dtype=np.int64), int(frac_bits))


# ---- report ------------------------------------------------------------------------------------

@dataclasses.dataclass
class BlockRanges:
    """Largest |x| (decoded) of one block's tensors over all evaluated images.

    ``max_abs`` keys (:data:`RANGE_KEYS`): ``ln1_in`` (LayerNorm-1 input = the block input),
    ``scores_in`` (q after the hd^-0.5 scale, and k: what the score product multiplies),
    ``softmax_in`` (the scores), ``attn_v`` (v), ``ln2_in`` (LayerNorm-2 input), ``mlp_u`` (the
    MLP pre-activation, fc1's output), ``act_in`` (what the activation multiplies: u, or
    u / input_scale for a rescaled poly block), ``act_out`` (the activation's output).
    ``exceeded`` says, for each checked key, whether max |x| >= ``safe_bound``."""

    block: int
    activation: str
    max_abs: Dict[str, float]
    exceeded: Dict[str, bool]
    input_scale: float = 1.0

    @property
    def any_exceeded(self) -> bool:
        return any(self.exceeded.values())

    def to_dict(self) -> Dict[str, Any]:
        return {"block": self.block, "activation": self.activation, "input_scale": self.input_scale,
                "max_abs": dict(self.max_abs), "exceeded": dict(self.exceeded)}


@dataclasses.dataclass
class FixedPointReport:
    """What :func:`evaluate` measured. Logit arrays are (N, num_classes) float64 (the fixed-point
    ones decoded); ``top1``/``float_top1`` are None without labels."""

    frac_bits: int
    safe_bound: float
    num_images: int
    logits: np.ndarray
    float_logits: np.ndarray
    top1: Optional[float]
    float_top1: Optional[float]
    fidelity: float
    logit_cosine: float
    max_abs_error: float
    mean_abs_error: float
    blocks: List[BlockRanges]
    head: Dict[str, float]
    head_exceeded: Dict[str, bool]
    input_scale: Dict[int, float]
    seconds: float

    @property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(axis=1)

    @property
    def float_predictions(self) -> np.ndarray:
        return self.float_logits.argmax(axis=1)

    @property
    def exceeded(self) -> bool:
        """True when any block (or the head) reached the safe bound."""
        return any(b.any_exceeded for b in self.blocks) or any(self.head_exceeded.values())

    def overflows(self) -> List[tuple]:
        """(block or 'head', tensor, max |x|) for every checked tensor at or beyond the bound."""
        out = [(b.block, k, b.max_abs[k]) for b in self.blocks for k, v in b.exceeded.items() if v]
        out += [("head", k, self.head[k]) for k, v in self.head_exceeded.items() if v]
        return out

    def to_dict(self, include_logits: bool = False) -> Dict[str, Any]:
        """JSON-ready summary (logit arrays as lists only with ``include_logits``)."""
        d = {
            "frac_bits": self.frac_bits, "safe_bound": self.safe_bound,
            "num_images": self.num_images, "top1": self.top1, "float_top1": self.float_top1,
            "fidelity": self.fidelity, "logit_cosine": self.logit_cosine,
            "quantisation_error": {"max_abs": self.max_abs_error, "mean_abs": self.mean_abs_error},
            "exceeded": self.exceeded,
            "blocks": [b.to_dict() for b in self.blocks],
            "head": {"max_abs": dict(self.head), "exceeded": dict(self.head_exceeded)},
            "input_scale": {str(k): v for k, v in self.input_scale.items()},
            "seconds": self.seconds,
        }
        if include_logits:
            d["logits"] = self.logits.tolist()
            d["float_logits"] = self.float_logits.tolist()
        return d

    def summary(self) -> str:
        """A short text table: headline metrics, then each block's ranges against the bound."""
        acc = "" if self.top1 is None else \
            f"top-1 {self.top1 * 100:.2f}% (float {self.float_top1 * 100:.2f}%), "
        lines = [f"fixed point f={self.frac_bits} on {self.num_images} images: {acc}fidelity "
                 f"{self.fidelity * 100:.2f}%, logit cosine {self.logit_cosine:.6f}, |logit error| "
                 f"max {self.max_abs_error:.3g} mean {self.mean_abs_error:.3g}; safe bound "
                 f"{self.safe_bound:g}"]
        head = "block act   " + " ".join(f"{k:>10s}" for k in RANGE_KEYS)
        lines.append(head)
        for b in self.blocks:
            cells = " ".join(f"{b.max_abs[k]:>9.3g}{'!' if b.exceeded.get(k) else ' '}"
                             for k in RANGE_KEYS)
            lines.append(f"{b.block:>5d} {b.activation:<5s} {cells}")
        lines.append("head: " + ", ".join(f"{k} {v:.3g}{'!' if self.head_exceeded.get(k) else ''}"
                                          for k, v in self.head.items()))
        return "\n".join(lines)


# ---- the model in the ring ------------------------------------------------------------------

def _u(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint64)


def _ring_add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a + b in Z_2^64 (through uint64, so NumPy wraps without any signed overflow)."""
    return (_u(a) + _u(b)).view(np.int64)


class _RingViT:
    """A ViT's parameters encoded once, and its forward pass on ring values."""

    def __init__(self, model, f: int, input_scale: Dict[int, float]):
        cfg = model.config
        sd = model.state_dict()
        self.cfg, self.f = cfg, f
        enc = lambda name: _C.fx_encode(np.ascontiguousarray(sd[name]), f)  # noqa: E731
        C = cfg.embed_dim
        self.pe_w = _C.fx_encode(np.ascontiguousarray(sd["patch_embed.proj.weight"].reshape(C, -1)), f)
        self.pe_b = enc("patch_embed.proj.bias")
        self.cls = enc("cls_token").reshape(C)
        self.pos = enc("pos_embed").reshape(cfg.seq_len, C)
        self.blocks = []
        for i in range(cfg.depth):
            b = f"blocks.{i}."
            blk = {k: enc(b + n) for k, n in (
                ("ln1_w", "norm1.weight"), ("ln1_b", "norm1.bias"), ("qkv_w", "attn.qkv.weight"),
                ("proj_w", "attn.proj.weight"), ("proj_b", "attn.proj.bias"),
                ("ln2_w", "norm2.weight"), ("ln2_b", "norm2.bias"), ("fc1_w", "mlp.fc1.weight"),
                ("fc1_b", "mlp.fc1.bias"), ("fc2_w", "mlp.fc2.weight"), ("fc2_b", "mlp.fc2.bias"))}
            blk["qkv_b"] = enc(b + "attn.qkv.bias") if cfg.qkv_bias else None
            if cfg.act[i] == "poly":
                sigma = float(input_scale.get(i, 1.0))
                a, bb, c, s = (sd[b + f"mlp.act.{k}"].astype(np.float64) for k in "abcs")
                # s*(a u^2 + b u + c) = s*(a sigma^2 (u/sigma)^2 + b sigma (u/sigma) + c)
                blk["poly"] = (a * sigma * sigma, bb * sigma, c, s)
                blk["sigma"] = sigma
                blk["inv_sigma"] = None if sigma == 1.0 else encode(np.float64(1.0 / sigma), f).reshape(1)
            self.blocks.append(blk)
        self.norm = (enc("norm.weight"), enc("norm.bias")) if cfg.final_norm else None
        self.fc_norm = (enc("fc_norm.weight"), enc("fc_norm.bias")) if cfg.fc_norm else None
        self.head_w, self.head_b = enc("head.weight"), enc("head.bias")
        self.inv_pool = encode(np.float64(1.0 / max(cfg.seq_len - 1, 1)), f).reshape(1)

    def forward(self, x: np.ndarray, ranges: List[Dict[str, float]], head: Dict[str, float]):
        """Ring logits (int64) of a float32 NCHW model-input batch; ``ranges`` / ``head`` are
        updated in place with the running max |x| of each tensor."""
        cfg, f = self.cfg, self.f
        B, p, C, T = x.shape[0], cfg.patch_size, cfg.embed_dim, cfg.seq_len
        G = cfg.img_size // p
        eps = cfg.ln_eps
        patches = np.ascontiguousarray(
            x.reshape(B, cfg.in_chans, G, p, G, p).transpose(0, 2, 4, 1, 3, 5)
            .reshape(B * G * G, cfg.in_chans * p * p))
        pe = _C.fx_matmul(_C.fx_encode(patches, f), self.pe_w, self.pe_b, f, transpose_b=True)
        h = np.empty((B, T, C), np.int64)
        h[:, 0] = _ring_add(self.cls, self.pos[0])
        h[:, 1:] = _ring_add(pe.reshape(B, T - 1, C), self.pos[1:])
        h = h.reshape(B * T, C)

        def upd(d, key, v):
            if v > d[key]:
                d[key] = v

        for i, blk in enumerate(self.blocks):
            r = ranges[i]
            upd(r, "ln1_in", _C.fx_maxabs(h, f))
            z = _C.fx_layernorm(h, blk["ln1_w"], blk["ln1_b"], f, eps)
            qkv = _C.fx_matmul(z, blk["qkv_w"], blk["qkv_b"], f, transpose_b=True)
            att, st = _C.fx_attention(qkv.reshape(B, T, 3 * C), cfg.num_heads, f)
            del qkv
            upd(r, "scores_in", st["scores_in"])
            upd(r, "softmax_in", st["softmax_in"])
            upd(r, "attn_v", st["v"])
            h = _C.fx_matmul(att.reshape(B * T, C), blk["proj_w"], blk["proj_b"], f,
                             transpose_b=True, residual=h)
            upd(r, "ln2_in", _C.fx_maxabs(h, f))
            z = _C.fx_layernorm(h, blk["ln2_w"], blk["ln2_b"], f, eps)
            u = _C.fx_matmul(z, blk["fc1_w"], blk["fc1_b"], f, transpose_b=True)
            if cfg.act[i] == "poly":
                if blk["inv_sigma"] is not None:
                    upd(r, "mlp_u", _C.fx_maxabs(u, f))
                    u = _C.fx_mul(u, blk["inv_sigma"], f)
                a, mi, mo = _C.fx_poly(u, *blk["poly"], f, stats=True)
                if blk["inv_sigma"] is None:
                    upd(r, "mlp_u", mi)
            else:
                a, mi, mo = _C.fx_gelu(u, f, cfg.gelu == "tanh", stats=True)
                upd(r, "mlp_u", mi)
            del u
            upd(r, "act_in", mi)
            upd(r, "act_out", mo)
            h = _C.fx_matmul(a, blk["fc2_w"], blk["fc2_b"], f, transpose_b=True, residual=h)
            del a

        h = h.reshape(B, T, C)
        upd(head, "norm_in", _C.fx_maxabs(h, f))
        if cfg.global_pool == "token":
            pooled = np.ascontiguousarray(h[:, 0])
            if self.norm is not None:
                pooled = _C.fx_layernorm(pooled, *self.norm, f, eps)
        else:
            if self.norm is not None:
                h = _C.fx_layernorm(h, *self.norm, f, eps)
            s = _u(h)[:, 1:].sum(axis=1, dtype=np.uint64).view(np.int64)
            pooled = _C.fx_mul(np.ascontiguousarray(s), self.inv_pool, f)
        if self.fc_norm is not None:
            pooled = _C.fx_layernorm(pooled, *self.fc_norm, f, eps)
        upd(head, "head_in", _C.fx_maxabs(pooled, f))
        logits = _C.fx_matmul(pooled, self.head_w, self.head_b, f, transpose_b=True)
        upd(head, "logits", _C.fx_maxabs(logits, f))
        return logits


# ---- argument checks ------------------------------------------------------------------------

def _check_int(v, name: str, lo: int, hi: Optional[int] = None) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(v).__name__} {v!r}")
    if v < lo or (hi is not None and v > hi):
        rng = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {rng}, got {v}")
    return int(v)


def _check_scale(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what} must be a positive number, got {type(v).__name__} {v!r}")
    v = float(v)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{what} must be positive and finite, got {v!r}")
    return v


def _input_scales(input_scale, cfg) -> Dict[int, float]:
    poly = [i for i in range(cfg.depth) if cfg.act[i] == "poly"]
    if input_scale is None:
        return {}
    if isinstance(input_scale, Mapping):
        out = {}
        for k, v in input_scale.items():
            i = _check_int(k, "an input_scale block index", -cfg.depth, cfg.depth - 1) % cfg.depth
            if cfg.act[i] != "poly":
                raise ValueError(f"input_scale names block {k}, which uses GELU; input_scale only "
                                 f"applies to poly blocks ({poly or 'none in this model'})")
            out[i] = _check_scale(v, f"input_scale[{k}]")
        return out
    s = _check_scale(input_scale, "input_scale")
    if not poly:
        raise ValueError("input_scale only applies to poly activations, and this model has none")
    return {i: s for i in poly}


def _check_labels(labels, n: int, K: int) -> Optional[np.ndarray]:
    if labels is None:
        return None
    y = np.asarray(labels)
    if y.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) (one per image), got {y.shape}")
    if n and (y.min() < 0 or y.max() >= K):
        raise ValueError(f"labels must lie in 0..{K - 1}, got values in {y.min()}..{y.max()}")
    return y.astype(np.int64)


# ---- evaluate -------------------------------------------------------------------------------

def evaluate(model, images, frac_bits: int = 18, batch_size: int = 256,
             input_scale: Union[None, float, Mapping[int, float]] = None, progress: bool = True,
             labels=None) -> FixedPointReport:
    """Evaluate ``model`` (a :class:`polyvit.ViT`) on ``images`` in simulated MPC fixed point.

    ``images``: uint8 pixels (NCHW or NHWC; normalised by ``model.preprocess``) or float32 NCHW
    model input, as ``model.forward`` takes them. ``frac_bits``: f, an int in 1..30 (SPU's
    default is 18). ``labels`` (optional, one int per image): adds top-1 accuracy. ``progress``:
    a progress bar on stderr.

    ``input_scale`` (a number, or ``{block: number}``; each > 0, normally > 1) evaluates each
    poly activation on ``x' = trunc(u * enc(1/s))`` instead of ``u``, with the coefficients
    rescaled so the polynomial is unchanged in exact arithmetic:
    ``s_out*(a*s^2 * x'^2 + b*s * x' + c)`` (folded and encoded as usual, Horner in the ring).
    It costs one public multiply + truncation and ``log2(s)`` bits of the input's resolution
    (x' has step 2^-f, so u is resolved to s * 2^-f). It divides what the activation
    multiplies, ``act_in``, by s: a square-first evaluation (x'*x', the x*x-type product the
    safe bound is about) then stays in range. It does not shrink the output: in Horner form the
    product ``t * x'`` has the magnitude of ``(a*u + b) * u``, i.e. of ``act_out``, which is
    checked separately. A number applies to every poly block (an error if there are none); a
    dict names blocks (GELU blocks are an error).

    Returns a :class:`FixedPointReport`. When any checked tensor (see :data:`CHECKED_KEYS`,
    :data:`HEAD_CHECKED`) reaches ``safe_bound = 2^(31 - f)``, a
    :class:`FixedPointOverflowWarning` names the blocks, values, the bound and the remedies.
    """
    from ..model import ViT

    if not isinstance(model, ViT):
        raise TypeError(f"model must be a polyvit.ViT, got {type(model).__name__}")
    f = _check_int(frac_bits, "frac_bits", 1, 30)
    bs = _check_int(batch_size, "batch_size", 1)
    if not isinstance(progress, (bool, np.bool_)):
        raise TypeError(f"progress must be True or False, got {progress!r}")
    cfg = model.config
    scales = _input_scales(input_scale, cfg)
    x = model._images(images)  # validates shape, dtype, finiteness; uint8 stays uint8
    n = x.shape[0]
    y = _check_labels(labels, n, cfg.num_classes)

    t0 = time.perf_counter()
    ring = _RingViT(model, f, scales)
    ranges = [{k: 0.0 for k in RANGE_KEYS} for _ in range(cfg.depth)]
    head = {k: 0.0 for k in HEAD_KEYS}
    fx_logits = np.empty((n, cfg.num_classes), np.float64)
    fl_logits = np.empty((n, cfg.num_classes), np.float64)
    with Progress(n, desc=f"fixed point f={f}", unit="img", enabled=bool(progress)) as bar:
        for s in range(0, n, bs):
            chunk = x[s:s + bs]
            xin = model.preprocess(chunk) if chunk.dtype == np.uint8 else chunk
            fl_logits[s:s + len(chunk)] = model.forward(xin)
            fx_logits[s:s + len(chunk)] = _C.fx_decode(ring.forward(xin, ranges, head), f)
            bar.update(len(chunk))
    seconds = time.perf_counter() - t0

    bound = safe_bound(f)
    blocks = []
    for i, r in enumerate(ranges):
        blocks.append(BlockRanges(block=i, activation=cfg.act[i], max_abs=r,
                                  exceeded={k: r[k] >= bound for k in CHECKED_KEYS},
                                  input_scale=scales.get(i, 1.0)))
    head_exc = {k: head[k] >= bound for k in HEAD_CHECKED}

    pred, fpred = fx_logits.argmax(1), fl_logits.argmax(1)
    num = (fx_logits * fl_logits).sum(1)
    den = np.linalg.norm(fx_logits, axis=1) * np.linalg.norm(fl_logits, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(den > 0, num / np.where(den > 0, den, 1.0),
                       np.where(np.abs(fx_logits).sum(1) + np.abs(fl_logits).sum(1) == 0, 1.0, 0.0))
    err = np.abs(fx_logits - fl_logits)
    report = FixedPointReport(
        frac_bits=f, safe_bound=bound, num_images=n, logits=fx_logits, float_logits=fl_logits,
        top1=None if y is None else float((pred == y).mean()),
        float_top1=None if y is None else float((fpred == y).mean()),
        fidelity=float((pred == fpred).mean()), logit_cosine=float(cos.mean()),
        max_abs_error=float(err.max()), mean_abs_error=float(err.mean()),
        blocks=blocks, head=head, head_exceeded=head_exc, input_scale=scales, seconds=seconds)
    if report.exceeded:
        _warn_overflow(report, cfg)
    return report


def _warn_overflow(report: FixedPointReport, cfg) -> None:
    f, bound = report.frac_bits, report.safe_bound
    items = report.overflows()
    worst = max(v for _, _, v in items)
    # the largest f whose bound the worst value stays under: v < 2^(31 - f)
    f_ok = math.ceil(31 - math.log2(worst)) - 1 if worst > 0 else f
    parts = [f"block {b} {_DESCRIBE[k]} max |x| = {v:.4g}" if b != "head" else
             f"head {_DESCRIBE[k]} max |x| = {v:.4g}" for b, k, v in items]
    remedies = [f"use fewer fractional bits (frac_bits <= {f_ok} keeps {worst:.4g} under "
                f"2^(31 - f))" if f_ok >= 1 else
                f"no frac_bits >= 1 keeps {worst:.4g} in range; if the float model's own "
                f"ranges are far smaller, these values are fixed-point error that grew through "
                f"the network (too few fractional bits: use more)"]
    poly_in = sorted({b for b, k, _ in items if k == "act_in" and b != "head" and
                      cfg.act[b] == "poly"})
    if poly_in:
        need = {b: report.blocks[b].max_abs["act_in"] * report.blocks[b].input_scale / bound
                for b in poly_in}
        remedies.append("or, for the poly input of block(s) " + ", ".join(map(str, poly_in)) +
                        ", input_scale={" + ", ".join(f"{b}: {2 * v:.3g}" for b, v in need.items())
                        + "} (evaluates the polynomial on u / input_scale)")
    warnings.warn(
        f"fixed-point evaluation at frac_bits={f}: {'; '.join(parts)}: at or beyond the safe "
        f"bound 2^(31 - {f}) = {bound:g}, so an MPC run may overflow (|x|^2 * 2^(2f) must stay "
        f"under 2^62). Remedies: {' '.join(remedies)}.", FixedPointOverflowWarning, stacklevel=3)
