"""The seed's experiment on any GELU teacher: V1 static fit, V2 DirectFit + Scale Fix,
V3 distillation with frozen coefficients, and the final recipe (trainable coefficients, pure
logit MSE, progressive stages), for each chosen configuration (Hybrid-k, Full). One JSON per
row, a table at the end.

V3 is classic knowledge distillation (Hinton's: KL to the teacher's softened logits at T = 4,
weight 0.9, plus 0.1 cross-entropy on the (mixed) labels), as the seed contrasts it with the
final recipe's *pure* logit MSE; ``v3_loss="mse"`` gives V3 the final's loss instead, leaving
the coefficients (and stages) as the only difference. The final recipe runs in progressive
stages: the configuration's blocks become quadratic in n contiguous groups (DirectFit + Scale
Fix for each group as it is replaced), over the same total epochs; n is 2 by default (1 where
the configuration has one block or the run one epoch), ``final_stages_n`` chooses it.

    python -m polyvit experiment --teacher model.safetensors --configs hybrid-2 full --epochs 2 \\
        --out results/mymodel
"""
from __future__ import annotations

import json
import os
import platform
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import _clock
from . import fit as fitting
from ._fs import atomic_save
from . import mpc
from .config import normalise_blocks
from .losses import Loss
from .metrics import evaluate
from .students import student as make_student
from .training import Distiller, Stage

METHODS = ("V1", "V2", "V3", "final")
V3_LOSSES = {"kd": dict(kl=0.9, ce=0.1, temperature=4.0), "mse": dict(mse=1.0, ce=0.0)}
FINAL_LOSS = dict(mse=1.0, ce=0.0)
PAIRED = ("student_only_correct", "teacher_only_correct", "gap_se")   # metrics.paired_gap


def parse_config(name: str, depth: int) -> List[int]:
    """'hybrid-k' -> first k blocks, 'full' -> all, '0,2,5' -> those blocks."""
    n = name.lower()
    if n == "full":
        return list(range(depth))
    if n.startswith("hybrid-"):
        k = int(n.split("-", 1)[1])
        if not 1 <= k <= depth:
            raise ValueError(f"{name}: k must be in 1..{depth}")
        return list(range(k))
    try:
        return normalise_blocks([int(v) for v in n.split(",")], depth)
    except ValueError:
        raise ValueError(f"unknown configuration {name!r}: use hybrid-K, full or a list like 0,2,5") from None


def config_label(name: str, depth: int) -> str:
    n = name.lower()
    if n == "full":
        return f"Full-{depth}"
    if n.startswith("hybrid-"):
        return f"Hybrid-{n.split('-', 1)[1]}"
    return f"blocks {name}"


def machine(model=None) -> str:
    """The host's processor and cores, and the GPU when ``model`` runs on one: a row's
    wall time means little without both."""
    cpu = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    where = f"{cpu}, {os.cpu_count()} cores"
    dev = getattr(model, "device", "cpu")
    if dev != "cpu":
        from . import cuda

        try:
            name = cuda.device_info(int(dev.split(":")[1]))["name"]
        except Exception as e:  # the row is still worth writing without the GPU's name
            name = f"a CUDA device ({type(e).__name__})"
        where += f"; {dev} {name}"
    return where


def final_stages(blocks: Sequence[int], epochs: int, n: int, lr: float,
                 magnitude: Optional[int]) -> List[Stage]:
    """The final recipe's stages: with ``n == 1`` one stage over the V2 student as it is; with
    ``n > 1`` the blocks are replaced in ``n`` contiguous groups (group i joins at stage i,
    DirectFit + Scale Fix on calibration images), the epochs split as evenly as they go with
    the remainder on the last stages, each stage with its own warmup and cosine."""
    blocks = list(blocks)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"final_stages must be a positive integer, got {n!r}")
    if n > len(blocks):
        raise ValueError(f"final_stages={n} exceeds the {len(blocks)} replaced blocks: each "
                         f"stage must replace at least one")
    if n > epochs:
        raise ValueError(f"final_stages={n} exceeds the {epochs} epochs: each stage needs one")
    if n == 1:
        return [Stage(epochs=epochs, lr=lr, warmup_epochs=min(1.0, epochs / 4), magnitude=magnitude)]
    base, extra = divmod(epochs, n)
    stages, upto = [], 0
    for i in range(n):
        size = len(blocks) // n + (1 if i < len(blocks) % n else 0)
        upto += size
        e = base + (1 if i >= n - extra else 0)
        stages.append(Stage(epochs=e, lr=lr, warmup_epochs=min(1.0, e / 4), magnitude=magnitude,
                            blocks=blocks[:upto], fit="directfit"))
    return stages


