"""Evaluation of a student against its teacher: accuracy, fidelity, logit agreement,
activation ranges and coefficients."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from .fit import PERCENTILES


def _as_xy(data) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    if isinstance(data, tuple) and len(data) == 2:
        return data[0], (None if data[1] is None else np.asarray(data[1]))
    if hasattr(data, "images") and hasattr(data, "labels"):
        return data.images, np.asarray(data.labels)
    return data, None


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def paired_gap(student_right: np.ndarray, teacher_right: np.ndarray) -> Dict[str, Any]:
    """How far a student's top-1 minus its teacher's, measured on the same images, can be
    trusted: the images only the student gets right, those only the teacher gets right
    (McNemar's discordant pairs), and the gap's paired standard error, as a fraction (the
    standard deviation of the per-image difference over sqrt(n)). It measures the test sample's
    noise only, for these two fixed models; a different training seed adds its own."""
    s = np.asarray(student_right, bool)
    t = np.asarray(teacher_right, bool)
    if s.shape != t.shape or s.ndim != 1:
        raise ValueError(f"paired_gap needs two equal 1-D arrays, got {s.shape} and {t.shape}")
    n = s.size
    d = s.astype(np.float64) - t.astype(np.float64)
    # one image has no spread to estimate: None (JSON null, a blank in the table), not NaN
    se = float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else None
    return {"student_only_correct": int((s & ~t).sum()), "teacher_only_correct": int((t & ~s).sum()),
            "gap_se": se}


def evaluate(student, teacher=None, data=None, batch_size: int = 500,
             activation_samples: int = 200_000, seed: int = 0,
             progress: bool = False, activations: bool = True) -> Dict[str, Any]:
    """Metrics of ``student`` (and ``teacher``) on ``data``: an (images, labels) pair, an
    object with ``.images``/``.labels`` (a polyvit Dataset), or bare images.

    Returns top-1/top-5 of both (when labels are given), fidelity (share of images where the
    two argmaxes agree), mean logit cosine similarity, mean KL(teacher || student), with labels
    the top-1 gap's paired statistics (:func:`paired_gap`), and per
    block of the student: activation range (exact min/max; percentiles from a uniform
    subsample of ``activation_samples`` values) and coefficients. ``activations=False`` leaves
    the per-block part out (no ``"blocks"``) and runs the plain forward: capturing every
    block's hidden activations costs far more than the logits (on a GPU, copying them to the
    host took ~20 s per 10,000 CIFAR images at width 192), and a training run's per-epoch
    evaluation keeps only the scores.
    """
    if data is None:
        raise ValueError("evaluate needs data: (images, labels) or a Dataset")
    x, y = _as_xy(data)
    n = len(x)
    if n == 0:
        raise ValueError("evaluate got no images")
    if y is not None and len(y) != n:
        raise ValueError(f"{n} images but {len(y)} labels")
    depth = student.config.depth
    rng = np.random.default_rng(seed)
    s_logits, t_logits = [], []
    mins = np.full(depth, np.inf)
    maxs = np.full(depth, -np.inf)
    pool: Dict[int, list] = {i: [] for i in range(depth)}
    per_batch = max(1, activation_samples // max(1, (n + batch_size - 1) // batch_size))
    bar = None
    if progress:
        from .progress import Progress
        bar = Progress(n, desc="evaluate")
    for s in range(0, n, batch_size):
        xb = x[s:s + batch_size]
        if activations:
            ls, acts = student.forward(xb, capture=True)
        else:
            ls, acts = student.forward(xb), {}
        s_logits.append(ls)
        for i, a in acts.items():
            mins[i] = min(mins[i], float(a.min()))
            maxs[i] = max(maxs[i], float(a.max()))
            flat = a.reshape(-1)
            pool[i].append(flat[rng.integers(0, flat.size, min(per_batch, flat.size))])
        if teacher is not None:
            t_logits.append(teacher.forward(xb))
        if bar:
            bar.update(len(xb))
    if bar:
        bar.close()
    S = np.concatenate(s_logits).astype(np.float64)
    out: Dict[str, Any] = {"n": n}

    def topk(L, k):
        return float((np.argsort(-L, 1)[:, :k] == y[:, None]).any(1).mean())

    if y is not None:
        out["student_top1"] = float((S.argmax(1) == y).mean())
        out["student_top5"] = topk(S, min(5, S.shape[1]))
    if teacher is not None:
        Tl = np.concatenate(t_logits).astype(np.float64)
        if y is not None:
            out["teacher_top1"] = float((Tl.argmax(1) == y).mean())
            out["teacher_top5"] = topk(Tl, min(5, Tl.shape[1]))
        out["fidelity"] = float((S.argmax(1) == Tl.argmax(1)).mean())
        if y is not None:
            out.update(paired_gap(S.argmax(1) == y, Tl.argmax(1) == y))
        cos = (S * Tl).sum(1) / np.maximum(np.linalg.norm(S, axis=1) * np.linalg.norm(Tl, axis=1),
                                           1e-30)
        out["logit_cosine"] = float(cos.mean())
        lt, ls_ = _log_softmax(Tl), _log_softmax(S)
        out["kl"] = float((np.exp(lt) * (lt - ls_)).sum(1).mean())
    if not activations:
        return out
    blocks = []
    for i in range(depth):
        v = np.concatenate(pool[i])
        info = {"block": i, "activation": student.config.act[i], "min": float(mins[i]),
                "max": float(maxs[i]),
                "percentiles": {f"p{q:g}": float(np.percentile(v, q)) for q in PERCENTILES}}
        co = student.coefficients(i)
        if co is not None:
            info["coefficients"] = {k: (float(c[0]) if c.size == 1 else c.tolist())
                                    for k, c in co.items()}
        blocks.append(info)
    out["blocks"] = blocks
    return out
