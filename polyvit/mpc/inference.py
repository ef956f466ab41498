"""Secure inference under SecretFlow SPU: ``polyvit.mpc.run(model, images, ...)``.

The model is exported (``polyvit.mpc.jax_export``: erf-form GELU, Horner quadratic, LayerNorm
affine folded) and run under SPU on secret images, weights secret (the model owner's) or public;
every party's own profile gives the costs (``polyvit.mpc.spu_runtime``). Before anything long
starts, the arguments are checked and the images are evaluated once in simulated fixed point
(``polyvit.mpc.fixedpoint``) so that a model whose activations would overflow the ring is
refused with the blocks named instead of returning garbage.

Costs per block and per op kind come from SPU too: each distinct operation of the forward
(same kind, shapes and visibility cost the same) is run alone under SPU at its exact shape, and
the per-op figures are summed per block and kind; the whole-model run gives the total, and the
difference is reported as ``unattributed`` (it should be ~0).
"""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np

from . import cost_model
from . import spu_runtime as sr
from .jax_export import KINDS, export

__all__ = ["run", "op_costs", "SPURun"]


@dataclasses.dataclass
class SPURun:
    protocol: str
    field: int
    frac_bits: int
    weights: str
    batch_size: int
    images: int
    logits: np.ndarray
    plain_logits: np.ndarray
    labels: Optional[np.ndarray]
    bytes_per_image: float            # one party's send bytes per image (mean over parties)
    rounds_per_batch: float           # SPU send actions per party for one batch
    seconds_per_image: float          # wall time of the secure runs (run 0), per image
    compile_seconds: float
    ops: Optional[Dict[str, Any]]     # per-op SPU costs (see op_costs), per batch
    estimate: Optional[Dict[str, Any]]
    notes: List[str]

    @property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(1)

    @property
    def agreement(self) -> float:
        """Share of images whose secure prediction equals the plaintext (C engine) one."""
        return float(np.mean(self.predictions == self.plain_logits.argmax(1)))

    @property
    def top1(self) -> Optional[float]:
        return None if self.labels is None else float(np.mean(self.predictions == self.labels))

    def to_dict(self, include_logits: bool = False) -> Dict[str, Any]:
        d = {k: v for k, v in dataclasses.asdict(self).items()
             if k not in ("logits", "plain_logits", "labels")}
        pl = self.plain_logits
        top2 = np.sort(pl, axis=1)[:, -2:]
        differ = np.nonzero(self.predictions != pl.argmax(1))[0]
        d.update(agreement=self.agreement, top1=self.top1,
                 # where SPU and plaintext disagree: how close the plaintext call was
                 disagreements=[dict(index=int(i), spu=int(self.predictions[i]),
                                     plain=int(pl[i].argmax()),
                                     plain_margin=float(top2[i, 1] - top2[i, 0]))
                                for i in differ],
                 plain_top1=None if self.labels is None else
                 float(np.mean(self.plain_logits.argmax(1) == self.labels)),
                 max_logit_error=float(np.abs(self.logits - self.plain_logits).max()))
        if include_logits:
            d["logits"] = self.logits.tolist()
        return d


def _check_args(protocol, field, frac_bits, weights, batch_size):
    if protocol not in sr.PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(sr.PROTOCOLS)}")
    if isinstance(field, bool) or field not in sr.FIELDS:
        raise ValueError(f"unknown field {field!r}: SPU rings are 64 or 128 bits")
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, int) or not 0 < frac_bits < field // 2:
        raise ValueError(f"frac_bits must be an integer in 1..{field // 2 - 1}, got {frac_bits!r}")
    if weights not in ("secret", "public"):
        raise ValueError(f"weights must be 'secret' or 'public', got {weights!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def _range_check(model, images, field, frac_bits):
    """Refuse (ValueError) a model whose tensors on these images leave the ring's safe range."""
    if field != 64:
        return None   # the 128-bit ring's bound, 2^(63-f), is far beyond any float32 activation
    import warnings

    from . import fixedpoint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fixedpoint.FixedPointOverflowWarning)
        rep = fixedpoint.evaluate(model, images, frac_bits=frac_bits, progress=False)
    if rep.exceeded:
        where = "; ".join(f"block {b} {t}: max |x| {v:.4g}" for b, t, v in rep.overflows()[:6])
        raise ValueError(
            f"the model's activations on these images exceed the safe range of a 64-bit ring at "
            f"{frac_bits} fractional bits (|x| < {fixedpoint.safe_bound(frac_bits):.0f}): {where}. "
            f"Use fewer fractional bits (each one doubles the range), field=128, or check with "
            f"polyvit.mpc.fixedpoint.evaluate(model, images, input_scale=...); "
            f"check_range=False runs anyway")
    return rep