def default_stages_n(blocks: Sequence[int], epochs: int) -> int:
    """The final recipe's default number of progressive stages: two (the first half of the
    blocks, then all), or one where there is a single block or a single epoch to split."""
    return max(1, min(2, len(list(blocks)), epochs))


def _recipe(method: str, stages: Sequence[Stage], v3_loss: str, lr: float,
            coeff_lr: float, batch_size: int) -> Dict[str, Any]:
    loss = V3_LOSSES[v3_loss] if method == "V3" else FINAL_LOSS
    return {"loss": dict(loss), "trainable_coeffs": method == "final", "lr": lr,
            "coeff_lr": coeff_lr if method == "final" else None, "batch_size": batch_size,
            "stages": [{"epochs": st.epochs, "blocks": st.blocks, "magnitude": st.magnitude,
                        "mixup": st.mixup is not None} for st in stages]}


def run(teacher, train_data, test_data, configs: Sequence[str], epochs: int = 2,
        lr: float = 5e-4, coeff_lr: float = 5e-3, batch_size: int = 64,
        calibration: int = 512, eval_size: Optional[int] = None, methods: Sequence[str] = METHODS,
        out: Optional[str] = None, seed: int = 0, magnitude: Optional[int] = 9,
        command: str = "", progress: bool = True, redo: bool = False, v3_loss: str = "kd",
        final_stages_n: Optional[int] = None) -> List[Dict[str, Any]]:
    """Run the methods for each configuration; returns the rows (also written under ``out``).

    V3 and final share epochs, learning rate and augmentation (RandAugment + Mixup/CutMix),
    as the seed compares them. V3 starts from the V2 (DirectFit + Scale Fix) student and
    trains with ``v3_loss`` (``"kd"``: 0.9 KL at T = 4 + 0.1 CE; ``"mse"``), coefficients
    frozen; final trains coefficients too, on pure logit MSE, in ``final_stages_n`` stages
    (1: from the V2 student; more: progressive replacement, see :func:`final_stages`; None:
    :func:`default_stages_n`).
    Each distilled row records its recipe.

    With ``out``, the experiment can be stopped and run again with the same arguments: rows
    whose JSON is already under ``out`` are kept (``redo=True`` recomputes them), and an
    interrupted distillation resumes from its checkpoint in ``out/runs/``. A row's wall time is
    its fit plus, for V3 and final, the distillation summed over its sessions (its stage fits and
    per-epoch evaluations included); the final evaluation on the test set is not counted.
    """
    for mth in methods:
        if mth not in METHODS:
            raise ValueError(f"unknown method {mth!r}; choose from {METHODS}")
    if v3_loss not in V3_LOSSES:
        raise ValueError(f"unknown v3_loss {v3_loss!r}; choose from {tuple(V3_LOSSES)}")
    depth = teacher.config.depth
    def n_stages(blocks):
        return default_stages_n(blocks, epochs) if final_stages_n is None else final_stages_n

    for name in configs:   # every configuration's stages checked before any work starts
        blocks = parse_config(name, depth)
        final_stages(blocks, epochs, n_stages(blocks) if "final" in methods else 1, lr, magnitude)
    test = test_data
    if eval_size is not None and eval_size < len(test_data):
        from .datasets import balanced_sample

        test = test_data[balanced_sample(test_data.labels, eval_size, seed)]
    rng = np.random.default_rng([seed, 11])
    cal_idx = np.sort(rng.choice(len(train_data), min(calibration, len(train_data)), replace=False))
    cal = train_data.images[cal_idx]
    rows: List[Dict[str, Any]] = []
    base = evaluate(teacher, teacher, (test.images, test.labels))
    rows.append(_row("teacher (GELU)", "GELU", teacher, base, 0.0, command, {}))
    if out:   # the teacher's row first, so that a run stopped midway can be reported (collect)
        os.makedirs(out, exist_ok=True)
        _write_json(os.path.join(out, "teacher.json"), rows[0])
    for name in configs:
        blocks = parse_config(name, depth)
        label = config_label(name, depth)
        for mth in methods:
            done = os.path.join(out, f"{label}-{mth}.json") if out else None
            n = n_stages(blocks) if mth == "final" else 1
            stages = final_stages(blocks, epochs, n, lr, magnitude)
            recipe = _recipe(mth, stages, v3_loss, lr, coeff_lr, batch_size) \
                if mth in ("V3", "final") else None
            if done and not redo and os.path.exists(done):
                with open(done) as f:
                    kept = json.load(f)
                if recipe is not None and kept.get("recipe") != recipe:
                    raise ValueError(f"{done} was made with another recipe ({kept.get('recipe')}) "
                                     f"than this run's ({recipe}): run with --redo (redo=True) to "
                                     f"recompute it, or choose another output folder")
                rows.append(kept)
                if progress:
                    print(f"{label} {mth}: kept from {done}", file=sys.stderr, flush=True)
                continue
            t = _clock.now()
            progressive = n > 1
            if progressive:   # the stages replace the blocks, group by group
                s = teacher.copy(max_batch=max(batch_size, 64))
            else:
                s = make_student(teacher, blocks, max_batch=max(batch_size, 64))
            extra: Dict[str, Any] = {} if recipe is None else {"recipe": recipe}
            if mth == "V1":
                fitting.static(s, blocks)
            elif not progressive:
                reps = fitting.directfit(s, teacher, cal, blocks)
                extra["fits"] = [r.to_dict() for r in reps]
                if mth == "V2" and out:
                    _try_plot_fits(s, teacher, cal, blocks, os.path.join(out, f"fits-{label}.png"),
                                   f"{label}: DirectFit + Scale Fix over the teacher's pre-activations")
            if mth in ("V3", "final"):
                wd = os.path.join(out, "runs", f"{label}-{mth}") if out else None
                d = Distiller(s, teacher, train_data, (test.images, test.labels),
                              loss=Loss(**recipe["loss"]), stages=stages,
                              trainable_coeffs=(mth == "final"), coeff_lr=coeff_lr,
                              batch_size=batch_size, seed=seed, workdir=wd, progress=progress,
                              eval_size=min(2000, len(test)), calibration_size=calibration)
                fit_seconds = _clock.now() - t
                extra["history"] = d.run(resume=not redo)
                # the distillation's own clock sums its sessions (a resumed row would
                # otherwise count only the last one); its stage fits and per-epoch
                # evaluations are inside it
                seconds = fit_seconds + d.wall_seconds
            else:
                seconds = _clock.now() - t
            r = evaluate(s, teacher, (test.images, test.labels))
            row = _row(f"{label} {mth}", mth, s, r, seconds, command, extra)
            row["config"] = label
            rows.append(row)
            if progress:
                print(f"{label} {mth}: top-1 {r['student_top1']:.4f}, fidelity {r['fidelity']:.4f}, "
                      f"cosine {r['logit_cosine']:.4f} ({_clock.now() - t:.0f} s)", file=sys.stderr,
                      flush=True)
            if out:
                _write_json(os.path.join(out, f"{label}-{mth}.json"), row)
    if out:
        logs = distill_logs(out, rows)
        if logs:
            try:
                from .plots import plot_curves

                plot_curves(logs, os.path.join(out, "curves.png"), CURVES_TITLE)
            except ImportError:
                pass
        write_table(out, rows)
    return rows


