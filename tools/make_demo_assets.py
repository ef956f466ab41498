"""Write the demo's assets into polyvit/data/: the teacher (float16, from a trained polyvit model
or training checkpoint) and a class-balanced sample of real CIFAR-10 test images.

    python tools/make_demo_assets.py results/teacher-cifar12/checkpoint.safetensors --per-class 50
"""
import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import polyvit  # noqa: E402
from polyvit import datasets  # noqa: E402
from polyvit.demo import IMAGES, TEACHER  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", help="a polyvit model file or training checkpoint")
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    # the model part of a model file or training checkpoint, as float16
    polyvit.load(args.model).save(TEACHER, dtype="float16", metadata={
        "note": "demo teacher trained by polyvit on CIFAR-10 (JPEG q75), stored as float16; "
                "source " + os.path.basename(args.model)})
    test = datasets.load_cifar10_jpeg("test", progress=False)
    rng = np.random.default_rng(args.seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(test.labels == c), args.per_class, replace=False)
                          for c in range(test.num_classes)])
    rng.shuffle(idx)  # the demo halves it: both halves hold every class
    np.savez_compressed(IMAGES, images=test.images[idx], labels=test.labels[idx].astype(np.uint8),
                        classes=np.array(test.classes), source_index=idx.astype(np.int32))
    print(f"wrote {TEACHER} ({os.path.getsize(TEACHER) / 1e6:.1f} MB) and {IMAGES} "
          f"({os.path.getsize(IMAGES) / 1e6:.1f} MB, {len(idx)} images)")


if __name__ == "__main__":
    main()
