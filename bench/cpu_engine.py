"""CPU engine throughput: polyvit vs the same model in PyTorch, same threads, same batch.

For each case, images/s of inference (forward) and of training (forward + cross-entropy +
backward + AdamW step), the PyTorch peer measured in the same run on the same weights. The peer
is tests/torch_ref.py (timm's ViT layout) with attention through
F.scaled_dot_product_attention, as timm runs it. Writes one JSON file per case under
bench/results/.

    python bench/cpu_engine.py                  # both default cases, 2 threads
    python bench/cpu_engine.py --threads 2 --repeats 5 --cases vit_tiny_patch16_224:32
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import polyvit  # noqa: E402
from _common import best_time, cpu_name  # noqa: E402


def torch_peers(model, threads: int):
    """The same model in PyTorch twice: attention written out (softmax(q k^T) v, as timm does
    without fused_attn) and through F.scaled_dot_product_attention (timm's default). The
    faster of the two is the peer for each metric."""
    import torch
    import torch.nn.functional as F
    import torch_ref

    torch.set_num_threads(threads)
    manual = torch_ref.from_polyvit(model, torch.float32)
    sdpa = torch_ref.from_polyvit(model, torch.float32)

    def sdpa_forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))

    for blk in sdpa.blocks:
        blk.attn.forward = sdpa_forward.__get__(blk.attn)
    return torch, {"manual_attention": manual, "sdpa": sdpa}


def run_case(preset: str, batch: int, threads: int, repeats: int) -> dict:
    polyvit.set_num_threads(threads)
    m = polyvit.ViT.preset(preset, max_batch=batch, seed=0)
    cfg = m.config
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, cfg.in_chans, cfg.img_size, cfg.img_size)).astype(np.float32)
    y = rng.integers(0, cfg.num_classes, batch)
    torch, refs = torch_peers(m, threads)  # copies the weights before any step changes them
    opt = polyvit.AdamW(m, lr=1e-5, weight_decay=0.05)

    pv_fwd = best_time(lambda: m.forward(x), repeats)
    pv_train = best_time(lambda: m.train_step(x, labels=y, optimizer=opt), repeats)

    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    peers = {}
    for name, ref in refs.items():
        topt = torch.optim.AdamW(ref.parameters(), lr=1e-5, weight_decay=0.05)

        def t_fwd():
            with torch.no_grad():
                ref(xt)

        def t_train():
            topt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(ref(xt), yt)
            loss.backward()
            topt.step()

        peers[name] = (best_time(t_fwd, repeats), best_time(t_train, repeats))
    pt_fwd = min(t[0] for t in peers.values())
    pt_train = min(t[1] for t in peers.values())

    flops = cfg.flops_per_image() * batch
    res = {
        "bench": "cpu_engine",
        "device": f"{cpu_name()} ({os.cpu_count()} cores visible, {threads} threads)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {"preset": preset, "batch": batch, "threads": threads, "repeats": repeats,
                   "timing": "best of repeats, after one warm-up",
                   "train_step": "forward + cross-entropy + backward + AdamW",
                   "gflop_per_image_forward": cfg.flops_per_image() / 1e9,
                   "polyvit_build": polyvit.build_info()},
        "polyvit": {"forward_img_s": batch / pv_fwd, "train_img_s": batch / pv_train,
                    "forward_gflop_s": flops / pv_fwd / 1e9,
                    "train_gflop_s": 3 * flops / pv_train / 1e9},
        "peer": {"name": f"PyTorch {torch.__version__} eager, float32, timm layout "
                         f"(the faster of written-out and SDPA attention, per metric)",
                 "forward_img_s": batch / pt_fwd, "train_img_s": batch / pt_train,
                 "forward_gflop_s": flops / pt_fwd / 1e9,
                 "train_gflop_s": 3 * flops / pt_train / 1e9,
                 "variants": {k: {"forward_img_s": batch / f, "train_img_s": batch / t}
                              for k, (f, t) in peers.items()}},
    }
    res["ratio"] = {"forward": pt_fwd / pv_fwd, "train": pt_train / pv_train}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["vit_tiny_patch16_224:32", "vit_tiny_patch4_32:128"],
                    help="preset:batch pairs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = ap.parse_args()
    if args.one:
        preset, batch = args.one.split(":")
        print(json.dumps(run_case(preset, int(batch), args.threads, args.repeats)))
        return
    os.makedirs(args.out, exist_ok=True)
    for case in args.cases:
        # one process per case: PyTorch's OpenMP threads keep spinning after its last parallel
        # region and would slow whatever runs next in the same process
        out = subprocess.run([sys.executable, __file__, "--one", case, "--threads",
                              str(args.threads), "--repeats", str(args.repeats)],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        preset, batch = case.split(":")
        stamp = r["date"][:10]
        path = os.path.join(args.out, f"cpu_engine_{preset}_b{batch}_t{args.threads}_{stamp}.json")
        with open(path, "w") as f:
            json.dump(r, f, indent=2)
        p, q = r["polyvit"], r["peer"]
        print(f"{preset} batch {batch}, {args.threads} threads: "
              f"forward {p['forward_img_s']:.1f} vs {q['forward_img_s']:.1f} img/s "
              f"(x{r['ratio']['forward']:.2f}); train {p['train_img_s']:.1f} vs "
              f"{q['train_img_s']:.1f} img/s (x{r['ratio']['train']:.2f}); "
              f"polyvit train {p['train_gflop_s']:.0f} GFLOP/s -> {path}")


if __name__ == "__main__":
    main()