CURVES_TITLE = "distillation: student accuracy, fidelity and loss per epoch"


def distill_logs(out: str, rows: Sequence[Dict[str, Any]],
                 running: Sequence[Dict[str, Any]] = ()) -> Dict[str, str]:
    """The per-epoch logs of an experiment folder's distillations, name -> path, for the curves:
    the finished V3 and final rows' (where the log is still there), then those in progress."""
    logs = {r["name"]: os.path.join(out, "runs", f"{r['config']}-{r['method']}", "log.jsonl")
            for r in rows if r.get("method") in ("V3", "final") and "config" in r}
    logs = {k: v for k, v in logs.items() if os.path.exists(v)}
    logs.update({f"{r['name']} (in progress)": r["log"] for r in running if r["epochs"]})
    return logs


def _write_json(path: str, obj) -> None:
    # atomically: a run killed while writing must not leave a row that the next run cannot read
    atomic_save(path, lambda f: f.write(json.dumps(obj, indent=1).encode("utf-8")))


def collect(out: str) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """What an experiment folder holds so far, for a run that spans sessions: the finished rows
    in the table's order (the teacher, then each configuration's V1, V2, V3, final; the
    configurations from the fewest replaced blocks to the most), and the distillations under
    ``out/runs/`` that have no row yet, each as ``{"name", "log", "epochs", "last"}`` (epochs
    logged, the last epoch's evaluation)."""
    from .plots import read_log   # plots needs matplotlib only to draw

    if not os.path.isdir(out):
        raise FileNotFoundError(f"no experiment folder at {out}")
    rows, teacher = [], None
    for fn in sorted(os.listdir(out)):
        if not fn.endswith(".json"):
            continue
        path = os.path.join(out, fn)
        try:
            with open(path) as f:
                r = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path} is not a readable row ({type(e).__name__}: {e})") from None
        if not isinstance(r, dict) or "method" not in r or "top1" not in r:
            continue   # not a row (another tool's JSON beside them)
        if r["method"] == "GELU":
            teacher = r
        else:
            rows.append(r)
    order = {m: i for i, m in enumerate(METHODS)}
    # more replaced blocks: fewer GELU comparisons left; the seed's layout lists Hybrid before Full
    rows.sort(key=lambda r: (-r.get("gelu_comparison_pct", 0), r.get("config", r["name"]),
                             order.get(r["method"], len(order))))
    done = {f"{r.get('config')}-{r['method']}" for r in rows}
    running = []
    runs = os.path.join(out, "runs")
    for d in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
        log = os.path.join(runs, d, "log.jsonl")
        if d in done or not os.path.exists(log):
            continue
        epochs = [r for r in read_log(log) if r.get("type") == "epoch"]
        running.append({"name": d.replace("-V", " V").replace("-final", " final"), "log": log,
                        "epochs": len(epochs), "last": epochs[-1].get("eval") if epochs else None})
    return ([teacher] if teacher else []) + rows, running


