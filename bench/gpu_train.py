"""GPU throughput: polyvit's CUDA engine against PyTorch (eager and torch.compile) on timm ViTs.

For each model: timm builds it (random init, fixed seed), polyvit imports the same weights
through its timm importer, and both train and infer on the same batch (random uint8 images and
labels, fixed seed) at the same precision:

  (a) training images/s: polyvit ``train_step`` (forward, cross-entropy, backward, AdamW) vs
      PyTorch with ``torch.autocast("cuda", dtype=torch.bfloat16)`` + fused AdamW, eager and
      ``torch.compile(model)``;
  (b) inference images/s: polyvit ``forward`` vs PyTorch under ``torch.no_grad`` (same two);
  (c) MFU: model FLOPs (counted from the config: 2*M*N*K per matrix product, attention's
      Q K^T and A V included, training = 3x forward) over the peak matrix-product rate
      measured in the same run (an 8192^3 product in the benchmark's precision);
  (d) memory: ``torch.cuda.max_memory_allocated`` for PyTorch (weights, gradients, AdamW state,
      activations), ``model.device_bytes`` for polyvit (everything it holds on the GPU).

Each (model, runner) pair runs in its own process (a clean allocator and peak-memory count, a
time limit that can stop a slow torch.compile, and one failure recorded instead of aborting
the run). The runs share a time budget (--time-budget): polyvit and eager PyTorch first, then
the torch.compile runs while time is left; what does not fit is recorded as skipped. Writes
one JSON file per model, ``gpu_train-<model>-<gpu>.json``, in the project's schema (ratios > 1
mean polyvit is better), and prints a markdown table at the end.

    python bench/gpu_train.py                                      # 3 models, batch 256, bf16
    python bench/gpu_train.py --models vit_small_patch16_224 --steps 10 --no-compile
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import cpu_name  # noqa: E402

DEFAULT_MODELS = ["vit_base_patch16_224", "vit_small_patch16_224", "vit_small_patch4_32"]
RESULT_TAG = "GPU_TRAIN_RESULT "
# per-process time limits (seconds), further capped by what is left of the budget
LIMITS = {"peak": 120, "polyvit": 150, "polyvit_fused": 150, "polyvit_pad": 150, "eager": 150,
          "compile_train": 240, "compile_infer": 150}
# opt-in engine variants timed beside the default (--variants): runner -> (environment, key)
VARIANTS = {"fused": ("polyvit_fused", {"POLYVIT_CUDA_ATTENTION": "fused"}, "fused_attention"),
            "pad": ("polyvit_pad", {"POLYVIT_CUDA_ATT_LD": "pad"}, "padded_attention_rows")}


# ------------------------------------------------------------------------------------------
# shared by the runners
# ------------------------------------------------------------------------------------------
def forward_flops(cfg) -> float:
    """Forward FLOPs per image, 2*M*N*K for every matrix product (elementwise work, softmax
    and norms not counted): patch embedding, per block qkv, Q K^T, A V, proj, fc1, fc2, and
    the head on one pooled token."""
    T, N, C, H = cfg.seq_len, cfg.num_patches, cfg.embed_dim, cfg.mlp_hidden
    patch = 2 * N * C * (cfg.in_chans * cfg.patch_size ** 2)
    block = (2 * T * C * 3 * C        # qkv
             + 2 * T * T * C          # Q K^T, all heads: heads * T * T * head_dim
             + 2 * T * T * C          # A V
             + 2 * T * C * C          # proj
             + 2 * 2 * T * C * H)     # fc1 + fc2
    return float(patch + cfg.depth * block + 2 * C * cfg.num_classes)


def build_timm(name: str, seed: int):
    """The timm model on the CPU in float32, initialised by timm from ``seed``: timm's own
    registry for its names, else ``VisionTransformer`` with a polyvit preset's sizes."""
    import timm
    import torch

    import polyvit

    torch.manual_seed(seed)
    known = timm.is_model(name) if hasattr(timm, "is_model") else bool(timm.list_models(name))
    if known:
        return timm.create_model(name, pretrained=False)
    if name in polyvit.PRESETS:
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(**polyvit.PRESETS[name])
    raise ValueError(f"{name!r} is neither a timm model nor a polyvit preset "
                     f"({', '.join(sorted(polyvit.PRESETS))})")


def import_into_polyvit(tm):
    """The timm model's weights imported by polyvit's timm importer: a batch-1 CPU model."""
    import polyvit

    sd = {k: v.detach().float().cpu().numpy() for k, v in tm.state_dict().items()}
    host = polyvit.from_state_dict(sd, format="timm", num_heads=tm.blocks[0].attn.num_heads,
                                   max_batch=1)
    return host


