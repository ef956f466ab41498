"""Where polyvit's CUDA engine spends a ViT-B/16 step, and what its GEMMs could reach: one short
device run that decides the next optimisation (writes JSON to the path given, default stdout).

  python bench/gpu_probe.py $OUT/probe.json

1. cuBLAS through PyTorch at ViT-B/16's shapes (M = 256 * 197 rows): float32 operands with
   float32, TF32 and bf16 compute (``torch.set_float32_matmul_precision``: "medium" is
   CUBLAS_COMPUTE_32F_FAST_16BF on float32 storage, what polyvit's bf16 mode ran at first)
   against bf16 operands. This says what storing GEMM operands in bf16 would buy.
2. A device-to-device copy: the memory ceiling.
3. polyvit's per-op profile (polyvit.cuda.profile) of a forward and a training step at
   batch 256 in each precision mode (bf16 also with POLYVIT_CUDA_ATTENTION=fused and with
   POLYVIT_CUDA_ATT_LD=pad), and the plain timings.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import polyvit  # noqa: E402


def cuda_time(fn, iters=10, warmup=2) -> float:
    for _ in range(warmup):
        fn()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    a.record()
    for _ in range(iters):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / 1e3 / iters


def gemms() -> dict:
    M = 256 * 197
    shapes = {"qkv": (M, 768, 2304), "proj": (M, 768, 768), "fc1": (M, 768, 3072),
              "fc2": (M, 3072, 768), "dW_fc1": (768, M, 3072)}
    out = {}
    for name, (m, k, n) in shapes.items():
        row = {}
        for mode in ("fp32", "tf32", "fp32_fast_bf16", "bf16"):
            dt = torch.bfloat16 if mode == "bf16" else torch.float32
            torch.set_float32_matmul_precision(
                {"fp32": "highest", "tf32": "high", "fp32_fast_bf16": "medium"}.get(mode, "highest"))
            a = torch.randn(m, k, device="cuda", dtype=dt)
            w = torch.randn(k, n, device="cuda", dtype=dt)
            s = cuda_time(lambda: a @ w)
            row[mode] = round(2 * m * n * k / s / 1e12, 1)
            a = w = None
        out[name] = row
        print(f"GEMM {name} {m}x{k}x{n} TFLOP/s: {row}", flush=True)
    torch.set_float32_matmul_precision("highest")
    # attention's batched products, (B*H) x T x 64 @ 64 x T and (B*H) x T x T @ T x 64, at
    # ViT-B's T = 197 and padded to 200 / 208: rows of 197 elements are not 16-byte aligned,
    # which may keep cuBLAS off its fast kernels (the hypothesis behind ~30 TFLOP/s)
    BH, D = 256 * 12, 64
    for T in (197, 200, 208):
        row = {}
        for mode in ("fp32_fast_bf16", "bf16"):
            dt = torch.bfloat16 if mode == "bf16" else torch.float32
            torch.set_float32_matmul_precision("medium" if mode != "bf16" else "highest")
            q = torch.randn(BH, T, D, device="cuda", dtype=dt)
            k = torch.randn(BH, D, T, device="cuda", dtype=dt)
            p = torch.randn(BH, T, T, device="cuda", dtype=dt)
            v = torch.randn(BH, T, D, device="cuda", dtype=dt)
            s = cuda_time(lambda: torch.bmm(q, k))
            row[mode + "_qk"] = round(2 * BH * T * T * D / s / 1e12, 1)
            s = cuda_time(lambda: torch.bmm(p, v))
            row[mode + "_pv"] = round(2 * BH * T * T * D / s / 1e12, 1)
            q = k = p = v = None
        torch.set_float32_matmul_precision("highest")
        out[f"attn_T{T}"] = row
        print(f"GEMM attention T={T} TFLOP/s: {row}", flush=True)
    return out


def copy_bw() -> float:
    x = torch.empty(2 ** 30, dtype=torch.float32, device="cuda").uniform_()
    y = torch.empty_like(x)
    s = cuda_time(lambda: y.copy_(x))
    bw = 2 * x.numel() * 4 / s / 1e9
    print(f"device copy: {bw:.0f} GB/s (read + write)", flush=True)
    return bw


def polyvit_profile() -> dict:
    cfg = polyvit.ViTConfig(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
                            num_classes=1000)
    B = 256
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (B, 224, 224, 3), dtype=np.uint8)
    y = rng.integers(0, 1000, B)
    out = {}
    for mode in ("bf16", "bf16 fused", "bf16 pad", "tf32", "fp32"):
        precision = mode.split()[0]
        # read when a model is made: the fused attention forward and padded rows are opt-in
        os.environ["POLYVIT_CUDA_ATTENTION"] = "fused" if "fused" in mode else "cublas"
        os.environ["POLYVIT_CUDA_ATT_LD"] = "pad" if "pad" in mode else ""
        m = polyvit.ViT(cfg, max_batch=B, seed=0, device="cuda", precision=precision)
        opt = polyvit.AdamW(m, lr=1e-4, weight_decay=0.05)
        loss = polyvit.Loss(ce=1.0)
        r = {}
        for what, step in (("forward", lambda: m.forward(u8)),
                           ("train", lambda: m.train_step(u8, labels=y, loss=loss, optimizer=opt))):
            for _ in range(2):
                step()
            polyvit.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(5):
                step()
            polyvit.cuda.synchronize()
            r[f"{what}_s"] = (time.perf_counter() - t) / 5
            polyvit.cuda.profile(enable=True, reset=True)
            step()
            prof = polyvit.cuda.profile(enable=False, reset=True)
            r[f"{what}_profile_s"] = {k: round(v, 5) for k, v in sorted(prof.items(), key=lambda kv: -kv[1]) if v}
        print(f"polyvit ViT-B/16 batch {B} {mode}: forward {r['forward_s'] * 1e3:.1f} ms, "
              f"train step {r['train_s'] * 1e3:.1f} ms", flush=True)
        for what in ("forward", "train"):
            p = r[f"{what}_profile_s"]
            tot = sum(p.values())
            print(f"  {what} profile ({tot * 1e3:.1f} ms with drains): " + ", ".join(
                f"{k} {v * 1e3:.1f}" for k, v in list(p.items())[:10]), flush=True)
        out[mode] = r
        m = opt = None  # frees the device memory before the next model
    return out


if __name__ == "__main__":
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    res["copy_gb_s"] = copy_bw()
    res["gemm_tflops"] = gemms()
    res["polyvit"] = polyvit_profile()
    text = json.dumps(res, indent=1)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            f.write(text)
    else:
        print(text)