def _try_plot_fits(student, teacher, images, blocks, path, title) -> None:
    try:
        from .plots import plot_fits
    except ImportError:
        return
    try:
        _, acts = teacher.forward(images, capture=blocks)
        plot_fits(student, acts, path, title)
    except ImportError:  # matplotlib absent
        pass


def _row(name, method, model, r, seconds, command, extra) -> Dict[str, Any]:
    c = mpc.count(model)
    return {"name": name, "method": method, "top1": r.get("student_top1"),
            "top5": r.get("student_top5"), "teacher_top1": r.get("teacher_top1"),
            "fidelity": r.get("fidelity"), "logit_cosine": r.get("logit_cosine"), "kl": r.get("kl"),
            "gelu_comparison_pct": c["gelu_comparison_pct"],
            "model_comparison_pct": c["model_comparison_pct"], "mpc_profile": c["profile"],
            "seconds": seconds, "machine": machine(model), "command": command,
            "blocks": r.get("blocks"), "n_test": r.get("n"),
            **{k: r[k] for k in PAIRED if k in r and method != "GELU"}, **extra}


def write_table(out: str, rows: Sequence[Dict[str, Any]]) -> None:
    """``out/table.md``: the rows' :func:`table`, written atomically."""
    atomic_save(os.path.join(out, "table.md"), lambda f: f.write((table(rows) + "\n").encode()))


def table(rows: Sequence[Dict[str, Any]]) -> str:
    """The rows as a Markdown table; "gap" is a student's top-1 minus its teacher's on the same
    images, in points: the figure the seed reports (+0.27 Hybrid-6, -1.00 Full-12); "± s.e." its
    paired standard error over the test images (blank for rows written before it was kept)."""
    head = ("| model | top-1 | gap | ± s.e. | fidelity | logit cosine | GELU comparisons | "
            "all comparisons | wall time |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        student = r.get("method") != "GELU" and r.get("teacher_top1") is not None
        gap = f"{100 * (r['top1'] - r['teacher_top1']):+.2f}" if student else ""
        se = f"{100 * r['gap_se']:.2f}" if student and r.get("gap_se") is not None else ""
        lines.append(f"| {r['name']} | {100 * r['top1']:.2f} | {gap} | {se} | "
                     f"{100 * r['fidelity']:.2f} | {r['logit_cosine']:.4f} | "
                     f"{r['gelu_comparison_pct']:.0f}% | {r['model_comparison_pct']:.0f}% | "
                     f"{r['seconds']:.0f} s |")
    return "\n".join(lines)
