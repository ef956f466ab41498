"""Real CIFAR-10 test images under SecretFlow SPU: the GELU teacher, Hybrid-k and Full.

    python bench/mpc_real_images.py --model volterra --images 100          # results/mpc/volterra.json
    python bench/mpc_real_images.py --model demo --images 100 --blocks 3   # the shipped demo teacher

For each configuration: the students get DirectFit + Scale Fix coefficients (V2) on 512 training
images; the model then runs under SPU (64-bit ring, 18 fractional bits, secret images and secret
weights) on N test images, as even across the classes as N allows (the archive
is stored class by class), and we record the agreement of SPU's predictions with the
plaintext C engine's, top-1 of both, bytes one party sends per image and rounds per batch as
SPU counted them, SPU's per-op breakdown (per block and op kind, comparison kernels), the
analytic model's estimate beside it, wall time, and the fixed-point C simulation's fidelity on
the same images. A bar chart of where the bytes go is written next to the JSON.
Needs the mpc extra (``pip install "polyvit[mpc]"``, Python 3.10-3.11).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import cpu_name, load_cifar_model  # noqa: E402

import polyvit  # noqa: E402
from polyvit import fit  # noqa: E402
from polyvit.datasets import balanced_sample  # noqa: E402
from polyvit.mpc import fixedpoint  # noqa: E402
from polyvit.mpc.inference import run  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bar_chart(rows, path):
    from polyvit.plots import _plt

    plt = _plt()
    kinds = ["matmul", "softmax", "layernorm", "activation"]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    left = np.zeros(len(rows))
    for k in kinds:
        v = np.array([r["spu"]["ops"]["by_kind"][k] / r["spu"]["batch_size"] / 1e6 for r in rows])
        ax.barh([r["config"] for r in rows], v, left=left, label=k)
        left += v
    ax.set_xlabel("MB sent per party per image (SPU SEMI2K, 64-bit ring)")
    ax.set_title("Where the bytes go")
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("volterra", "demo", "cifar12"), default="volterra")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--blocks", type=int, help="k of Hybrid-k (default: half the depth)")
    ap.add_argument("--protocol", default="semi2k")
    ap.add_argument("--weights", default="secret", choices=("secret", "public"))
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--out", help="JSON path (default results/mpc/<model>.json)")
    a = ap.parse_args()
    out = a.out or os.path.join(ROOT, "results", "mpc", f"{a.model}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)

    teacher, cal, x, y, k = load_cifar_model(a.model, max(a.batch_size, 64))
    k = a.blocks or k
    d = teacher.config.depth
    pick = balanced_sample(y, a.images)   # the archive is stored class by class
    x, y = x[pick], np.asarray(y)[pick]
    configs = [("teacher (GELU)", []), (f"Hybrid-{k}", list(range(k))), (f"Full-{d}", list(range(d)))]
    rows = []
    for label, blocks in configs:
        m = teacher
        if blocks:
            m = polyvit.student(teacher, blocks, max_batch=64)
            fit.directfit(m, teacher, cal, blocks)
        print(f"== {label}: {m}", file=sys.stderr)
        fx = fixedpoint.evaluate(m, x, frac_bits=18, labels=y, progress=False)
        t = time.time()
        r = run(m, x, protocol=a.protocol, weights=a.weights, batch_size=a.batch_size, labels=y)
        rows.append(dict(config=label, blocks=blocks, seconds=time.time() - t,
                         spu=r.to_dict(), fixed_point=dict(fidelity=fx.fidelity, top1=fx.top1,
                                                           max_abs_error=fx.max_abs_error)))
        print(f"   agreement {100 * r.agreement:.1f}%  top-1 SPU {100 * r.top1:.1f}% / plaintext "
              f"{100 * rows[-1]['spu']['plain_top1']:.1f}%  {r.bytes_per_image / 1e6:.1f} MB/image  "
              f"{r.rounds_per_batch:.0f} rounds/batch  {r.seconds_per_image:.2f} s/image",
              file=sys.stderr)
        res = dict(model=a.model, images=len(x), protocol=a.protocol, weights=a.weights,
                   field=64, frac_bits=18, machine=f"{cpu_name()}, {os.cpu_count()} cores",
                   command="python bench/mpc_real_images.py " + " ".join(sys.argv[1:]),
                   test_indices=pick.tolist(), rows=rows)
        with open(out, "w") as f:
            json.dump(res, f, indent=1)
    bar_chart(rows, out.replace(".json", "-bytes.png"))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
