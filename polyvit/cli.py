"""The pipeline on the command line: train a teacher, fit, distill, evaluate, report, and the
whole experiment. Registered into ``python -m polyvit`` by ``polyvit/__main__.py``.

    python -m polyvit train --preset vit_mini_patch4_32 --epochs 30 --out runs/teacher
    python -m polyvit fit --teacher runs/teacher/model.safetensors --blocks hybrid-3 --method directfit --out s.safetensors
    python -m polyvit distill --teacher T.safetensors --student s.safetensors --epochs 5 --out runs/distill
    python -m polyvit evaluate --student s.safetensors --teacher T.safetensors
    python -m polyvit report --logs runs/distill/log.jsonl --plot curves.png
    python -m polyvit report --rows results/cifar12 --plot results/cifar12/curves.png
    python -m polyvit experiment --teacher T.safetensors --configs hybrid-2 full --epochs 2 --out results/x
"""
from __future__ import annotations

import json
import os
import shlex
import sys
from typing import Any, Optional

from . import _clock

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def _device(args) -> str:
    """The --device asked for, checked before any data is read: "cpu" or "cuda"."""
    dev = getattr(args, "device", "cpu")
    if dev == "cuda":
        from . import cuda

        if not cuda.is_built():
            raise UserError("--device cuda: this build of polyvit has no CUDA engine "
                            "(polyvit.HAS_CUDA is False); use --device cpu")
        if not cuda.is_available():
            reason = cuda._load().device_count()[1]
            raise UserError(f"--device cuda: no usable CUDA GPU here ({reason}); use --device cpu")
    prec = getattr(args, "precision", "fp32")
    if dev == "cpu" and prec != "fp32":
        raise UserError(f"--precision {prec} needs --device cuda: the CPU engine computes in "
                        "fp32 only")
    return dev


def load_data(path: Optional[str], split: str):
    """A Dataset from a path (image folder or .tar.gz with class folders, or the official
    CIFAR-10/100 files), or the shared CIFAR-10 (JPEG) archive when no path is given."""
    from . import datasets

    if not path:
        return datasets.load_cifar10_jpeg(split)
    if not os.path.exists(path):
        raise UserError(f"data not found: {path}")
    low = path.lower()
    if "cifar-100" in low or "cifar100" in low:
        return datasets.load_cifar100(path, split)
    if "cifar-10-" in low or low.endswith("cifar-10-batches-py") or low.endswith("cifar-10-batches-bin"):
        return datasets.load_cifar10(path, split)
    return datasets.load_image_folder(path, split=split)


def _subset(ds, n: Optional[int], seed: int):
    if n is None or n >= len(ds):
        return ds
    import numpy as np

    idx = np.sort(np.random.default_rng([seed, 3]).choice(len(ds), n, replace=False))
    return ds[idx]


def _load_model(path: str, max_batch: int, device: str = "cpu"):
    import polyvit

    if not os.path.exists(path):
        raise UserError(f"model file not found: {path}")
    try:
        return polyvit.load(path, max_batch=max_batch, device=device)
    except ValueError:
        return polyvit.import_weights(path, max_batch=max_batch).to(device)


