"""Does the student match the teacher as well on images it never trained on?

    python results/cifar12/train_test_fidelity.py   # after results/cifar12{,-long}/run.sh

Evaluates the Hybrid-6 students whose distillations finished on this machine (their row's JSON
and ``runs/<row>/checkpoint.safetensors``, not in git) against the teacher, without augmentation,
on 3,000 random training images (which the distillation saw, augmented, every epoch) and on
3,000 random test images, and writes ``train_test_fidelity.json`` beside this script. A
fidelity much higher on the training images says the student learnt the teacher's function
where it was shown it more than in general: more, or more varied, inputs are then the lever,
not a better fit to the same ones.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

import polyvit
from polyvit.cli import load_data
from polyvit.experiment import machine
from polyvit.metrics import evaluate

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
ROWS = ["results/cifar12/runs/Hybrid-6-V3", "results/cifar12/runs/Hybrid-6-final",
        "results/cifar12-long/runs/Hybrid-6-V3", "results/cifar12-long/runs/Hybrid-6-final"]


def main() -> int:
    train, test = load_data(None, "train"), load_data(None, "test")
    rng = np.random.default_rng(5)
    picks = {"train": (train, np.sort(rng.choice(len(train), 3000, replace=False))),
             "test": (test, np.sort(rng.choice(len(test), 3000, replace=False)))}
    teacher = polyvit.load(os.path.join(ROOT, "results/teacher-cifar12/model.safetensors"),
                           max_batch=500)
    out = {"machine": machine(teacher), "images": 3000, "rng_seed": 5, "rows": []}
    for row in ROWS:
        ckpt = os.path.join(ROOT, row, "checkpoint.safetensors")
        folder, label = os.path.split(os.path.dirname(os.path.join(ROOT, row, "")))
        finished = os.path.join(os.path.dirname(folder), label + ".json")
        if not os.path.exists(ckpt) or not os.path.exists(finished):
            # a distillation still under way has a checkpoint but no row yet
            print(f"{row}: no finished row with its checkpoint here; skipped", file=sys.stderr)
            continue
        student = polyvit.load(ckpt, max_batch=500)
        entry = {"row": row}
        for split, (ds, idx) in picks.items():
            r = evaluate(student, teacher, (ds.images[idx], ds.labels[idx]), activations=False)
            entry[split] = {k: r[k] for k in ("teacher_top1", "student_top1", "fidelity", "kl")}
        out["rows"].append(entry)
        print(f"{row}: fidelity train {100 * entry['train']['fidelity']:.2f} / test "
              f"{100 * entry['test']['fidelity']:.2f}, KL {entry['train']['kl']:.4f} / "
              f"{entry['test']['kl']:.4f}", file=sys.stderr)
    if not out["rows"]:
        # a checkout without the checkpoints must not overwrite the committed measurements
        print("no finished row with its checkpoint here: train_test_fidelity.json left as it is",
              file=sys.stderr)
        return 1
    with open(os.path.join(HERE, "train_test_fidelity.json"), "w") as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
