"""Measure the constants of polyvit's CHEETAH kernel model (``polyvit/mpc/cheetah_model.py``).

    python bench/cheetah_calibrate.py            # then: python bench/mpc_constants.py \\
                                                 #   --protocols cheetah --check-only --check-models tiny mini

Every calibration program runs under SPU (CHEETAH, 64-bit ring, 18 fractional bits) after the
same warm-up of tiny ops as ``bench/mpc_constants.py`` (it sets up the OT and HE keys), and each
kernel's cost is read from SPU's own per-kernel profile (MPC level) as the difference with the
warm-up alone. The kernel calls of each program come from the model's templates, so:

- ``m1``: bytes per CheetahMul ciphertext set (8192 slots, the mean of the querying and the
  responding party), from ``exp`` (8 ``square_s``) at sizes of 1 and 2 sets;
- ``m2``: bytes per 8192 elements of a direct ``mul_aa`` (>= 16384 elements);
- ``q``, ``r_packed``, ``r_single`` (+ ``r_coef``): CheetahDot bytes per query ciphertext, per
  packed response, per lone unpacked response, by least squares over secret x secret products
  whose ciphertext counts (``cheetah_model.dot_ciphertexts``) differ;
- ``ot_rate``: bytes per element of each OT-based kernel: the lowest rate over the op families
  (a refill lands on whichever kernel drains the pool);
- ``ot_refill_fraction``: the OT-pool refills (~0.3 MB per party each), as a fraction of the
  OT kernels' own bytes, over runs long enough for many refills;
- ``actions``: send actions per kernel call (rounds are reported as these, roughly);
- ``setup``: a run's one-time cost (HE keys incl. Galois keys, OT bootstrap): programs run
  *without* the warm-up, minus the model's price of their ops.

The result goes to ``polyvit/mpc/spu_constants.json`` under ``protocols.cheetah.kernel_model``
(the per-family samples of the linear model stay as they are, as a record of why it failed).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mpc_constants as mc  # noqa: E402

from polyvit.mpc import cheetah_model as cm  # noqa: E402
from polyvit.mpc import cost_model  # noqa: E402
from polyvit.mpc import jax_export as ex  # noqa: E402
from polyvit.mpc import spu_runtime as sr  # noqa: E402

rand = mc.rand
HE_KERNELS = ("square_s", "mul_aa", "mmul_aa")


def kernels(fn, args, vis, warm=True):
    """(total bytes mean over parties, {kernel: [calls, bytes mean, actions mean]})."""
    if warm:
        f = lambda w, *a: (mc._warm(w), fn(*a))  # noqa: E731
        args, vis = [rand(2, 2)] + list(args), ["secret"] + list(vis)
    else:
        f = fn
    _, rep = sr.execute(f, args, vis, protocol="cheetah", field=64, frac_bits=18)
    per = {}
    for r in range(2):
        for o in rep.ops("mpc", r).values():
            if o.send_bytes or o.send_actions:
                e = per.setdefault(o.name, [o.count, 0.0, 0.0])
                e[1] += o.send_bytes / 2
                e[2] += o.send_actions / 2
    kernels.last_actions = float(np.mean(rep.send_actions))
    return float(np.mean(rep.send_bytes)), per


def delta(run, base):
    out = {}
    for name, (c, b, a) in run.items():
        c0, b0, a0 = base.get(name, [0, 0.0, 0.0])
        if c - c0:
            out[name] = [c - c0, b - b0, a - a0]
    return out


def mm(m, k, n):
    return ex._matmul, [rand(m, k), rand(k, n)], ["secret"] * 2


FAMILY_RUNS = [  # (family, fn, args, vis, elements, rows, row length)
    ("gelu-erf", ex._gelu_erf, lambda: [rand(8192, scale=2.0)], ["secret"], 8192, 0, 0),
    ("gelu-tanh", ex._gelu_tanh, lambda: [rand(6000, scale=2.0)], ["secret"], 6000, 0, 0),
    ("softmax", ex._softmax, lambda: [rand(64, 65, scale=3.0)], ["secret"], 64 * 65, 64, 65),
    ("softmax", ex._softmax, lambda: [rand(68, 17, scale=3.0)], ["secret"], 68 * 17, 68, 17),
    ("layernorm", lambda x: ex._normalize(x, 1e-6), lambda: [rand(260, 64) * 3 + 1], ["secret"],
     260 * 64, 260, 64),
    ("poly_secret", ex._poly_horner, lambda: [rand(4000), rand(1), rand(1), rand(1)],
     ["secret"] * 4, 4000, 0, 0),
]
BIG_RUNS = [
    ("gelu-erf", ex._gelu_erf, lambda: [rand(24000, scale=2.0)], ["secret"], 24000, 0, 0),
    ("softmax", ex._softmax, lambda: [rand(256, 65, scale=3.0)], ["secret"], 256 * 65, 256, 65),
    ("layernorm", lambda x: ex._normalize(x, 1e-6), lambda: [rand(1040, 64) * 3 + 1],
     ["secret"], 1040 * 64, 1040, 64),
]
DOT_SHAPES = [(16, 48, 32), (65, 64, 192), (65, 256, 64), (17, 16, 17), (1, 32, 10),
              (65, 16, 65), (197, 64, 64), (130, 128, 32)]


# send actions of one OT kernel call on one OT instance, without pool refills (read off the
# refill-free calls of the calibration runs: 1 message for a truncation or b2a, 18 for a
# comparison (msb: the Millionaire protocol's rounds), 14 for a2b and its adder); SPU spreads a
# call over min(2, ceil(n/2048)) OT instances on this machine.
OT_DIRECT_ACTIONS = dict(trunc_a=1, msb_a2b=18, a2b=14, b2a=1, and_bb=2, mul_a1b=2)


def fit_rounds(km):
    """Send actions: each kernel's own messages plus pool refills (~1300 messages each) in
    proportion to the OT bytes, fitted over the calibration runs (a rough count)."""
    km["ot_workers"] = 2
    km["actions"].update(OT_DIRECT_ACTIONS)
    extra = ot_bytes = 0.0
    for r in km["samples"]["ot_families"] + km["samples"]["ot_refills"]:
        w = min(km["ot_workers"], -(-r["elements"] // 2048))
        for k, (calls, b, acts) in r["spu"].items():
            if k in OT_DIRECT_ACTIONS:
                extra += acts - OT_DIRECT_ACTIONS[k] * calls * w
                ot_bytes += b
    km["refill_actions_per_byte"] = max(extra, 0.0) / ot_bytes
    # the setup's messages: the setup runs' send actions less the model's for their ops
    setups = []
    for r in km["samples"]["setup"]:
        p = cm.Pricer(km)
        _, a0 = p.dot(1, 2, 2, 2)
        _, a1 = p.family(r["family"], r["elements"], r["rows"], r["length"])
        setups.append(r["actions"] - a0 - a1)
    km["setup"]["rounds"] = float(np.mean(setups))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=cost_model.CONSTANTS_PATH)
    ap.add_argument("--refit", action="store_true",
                    help="refit the rounds from the stored samples (no SPU runs)")
    a = ap.parse_args()
    if a.refit:
        with open(a.out) as f:
            table = json.load(f)
        fit_rounds(table["protocols"]["cheetah"]["kernel_model"])
        with open(a.out, "w") as f:
            json.dump(table, f, indent=1)
        return
    t0 = time.time()

    def log(s):
        print(f"[{time.time() - t0:6.0f}s] {s}", flush=True)

    _, base = kernels(lambda: 0.0, [], [])
    log(f"warm-up alone: {sum(v[1] for v in base.values()) / 1e6:.2f} MB in kernels")
    samples = {}

    # m1: exp squares 8 times (square_s): 1 ciphertext set each at 3000 elements, 2 at 12000
    rows = []
    for n in (3000, 12000):
        _, per = kernels(lambda x: __import__("jax").numpy.exp(x), [rand(n)], ["secret"])
        d = delta(per, base)["square_s"]
        sets = 8 * (1 if n <= cm.N_HE else cm._splits(n // 2) + cm._splits(n - n // 2))
        rows.append(dict(n=n, calls=d[0], bytes=d[1], actions=d[2], sets=sets))
        log(f"square_s x{d[0]} n={n}: {d[1] / sets:,.0f} B per set")
    samples["square_s"] = rows
    m1 = sum(r["bytes"] for r in rows) / sum(r["sets"] for r in rows)
    act_sq = sum(r["actions"] for r in rows) / sum(r["sets"] for r in rows)

    # m2: direct products (>= 2*8192 elements), and the Beaver path's opening (16 B/element)
    rows = []
    for n in (16384, 40000):
        _, per = kernels(lambda x, y: x * y, [rand(n), rand(n)], ["secret"] * 2)
        d = delta(per, base)["mul_aa"]
        sets = cm._splits(n // 2) + cm._splits(n - n // 2)
        rows.append(dict(n=n, calls=d[0], bytes=d[1], actions=d[2], sets=sets))
        log(f"mul_aa direct n={n}: {d[1] / sets:,.0f} B per 8192 elements")
    samples["mul_direct"] = rows
    m2 = sum(r["bytes"] for r in rows) / sum(r["sets"] for r in rows)
    act_direct = sum(r["actions"] for r in rows) / sum(r["sets"] for r in rows)
    rows = []
    for n in (1000, 3000):   # served from the cache the warm-up filled (4096 triples)
        _, per = kernels(lambda x, y: x * y, [rand(n), rand(n)], ["secret"] * 2)
        d = delta(per, base)["mul_aa"]
        rows.append(dict(n=n, calls=d[0], bytes=d[1], actions=d[2]))
        log(f"mul_aa beaver n={n}: {d[1] / n:.2f} B/element")
    samples["mul_beaver"] = rows
    act_open = float(np.mean([r["actions"] for r in rows]))

    # CheetahDot: bytes = q*Q + r_packed*R_packed + (r_single + r_coef*coefs)*R_single
    rows = []
    for (m, k, n) in DOT_SHAPES:
        _, per = kernels(*mm(m, k, n))
        d = delta(per, base)["mmul_aa"]
        Q, R, coefs = cm.dot_ciphertexts(m, k, n)
        rows.append(dict(shape=[m, k, n], sub=list(cm.submat_shape(m, k, n)), Q=Q, R=R,
                         coefs=coefs, bytes=d[1], actions=d[2]))
        log(f"mmul_aa {m}x{k}x{n} -> {cm.submat_shape(m, k, n)}: Q={Q} R={R} coefs={coefs}: "
            f"{d[1]:,.0f} B")
    samples["mmul_aa"] = rows
    X = np.array([[r["Q"], 0 if r["coefs"] else r["R"], 1 if r["coefs"] else 0, r["coefs"]]
                  for r in rows], float)
    y = np.array([r["bytes"] for r in rows])
    (q, r_packed, r_single, r_coef), *_ = np.linalg.lstsq(X, y, rcond=None)
    act_dot = sum(r["actions"] for r in rows) / sum(r["Q"] + r["R"] for r in rows)
    km = dict(m1=m1, m2=m2, q=float(q), r_packed=float(r_packed), r_single=float(r_single),
              r_coef=float(r_coef), ot_rate={k: 0.0 for k in cm.OT_KERNELS},
              ot_refill_fraction=0.0, refill_actions_per_byte=0.0, ot_workers=2,
              actions=dict(square_s=act_sq, mul_direct=act_direct, mul_open=act_open,
                           mmul_aa=act_dot, **OT_DIRECT_ACTIONS))
    pred = X @ np.array([q, r_packed, r_single, r_coef])
    km["dot_worst_fit"] = float(np.max(np.abs(pred - y) / y))
    log(f"dot: q={q:,.0f} r_packed={r_packed:,.0f} r_single={r_single:,.0f} "
        f"r_coef={r_coef:.1f}; worst fit {100 * km['dot_worst_fit']:.2f}%")

    # OT kernels: pooled bytes per element over the op families
    tot = {k: [0.0, 0.0, 0.0] for k in cm.OT_KERNELS}   # bytes, elements, actions per call
    calls = {k: 0 for k in cm.OT_KERNELS}
    rows = []
    for fam, fn, mk, vis, n, r_, T in FAMILY_RUNS:
        _, per = kernels(fn, mk(), vis)
        d = delta(per, base)
        p = cm.Pricer(km, cache=4000, log=True)
        p.family(fam, n, r_, T)
        el = {k: 0 for k in cm.OT_KERNELS}
        nc = {k: 0 for k in cm.OT_KERNELS}
        for kern, sz in p.log:
            if kern in el:
                el[kern] += sz
                nc[kern] += 1
        for k in cm.OT_KERNELS:
            if k in d:
                if d[k][0] != nc[k]:
                    log(f"  {fam}: SPU made {d[k][0]} {k} calls, the template {nc[k]}")
                tot[k][0] += d[k][1]
                tot[k][1] += el[k]
                tot[k][2] += d[k][2]
                calls[k] += d[k][0]
        # the HE kernels of the template against SPU's, as a check of the templates
        he = {k: d.get(k, [0, 0.0, 0.0]) for k in ("square_s", "mul_aa")}
        rows.append(dict(family=fam, elements=n, rows=r_, length=T,
                         spu={k: v for k, v in d.items()}, template_elements=el))
        log(f"{fam} n={n}: " + ", ".join(f"{k} {d[k][1] / max(el[k], 1):.1f} B/el"
                                         for k in cm.OT_KERNELS if k in d)
            + f"; HE {', '.join(f'{k} {v[1] / 1e6:.2f} MB' for k, v in he.items())}")
    samples["ot_families"] = rows
    # a kernel's own rate is the lowest seen (a refill lands on whichever kernel drains the
    # pool, so the others are inflated by it)
    km["ot_rate"] = {k: min(r["spu"][k][1] / r["template_elements"][k] for r in rows
                            if k in r["spu"]) for k in cm.OT_KERNELS}
    km["ot_refill_fraction"] = 0.0
    log("ot rates: " + ", ".join(f"{k} {v:.1f}" for k, v in km["ot_rate"].items()))
    # refills, as a fraction of the OT bytes, over long runs (many refills each). SPU spreads
    # an OT kernel over more than 2048 elements on a second OT instance, set up (~0.75 MB) the
    # first time: a truncation over 4096 elements in the reference run and in each long run
    # keeps that set-up out of the difference.
    rows = []
    extra = direct = 0.0
    z = rand(4096)
    _, base2 = kernels(lambda z: z * 0.5, [z], ["secret"])
    for fam, fn, mk, vis, n, r_, T in BIG_RUNS:
        _, per = kernels(lambda z, *a: (z * 0.5, fn(*a)), [z] + mk(), ["secret"] + vis)
        d = delta(per, base2)
        p = cm.Pricer(km, cache=4000, log=True)
        p.family(fam, n, r_, T)
        el = {k: 0 for k in cm.OT_KERNELS}
        for kern, sz in p.log:
            if kern in el:
                el[kern] += sz
        mine = sum(km["ot_rate"][k] * el[k] for k in cm.OT_KERNELS)
        spu_ot = sum(d[k][1] for k in cm.OT_KERNELS if k in d)
        rows.append(dict(family=fam, elements=n, rows=r_, length=T, spu_ot_bytes=spu_ot,
                         direct_ot_bytes=mine, spu={k: v for k, v in d.items()}))
        extra += spu_ot - mine
        direct += mine
        log(f"{fam} n={n}: OT {spu_ot / 1e6:.2f} MB, of which refills {100 * (spu_ot / mine - 1):.1f}%")
    samples["ot_refills"] = rows
    km["ot_refill_fraction"] = extra / direct
    log(f"refills: {100 * km['ot_refill_fraction']:.2f}% of the OT kernels' own bytes")

    # setup: whole programs without the warm-up (a small product first, as in a ViT), minus
    # the model's price of their ops
    rows = []
    for fam, fn, mk, vis, n, r_, T in FAMILY_RUNS[:3]:
        total, _ = kernels(lambda w, *xs: (w @ w, fn(*xs)), [rand(2, 2)] + mk(),
                           ["secret"] + vis, warm=False)
        p = cm.Pricer(km)
        b0, _ = p.dot(1, 2, 2, 2)
        b1, _ = p.family(fam, n, r_, T)
        rows.append(dict(family=fam, elements=n, measured=total, model_ops=b0 + b1,
                         setup=total - b0 - b1, actions=kernels.last_actions, rows=r_,
                         length=T))
        log(f"setup from {fam}: {(total - b0 - b1) / 1e6:.3f} MB")
    samples["setup"] = rows
    km["setup"] = dict(bytes=float(np.mean([r["setup"] for r in rows])), rounds=0.0,
                       spread=float(np.ptp([r["setup"] for r in rows])))
    km["samples"] = samples
    fit_rounds(km)
    km["spu_version"] = __import__("spu").__version__
    km["date"] = datetime.date.today().isoformat()
    km["command"] = "python bench/cheetah_calibrate.py " + " ".join(sys.argv[1:])

    with open(a.out) as f:
        table = json.load(f)
    table["protocols"]["cheetah"]["kernel_model"] = km
    with open(a.out, "w") as f:
        json.dump(table, f, indent=1)
    log(f"wrote {a.out} (protocols.cheetah.kernel_model)")


if __name__ == "__main__":
    main()
