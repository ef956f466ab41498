"""The analytic MPC cost model: SPU's costs for any ViT in milliseconds, no SPU needed.

``cost(model, protocol="semi2k")`` walks the same operations as the exported forward
(``polyvit.mpc.jax_export``: patch embedding, per block LayerNorm, qkv, scores, softmax, attention x
values, projection, LayerNorm, fc1, activation, fc2; the head) and prices each one with per-op
constants that ``bench/mpc_constants.py`` measured on SPU itself and committed, with the SPU
version and the date, in ``polyvit/mpc/spu_constants.json``:

- a matrix product of two secrets (activations x secret weights, q x k, attention x v):
  ``bytes = ca*|A| + cb*|B| + co*|out|`` (Beaver: both operands are opened, the product
  truncated); with public weights only the truncation, ``co*|out|``;
- LayerNorm and softmax: ``bytes = ce*elements + cr*rows``; softmax rounds grow with
  ``ceil(log2(row length))`` (the max is a comparison tree);
- activations (erf GELU, tanh GELU, the quadratic with public or secret coefficients):
  ``ce*elements``;
- additions (biases, residuals) and reshapes are local: free.

The model holds for SEMI2K and ABY3 (within 0.1% of SPU on whole ViTs). CHEETAH's costs are step
functions of HE ciphertext packing, of a Beaver-triple cache and of OT pool refills; a linear
model missed them by ~30%, so CHEETAH is priced kernel by kernel instead
(``polyvit.mpc.cheetah_model``: each op's MPC kernels as SPU runs them, HE products by SPU's
packing rules, the triple cache simulated across ops; constants from
``bench/cheetah_calibrate.py`` under ``protocols.cheetah.kernel_model``). ``cost`` offers a
protocol only where the whole-model check found it within 5% of SPU (``model_valid``).

Bytes are what one party sends (the mean over the parties); rounds are SPU's send actions per
party, summed over the ops (the forward is a chain). Each op is priced at its marginal cost
inside a run; a protocol that sets itself up lazily inside a run (CHEETAH: OT and HE bootstrap)
adds its measured one-time ``setup``. ``verify`` in the bench compares the model
with SPU's measured totals on whole models.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["cost", "op_shapes", "constants", "CostEstimate", "PROTOCOLS"]

CONSTANTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "spu_constants.json")
PROTOCOLS = ("semi2k", "aby3", "cheetah")
KINDS = ("matmul", "softmax", "layernorm", "activation")


@dataclasses.dataclass(frozen=True)
class OpShape:
    """One op of the forward: name, kind, block (None outside blocks), the family whose constants
    price it, and the element counts that enter the price."""

    name: str
    kind: str
    block: Optional[int]
    family: str                 # matmul | layernorm | softmax | gelu-erf | gelu-tanh | poly
    a: int = 0                  # matmul: |A|; others: elements
    b: int = 0                  # matmul: |B|; layernorm/softmax: rows
    out: int = 0                # matmul: |out|; softmax: row length
    b_is_param: bool = False    # matmul: B is a weight; poly: the coefficients are parameters
    dims: Tuple[int, ...] = ()  # matmul: (products, m, k, n): that many (m x k) @ (k x n)


def op_shapes(config, batch: int = 1) -> List[OpShape]:
    """The exported forward's operations for ``batch`` images, from the config alone (mirrors
    ``polyvit.mpc.jax_export``; a test checks the two agree)."""
    c = config
    B, D, nh = batch, c.embed_dim, c.num_heads
    T, N, Hm, hd = c.seq_len, c.seq_len - 1, c.mlp_hidden, c.embed_dim // c.num_heads
    kpp = c.in_chans * c.patch_size ** 2
    ops: List[OpShape] = []

    def mm(name, block, rows, k, n, param=True, batch_heads=1):
        ops.append(OpShape(name, "matmul", block, "matmul", batch_heads * rows * k,
                           (1 if param else batch_heads) * k * n, batch_heads * rows * n, param,
                           (batch_heads, rows, k, n)))

    def ln(name, block, rows):
        ops.append(OpShape(name, "layernorm", block, "layernorm", rows * D, rows, D))

    mm("patch_embed", None, B * N, kpp, D)
    for i in range(c.depth):
        p = f"blocks.{i}."
        ln(p + "norm1", i, B * T)
        mm(p + "attn.qkv", i, B * T, D, 3 * D)
        mm(p + "attn.scores", i, T, hd, T, param=False, batch_heads=B * nh)
        ops.append(OpShape(p + "attn.softmax", "softmax", i, "softmax", B * nh * T * T, B * nh * T, T))
        mm(p + "attn.av", i, T, T, hd, param=False, batch_heads=B * nh)
        mm(p + "attn.proj", i, B * T, D, D)
        ln(p + "norm2", i, B * T)
        mm(p + "mlp.fc1", i, B * T, D, Hm)
        if c.act[i] == "poly":
            ops.append(OpShape(p + "mlp.act", "activation", i, "poly", B * T * Hm, b_is_param=True))
        else:
            fam = "gelu-tanh" if c.gelu == "tanh" else "gelu-erf"
            ops.append(OpShape(p + "mlp.act", "activation", i, fam, B * T * Hm))
        mm(p + "mlp.fc2", i, B * T, Hm, D)
    if c.final_norm:
        ln("norm", None, B if c.global_pool == "token" else B * T)
    if c.fc_norm:
        ln("fc_norm", None, B)
    mm("head", None, B, D, c.num_classes)
    return ops


_CACHE: Dict[str, Any] = {}


def constants(path: Optional[str] = None) -> Dict[str, Any]:
    """The committed per-op constants (see ``bench/mpc_constants.py``)."""
    path = path or CONSTANTS_PATH
    if path not in _CACHE:
        if not os.path.exists(path):
            raise FileNotFoundError(f"no SPU cost constants at {path}: run "
                                    "`python bench/mpc_constants.py` (needs the mpc extra)")
        with open(path) as f:
            _CACHE[path] = json.load(f)
    return _CACHE[path]


def _price(op: OpShape, k: Dict[str, Any], weights: str) -> Tuple[float, float]:
    if op.family == "matmul":
        if op.b_is_param and weights == "public":
            f = k["matmul_public"]
            return f["bytes"][0] * op.out, f["rounds"]
        f = k["matmul_secret"]
        ca, cb, co = f["bytes"]
        return ca * op.a + cb * op.b + co * op.out, f["rounds"]
    if op.family in ("layernorm", "softmax"):
        f = k[op.family]
        ce, cr = f["bytes"]
        rounds = f["rounds"]
        if isinstance(rounds, list):        # [r0, r per ceil(log2(row length))]
            rounds = rounds[0] + rounds[1] * math.ceil(math.log2(max(op.out, 2)))
        return ce * op.a + cr * op.b, rounds
    fam = op.family
    if fam == "poly":
        fam = "poly_public" if weights == "public" else "poly_secret"
    f = k[fam]
    return f["bytes"][0] * op.a, f["rounds"]


@dataclasses.dataclass
class CostEstimate:
    protocol: str
    batch: int
    weights: str
    ops: List[Dict[str, Any]]
    setup_bytes: float
    total_bytes: float
    total_rounds: float
    by_kind: Dict[str, float]
    by_block: Dict[str, Dict[str, float]]
    rounds_by_kind: Dict[str, float]
    rounds_by_block: Dict[str, Dict[str, float]]
    source: str

    @property
    def bytes_per_image(self) -> float:
        return self.total_bytes / self.batch

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["bytes_per_image"] = self.bytes_per_image
        return d


def _check(protocol: str, field: int, frac_bits: int, weights: str, batch: int,
           table: Dict[str, Any], require_valid: bool = True) -> Dict[str, Any]:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if weights not in ("secret", "public"):
        raise ValueError(f"weights must be 'secret' or 'public', got {weights!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    if field != table["field"] or frac_bits != table["frac_bits"]:
        raise ValueError(f"the committed constants were measured at field={table['field']}, "
                         f"frac_bits={table['frac_bits']}; measure others with "
                         f"`python bench/mpc_constants.py --field {field} --frac-bits {frac_bits}`")
    if protocol not in table["protocols"]:
        raise ValueError(f"no constants measured for {protocol!r} (have "
                         f"{', '.join(sorted(table['protocols']))})")
    k = table["protocols"][protocol]
    if require_valid and not k.get("model_valid", False):
        worst = k.get("worst_model_error")
        raise ValueError(
            f"the analytic model does not hold for {protocol!r}: on whole ViTs run under SPU it "
            f"missed the measured bytes by up to {100 * worst:.1f}% (its costs are step functions "
            f"of HE ciphertext packing and OT batch sizes, not linear in the element counts). "
            f"Measure instead with polyvit.mpc.run(model, images, protocol={protocol!r}) or "
            f"polyvit.mpc.inference.op_costs(model, protocol={protocol!r})"
            if worst is not None else f"the analytic model for {protocol!r} was never checked "
            f"against SPU (run bench/mpc_constants.py with --check-models)")
    return k


def cost(model_or_config: Any, protocol: str = "semi2k", batch: int = 1,
         weights: str = "secret", field: int = 64, frac_bits: int = 18,
         constants_path: Optional[str] = None, require_valid: bool = True) -> CostEstimate:
    """Estimated bytes (per party) and rounds of one secure forward pass over ``batch`` images,
    per op, per op kind and per block, from constants measured on SPU.

    ``require_valid=False`` prices a protocol whose model has not (yet) met SPU's whole-model
    totals; ``bench/mpc_constants.py`` uses it to make that check."""
    cfg = getattr(model_or_config, "config", model_or_config)
    table = constants(constants_path)
    k = _check(protocol, field, frac_bits, weights, batch, table, require_valid)
    rows, by_kind = [], {kind: 0.0 for kind in KINDS}
    by_block: Dict[str, Dict[str, float]] = {}
    rounds_by_kind = {kind: 0.0 for kind in KINDS}
    rounds_by_block: Dict[str, Dict[str, float]] = {}
    # the protocol's one-time setup inside a run (CHEETAH's OT/HE bootstrap; ~0 otherwise)
    setup = k.get("setup", {"bytes": 0.0, "rounds": 0.0})
    price = functools.partial(_price, k=k, weights=weights)
    if "kernel_model" in k:
        # CHEETAH: kernel by kernel, with the state SPU keeps across ops (polyvit.mpc.cheetah_model)
        from . import cheetah_model

        km = k["kernel_model"]
        setup = km["setup"]
        pricer = cheetah_model.Pricer(km)
        price = functools.partial(cheetah_model.price_op, pricer, weights=weights)
    tb, tr = float(setup["bytes"]), float(setup["rounds"])
    for op in op_shapes(cfg, batch):
        b, r = price(op)
        rows.append(dict(name=op.name, kind=op.kind, block=op.block, family=op.family,
                         bytes=b, rounds=r))
        tb += b
        tr += r
        by_kind[op.kind] += b
        rounds_by_kind[op.kind] += r
        key = "embed+head" if op.block is None else str(op.block)
        by_block.setdefault(key, {kind: 0.0 for kind in KINDS})[op.kind] += b
        rounds_by_block.setdefault(key, {kind: 0.0 for kind in KINDS})[op.kind] += r
    return CostEstimate(protocol=protocol, batch=batch, weights=weights, ops=rows,
                        setup_bytes=float(setup["bytes"]), total_bytes=tb, total_rounds=tr,
                        by_kind=by_kind, by_block=by_block, rounds_by_kind=rounds_by_kind,
                        rounds_by_block=rounds_by_block,
                        source=f"SPU {table['spu_version']} constants measured {table['date']} "
                               f"on {table['machine']} ({os.path.basename(CONSTANTS_PATH)})")
