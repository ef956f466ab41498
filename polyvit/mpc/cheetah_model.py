"""CHEETAH's costs, kernel by kernel: the rules behind ``cost(model, protocol="cheetah")``.

SPU's CHEETAH (2 parties, no dealer) runs every op of the exported forward as a fixed sequence of
MPC kernels (``TEMPLATES``: read off SPU's action trace, ``RuntimeConfig.enable_action_trace``,
for each op family; a kernel's size is a multiple of the op's elements or of its rows). Their
costs are step functions of the sizes, which is why a per-element model missed whole ViTs by
~30%. Each kernel is priced by the rule it follows in SPU 0.9.5 (``libspu/mpc/cheetah``):

- ``mmul_aa`` (a product of two secrets; CheetahDot, RLWE with N = 8192): the product is cut into
  sub-blocks ``d0 x d1 x d2`` with ``d0*d1*d2 <= N`` chosen by SPU's own cost search
  (``submat_shape``: minimise 1000*(sent + response ciphertexts) + automorphisms + ct-mults/10,
  ``d1`` a power of two, ties to the later candidate). The smaller operand is encrypted
  (``min(blk0, blk2) * blk1`` query ciphertexts) and the ``blk0*blk2`` results come back packed
  ``d1`` to a ciphertext. Both cross terms are computed (one in each direction), so each party
  sends its queries and its responses: ``q*Q + r*R`` bytes.
  A single result block is sent unpacked: ``r_single + r_coef * d0*d2``.
  Products with public weights are local (``mmul_ap``): only the truncation.
- ``square_s`` and the Beaver-triple batches of ``mul_aa`` (CheetahMul, BFV, N = 8192, 4 CRT
  moduli for a 64-bit ring): ``ceil(n/8192)`` ciphertext sets, one direction (``m1`` bytes per
  set, the mean of the querying and the responding party). ``square_s`` over more than 8192
  elements splits in two halves.
- ``mul_aa``: below 2*8192 elements from a cache of Beaver triples (open x-a and y-b: 16 B per
  element per party); a cache short of ``n`` triples is topped up by ``ceil(2n/8192)`` OLE
  batches of 4096 triples each. The cache lives for the whole run, so consecutive ops share it
  (this module simulates it). From 2*8192 elements on, directly (``m2`` per 8192 elements of
  each half).
- the OT-based kernels (``trunc_a``, ``msb_a2b``, ``a2b``, ``b2a``, ``and_bb``, ``mul_a1b``):
  a per-element rate each (its own messages: the lowest rate seen, i.e. without a refill),
  plus the silent-OT pool's refills (~0.3 MB per party and ~1300 messages each time the pool
  runs dry, landing on whichever kernel drains it) as a fraction ``ot_refill_fraction`` of the
  OT bytes, measured on runs long enough that refills average out (what it leaves is at most
  about one refill per run and instance: well under 1% of a ViT).
- one-time setup in each run: the HE public and Galois keys and the OT bootstrap (``setup``).

The constants (``m1``, ``m2``, ``q``, ``r``, the OT rates, the setup) are measured by
``bench/cheetah_calibrate.py`` on SPU and kept in ``spu_constants.json`` under
``protocols.cheetah.kernel_model``; the whole-model check in ``bench/mpc_constants.py`` compares
the result with SPU on whole ViTs. Rounds are estimated as send actions per kernel call (a
rough count: CHEETAH sends several messages per round and each OT refill adds ~1300 messages).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Dict, List, Tuple

N_HE = 8192          # RLWE degree of CheetahDot and CheetahMul for a 64-bit ring
OLE_BATCH = 8192     # CheetahMul's OLE batch (= N): 8192 OLEs make 4096 Beaver triples
OT_KERNELS = ("trunc_a", "msb_a2b", "a2b", "b2a", "and_bb", "mul_a1b")

# (kernel, a, b): the kernel runs on a*elements + b*rows; "tree" is softmax's max over each row
# (a comparison tree, ``_tree_sizes``), one msb_a2b + mul_a1b (select) per level.
_GELU_ERF = [
    ("trunc_a", 1, 0), ("trunc_a", 1, 0), ("msb_a2b", 1, 0), ("msb_a2b", 1, 0), ("b2a", 1, 0),
    ("mul_aa", 1, 0), ("msb_a2b", 1, 0), ("mul_aa", 1, 0), ("trunc_a", 1, 0), ("mul_aa", 2, 0),
    ("trunc_a", 2, 0), ("trunc_a", 1, 0), ("square_s", 1, 0), ("trunc_a", 1, 0),
    ("square_s", 1, 0), ("trunc_a", 1, 0), ("a2b", 1, 0), ("and_bb", 1, 0)] + \
    [("and_bb", 2, 0)] * 6 + [("and_bb", 1, 0)] * 6 + [
    ("b2a", 1, 0), ("mul_aa", 1, 0), ("trunc_a", 1, 0), ("mul_aa", 1, 0), ("trunc_a", 1, 0),
    ("mul_aa", 1, 0), ("trunc_a", 1, 0), ("square_s", 1, 0), ("trunc_a", 1, 0), ("mul_aa", 1, 0),
    ("trunc_a", 1, 0), ("mul_aa", 1, 0), ("trunc_a", 1, 0), ("mul_a1b", 1, 0), ("mul_a1b", 1, 0),
    ("mul_aa", 1, 0), ("trunc_a", 1, 0)]
_GELU_TANH = [
    ("trunc_a", 1, 0), ("mul_aa", 1, 0), ("trunc_a", 1, 0), ("mul_aa", 1, 0), ("trunc_a", 1, 0),
    ("trunc_a", 1, 0), ("trunc_a", 1, 0), ("msb_a2b", 1, 0), ("mul_a1b", 1, 0), ("msb_a2b", 1, 0),
    ("mul_a1b", 1, 0), ("trunc_a", 1, 0), ("square_s", 1, 0), ("trunc_a", 1, 0)] + \
    [("mul_aa", 1, 0), ("trunc_a", 1, 0)] * 8 + [("trunc_a", 1, 0), ("mul_aa", 1, 0),
                                                 ("trunc_a", 1, 0)]
_SOFTMAX = [("tree", 0, 0), ("msb_a2b", 0, 1), ("mul_a1b", 0, 1), ("trunc_a", 1, 0)] + \
    [("square_s", 1, 0), ("trunc_a", 1, 0)] * 8 + [
    ("msb_a2b", 1, 0), ("b2a", 1, 0), ("mul_aa", 1, 0), ("a2b", 1, 0), ("and_bb", 1, 0)] + \
    [("and_bb", 2, 0)] * 6 + [("and_bb", 1, 0)] * 6 + [
    ("b2a", 1, 0), ("mul_aa", 1, 0), ("trunc_a", 1, 0), ("mul_aa", 1, 0), ("trunc_a", 1, 0),
    ("mul_aa", 1, 0), ("trunc_a", 1, 0), ("square_s", 1, 0), ("trunc_a", 1, 0), ("mul_aa", 1, 0),
    ("trunc_a", 1, 0), ("mul_aa", 1, 0), ("trunc_a", 1, 0), ("mul_aa", 1, 0), ("trunc_a", 1, 0),
    ("mul_aa", 1, 0)]
_LAYERNORM = [
    ("trunc_a", 0, 1), ("mul_aa", 1, 0), ("trunc_a", 1, 0), ("trunc_a", 0, 1), ("a2b", 0, 1),
    ("and_bb", 0, 1)] + [("and_bb", 0, 2)] * 6 + [("and_bb", 0, 1)] * 6 + [
    ("b2a", 0, 1), ("mul_aa", 0, 1), ("trunc_a", 0, 1), ("mul_aa", 0, 1), ("trunc_a", 0, 1),
    ("mul_aa", 0, 2), ("trunc_a", 0, 2), ("trunc_a", 0, 1), ("b2a", 0, 1), ("b2a", 0, 1),
    ("mul_aa", 0, 1), ("mul_aa", 0, 1), ("trunc_a", 0, 1), ("mul_aa", 1, 0), ("trunc_a", 1, 0)]

TEMPLATES: Dict[str, List[Tuple[str, int, int]]] = {
    "gelu-erf": _GELU_ERF,
    "gelu-tanh": _GELU_TANH,
    # Horner x*(A*x + B) + C: public coefficients make A*x a local product and a truncation
    "poly_public": [("trunc_a", 1, 0), ("mul_aa", 1, 0), ("trunc_a", 1, 0)],
    "poly_secret": [("mul_aa", 1, 0), ("trunc_a", 1, 0), ("mul_aa", 1, 0), ("trunc_a", 1, 0)],
    "softmax": _SOFTMAX,
    "layernorm": _LAYERNORM,
}


def _tree_sizes(rows: int, length: int) -> List[int]:
    """Element counts of the comparison levels of SPU's max over rows of ``length``: the row is
    halved while it can be (an odd element is set aside), then the set-aside ones are folded in."""
    sizes, rest, n = [], 0, length
    while n > 1:
        if n % 2:
            rest += 1
            n -= 1
        n //= 2
        sizes.append(rows * n)
    return sizes + [rows] * rest


@functools.lru_cache(maxsize=4096)
def submat_shape(m: int, k: int, n: int, poly_deg: int = N_HE) -> Tuple[int, int, int]:
    """CheetahDot's sub-block for an (m x k) @ (k x n) product: its bandwidth-first search."""
    best, shape = math.inf, (1, 1, 1)
    for d0 in range(1, min(poly_deg, m) + 1):
        b0 = -(-m // d0)
        d1 = 1
        while d1 <= k and d0 * d1 <= poly_deg:
            b1 = -(-k // d1)
            d2 = min(n, poly_deg // d0 // d1)
            b2 = -(-n // d2)
            sent = min(b0, b2) * b1
            resp = -(-(b0 * b2) // d1)
            autom = -(-(m * n) // poly_deg) * d1
            c = (sent + resp) * 1000.0 + autom + b0 * b1 * b2 / 10.0
            if c <= best:
                best, shape = c, (d0, d1, d2)
            d1 *= 2
    return shape


@functools.lru_cache(maxsize=4096)
def dot_ciphertexts(m: int, k: int, n: int) -> Tuple[int, int, int]:
    """(query ciphertexts, response ciphertexts, coefficients of a lone unpacked response) of
    one direction of an (m x k) @ (k x n) CheetahDot; the last is 0 when responses are packed."""
    d0, d1, d2 = submat_shape(m, k, n)
    b0, b1, b2 = -(-m // d0), -(-k // d1), -(-n // d2)
    q = min(b0, b2) * b1
    if b0 * b2 == 1:
        return q, 1, d0 * d2
    return q, -(-(b0 * b2) // d1), 0


def _splits(n: int) -> int:
    return -(-n // N_HE)


class Pricer:
    """Prices kernel calls in program order (the Beaver cache is state)."""

    def __init__(self, k: Dict[str, Any], cache: int = 0, log: bool = False):
        self.k = k
        self.cache = cache          # Beaver triples left from earlier ops of the same run
        self.log: List[Tuple[str, int]] = [] if log else None

    def call(self, kernel: str, n: int) -> Tuple[float, float]:
        if self.log is not None:
            self.log.append((kernel, n))
        k = self.k
        act = k["actions"]
        if kernel in OT_KERNELS:
            # messages: the kernel's own (per OT worker: SPU splits a call over up to
            # ot_workers instances, 2048 elements each at least) + its share of pool refills
            b = k["ot_rate"][kernel] * n * (1.0 + k["ot_refill_fraction"])
            workers = min(k.get("ot_workers", 2), -(-n // 2048))
            return b, act[kernel] * workers + k["refill_actions_per_byte"] * b
        if kernel == "square_s":
            sets = _splits(n) if n <= N_HE else _splits(n // 2) + _splits(n - n // 2)
            return k["m1"] * sets, act["square_s"] * sets
        if kernel == "mul_aa":
            if n >= 2 * OLE_BATCH:
                sets = _splits(n // 2) + _splits(n - n // 2)
                return k["m2"] * sets, act["mul_direct"] * sets
            b, r = 16.0 * n, act["mul_open"]
            if self.cache < n:
                batches = -(-2 * n // OLE_BATCH)
                self.cache += batches * OLE_BATCH // 2
                b += k["m1"] * batches
                r += act["square_s"] * batches
            self.cache -= n
            return b, r
        raise KeyError(kernel)

    def dot(self, heads: int, m: int, kk: int, n: int) -> Tuple[float, float]:
        q, r, coefs = dot_ciphertexts(m, kk, n)
        if self.log is not None:
            self.log += [("mmul_aa", (m, kk, n))] * heads
        k = self.k
        resp = k["r_single"] + k["r_coef"] * coefs if coefs else k["r_packed"]
        return heads * (k["q"] * q + resp * r), heads * k["actions"]["mmul_aa"] * (q + r)

    def family(self, family: str, elements: int, rows: int = 0, length: int = 0
               ) -> Tuple[float, float]:
        tb = tr = 0.0
        for kernel, a, b in TEMPLATES[family]:
            if kernel == "tree":
                for s in _tree_sizes(rows, length):
                    for kk in ("msb_a2b", "mul_a1b"):
                        x, y = self.call(kk, s)
                        tb, tr = tb + x, tr + y
                continue
            x, y = self.call(kernel, a * elements + b * rows)
            tb, tr = tb + x, tr + y
        return tb, tr


def price_op(p: Pricer, op, weights: str) -> Tuple[float, float]:
    """Bytes (mean over the two parties) and send actions of one ``cost_model.OpShape``."""
    if op.family == "matmul":
        heads, m, kk, n = op.dims
        b, r = p.call("trunc_a", op.out)             # the product's truncation
        if op.b_is_param and weights == "public":
            return b, r                               # mmul_ap: local
        x, y = p.dot(heads, m, kk, n)
        return b + x, r + y
    if op.family == "softmax":
        return p.family("softmax", op.a, op.b, op.out)
    if op.family == "layernorm":
        return p.family("layernorm", op.a, op.b)
    if op.family == "mean":
        return p.call("trunc_a", op.a)
    fam = op.family
    if fam == "poly":
        fam = "poly_public" if weights == "public" else "poly_secret"
    return p.family(fam, op.a)