def make_batch(tm, batch: int, seed: int):
    """The batch every runner sees, for the timm model ``tm``: uint8 NHWC pixels and int64
    labels."""
    img = tm.patch_embed.img_size
    img = img[0] if isinstance(img, (tuple, list)) else int(img)
    chans = tm.patch_embed.proj.in_channels
    rng = np.random.default_rng(seed)
    u8 = rng.integers(0, 256, (batch, img, img, chans), dtype=np.uint8)
    y = rng.integers(0, tm.num_classes, batch).astype(np.int64)
    return u8, y


def float_nchw(u8: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(u8.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)


def timed(step, warmup: int, steps: int, sync) -> float:
    """Seconds per step: ``warmup`` untimed steps, then ``steps`` steps between two syncs."""
    for _ in range(warmup):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t) / steps


def rel(x, ref) -> float:
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / max(float(np.linalg.norm(ref)), 1e-30))


# ------------------------------------------------------------------------------------------
# runners (each in its own process; print one RESULT line)
# ------------------------------------------------------------------------------------------
def run_peak(args) -> dict:
    """The GPU, versions, and the peak matrix-product rate for each precision."""
    import torch

    try:
        import timm
        timm_version = timm.__version__
    except ImportError:
        timm_version = None
    if not torch.cuda.is_available():
        raise RuntimeError("PyTorch sees no CUDA device")
    props = torch.cuda.get_device_properties(0)
    n = 8192
    peak = {}
    for prec in ("bf16", args.precision):
        if prec in peak:
            continue
        dtype = torch.bfloat16 if prec == "bf16" else torch.float32
        torch.backends.cuda.matmul.allow_tf32 = prec == "tf32"
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        b = torch.randn(n, n, device="cuda", dtype=dtype)
        for _ in range(3):
            a @ b
        torch.cuda.synchronize()
        iters = 20 if prec == "bf16" else 5
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            a @ b
        end.record()
        torch.cuda.synchronize()
        peak[prec] = 2 * n ** 3 * iters / (start.elapsed_time(end) / 1e3) / 1e12
        del a, b
        torch.cuda.empty_cache()
    torch.backends.cuda.matmul.allow_tf32 = False
    return {"gpu": torch.cuda.get_device_name(0), "capability": list(torch.cuda.get_device_capability(0)),
            "multiprocessors": props.multi_processor_count, "total_memory": props.total_memory,
            "torch": torch.__version__, "timm": timm_version, "torch_cuda": torch.version.cuda,
            "peak_matmul_tflops": peak, "peak_method": f"{n}^3 matrix product, CUDA events, "
                                                       f"mean of 20 (bf16) / 5 after 3 warm-ups"}


def run_polyvit(args) -> dict:
    import torch

    import polyvit

    if not polyvit.cuda.is_available():
        raise RuntimeError(f"polyvit's CUDA engine is not available (HAS_CUDA="
                           f"{polyvit.HAS_CUDA}, devices={polyvit.cuda.device_count()})")
    tm = build_timm(args.model, args.seed).eval()
    host = import_into_polyvit(tm)
    cfg = host.config
    u8, y = make_batch(tm, args.batch, args.seed + 1)
    x = u8 if args.input == "uint8" else float_nchw(u8)

    use_torch_mem = not hasattr(polyvit.ViT, "device_bytes")
    if use_torch_mem:       # fallback: the free-memory difference around the model
        torch.cuda.init()
        free0 = torch.cuda.mem_get_info()[0]
    t0 = time.perf_counter()
    model = polyvit.ViT(cfg, max_batch=args.batch, seed=None, device="cuda",
                        precision=args.precision)
    params = model.params
    for n, v in host.params.items():
        params[n][...] = v
    del params
    build_s = time.perf_counter() - t0

    # the import is right: polyvit on the device against timm in float32 on the CPU
    k = min(4, args.batch)
    with torch.no_grad():
        want = tm(torch.from_numpy(float_nchw(u8[:k]))).numpy()
    got = model.forward(x[:k])
    logit_err = rel(got, want)

    sync = polyvit.cuda.synchronize
    fwd = timed(lambda: model.forward(x), args.warmup, args.steps, sync)
    opt = polyvit.AdamW(model, lr=1e-4, weight_decay=0.05)
    loss = polyvit.Loss(ce=1.0)
    losses = []
    train = timed(lambda: losses.append(model.train_step(x, labels=y, loss=loss, optimizer=opt)),
                  args.warmup, args.steps, sync)
    # where one training step goes, op by op (stream drained around each op, so only shares)
    profile = None
    if hasattr(polyvit.cuda, "profile"):
        polyvit.cuda.profile(enable=True, reset=True)
        model.train_step(x, labels=y, loss=loss, optimizer=opt)
        profile = polyvit.cuda.profile(enable=False, reset=True)
    if use_torch_mem:
        nbytes, how = free0 - torch.cuda.mem_get_info()[0], "cudaMemGetInfo difference"
    else:
        nbytes, how = int(model.device_bytes), "model.device_bytes"
    return {"config": cfg.to_dict(), "forward_s": fwd, "train_s": train, "device_bytes": nbytes,
            "memory_method": how, "logits_rel_diff_vs_timm_fp32": logit_err,
            "first_last_loss": [losses[0], losses[-1]], "build_s": build_s,
            "op_profile_s": profile,
            "polyvit_build": polyvit.build_info()}


