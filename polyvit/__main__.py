"""python -m polyvit: the command-line face.

  python -m polyvit demo        V1 collapsing, DirectFit repairing, distillation closing the gap,
                                on a teacher and real CIFAR-10 images shipped in the package
  python -m polyvit info        how the engine was built (compiler, OpenMP, BLAS, SIMD)
  python -m polyvit train | fit | distill | evaluate | report | experiment
                                the method's pipeline (see polyvit/cli.py)
  python -m polyvit quickstart  a 30-second tour: train a small ViT a few steps, switch blocks
                                to the quadratic activation, keep training, save and reload
  python -m polyvit convert SRC --out model.safetensors
                                a checkpoint from timm, torchvision, Hugging Face, plain PyTorch
                                (or any layout, with --map) as a polyvit safetensors file
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np


def _info(args) -> int:
    import polyvit

    import importlib.util

    import numpy

    # the mpc extra (SPU + JAX) is optional: say whether it is there without importing it
    mpc = {m: importlib.util.find_spec(m) is not None for m in ("spu", "jax")}
    print(json.dumps({"version": polyvit.__version__, "threads": polyvit.get_num_threads(),
                      "numpy": numpy.__version__, "mpc_extra": mpc,
                      **polyvit.build_info()}, indent=2))
    return 0


def _quickstart(args) -> int:
    import polyvit

    rng = np.random.default_rng(0)
    model = polyvit.ViT.preset("vit_mini_patch4_32", max_batch=args.batch, depth=4)
    print(model)
    # a synthetic task the model can learn in a few steps: the class is the brightest quadrant
    x = rng.standard_normal((args.batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 4, args.batch)
    for i, (r, c) in enumerate([(0, 0), (0, 16), (16, 0), (16, 16)]):
        x[y == i, :, r:r + 16, c:c + 16] += 1.5
    opt = polyvit.AdamW(model, lr=1e-3, weight_decay=0.05, clip_grad_norm=1.0)

    def train(n, label):
        t = time.perf_counter()
        for step in range(n):
            loss = model.train_step(x, labels=y, optimizer=opt, loss=polyvit.Loss(label_smoothing=0.1))
        acc = (model.forward(x).argmax(1) == y).mean()
        print(f"  {label}: {n} steps, loss {loss:.3f}, train accuracy {acc:.0%}, "
              f"{n * args.batch / (time.perf_counter() - t):.0f} img/s")

    train(args.steps, "GELU model")
    model.set_activation([0, 1], "poly")  # default: least-squares quadratic fit of GELU
    acc = (model.forward(x).argmax(1) == y).mean()
    print(f"  blocks 0-1 -> {model.coefficients(0)['a'][0]:.3f} x^2 + "
          f"{model.coefficients(0)['b'][0]:.3f} x + {model.coefficients(0)['c'][0]:.3f}: "
          f"accuracy {acc:.0%} before retraining")
    train(args.steps, "Hybrid-2 poly model")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.safetensors")
        model.save(path)
        again = polyvit.load(path, max_batch=args.batch)
        same = np.array_equal(again.forward(x), model.forward(x))
        print(f"  saved and reloaded: identical logits = {same}")
    return 0


class _UserError(Exception):
    """A mistake in the command line or the input files: one line on stderr, exit code 2."""


def _one_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        text = f"{e.strerror}: {e.filename}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    first = lines[0]
    rest = "; ".join(ln.rstrip(":") for ln in lines[1:])
    return f"{first} {rest}" if rest else first


def _convert(args) -> int:
    from . import io as pio

    overrides = {}
    if args.eps is not None:
        overrides["ln_eps"] = args.eps
    if args.gelu is not None:
        overrides["gelu"] = args.gelu
    if args.global_pool is not None:
        overrides["global_pool"] = args.global_pool
    if args.img_size is not None:
        overrides["img_size"] = args.img_size
    if (args.mean is None) != (args.std is None):
        raise _UserError("--mean and --std go together: give both or neither")
    if args.mean is not None:
        overrides["mean"], overrides["std"] = list(args.mean), list(args.std)
    fmt = args.format
    if args.map is not None and fmt not in ("auto", "map"):
        raise _UserError(f"--map goes with --format map (or auto), not --format {fmt}")
    if fmt == "map" and args.map is None:
        raise _UserError(f"--format map needs --map (a JSON file or a built-in map: "
                         f"{', '.join(sorted(pio.BUILTIN_MAPS))})")
    if os.path.isdir(args.out):
        raise _UserError(f"--out {args.out} is a directory; give the path of the file to write")
    model, prep = pio._convert_file(
        args.src, args.out, config=None, format=fmt, num_heads=args.num_heads,
        rename_map=args.map, hf_config=args.hf_config, overrides=overrides)
    print(f"read {args.src} as the {prep.format} layout"
          + (f" (map {args.map})" if args.map is not None else ""))
    for note in prep.notes:
        print(f"note: {note}")
    print("config:")
    for k, v in model.config.to_dict().items():
        print(f"  {k}: {json.dumps(v)}")
    print(f"parameters: {model.num_params:,}")
    print(f"wrote {args.out}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m polyvit", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    sub.add_parser("info", help="how the engine was built")
    q = sub.add_parser("quickstart", help="a short tour on synthetic data")
    q.add_argument("--steps", type=int, default=15)
    q.add_argument("--batch", type=int, default=32)
    c = sub.add_parser(
        "convert", help="convert a checkpoint to a polyvit safetensors file",
        description="Convert a ViT checkpoint (.safetensors, or .pth/.pt/.bin with PyTorch "
                    "installed) to a polyvit safetensors file; what the weights do not show "
                    "(heads, LayerNorm eps, GELU form, pooling, input normalisation) comes from "
                    "the options, the file's metadata or --hf-config. Architectures polyvit "
                    "cannot express exactly are refused.")
    c.add_argument("src", help="the checkpoint to read")
    c.add_argument("--out", required=True, help="the polyvit .safetensors file to write")
    c.add_argument("--format", default="auto",
                   choices=["auto", "timm", "torchvision", "hf", "polyvit", "torch_mha",
                            "vit_pytorch", "map"],
                   help="the source layout (default: detected from the names)")
    c.add_argument("--map", help="a rename map: a JSON file or a built-in map name")
    c.add_argument("--num-heads", type=int, help="attention heads (not in the weights)")
    c.add_argument("--eps", type=float, help="LayerNorm epsilon")
    c.add_argument("--gelu", choices=["erf", "tanh"], help="GELU form")
    c.add_argument("--global-pool", choices=["token", "avg"],
                   help="pooling: the class token or the mean of the patch tokens")
    c.add_argument("--mean", type=float, nargs="+", help="input normalisation mean, per channel")
    c.add_argument("--std", type=float, nargs="+", help="input normalisation std, per channel")
    c.add_argument("--img-size", type=int, help="image size (checked against the weights)")
    c.add_argument("--hf-config", help="a Hugging Face config.json for an hf checkpoint")
    d = sub.add_parser("demo", help="the method on the teacher and images shipped in the package")
    d.add_argument("--epochs", type=int, default=8, help="short distillation epochs")
    from . import cli

    cli.register(sub)  # train, fit, distill, evaluate, report, experiment
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the commands results record
    if args.cmd == "info":
        return _info(args)
    if args.cmd == "quickstart":
        return _quickstart(args)
    if args.cmd == "demo":
        from . import demo

        return demo.main(args)
    if args.cmd == "convert":
        try:
            return _convert(args)
        except (_UserError, ValueError, TypeError, OSError, ImportError) as e:
            print(f"python -m polyvit convert: error: {_one_line(e)}", file=sys.stderr)
            return 2
    if getattr(args, "func", None) is not None:
        try:
            return args.func(args)
        except BrokenPipeError:
            # the reader went away (`... report --rows R | head`): no error, no traceback at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except (cli.UserError, ValueError, TypeError, OSError, ImportError) as e:
            print(f"python -m polyvit {args.cmd}: error: {_one_line(e)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as e:
            # a training run says where it stopped and what it saved (polyvit.training)
            why = str(e) or "interrupted; run the same command again to resume from the last " \
                            "checkpoint"
            print(f"python -m polyvit {args.cmd}: {why}", file=sys.stderr)
            return 130
    ap.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
