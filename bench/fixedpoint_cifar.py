"""The whole CIFAR-10 test set in simulated MPC fixed point (polyvit.mpc.fixedpoint, in C).

    python bench/fixedpoint_cifar.py --model volterra --frac-bits 12 14 16 18
    python bench/fixedpoint_cifar.py --model demo

For the GELU teacher, Hybrid-k and Full (DirectFit + Scale Fix students on 512 training images):
top-1 in float and in the 64-bit ring, fidelity (ring predictions vs float predictions), logit
cosine, the largest |x| per block against the safe bound 2^(31-f), and the time. The issue's
bar: fidelity >= 99.5% at 16 or more fractional bits. JSON in results/mpc/.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import cpu_name, load_cifar_model  # noqa: E402

import polyvit  # noqa: E402
from polyvit import fit  # noqa: E402
from polyvit.datasets import balanced_sample  # noqa: E402
from polyvit.mpc import fixedpoint  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("volterra", "demo", "cifar12"), default="volterra")
    ap.add_argument("--frac-bits", type=int, nargs="+", default=[12, 14, 16, 18])
    ap.add_argument("--images", type=int, default=None, help="default: the whole test set")
    ap.add_argument("--out")
    a = ap.parse_args()
    out = a.out or os.path.join(ROOT, "results", "mpc", f"fixedpoint-{a.model}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    teacher, cal, x, y, k = load_cifar_model(a.model)
    if a.images:
        pick = balanced_sample(y, a.images)   # the archive is stored class by class
        x, y = x[pick], np.asarray(y)[pick]
    d = teacher.config.depth
    rows = []
    for label, blocks in (("teacher (GELU)", []), (f"Hybrid-{k}", list(range(k))),
                          (f"Full-{d}", list(range(d)))):
        m = teacher
        if blocks:
            m = polyvit.student(teacher, blocks, max_batch=256)
            fit.directfit(m, teacher, cal, blocks)
        for f in a.frac_bits:
            t = time.time()
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always", fixedpoint.FixedPointOverflowWarning)
                r = fixedpoint.evaluate(m, x, frac_bits=f, labels=y)
            rd = r.to_dict()
            rows.append(dict(config=label, frac_bits=f, top1=r.top1, float_top1=r.float_top1,
                             fidelity=r.fidelity, logit_cosine=r.logit_cosine,
                             max_abs_error=r.max_abs_error, safe_bound=r.safe_bound,
                             overflow_warnings=[str(i.message) for i in w],
                             blocks=rd.get("blocks"), head=rd.get("head"),
                             seconds=time.time() - t))
            print(f"{label:16s} f={f:2d}: top-1 {100 * r.top1:.2f}% (float {100 * r.float_top1:.2f}%) "
                  f"fidelity {100 * r.fidelity:.2f}%  cosine {r.logit_cosine:.6f}  "
                  f"{time.time() - t:.0f} s{'  OVERFLOW' if w else ''}", file=sys.stderr)
            with open(out, "w") as fh:
                json.dump(dict(model=a.model, images=len(x), machine=f"{cpu_name()}, {os.cpu_count()} cores",
                               command="python bench/fixedpoint_cifar.py " + " ".join(sys.argv[1:]),
                               rows=rows), fh, indent=1)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
