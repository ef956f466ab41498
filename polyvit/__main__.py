"""python -m polyvit: the command-line face.

  python -m polyvit info        how the engine was built (compiler, OpenMP, BLAS, SIMD)
  python -m polyvit quickstart  a 30-second tour: train a small ViT a few steps, switch blocks
                                to the quadratic activation, keep training, save and reload
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np


def _info(args) -> int:
    import polyvit

    print(json.dumps({"version": polyvit.__version__, "threads": polyvit.get_num_threads(),
                      **polyvit.build_info()}, indent=2))
    return 0


def _quickstart(args) -> int:
    import polyvit

    rng = np.random.default_rng(0)
    model = polyvit.ViT.preset("vit_mini_patch4_32", max_batch=args.batch, depth=4)
    print(model)
    # a synthetic task the model can learn in a few steps: the class is the brightest quadrant
    x = rng.standard_normal((args.batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 4, args.batch)
    for i, (r, c) in enumerate([(0, 0), (0, 16), (16, 0), (16, 16)]):
        x[y == i, :, r:r + 16, c:c + 16] += 1.5
    opt = polyvit.AdamW(model, lr=1e-3, weight_decay=0.05, clip_grad_norm=1.0)

    def train(n, label):
        t = time.perf_counter()
        for step in range(n):
            loss = model.train_step(x, labels=y, optimizer=opt, loss=polyvit.Loss(label_smoothing=0.1))
        acc = (model.forward(x).argmax(1) == y).mean()
        print(f"  {label}: {n} steps, loss {loss:.3f}, train accuracy {acc:.0%}, "
              f"{n * args.batch / (time.perf_counter() - t):.0f} img/s")

    train(args.steps, "GELU model")
    model.set_activation([0, 1], "poly")  # default: least-squares quadratic fit of GELU
    acc = (model.forward(x).argmax(1) == y).mean()
    print(f"  blocks 0-1 -> {model.coefficients(0)['a'][0]:.3f} x^2 + "
          f"{model.coefficients(0)['b'][0]:.3f} x + {model.coefficients(0)['c'][0]:.3f}: "
          f"accuracy {acc:.0%} before retraining")
    train(args.steps, "Hybrid-2 poly model")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.safetensors")
        model.save(path)
        again = polyvit.load(path, max_batch=args.batch)
        same = np.array_equal(again.forward(x), model.forward(x))
        print(f"  saved and reloaded: identical logits = {same}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m polyvit", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    sub.add_parser("info", help="how the engine was built")
    q = sub.add_parser("quickstart", help="a short tour on synthetic data")
    q.add_argument("--steps", type=int, default=15)
    q.add_argument("--batch", type=int, default=32)
    args = ap.parse_args(argv)
    if args.cmd == "info":
        return _info(args)
    if args.cmd == "quickstart":
        return _quickstart(args)
    ap.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