def run_torch(args, compiled: bool, what) -> dict:
    import torch
    import torch.nn.functional as F

    if not torch.cuda.is_available():
        raise RuntimeError("PyTorch sees no CUDA device")
    tm = build_timm(args.model, args.seed)
    u8, y = make_batch(tm, args.batch, args.seed + 1)
    host_x = u8 if args.input == "uint8" else float_nchw(u8)
    torch.backends.cuda.matmul.allow_tf32 = args.precision == "tf32"
    torch.backends.cudnn.allow_tf32 = args.precision == "tf32"

    def autocast():
        if args.precision == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    torch.cuda.reset_peak_memory_stats()
    tm = tm.cuda()
    yt = torch.from_numpy(y).cuda()

    def load_x():
        # the same host batch as polyvit gets, copied up and scaled every step, as polyvit does
        t = torch.from_numpy(host_x).cuda()
        return t.permute(0, 3, 1, 2).float().div_(255) if args.input == "uint8" else t

    net = torch.compile(tm) if compiled else tm
    out = {}
    if "infer" in what:
        tm.eval()
        torch.cuda.reset_peak_memory_stats()

        def infer():
            with torch.no_grad(), autocast():
                net(load_x())

        t0 = time.perf_counter()
        infer()                               # compiles, when compiled
        torch.cuda.synchronize()
        out["forward_first_call_s"] = time.perf_counter() - t0
        out["forward_s"] = timed(infer, args.warmup, args.steps, torch.cuda.synchronize)
        out["peak_memory_infer_bytes"] = torch.cuda.max_memory_allocated()
    if "train" in what:
        tm.train()
        opt = torch.optim.AdamW(tm.parameters(), lr=1e-4, weight_decay=0.05, fused=True)
        torch.cuda.reset_peak_memory_stats()

        def train():
            with autocast():
                loss = F.cross_entropy(net(load_x()), yt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        t0 = time.perf_counter()
        train()
        train()                               # compiles forward and backward, when compiled
        torch.cuda.synchronize()
        out["train_first_calls_s"] = time.perf_counter() - t0
        out["train_s"] = timed(train, args.warmup, args.steps, torch.cuda.synchronize)
        out["peak_memory_train_bytes"] = torch.cuda.max_memory_allocated()
    return out


def child(args) -> None:
    try:
        if args.child == "peak":
            r = run_peak(args)
        elif args.child == "polyvit":
            r = run_polyvit(args)
        elif args.child in {v[0] for v in VARIANTS.values()}:   # an opt-in engine variant
            env = next(v[1] for v in VARIANTS.values() if v[0] == args.child)
            os.environ.update(env)
            r = run_polyvit(args)
        elif args.child == "eager":
            r = run_torch(args, False, ("infer", "train"))
        elif args.child == "compile_train":
            r = run_torch(args, True, ("train",))
        elif args.child == "compile_infer":
            r = run_torch(args, True, ("infer",))
        else:
            raise ValueError(f"unknown runner {args.child!r}")
    except BaseException as e:  # noqa: B036 - recorded, the parent goes on
        tb = traceback.format_exc(limit=4)
        r = {"error": f"{type(e).__name__}: {e}"[:2000], "traceback": tb[-3000:]}
    print(RESULT_TAG + json.dumps(r, default=str), flush=True)


# ------------------------------------------------------------------------------------------
# the parent: runs the children within the budget, writes the JSON files and the table
# ------------------------------------------------------------------------------------------
def spawn(args, runner: str, model: str, limit: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", runner, "--model", model,
           "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--precision", args.precision, "--input", args.input, "--seed", str(args.seed)]
    t0 = time.monotonic()
    # own process group: a timed-out torch.compile's worker processes are stopped with it
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        stdout, stderr = p.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        return {"error": f"stopped after its time limit of {limit:.0f} s",
                "wall_s": time.monotonic() - t0}
    r = None
    for line in stdout.splitlines():
        if line.startswith(RESULT_TAG):
            r = json.loads(line[len(RESULT_TAG):])
    if r is None:
        tail = (stderr or stdout or "").strip().splitlines()[-15:]
        r = {"error": f"the runner exited with status {p.returncode} and no result",
             "stderr_tail": "\n".join(tail)}
    r["wall_s"] = time.monotonic() - t0
    return r


def gpu_short_name(name: str) -> str:
    m = re.search(r"\b([A-Z]{1,3}\d{1,4}[A-Z]?)\b", name.replace("NVIDIA", ""))
    short = m.group(1) if m else name
    return re.sub(r"[^a-z0-9]+", "-", short.lower()).strip("-") or "gpu"


def _get(d, key):
    v = d.get(key) if isinstance(d, dict) else None
    return v if isinstance(v, (int, float)) else None


def assemble(model: str, runs: dict, peak: dict, args, date: str) -> dict:
    pv = runs.get("polyvit", {})
    cfg_d = pv.get("config")
    cfg = None
    if cfg_d is None:   # polyvit failed: the config from the importer on the CPU
        with contextlib.suppress(Exception):
            import polyvit
            cfg = polyvit.ViTConfig.from_dict(_config_from_timm(model, args.seed))
    else:
        import polyvit
        cfg = polyvit.ViTConfig.from_dict(cfg_d)
    fl = forward_flops(cfg) if cfg is not None else None
    peak_tf = (peak.get("peak_matmul_tflops") or {}).get(args.precision)
    B = args.batch

    def metrics(r):
        out = {}
        for what, key, mult in (("train", "train_s", 3), ("forward", "forward_s", 1)):
            s = _get(r, key)
            if s:
                out[f"{what}_img_s"] = B / s
                if fl and peak_tf:
                    out[f"{what}_tflops"] = B * fl * mult / s / 1e12
                    out[f"{what}_mfu"] = B * fl * mult / s / 1e12 / peak_tf
        return out

    p = metrics(pv)
    if _get(pv, "device_bytes") is not None:
        p["device_bytes"] = pv["device_bytes"]
        p["memory_method"] = pv.get("memory_method")
    for k in ("logits_rel_diff_vs_timm_fp32", "first_last_loss", "build_s", "op_profile_s"):
        if k in pv:
            p[k] = pv[k]
    for runner, env, key in VARIANTS.values():   # same batch: their own numbers, not in ratios
        v = runs.get(runner)
        if v:
            p[key] = {"environment": env, **metrics(v), **{k: v[k] for k in (
                "error", "op_profile_s", "logits_rel_diff_vs_timm_fp32") if k in v}}
    if "error" in pv:
        p["error"] = pv["error"]
        p["traceback"] = pv.get("traceback") or pv.get("stderr_tail")

    eager = runs.get("eager", {})
    comp = {**{k: v for k, v in runs.get("compile_infer", {}).items()},
            **{k: v for k, v in runs.get("compile_train", {}).items()}}
    variants = {"eager": metrics(eager), "compile": metrics(comp)}
    for name, r in (("eager", eager), ("compile", comp)):
        for k in ("peak_memory_train_bytes", "peak_memory_infer_bytes", "train_first_calls_s",
                  "forward_first_call_s"):
            if k in r:
                variants[name][k] = r[k]
    errors = {k: runs[k].get("error") for k in ("eager", "compile_train", "compile_infer")
              if k in runs and runs[k].get("error")}
    prec = {"bf16": "torch.autocast bfloat16", "tf32": "TF32 matmuls",
            "fp32": "float32, TF32 off"}[args.precision]
    peer = {"name": f"PyTorch {peak.get('torch', '?')} + timm {peak.get('timm', '?')} "
                    f"VisionTransformer, {prec}, fused AdamW; the faster of eager and "
                    f"torch.compile per metric",
            "variants": variants}
    for key in ("train_img_s", "forward_img_s", "train_mfu", "forward_mfu", "train_tflops",
                "forward_tflops"):
        vals = [v[key] for v in variants.values() if key in v]
        if vals:
            peer[key] = max(vals)
    if "peak_memory_train_bytes" in variants["eager"]:
        peer["peak_memory_train_bytes"] = variants["eager"]["peak_memory_train_bytes"]
    if errors:
        peer["errors"] = errors

    ratio = {}
    for what in ("train", "forward"):
        mine = p.get(f"{what}_img_s")
        if mine is None:
            continue
        if f"{what}_img_s" in peer:
            ratio[what] = mine / peer[f"{what}_img_s"]
        for name, v in variants.items():
            if f"{what}_img_s" in v:
                ratio[f"{what}_vs_{name}"] = mine / v[f"{what}_img_s"]
    if p.get("device_bytes") and "peak_memory_train_bytes" in variants["eager"]:
        ratio["memory_vs_eager_train"] = variants["eager"]["peak_memory_train_bytes"] / p["device_bytes"]

    return {
        "bench": "gpu_train",
        "device": peak.get("gpu", "unknown GPU"),
        "date": date,
        "config": {
            "model": model, "batch": B, "steps": args.steps, "warmup": args.warmup,
            "precision": args.precision, "seed": args.seed,
            "input": ("the same host uint8 NHWC batch for every runner, copied to the GPU and "
                      "scaled each step (polyvit: normalised by its engine)"
                      if args.input == "uint8" else
                      "the same host float32 NCHW batch, copied to the GPU each step"),
            "timing": (f"{args.steps} steps after {args.warmup} warm-up steps (plus torch.compile's "
                       f"compiling calls), between two device synchronisations, perf_counter; "
                       f"polyvit's train_step and forward return host values every step, "
                       f"PyTorch's loop never waits on the host"),
            "train_step": "forward + cross-entropy + backward + AdamW (lr 1e-4, weight decay 0.05)",
            "flops": "2*M*N*K per matrix product incl. attention QK^T and AV; training = 3x forward",
            "gflop_per_image_forward": fl / 1e9 if fl else None,
            "peak_matmul_tflops": peak.get("peak_matmul_tflops"),
            "peak_method": peak.get("peak_method"),
            "mfu_denominator": f"measured {args.precision} peak",
            "torch": peak.get("torch"), "timm": peak.get("timm"), "torch_cuda": peak.get("torch_cuda"),
            "gpu": {k: peak.get(k) for k in ("capability", "multiprocessors", "total_memory")},
            "host_cpu": cpu_name(),
            "polyvit_config": cfg.to_dict() if cfg is not None else None,
            "polyvit_build": pv.get("polyvit_build"),
            "wall_s": {k: round(v.get("wall_s", 0.0), 1) for k, v in runs.items()},
        },
        "polyvit": p,
        "peer": peer,
        "ratio": ratio,
    }


def _config_from_timm(model: str, seed: int) -> dict:
    return import_into_polyvit(build_timm(model, seed)).config.to_dict()


def _fmt(v, f="{:,.0f}"):
    return "-" if v is None else f.format(v)


def table(results) -> str:
    rows = ["| model | batch | polyvit train img/s | eager | compile | ratio | polyvit fwd img/s "
            "| eager | compile | ratio | polyvit train MFU | torch train MFU | polyvit GiB "
            "| torch train peak GiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        p, q, k = r["polyvit"], r["peer"], r["ratio"]
        e, c = q["variants"]["eager"], q["variants"]["compile"]
        gib = 1 << 30
        rows.append(
            f"| {r['config']['model']} | {r['config']['batch']} | {_fmt(p.get('train_img_s'))} | "
            f"{_fmt(e.get('train_img_s'))} | {_fmt(c.get('train_img_s'))} | "
            f"**{_fmt(k.get('train'), '{:.2f}x')}** | {_fmt(p.get('forward_img_s'))} | "
            f"{_fmt(e.get('forward_img_s'))} | {_fmt(c.get('forward_img_s'))} | "
            f"**{_fmt(k.get('forward'), '{:.2f}x')}** | {_fmt(p.get('train_mfu'), '{:.1%}')} | "
            f"{_fmt(q.get('train_mfu'), '{:.1%}')} | "
            f"{_fmt(p['device_bytes'] / gib if p.get('device_bytes') else None, '{:.1f}')} | "
            f"{_fmt(q['peak_memory_train_bytes'] / gib if q.get('peak_memory_train_bytes') else None, '{:.1f}')} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS,
                    help="timm model names or polyvit presets (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    ap.add_argument("--precision", choices=["bf16", "tf32", "fp32"], default="bf16")
    ap.add_argument("--input", choices=["uint8", "float32"], default="uint8",
                    help="the host batch every runner copies up each step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer")
    ap.add_argument("--variants", nargs="*", default=[], choices=sorted(VARIANTS),
                    help="also time these opt-in engine variants: fused (POLYVIT_CUDA_ATTENTION="
                         "fused, bf16 only), pad (POLYVIT_CUDA_ATT_LD=pad)")
    ap.add_argument("--time-budget", type=float, default=330.0,
                    help="seconds for the whole run; runs that no longer fit are skipped "
                         "(default %(default)s: under 6 minutes on an H100)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    t_start = time.monotonic()
    deadline = t_start + args.time_budget
    os.makedirs(args.out, exist_ok=True)
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    def left() -> float:
        return deadline - time.monotonic()

    def run(runner, model):
        limit = min(LIMITS[runner], left())
        if limit < 20:
            r = {"error": f"skipped: the time budget ({args.time_budget:.0f} s) is spent"}
        else:
            r = spawn(args, runner, model, limit)
        state = "error: " + (str(r["error"]).splitlines() or ["?"])[0][:150] if "error" in r else "ok"
        print(f"[{time.monotonic() - t_start:6.1f} s] {runner:13s} {model}: {state}", flush=True)
        return r

    peak = run("peak", "-")
    if "error" in peak:
        print(f"peak matmul rate not measured ({peak['error']}); MFU will be missing",
              file=sys.stderr)
    runs = {m: {} for m in args.models}
    for m in args.models:                          # the core numbers first
        runs[m]["polyvit"] = run("polyvit", m)
        for name in args.variants:
            if name == "fused" and args.precision != "bf16":
                continue                          # the fused attention is a bf16 path
            runs[m][VARIANTS[name][0]] = run(VARIANTS[name][0], m)
        runs[m]["eager"] = run("eager", m)
    if not args.no_compile:                        # then torch.compile while time is left,
        for m in args.models:                      # model by model: the first is complete
            for runner in ("compile_train", "compile_infer"):
                runs[m][runner] = run(runner, m)

    gpu = peak.get("gpu")
    if not gpu:
        with contextlib.suppress(Exception):
            import polyvit
            gpu = polyvit.cuda.device_info(0)["name"]
            peak["gpu"] = gpu
    short = gpu_short_name(gpu or "unknown-gpu")
    results = []
    for m in args.models:
        try:
            r = assemble(m, runs[m], peak, args, date)
        except Exception as e:  # never lose the raw runs
            r = {"bench": "gpu_train", "device": gpu or "unknown GPU", "date": date,
                 "config": {"model": m, "batch": args.batch, "precision": args.precision},
                 "polyvit": {"error": f"assembling the result failed: {e}"},
                 "peer": {"name": "PyTorch", "variants": {"eager": {}, "compile": {}}},
                 "ratio": {}, "raw": runs[m]}
        results.append(r)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", m)
        path = os.path.join(args.out, f"gpu_train-{safe}-{short}.json")
        with open(path, "w") as f:
            json.dump(r, f, indent=2, default=str)
        print(f"wrote {path}")
    print()
    print(f"{gpu or 'unknown GPU'}, {args.precision}, batch {args.batch}; peak matmul "
          f"{(peak.get('peak_matmul_tflops') or {}).get(args.precision, float('nan')):.0f} TFLOP/s "
          f"({args.precision}); {time.monotonic() - t_start:.0f} s in all")
    print(table(results))
    for r in results:
        errs = {k: v for k, v in {"polyvit": r["polyvit"].get("error"),
                                  **r["peer"].get("errors", {})}.items() if v}
        for k, v in errs.items():
            print(f"  {r['config']['model']} {k}: {(str(v).splitlines() or ['?'])[0][:200]}")
    # a peer that fails is a recorded fact; polyvit failing on a model fails the run. A model the
    # time budget never reached is not a failure: it was not measured, and the run says so.
    def skipped(r):
        return str(r["polyvit"].get("error", "")).startswith("skipped: the time budget")
    unmeasured = [r["config"]["model"] for r in results if skipped(r)]
    if unmeasured:
        print(f"not measured (the time budget ran out first): {', '.join(unmeasured)}")
    failed = [r["config"]["model"] for r in results if r["polyvit"].get("error") and not skipped(r)]
    if failed:
        sys.exit(f"polyvit failed on {', '.join(failed)} (the JSON files hold the errors)")


if __name__ == "__main__":
    main()
