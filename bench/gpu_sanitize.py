"""Two checks of the CUDA engine that tests/test_cuda.py does not make, for bench/gpu_check.sh.

  python bench/gpu_sanitize.py workload   # every kernel once, small: run it under
                                          # compute-sanitizer (memcheck, racecheck, synccheck)
  python bench/gpu_sanitize.py large      # float32 at ViT-S/16 and ViT-B/16 widths (depth 2,
                                          # batch 4) against the CPU engine: logits, gradients

The test file's configs are small (width <= 192); ``large`` runs the launch shapes the
benchmark uses (width 384/768, 197 tokens, MLP 1536/3072), where grids, per-lane loops and
reductions differ, and prints the relative errors with the same bars as the tests (logits
1e-4, gradients 1e-3). ``workload`` only has to finish without an error report: it is there
for compute-sanitizer, which sees out-of-bounds accesses, shared-memory races and divergent
barriers that no comparison of results can.
"""
from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), os.path.join(HERE, "..", "tests")]

import polyvit  # noqa: E402
from helpers import random_params, set_params  # noqa: E402
from polyvit.config import ViTConfig  # noqa: E402


def rel(x, ref) -> float:
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / max(float(np.linalg.norm(ref)), 1e-30))


def workload() -> None:
    """Every kernel: GELU (erf, tanh) and poly (per block, per channel) blocks, token and
    average pooling, fc_norm, float and uint8 input, capture, backward, AdamW, fp32 and bf16
    (bf16: the bf16 operand conversion; the unfused attention, and the fused forward with
    64-row tiles, with and without the raised shared-memory limit; head size 18 always takes
    the unfused path), and the saved probabilities with padded rows (POLYVIT_CUDA_ATT_LD)."""
    rng = np.random.default_rng(0)
    cfgs = [ViTConfig(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4,
                      num_classes=10, act=("poly", "gelu"), poly_per_channel=(True, False),
                      gelu="tanh"),
            ViTConfig(img_size=24, patch_size=4, embed_dim=72, depth=2, num_heads=4,
                      mlp_ratio=2.5, num_classes=7, act=("gelu", "poly"),
                      global_pool="avg", fc_norm=True, final_norm=False),
            # bf16: the fused attention kernel with over 48 KiB of shared memory (T 197, hs 64)
            ViTConfig(img_size=224, patch_size=16, embed_dim=128, depth=1, num_heads=2,
                      num_classes=10, act=("poly",))]
    for cfg in cfgs:
        for mode in ("fp32", "fp32 pad", "bf16", "bf16 fused pad"):
            precision = mode.split()[0]
            # read when a model is made: the fused attention forward and the padded rows of the
            # saved probabilities are opt-in
            os.environ["POLYVIT_CUDA_ATTENTION"] = "fused" if "fused" in mode else "cublas"
            os.environ["POLYVIT_CUDA_ATT_LD"] = "pad" if "pad" in mode else ""
            B = 3
            m = polyvit.ViT(cfg, max_batch=B, seed=0, device="cuda", precision=precision)
            set_params(m, random_params(cfg, rng))
            x = rng.standard_normal((B, 3, cfg.img_size, cfg.img_size)).astype(np.float32)
            u8 = rng.integers(0, 256, (B, cfg.img_size, cfg.img_size, 3), dtype=np.uint8)
            y = rng.integers(0, cfg.num_classes, B)
            logits, caps = m.forward(x, capture=True)
            m.backward(np.ones_like(logits) / B)
            opt = polyvit.AdamW(m, lr=1e-3, weight_decay=0.05)
            loss = polyvit.Loss(ce=1.0)
            for _ in range(2):
                m.train_step(u8, labels=y, loss=loss, optimizer=opt)
            out = m.forward(u8)
            polyvit.cuda.synchronize()
            assert np.isfinite(out).all() and all(np.isfinite(c).all() for c in caps.values())
            print(f"workload ok: {cfg.act} {mode}", flush=True)


def large() -> int:
    bad = 0
    for name, C, heads in (("vit_small", 384, 6), ("vit_base", 768, 12)):
        cfg = ViTConfig(img_size=224, patch_size=16, embed_dim=C, depth=2, num_heads=heads,
                        num_classes=1000, act=("poly", "gelu"), poly_per_channel=(True, False))
        B = 4
        rng = np.random.default_rng(1)
        P = random_params(cfg, rng)
        x = rng.standard_normal((B, 3, 224, 224)).astype(np.float32)
        d = (rng.standard_normal((B, cfg.num_classes)) / B).astype(np.float32)
        res = {}
        for dev in ("cpu", "cuda"):
            m = polyvit.ViT(cfg, max_batch=B, seed=0, device=dev)
            set_params(m, P)
            logits = m.forward(x).copy()
            m.backward(d)
            res[dev] = (logits, {n: g.copy() for n, g in m.grads.items()})
        le = rel(res["cuda"][0], res["cpu"][0])
        ge = {n: rel(res["cuda"][1][n], res["cpu"][1][n]) for n in res["cpu"][1]}
        worst = max(ge, key=ge.get)
        ok = le <= 1e-4 and ge[worst] <= 1e-3
        bad += not ok
        print(f"large {name} (width {C}, depth 2, batch {B}, fp32): logits {le:.2e}, worst "
              f"gradient {ge[worst]:.2e} ({worst}): {'ok' if ok else 'FAILED'}", flush=True)
    return bad


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "workload"
    if what == "workload":
        workload()
    elif what == "large":
        sys.exit(1 if large() else 0)
    else:
        sys.exit(f"unknown check {what!r}: workload or large")