def _write_json(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


# ---- subcommands ---------------------------------------------------------------------------
def cmd_train(args) -> int:
    _clock.install()   # epochs and rows are timed without a Ctrl-Z pause (see _clock)
    import polyvit
    from .training import Stage, Trainer

    dev = _device(args)
    train = _subset(load_data(args.data, "train"), args.train_size, args.seed)
    test = _subset(load_data(args.data, "test"), args.eval_size, args.seed)
    over = dict(num_classes=train.num_classes, mean=CIFAR_MEAN, std=CIFAR_STD)
    for k in ("embed_dim", "depth", "num_heads"):
        if getattr(args, k) is not None:
            over[k] = getattr(args, k)
    model = polyvit.ViT.preset(args.preset, max_batch=args.batch_size, seed=args.seed,
                               device=dev, precision=args.precision, **over)
    print(model, file=sys.stderr)
    stage = Stage(epochs=args.epochs, lr=args.lr, warmup_epochs=min(args.warmup, args.epochs),
                  magnitude=None if args.magnitude < 0 else args.magnitude)
    if args.no_mixup:
        stage.mixup = None
    t = Trainer(model, train, test, stages=[stage], batch_size=args.batch_size,
                weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
                seed=args.seed, workdir=args.out, checkpoint_every=args.checkpoint_every)
    t.run(resume=not args.restart)
    model.save(os.path.join(args.out, "model.safetensors"))
    print(f"saved {os.path.join(args.out, 'model.safetensors')}", file=sys.stderr)
    return 0


def cmd_fit(args) -> int:
    from . import fit
    from .experiment import parse_config
    from .students import student

    dev = _device(args)
    teacher = _load_model(args.teacher, args.batch_size, dev)
    blocks = parse_config(args.blocks, teacher.config.depth)
    s = student(teacher, blocks)
    if args.method == "static":
        reps = fit.static(s, blocks)
    else:
        cal = _subset(load_data(args.data, "train"), args.calibration, args.seed).images
        reps = fit.directfit(s, teacher, cal, blocks, scale_fix=not args.no_scale_fix,
                             per_channel=args.per_channel)
    s.save(args.out)
    for r in reps:
        print(json.dumps({k: v for k, v in r.to_dict().items()
                          if not isinstance(v, list) or len(v) < 8}))
    return 0


def cmd_distill(args) -> int:
    _clock.install()   # epochs and rows are timed without a Ctrl-Z pause (see _clock)
    from .losses import Loss
    from .training import Distiller, Stage

    dev = _device(args)
    teacher = _load_model(args.teacher, args.batch_size, dev)
    s = _load_model(args.student, args.batch_size, dev)
    train = _subset(load_data(args.data, "train"), args.train_size, args.seed)
    test = _subset(load_data(args.data, "test"), args.eval_size, args.seed)
    loss = {"mse": Loss(mse=1.0, ce=0.0), "kl": Loss(kl=1.0, ce=0.0, temperature=args.temperature),
            "ce": Loss(ce=1.0), "mse+ce": Loss(mse=1.0, ce=1.0)}[args.loss]
    d = Distiller(s, teacher, train, test, loss=loss,
                  stages=[Stage(epochs=args.epochs, lr=args.lr, warmup_epochs=min(args.warmup, args.epochs),
                                magnitude=None if args.magnitude < 0 else args.magnitude)],
                  trainable_coeffs=not args.frozen_coeffs, coeff_lr=args.coeff_lr,
                  batch_size=args.batch_size, seed=args.seed, workdir=args.out,
                  checkpoint_every=args.checkpoint_every)
    d.run(resume=not args.restart)
    s.save(os.path.join(args.out, "student.safetensors"))
    return 0


def cmd_evaluate(args) -> int:
    from .metrics import evaluate

    dev = _device(args)
    s = _load_model(args.student, 500, dev)
    t = _load_model(args.teacher, 500, dev) if args.teacher else None
    test = _subset(load_data(args.data, "test"), args.eval_size, args.seed)
    r = evaluate(s, t, (test.images, test.labels), progress=True)
    text = json.dumps(r, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)
    return 0


def cmd_report(args) -> int:
    from .plots import plot_curves, read_log

    if not args.logs and not args.rows:
        raise UserError("report needs --logs (training logs) or --rows (an experiment folder)")
    if args.rows:
        return _report_rows(args)
    logs = {os.path.basename(os.path.dirname(os.path.abspath(p))) or p: p for p in args.logs}
    for label, p in logs.items():
        if not os.path.exists(p):
            raise UserError(f"log not found: {p}")
        ep = [r for r in read_log(p) if r.get("type") == "epoch"]
        print(f"{label}: {len(ep)} epochs")
        for r in ep:
            ev = r.get("eval") or {}
            print(f"  epoch {r['epoch'] + 1}: loss {r['train_loss']:.4f} " +
                  " ".join(f"{k} {v:.4f}" for k, v in ev.items()))
    if args.plot:
        plot_curves(logs, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _report_rows(args) -> int:
    """The table of an experiment folder as it stands, finished or not."""
    from . import experiment

    if args.logs:
        raise UserError("report takes --logs or --rows, not both")
    try:
        rows, running = experiment.collect(args.rows)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    if not rows and not running:
        raise UserError(f"{args.rows} holds no experiment rows and no distillation logs yet")
    print(experiment.table(rows) if rows else "(no finished rows yet)")
    for r in running:
        ev = r["last"] or {}
        last = "" if not ev else (f"; after the last, top-1 {100 * ev['student_top1']:.2f}, "
                                  f"fidelity {100 * ev.get('fidelity', float('nan')):.2f} on the "
                                  f"per-epoch evaluation images")
        print(f"in progress: {r['name']}, {r['epochs']} epochs logged{last} ({r['log']})")
    if args.plot:
        from .plots import plot_curves

        logs = experiment.distill_logs(args.rows, rows, running)
        if not logs:
            raise UserError(f"{args.rows} has no distillation epochs to plot yet")
        plot_curves(logs, args.plot, experiment.CURVES_TITLE)
        print(f"wrote {args.plot}")
    return 0


def cmd_experiment(args) -> int:
    _clock.install()   # epochs and rows are timed without a Ctrl-Z pause (see _clock)
    from . import experiment

    dev = _device(args)
    teacher = _load_model(args.teacher, max(500, args.batch_size), dev)
    train = _subset(load_data(args.data, "train"), args.train_size, args.seed)
    test = _subset(load_data(args.data, "test"), args.eval_size, args.seed)
    cmd = "python -m polyvit " + " ".join(shlex.quote(a) for a in args.argv)
    rows = experiment.run(teacher, train, test, args.configs, epochs=args.epochs, lr=args.lr,
                          coeff_lr=args.coeff_lr, batch_size=args.batch_size, out=args.out,
                          seed=args.seed, methods=args.methods, command=cmd,
                          magnitude=None if args.magnitude < 0 else args.magnitude,
                          redo=args.redo, v3_loss=args.v3_loss, final_stages_n=args.final_stages)
    print(experiment.table(rows))
    return 0


# ---- registration --------------------------------------------------------------------------
def _common(p, batch=64):
    p.add_argument("--data", help="image folder, .tar.gz or CIFAR files (default: the shared "
                   "CIFAR-10 JPEG archive in ../shared/data or $POLYVIT_DATA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=batch)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--eval-size", type=int, default=None, help="evaluate on this many test images")


def _training(p):
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=float, default=1.0, help="warmup epochs")
    p.add_argument("--magnitude", type=int, default=9, help="RandAugment magnitude (-1: off)")
    p.add_argument("--train-size", type=int, default=None, help="use this many training images")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--out", required=True, help="folder for checkpoint, log and result")


def register(sub) -> None:
    p = sub.add_parser("train", help="train a GELU teacher on labels")
    _common(p, 128)
    _training(p)
    p.add_argument("--preset", default="vit_mini_patch4_32")
    p.add_argument("--embed-dim", dest="embed_dim", type=int)
    p.add_argument("--depth", type=int)
    p.add_argument("--num-heads", dest="num_heads", type=int)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--no-mixup", action="store_true")
    p.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32",
                   help="matrix products on --device cuda: fp32 (the reference), tf32, or bf16 "
                   "with fp32 master weights; the CPU engine is fp32 only")
    p.set_defaults(func=cmd_train, lr=1e-3)

    p = sub.add_parser("fit", help="static fit (V1) or DirectFit + Scale Fix (V2)")
    _common(p, 256)
    p.add_argument("--teacher", required=True)
    p.add_argument("--blocks", default="full", help="hybrid-K, full, or 0,2,5")
    p.add_argument("--method", choices=("static", "directfit"), default="directfit")
    p.add_argument("--per-channel", action="store_true")
    p.add_argument("--no-scale-fix", action="store_true")
    p.add_argument("--calibration", type=int, default=512, help="calibration images")
    p.add_argument("--out", required=True, help="student .safetensors")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("distill", help="distil a teacher into a polynomial student")
    _common(p)
    _training(p)
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", required=True, help="a student from `fit`")
    p.add_argument("--loss", choices=("mse", "kl", "ce", "mse+ce"), default="mse")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--coeff-lr", type=float, default=5e-3)
    p.add_argument("--frozen-coeffs", action="store_true", help="V3: coefficients not trained")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("evaluate", help="accuracy, fidelity, logit cosine, activation ranges")
    _common(p, 500)
    p.add_argument("--student", required=True)
    p.add_argument("--teacher")
    p.add_argument("--out", help="write the JSON here too")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="summarise training logs or an experiment folder, plot "
                                      "curves")
    p.add_argument("--logs", nargs="+", help="training logs (log.jsonl) to summarise")
    p.add_argument("--rows", help="an experiment's --out folder: its table so far, and the "
                                  "distillations still in progress")
    p.add_argument("--plot", help="PNG of accuracy/fidelity/loss per epoch")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("experiment", help="V1, V2, V3 and final for each configuration")
    _common(p)
    p.add_argument("--teacher", required=True)
    p.add_argument("--configs", nargs="+", default=["hybrid-2", "full"])
    p.add_argument("--methods", nargs="+", default=["V1", "V2", "V3", "final"])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--coeff-lr", type=float, default=5e-3)
    p.add_argument("--magnitude", type=int, default=9)
    p.add_argument("--train-size", type=int, default=None)
    p.add_argument("--v3-loss", choices=("kd", "mse"), default="kd",
                   help="V3's loss: kd (0.9 KL at T=4 + 0.1 CE, the seed's distillation; default) "
                        "or mse (the final recipe's pure logit MSE)")
    p.add_argument("--final-stages", type=int, default=None,
                   help="the final recipe in N progressive stages: the blocks replaced in N "
                        "groups over the same epochs (default 2, or 1 for a single block or "
                        "epoch; 1: all at once, from the V2 student)")
    p.add_argument("--out", required=True)
    p.add_argument("--redo", action="store_true",
                   help="recompute rows whose JSON is already in --out (default: keep them, and "
                        "resume an interrupted distillation from its checkpoint)")
    p.set_defaults(func=cmd_experiment)