def op_costs(model, protocol: str = "semi2k", batch: int = 1, weights: str = "secret",
             field: int = 64, frac_bits: int = 18, progress: bool = True) -> Dict[str, Any]:
    """SPU's own costs of each operation of the exported forward at ``batch`` images: every
    distinct op (kind, shapes, visibility) runs alone under SPU once, on random inputs (costs do
    not depend on values). Returns per op, per block x kind and per kind (bytes one party sends,
    and rounds), and the comparison kernels per kind."""
    _check_args(protocol, field, frac_bits, weights, batch)
    e = export(model)
    ops = e.ops(batch)
    rng = np.random.default_rng(0)
    measured: Dict[Any, Dict[str, Any]] = {}
    uniq = {}
    for o in ops:
        uniq.setdefault(o.key(weights), o)
    t0 = time.time()
    for n, (key, o) in enumerate(uniq.items()):
        args = [rng.standard_normal(s).astype(np.float32) for s in o.shapes]
        if o.kind == "layernorm":
            args[0] = args[0] * 3 + 1
        _, rep = sr.execute(o.fn, args, list(key[3]), protocol=protocol, field=field,
                            frac_bits=frac_bits)
        measured[key] = dict(bytes=float(np.mean(rep.send_bytes)), rounds=float(rep.rounds),
                             comparisons=rep.comparisons(),
                             comparison_bytes=rep.comparison_cost()[0])
        if progress:
            print(f"\r  SPU per-op costs: {n + 1}/{len(uniq)} distinct ops "
                  f"({time.time() - t0:.0f} s)", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    rows, by_kind, comps = [], {k: 0.0 for k in KINDS}, {k: 0 for k in KINDS}
    by_block: Dict[str, Dict[str, float]] = {}
    rounds_by_block: Dict[str, Dict[str, float]] = {}
    rounds_by_kind = {k: 0.0 for k in KINDS}
    for o in ops:
        m = measured[o.key(weights)]
        rows.append(dict(name=o.name, kind=o.kind, block=o.block, variant=o.variant, **m))
        key = "embed+head" if o.block is None else str(o.block)
        by_block.setdefault(key, {k: 0.0 for k in KINDS})[o.kind] += m["bytes"]
        rounds_by_block.setdefault(key, {k: 0.0 for k in KINDS})[o.kind] += m["rounds"]
        by_kind[o.kind] += m["bytes"]
        rounds_by_kind[o.kind] += m["rounds"]
        comps[o.kind] += m["comparisons"]
    return dict(protocol=protocol, batch=batch, weights=weights, ops=rows, by_block=by_block,
                by_kind=by_kind, rounds_by_block=rounds_by_block, rounds_by_kind=rounds_by_kind,
                comparisons_by_kind=comps,
                activation_comparisons=sum(r["comparisons"] for r in rows if r["kind"] == "activation"),
                total_bytes=sum(r["bytes"] for r in rows), total_rounds=sum(r["rounds"] for r in rows))


def run(model, images, protocol: str = "semi2k", field: int = 64, frac_bits: int = 18,
        weights: str = "secret", batch_size: int = 1, labels=None, check_range: bool = True,
        per_op: bool = True, progress: bool = True) -> SPURun:
    """Run ``model`` under SPU on secret ``images`` (uint8 pixels or float32 NCHW model input).

    Returns an :class:`SPURun`: the logits SPU computed, the plaintext logits of the C engine,
    their agreement, bytes per image and rounds per batch as SPU counted them, wall time, the
    per-op breakdown (``per_op``) and the analytic estimate (``polyvit.mpc.cost``) beside it.
    SEMI2K's Beaver triples come from a trusted first party (SPU: debugging only); CHEETAH is
    the dealer-free 2-party option."""
    from ..model import ViT

    _check_args(protocol, field, frac_bits, weights, batch_size)
    if not isinstance(model, ViT):
        raise TypeError(f"model must be a polyvit.ViT, got {type(model).__name__}")
    sr._import_spu()                       # ImportError with the install hint, before any work
    e = export(model)                      # refuses what cannot be exported
    x = e.preprocess(images)
    n = x.shape[0]
    if n == 0:
        raise ValueError("images is an empty batch")
    y = None
    if labels is not None:
        y = np.asarray(labels).astype(np.int64).reshape(-1)
        if y.shape[0] != n:
            raise ValueError(f"{n} images but {y.shape[0]} labels")
    if check_range:
        _range_check(model, x, field, frac_bits)
    plain = model.forward(x)

    keys = list(e.params)
    vals = [e.params[k] for k in keys]

    def fn(xb, *p):
        return e.fn(dict(zip(keys, p)), xb)

    vis = ["secret"] + [weights] * len(vals)
    logits, tbytes, rounds, wall, comp = [], 0.0, [], 0.0, 0.0
    t0 = time.time()
    for s in range(0, n, batch_size):
        xb = x[s:s + batch_size]
        if xb.shape[0] < batch_size:       # the last batch: pad to keep one compiled shape
            xb = np.concatenate([xb, np.zeros((batch_size - xb.shape[0],) + xb.shape[1:], xb.dtype)])
        # costs depend on the program and shapes only, not on the values: every party's profile
        # is read on the first batch (one run per party), the other batches run once
        out, rep = sr.execute(fn, [xb] + vals, vis, protocol=protocol, field=field,
                              frac_bits=frac_bits, profile=s == 0)
        logits.append(np.asarray(out, np.float64)[:min(batch_size, n - s)])
        if s == 0:
            batch_bytes, batch_rounds = float(np.mean(rep.send_bytes)), float(rep.rounds)
        tbytes += batch_bytes
        rounds.append(batch_rounds)
        wall += rep.wall_seconds
        comp += rep.compile_seconds
        if progress:
            done = min(n, s + batch_size)
            print(f"\r  SPU {protocol}: {done}/{n} images, {tbytes / 1e6 / (s // batch_size + 1):.1f} "
                  f"MB per batch, {time.time() - t0:.0f} s", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    batches = len(rounds)
    ops = op_costs(model, protocol, batch_size, weights, field, frac_bits, progress) if per_op else None
    est = None
    try:
        est = cost_model.cost(model, protocol=protocol, batch=batch_size, weights=weights,
                              field=field, frac_bits=frac_bits).to_dict()
        est.pop("ops", None)
    except (FileNotFoundError, ValueError) as err:
        est = {"unavailable": str(err)}
    notes = list(sr.NOTES.get(protocol, ()))
    if ops is not None:
        ops["unattributed_bytes"] = tbytes / batches - ops["total_bytes"]
    return SPURun(protocol=protocol, field=field, frac_bits=frac_bits, weights=weights,
                  batch_size=batch_size, images=n, logits=np.concatenate(logits),
                  plain_logits=np.asarray(plain, np.float64), labels=y,
                  bytes_per_image=tbytes / (batches * batch_size),
                  rounds_per_batch=float(np.mean(rounds)), seconds_per_image=wall / n,
                  compile_seconds=comp, ops=ops, estimate=est, notes=notes)
