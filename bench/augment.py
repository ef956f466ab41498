"""Augmentation throughput: polyvit's RandAugment (+ normalize + Mixup/CutMix) against torchvision.

For each image size (32x32 batches of 256, 224x224 batches of 64, real CIFAR-10 test images,
upscaled with Pillow's bicubic for 224) it measures images/s of

  polyvit   RandAugment(2, 9) on the uint8 NHWC batch, in C, with 1 and 2 threads; and the
            training-batch pipeline: RandAugment -> normalize (float32 NCHW) -> polyvit.mixup.Mixup
            (mixup_alpha 0.8, cutmix_alpha 1.0, switch_prob 0.5, label smoothing 0.1);
  peer      torchvision's RandAugment(2, 9) applied per image on PIL images, as a Dataset does it
            (Image.fromarray -> RandAugment -> np.asarray), its tensor path per image (uint8 CHW),
            and the pipeline: PIL RandAugment -> float tensor -> Normalize -> v2.MixUp / v2.CutMix
            (chosen 50/50) on the batch. It runs in another interpreter (``--peer-python``, a venv
            with torch + torchvision, which must not go into polyvit's own environment), in the
            same run, on the same images (passed through a temporary .npy). Without
            ``--peer-python`` the peer is Pillow doing the same ops per image through the test
            suite's reference (tests/test_augment.py), ops drawn as torchvision draws them.

The per-image peers are single-threaded Python loops, so their images/s is per core; polyvit's
per-core figure is images/s / threads. Ratios > 1 mean polyvit is faster. Timings: best of
``--repeats`` after a warm-up (the machine is shared; the best is the least disturbed). On a
machine busier than its cores, OpenMP's default spin-waiting makes 2 threads slower than 1;
``OMP_WAIT_POLICY=passive`` (set before the run) avoids that, and the JSON records which was used.

    python bench/augment.py --peer-python /tmp/tvenv/bin/python
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile

# NumPy's own OpenBLAS would otherwise keep two spinning threads beside the ones measured
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import polyvit  # noqa: E402
from _common import best_time, cpu_name  # noqa: E402
from polyvit import augment as A  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
LOAD_AT_START = [round(v, 2) for v in os.getloadavg()]  # the machine is shared: say how busy it was


def load_images(n: int = 256):
    """n CIFAR-10 test images (uint8 NHWC) and labels; synthetic noise if the archive is absent."""
    data = os.environ.get("POLYVIT_DATA") or os.path.join(HERE, "..", "..", "shared", "data")
    path = os.path.join(data, "cifar10-jpeg.tar.gz")
    if not os.path.exists(path):
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n), "synthetic noise"
    from PIL import Image
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    per = -(-n // 10)
    imgs, labels = [], []
    with tarfile.open(path) as tf:
        for m in tf:
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 3 and parts[0] == "test" and int(parts[2][:4]) < per:
                with Image.open(io.BytesIO(tf.extractfile(m).read())) as im:
                    imgs.append(np.asarray(im.convert("RGB")))
                labels.append(classes.index(parts[1]))
    order = np.random.default_rng(0).permutation(len(imgs))[:n]
    return np.stack(imgs)[order], np.array(labels)[order], "CIFAR-10 test JPEGs (q75)"


# ---- the torchvision peer, run in the peer interpreter ---------------------------------------
PEER_SCRIPT = r'''
import json, sys, time
import numpy as np
import torch, torchvision
from PIL import Image
from torchvision.transforms import RandAugment, Normalize
from torchvision.transforms import functional as F
from torchvision.transforms import v2

x = np.load(sys.argv[1]); labels = torch.as_tensor(np.load(sys.argv[2]))
repeats = int(sys.argv[3]); mean = json.loads(sys.argv[4]); std = json.loads(sys.argv[5])
torch.set_num_threads(1)
torch.manual_seed(0)
ra = RandAugment(num_ops=2, magnitude=9)
norm = Normalize(mean, std)
mix = v2.RandomChoice([v2.MixUp(alpha=0.8, num_classes=10), v2.CutMix(alpha=1.0, num_classes=10)])
tensors = [torch.from_numpy(a).permute(2, 0, 1).contiguous() for a in x]

def best(fn):
    fn()
    b = float("inf")
    for _ in range(repeats):
        t = time.perf_counter(); fn(); b = min(b, time.perf_counter() - t)
    return b

def pil_ra():
    return [np.asarray(ra(Image.fromarray(a))) for a in x]

def tensor_ra():
    return [ra(t) for t in tensors]

def pipeline():
    imgs = [F.pil_to_tensor(ra(Image.fromarray(a))) for a in x]
    batch = norm(torch.stack(imgs).float().div_(255))
    return mix(batch, labels)

out = {"torch": torch.__version__, "torchvision": torchvision.__version__,
       "pillow": Image.__version__ if hasattr(Image, "__version__") else "",
       "randaugment_pil_s": best(pil_ra), "randaugment_tensor_s": best(tensor_ra),
       "pipeline_s": best(pipeline)}
print(json.dumps(out))
'''


def peer_torchvision(python: str, x, labels, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        xp, lp, sp = os.path.join(d, "x.npy"), os.path.join(d, "y.npy"), os.path.join(d, "peer.py")
        np.save(xp, x)
        np.save(lp, labels.astype(np.int64))
        with open(sp, "w") as f:
            f.write(PEER_SCRIPT)
        env = dict(os.environ, OMP_NUM_THREADS="1")
        r = subprocess.run([python, sp, xp, lp, str(repeats), json.dumps(MEAN), json.dumps(STD)],
                           capture_output=True, text=True, env=env, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"the torchvision peer failed:\n{r.stderr[-2000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])


def peer_pillow(x, repeats: int) -> dict:
    """Fallback peer: the test suite's Pillow reference of torchvision's _apply_op, ops and signs
    drawn per image as torchvision's RandAugment draws them (here with Python's random)."""
    import random

    from PIL import Image

    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    import test_augment as ref  # noqa: E402

    table = A.magnitude_table(x.shape[1:3], 9, 31)
    rnd = random.Random(0)

    def pil_ra():
        out = []
        for a in x:
            img = Image.fromarray(a)
            for _ in range(2):
                op = A.OPS[rnd.randrange(14)]
                m = table[op]
                if op in A.SIGNED_OPS and rnd.randrange(2):
                    m = -m
                img = ref.pil_apply_op(img, op, m)
            out.append(np.asarray(img))
        return out

    return {"randaugment_pil_s": best_time(pil_ra, repeats)}


# ---- polyvit -----------------------------------------------------------------------------
def run_polyvit(x, labels, threads: int, repeats: int, mixup) -> dict:
    polyvit.set_num_threads(threads)
    ra = A.RandAugment(num_ops=2, magnitude=9)
    B = len(x)
    step = [0]

    def seeds():
        step[0] += 1
        return np.arange(B, dtype=np.uint64) + np.uint64(step[0] * B)

    def randaugment():
        return ra(x, seeds())

    def pipeline():
        y = A.normalize(ra(x, seeds()), MEAN, STD)
        if mixup is not None:
            y = mixup(y, labels, step[0])
        return y

    return {"randaugment_s": best_time(randaugment, repeats), "pipeline_s": best_time(pipeline, repeats)}


def run_size(size: int, batch: int, threads_list, repeats: int, peer_python, images, labels, source):
    from PIL import Image

    x = images[:batch]
    y = labels[:batch]
    if size != x.shape[1]:
        x = np.stack([np.asarray(Image.fromarray(a).resize((size, size), Image.BICUBIC)) for a in x])
    try:
        from polyvit.mixup import Mixup
        mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5,
                      label_smoothing=0.1, num_classes=10)
        mix_name = "polyvit.mixup.Mixup(0.8, 1.0, prob 1, switch 0.5, smoothing 0.1)"
    except ImportError:
        mixup, mix_name = None, "absent: pipeline = RandAugment + normalize only"

    pv = {}
    for t in threads_list:
        r = run_polyvit(x, y, t, repeats, mixup)
        pv[f"randaugment_img_s_t{t}"] = batch / r["randaugment_s"]
        pv[f"randaugment_img_s_per_core_t{t}"] = batch / r["randaugment_s"] / t
        pv[f"pipeline_img_s_t{t}"] = batch / r["pipeline_s"]
        pv[f"pipeline_img_s_per_core_t{t}"] = batch / r["pipeline_s"] / t

    if peer_python:
        p = peer_torchvision(peer_python, x, y, repeats)
        peer = {"name": f"torchvision {p['torchvision']} RandAugment(2, 9) per image on PIL images "
                        f"(Pillow {p['pillow']}), torch {p['torch']}, 1 thread",
                "randaugment_img_s": batch / p["randaugment_pil_s"],
                "randaugment_tensor_path_img_s": batch / p["randaugment_tensor_s"],
                "pipeline_img_s": batch / p["pipeline_s"],
                "pipeline": "PIL RandAugment -> float tensor / 255 -> Normalize -> "
                            "v2.RandomChoice([MixUp(0.8), CutMix(1.0)]) on the batch"}
    else:
        p = peer_pillow(x, repeats)
        peer = {"name": "Pillow per image (tests/test_augment.py reference of torchvision's "
                        "_apply_op), torchvision not available; 1 thread",
                "randaugment_img_s": batch / p["randaugment_pil_s"]}

    ratio = {}
    for t in threads_list:
        ratio[f"randaugment_per_core_t{t}"] = pv[f"randaugment_img_s_per_core_t{t}"] / peer["randaugment_img_s"]
        if "randaugment_tensor_path_img_s" in peer:
            ratio[f"randaugment_vs_tensor_path_per_core_t{t}"] = (
                pv[f"randaugment_img_s_per_core_t{t}"] / peer["randaugment_tensor_path_img_s"])
        if "pipeline_img_s" in peer:
            ratio[f"pipeline_per_core_t{t}"] = pv[f"pipeline_img_s_per_core_t{t}"] / peer["pipeline_img_s"]

    return {
        "bench": "augment",
        "device": f"{cpu_name()} ({os.cpu_count()} cores visible)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {"image_size": size, "batch": batch, "threads": list(threads_list),
                   "repeats": repeats, "timing": "best of repeats, after one warm-up",
                   "images": source, "randaugment": "num_ops 2, magnitude 9, 31 bins, nearest, fill 0",
                   "normalize": {"mean": MEAN, "std": STD}, "mixup": mix_name,
                   "per_core": "images/s divided by the threads used (the peers use one)",
                   "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (libgomp default: spin, then sleep)"),
                   "load_average_at_start": LOAD_AT_START,
                   "polyvit_build": polyvit.build_info()},
        "polyvit": pv,
        "peer": peer,
        "ratio": ratio,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer-python", default=None,
                    help="interpreter with torch + torchvision for the peer (e.g. /tmp/tvenv/bin/python)")
    ap.add_argument("--sizes", default="32:256,224:64", help="size:batch pairs")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    images, labels, source = load_images(256)
    for pair in args.sizes.split(","):
        size, batch = (int(v) for v in pair.split(":"))
        r = run_size(size, batch, threads, args.repeats, args.peer_python, images, labels, source)
        print(json.dumps(r, indent=2))
        if not args.no_write:
            os.makedirs(args.out, exist_ok=True)
            path = os.path.join(args.out, f"augment_{size}_{r['date'][:10]}.json")
            with open(path, "w") as f:
                json.dump(r, f, indent=2)
                f.write("\n")
            print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
