"""Train the wider CIFAR-10 teacher on a GPU within a time budget (issue 11: "where a GPU is
present, also train a wider teacher there").

A lent GPU comes for minutes, so the epoch count is chosen from a measurement instead of
guessed: the engine's training and inference rates are timed on random batches of the same
shape, the epoch time is estimated from them (with a margin for the host's augmentation and
the per-epoch evaluation), and as many epochs as fit in ``--budget`` seconds are run with the
CPU teacher's recipe (RandAugment 9, Mixup/CutMix, label smoothing 0.1, warmup + cosine,
AdamW) through ``python -m polyvit train``. If the estimate was optimistic, a SIGTERM at the
budget's end stops training cleanly at a checkpoint (the run can resume elsewhere).

What comes back is one tar (the device tool returns 8 files at most, 16 MiB each): the log,
the console output, the plan, and the weights as float16 safetensors (float32 would not fit
at width 192; ``polyvit.load`` widens float16 on reading). The accuracy that counts is the
one measured afterwards on the CPU engine from that float16 file.

    python bench/gpu_teacher.py --data cifar10-jpeg.tar.gz --budget 200 --out /tmp/t
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np

RECIPE = dict(preset="vit_mini_patch4_32", depth=12, embed_dim=192, num_heads=3,
              batch_size=256, lr=1e-3, weight_decay=0.05, label_smoothing=0.1, magnitude=9)
TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000


def measure(precision: str, device: str) -> dict:
    """Training and inference images/s of the recipe's model on the GPU (random data)."""
    import polyvit

    r = RECIPE
    m = polyvit.ViT.preset(r["preset"], depth=r["depth"], embed_dim=r["embed_dim"],
                           num_heads=r["num_heads"], num_classes=10, max_batch=r["batch_size"],
                           seed=0, device=device, precision=precision)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (r["batch_size"], 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, r["batch_size"]).astype(np.int64)
    opt = polyvit.AdamW(m, lr=1e-4, weight_decay=0.05)

    def rate(fn, n):
        for _ in range(2):
            fn()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return n * r["batch_size"] / (time.perf_counter() - t)

    loss = polyvit.Loss(ce=1.0)
    n = 20 if device == "cuda" else 2
    train = rate(lambda: m.train_step(x, labels=y, loss=loss, optimizer=opt), n)
    infer = rate(lambda: m.forward(x), n)
    return {"train_img_s": train, "infer_img_s": infer}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the CIFAR-10 JPEG archive")
    ap.add_argument("--budget", type=float, required=True, help="seconds for training")
    ap.add_argument("--out", required=True)
    ap.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="tf32")
    ap.add_argument("--max-epochs", type=int, default=300)
    ap.add_argument("--epochs", type=int,
                    help="run this many epochs instead of fitting them to the budget (the "
                    "budget still stops the run, at a checkpoint)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: a dry run of this script (with --precision fp32 --train-size N)")
    ap.add_argument("--train-size", type=int, help="a smaller training set (dry runs)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    t0 = time.perf_counter()

    rates = measure(a.precision, a.device)
    # the host's augmentation + Mixup and the evaluation are not in the rates: a 35% margin on
    # the training time, and ~25 s for decoding the archive before the first step
    n_train, n_test = (a.train_size, a.train_size) if a.train_size else (TRAIN_IMAGES, TEST_IMAGES)
    epoch_s = 1.35 * n_train / rates["train_img_s"] + n_test / rates["infer_img_s"]
    left = a.budget - (time.perf_counter() - t0) - 25
    epochs = a.epochs or int(max(3, min(a.max_epochs, left // epoch_s)))
    plan = {"recipe": RECIPE, "precision": a.precision, "measured": rates,
            "epoch_seconds_estimate": epoch_s, "epochs": epochs, "budget_seconds": a.budget}
    print("plan:", json.dumps(plan), flush=True)
    json.dump(plan, open(os.path.join(a.out, "plan.json"), "w"), indent=1)

    r = RECIPE
    cmd = [sys.executable, "-m", "polyvit", "train", "--device", a.device,
           "--precision", a.precision, "--data", a.data, "--out", a.out,
           "--preset", r["preset"], "--depth", str(r["depth"]), "--embed-dim", str(r["embed_dim"]),
           "--num-heads", str(r["num_heads"]), "--batch-size", str(r["batch_size"]),
           "--epochs", str(epochs), "--lr", str(r["lr"]), "--warmup", str(max(1, epochs // 10)),
           "--weight-decay", str(r["weight_decay"]), "--label-smoothing", str(r["label_smoothing"]),
           "--magnitude", str(r["magnitude"]), "--checkpoint-every", "2000", "--seed", "0"]
    if a.train_size:
        cmd += ["--train-size", str(a.train_size), "--eval-size", str(a.train_size)]
    print("command:", " ".join(cmd[1:]), flush=True)
    with open(os.path.join(a.out, "train.log"), "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = t0 + a.budget + 60
        while proc.poll() is None and time.perf_counter() < deadline:
            time.sleep(1)
        if proc.poll() is None:  # a clean stop: the step finishes and a checkpoint is written
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(f"training exit status {proc.returncode} after {time.perf_counter() - t0:.0f} s",
          flush=True)

    src = os.path.join(a.out, "model.safetensors")
    if not os.path.exists(src):
        src = os.path.join(a.out, "checkpoint.safetensors")
    names = ["plan.json", "train.log", "log.jsonl"]
    if os.path.exists(src):
        half = os.path.join(a.out, "model-fp16.safetensors")
        import polyvit

        polyvit.load(src).save(half, dtype="float16")  # a checkpoint's AdamW moments left out
        names.append(os.path.basename(half))
    with tarfile.open(os.path.join(a.out, "..", "teacher.tar"), "w") as tar:
        for n in names:
            if os.path.exists(os.path.join(a.out, n)):
                tar.add(os.path.join(a.out, n), arcname=n)
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
