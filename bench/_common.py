"""Shared by the benchmark scripts: the machine's name and best-of-N timing."""
from __future__ import annotations

import platform
import time


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def best_time(fn, repeats: int, warmup: int = 1) -> float:
    """Best of ``repeats`` wall times (seconds) after ``warmup`` calls: on a shared machine the
    best run is the least disturbed one."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def load_cifar_model(name: str, max_batch: int = 256):
    """A CIFAR-10 teacher with its data: (teacher, 512 calibration images, test images, test
    labels, the k of its Hybrid-k: half its depth). ``name``: "demo" (the teacher and images
    shipped in the package: its calibration half and the shared test set), "volterra" (the
    third-party volterra-vit128 in ../shared/data or $POLYVIT_DATA) or "cifar12" (polyvit's
    12-block teacher, results/teacher-cifar12/model.safetensors, once trained)."""
    import os
    import sys

    import numpy as np

    import polyvit
    from polyvit import datasets

    test = datasets.load_cifar10_jpeg("test")
    if name == "demo":
        from polyvit.demo import load_assets

        t, train, _, _ = load_assets(max_batch=max_batch)
        return t, train[0], test.images, np.asarray(test.labels), t.config.depth // 2
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if name == "cifar12":
        path = os.path.join(root, "results", "teacher-cifar12", "model.safetensors")
        if not os.path.exists(path):
            sys.exit(f"{path} not found: the 12-block teacher has not finished "
                     f"(bash results/teacher-cifar12/run.sh)")
        t = polyvit.load(path, max_batch=max_batch)
    else:
        data = os.environ.get("POLYVIT_DATA") or os.path.join(root, "..", "shared", "data")
        path = os.path.join(data, "volterra-vit128.safetensors")
        if not os.path.exists(path):
            sys.exit(f"{path} not found (set POLYVIT_DATA)")
        t = polyvit.import_weights(path, max_batch=max_batch)
    tr = datasets.load_cifar10_jpeg("train")
    cal = tr.images[np.random.default_rng(0).choice(len(tr), 512, replace=False)]
    return t, cal, test.images, np.asarray(test.labels), t.config.depth // 2

