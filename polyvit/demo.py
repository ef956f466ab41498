"""``python -m polyvit demo``: the method end to end on the assets shipped inside the package.

A small GELU teacher trained by polyvit on CIFAR-10 (JPEG q75) and a few hundred real CIFAR-10
test images travel in ``polyvit/data/``. The demo replaces GELU in every block (Full) and shows
V1 (static fit) collapsing, V2 (DirectFit + Scale Fix) repairing most of it, and a short
distillation with trainable coefficients (pure logit MSE) closing the gap. Half of the images
calibrate and distil, the other half evaluate. No network, no shared data folder needed.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Dict, List

import numpy as np

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
TEACHER = os.path.join(DATA_DIR, "demo_teacher.safetensors")
IMAGES = os.path.join(DATA_DIR, "demo_images.npz")


def assets_present() -> bool:
    return os.path.isfile(TEACHER) and os.path.isfile(IMAGES)


def load_assets(max_batch: int = 64):
    """(teacher, train (images, labels), test (images, labels), class names)."""
    import polyvit

    if not assets_present():
        raise FileNotFoundError(f"the demo assets are missing from {DATA_DIR} (a broken install?)")
    teacher = polyvit.load(TEACHER, max_batch=max_batch)
    with np.load(IMAGES) as z:
        x, y, classes = z["images"], z["labels"].astype(np.int64), [str(c) for c in z["classes"]]
    half = len(x) // 2
    return teacher, (x[:half], y[:half]), (x[half:], y[half:]), classes


def run(epochs: int = 8, blocks: Any = "all", batch_size: int = 50, lr: float = 3e-4,
        coeff_lr: float = 1e-2, seed: int = 0, progress: bool = True) -> List[Dict[str, Any]]:
    import polyvit
    from polyvit import fit, mpc
    from polyvit.losses import Loss
    from polyvit.metrics import evaluate
    from polyvit.training import Distiller, Stage

    t0 = time.time()
    teacher, train, test, _ = load_assets()
    rows = []

    def row(name, model, seconds):
        r = evaluate(model, teacher, test)
        rows.append(dict(name=name, top1=r["student_top1"], fidelity=r["fidelity"],
                         cosine=r["logit_cosine"], gelu_pct=mpc.count(model)["gelu_comparison_pct"],
                         seconds=seconds))
        if progress:
            print(f"  {name:<38s} top-1 {100 * r['student_top1']:5.1f}%  fidelity "
                  f"{100 * r['fidelity']:5.1f}%  ({seconds:.0f} s)", file=sys.stderr, flush=True)

    label = "Full" if blocks == "all" else f"blocks {blocks}"
    row("teacher (GELU)", teacher, 0.0)
    t = time.time()
    s1 = polyvit.student(teacher, blocks, max_batch=64)
    fit.static(s1, blocks)
    row(f"{label}, V1 static fit", s1, time.time() - t)
    t = time.time()
    s2 = polyvit.student(teacher, blocks, max_batch=max(batch_size, 64))
    fit.directfit(s2, teacher, train[0], blocks)
    row(f"{label}, V2 DirectFit + Scale Fix", s2, time.time() - t)
    t = time.time()
    Distiller(s2, teacher, train, loss=Loss(mse=1.0, ce=0.0), coeff_lr=coeff_lr,
              batch_size=batch_size, seed=seed, progress=progress,
              stages=[Stage(epochs=epochs, lr=lr, warmup_epochs=1.0, magnitude=9)]).run()
    row(f"{label}, distilled ({epochs} short epochs)", s2, time.time() - t)
    if progress:
        print(f"  total {time.time() - t0:.0f} s", file=sys.stderr)
    return rows


def table(rows: List[Dict[str, Any]]) -> str:
    out = ["| model | top-1 | fidelity | logit cosine | GELU comparisons left |",
           "|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['name']} | {100 * r['top1']:.1f}% | {100 * r['fidelity']:.1f}% | "
                   f"{r['cosine']:.3f} | {r['gelu_pct']:.0f}% |")
    return "\n".join(out)


def main(args) -> int:
    teacher, train, test, _ = load_assets()
    print(f"polyvit demo: {teacher}\n  {len(train[0])} images to calibrate and distil, "
          f"{len(test[0])} to evaluate (real CIFAR-10 test images)", file=sys.stderr)
    rows = run(epochs=args.epochs, progress=True)
    print(table(rows))
    return 0
