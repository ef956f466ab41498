"""Which ingredient of V3 and the final recipe matters, at small scale: volterra-vit128 Full-4,
3 distillation epochs on 20,000 random CIFAR-10 training images (RandAugment(2, 9) +
Mixup/CutMix, lr 5e-4 with warmup + cosine, batch 64, coefficient lr 5e-3), DirectFit on 512,
evaluated on all 10,000 test images. One variant per call; appends a line to results.jsonl:

    python results/ablation-volterra/ablate.py v3mse   # V3 with the final's loss (pure logit MSE)
    python results/ablation-volterra/ablate.py v3kd    # V3 as the experiment runs it: 0.9 KL(T=4) + 0.1 CE
    python results/ablation-volterra/ablate.py final   # trainable coefficients, MSE, one stage from V2
    python results/ablation-volterra/ablate.py prog    # the same in 2 progressive stages:
                                                       # blocks 0-1 (1 epoch), then 0-3 (2 epochs)
"""
import json
import os
import sys
import time

import numpy as np

import polyvit
from polyvit import datasets
from polyvit import fit as fitting
from polyvit.losses import Loss
from polyvit.metrics import evaluate
from polyvit.students import student as make_student
from polyvit.training import Distiller, Stage

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = ("v3mse", "v3kd", "final", "prog")


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in VARIANTS:
        sys.exit(f"usage: python {sys.argv[0]} {{{','.join(VARIANTS)}}}")
    variant = sys.argv[1]
    data = os.environ.get("POLYVIT_DATA") or os.path.join(HERE, "..", "..", "..", "shared", "data")
    teacher = polyvit.import_weights(os.path.join(data, "volterra-vit128.safetensors"), max_batch=500)
    train = datasets.load_cifar10_jpeg("train")
    test = datasets.load_cifar10_jpeg("test")
    rng = np.random.default_rng(5)
    idx = np.sort(rng.choice(len(train), 20000, replace=False))
    cal = train.images[np.sort(rng.choice(len(train), 512, replace=False))]
    blocks, epochs = [0, 1, 2, 3], 3
    t0 = time.time()
    if variant == "prog":
        s = teacher.copy(max_batch=64)
        stages = [Stage(epochs=1, lr=5e-4, warmup_epochs=0.25, blocks=[0, 1]),
                  Stage(epochs=epochs - 1, lr=5e-4, warmup_epochs=0.25, blocks=blocks)]
    else:
        s = make_student(teacher, blocks, max_batch=64)
        fitting.directfit(s, teacher, cal, blocks)
        stages = [Stage(epochs=epochs, lr=5e-4, warmup_epochs=min(1.0, epochs / 4))]
    loss = Loss(kl=0.9, ce=0.1, temperature=4.0) if variant == "v3kd" else Loss(mse=1.0, ce=0.0)
    Distiller(s, teacher, (train.images[idx], train.labels[idx]), None, loss=loss, stages=stages,
              trainable_coeffs=variant in ("final", "prog"), coeff_lr=5e-3, batch_size=64,
              seed=0, progress=False).run()
    r = evaluate(s, teacher, (test.images, test.labels))
    out = dict(variant=variant, seconds=time.time() - t0,
               **{k: r[k] for k in ("student_top1", "teacher_top1", "fidelity", "logit_cosine", "kl")})
    print(json.dumps(out), flush=True)
    with open(os.path.join(HERE, "results.jsonl"), "a") as f:
        f.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
