"""Plots (matplotlib, an optional dependency: ``pip install polyvit[plot]``).

- :func:`plot_fits`: per block, the fitted quadratic (and its scaled form) against GELU, over
  the histogram of that block's real pre-activations.
- :func:`plot_curves`: accuracy, fidelity and loss per epoch from a training log (JSONL).
"""
from __future__ import annotations

import json
import math
from typing import Dict, List

import numpy as np

from .activations import gelu


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install matplotlib") from None
    return plt


def plot_fits(model, preacts: Dict[int, np.ndarray], path: str, title: str = "") -> str:
    """One panel per block in ``preacts`` ({block: samples}); the block's coefficients are
    read from ``model`` (GELU blocks show GELU only). Writes a PNG to ``path``."""
    plt = _plt()
    blocks = sorted(preacts)
    if not blocks:
        raise ValueError("no blocks to plot")
    cols = min(4, len(blocks))
    rows = math.ceil(len(blocks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, b in zip(axes.flat, blocks):
        v = np.asarray(preacts[b], np.float64).ravel()
        lo, hi = np.percentile(v, [0.05, 99.95])
        ax2 = ax.twinx()
        ax2.hist(v, bins=120, range=(lo, hi), color="0.85", density=True)
        ax2.set_yticks([])
        ax.set_zorder(ax2.get_zorder() + 1)
        ax.patch.set_visible(False)
        x = np.linspace(lo, hi, 400)
        ax.plot(x, gelu(x), "k", lw=1.5, label="GELU")
        co = model.coefficients(b)
        if co is not None:
            a, bb, c, s = (float(np.mean(co[k])) for k in "abcs")
            per_ch = co["a"].size > 1
            ax.plot(x, s * (a * x * x + bb * x + c), "C3", lw=1.5,
                    label="s·(ax²+bx+c)" + (" (channel mean)" if per_ch else ""))
            if s != 1.0:
                ax.plot(x, a * x * x + bb * x + c, "C3--", lw=1, label="before Scale Fix")
        ax.set_title(f"block {b}: [{v.min():.1f}, {v.max():.1f}]", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(blocks):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def read_log(path: str) -> List[dict]:
    """A JSON-lines log's records. It may be read while its run appends to it: a last line cut
    short is left out; a bad line before the last is an error."""
    with open(path) as f:
        lines = [ln for ln in f.read().split("\n") if ln.strip()]
    out = []
    for i, ln in enumerate(lines):
        try:
            out.append(json.loads(ln))
        except ValueError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not JSON") from None
    return out


def plot_curves(logs: Dict[str, str], path: str, title: str = "") -> str:
    """Accuracy / fidelity / train loss per epoch for each named log ({label: log.jsonl}).

    Logs without a teacher (a teacher's own training) have no fidelity: when none of them has
    one, the fidelity panel is left out rather than drawn empty."""
    plt = _plt()
    runs = {label: [r for r in read_log(log) if r.get("type") == "epoch"]
            for label, log in logs.items()}
    runs = {label: ep for label, ep in runs.items() if ep}
    with_fidelity = any("fidelity" in (r.get("eval") or {}) for ep in runs.values() for r in ep)
    panels = ["top-1 (%)"] + (["fidelity (%)"] if with_fidelity else []) + \
        ["train loss (each run's own objective)"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels) + 0.1, 3.6))
    top, loss = axes[0], axes[-1]
    for label, ep in runs.items():
        x = np.arange(1, len(ep) + 1)
        ev = [r.get("eval") or {} for r in ep]
        marker = "o" if len(ep) <= 30 else None        # a hundred markers hide the line
        if any("student_top1" in e for e in ev):
            top.plot(x, [100 * e.get("student_top1", np.nan) for e in ev], marker=marker, label=label)
        if with_fidelity and any("fidelity" in e for e in ev):
            axes[1].plot(x, [100 * e.get("fidelity", np.nan) for e in ev], marker=marker, label=label)
        loss.plot(x, [r["train_loss"] for r in ep], marker=marker, label=label)
    for ax, t in zip(axes, panels):
        ax.set_title(t)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
