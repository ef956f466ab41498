"""AdamW over the engine's parameter buffer (the moments live in the engine too)."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

GROUPS = ("decay", "no_decay", "embed", "poly")


class AdamW:
    """torch.optim.AdamW semantics (decoupled weight decay), per-group lr and decay.

    Groups (see ``ViTConfig.param_specs``): ``decay`` (matrix weights) gets ``weight_decay``;
    ``no_decay`` (biases, norms), ``embed`` (class token, position embedding) and ``poly``
    (activation coefficients) get 0 unless overridden. ``groups={"poly": {"lr": 1e-2}}``
    overrides a group's lr/weight_decay; ``{"frozen": True}`` leaves the group untouched.
    ``clip_grad_norm`` clips the global gradient norm of the trainable groups first, like
    ``torch.nn.utils.clip_grad_norm_``.
    """

    def __init__(self, model, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.05, groups: Optional[Dict[str, Dict[str, Any]]] = None,
                 clip_grad_norm: Optional[float] = None):
        self.model = model
        self.lr = _positive("lr", lr, allow_zero=True)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = _positive("eps", eps)
        self.weight_decay = _positive("weight_decay", weight_decay, allow_zero=True)
        if clip_grad_norm is not None:
            clip_grad_norm = _positive("clip_grad_norm", clip_grad_norm)
        self.clip_grad_norm = clip_grad_norm
        self.groups: Dict[str, Dict[str, Any]] = {}
        for name, opts in (groups or {}).items():
            if name not in GROUPS:
                raise ValueError(f"unknown parameter group {name!r}; groups are {GROUPS}")
            unknown = set(opts) - {"lr", "weight_decay", "frozen"}
            if unknown:
                raise ValueError(f"group {name!r}: unknown options {sorted(unknown)}")
            self.groups[name] = dict(opts)
        self.step_count = 0
        self.last_grad_norm: Optional[float] = None

    def hyperparams(self, lr: Optional[float] = None):
        """(lr, weight_decay, frozen) per group, in the engine's group order."""
        base = self.lr if lr is None else _positive("lr", lr, allow_zero=True)
        out = []
        for g in GROUPS:
            o = self.groups.get(g, {})
            # a group lr given explicitly scales with the schedule like the base lr does
            glr = o.get("lr", self.lr) * (base / self.lr if self.lr else 1.0) if "lr" in o else base
            wd = o.get("weight_decay", self.weight_decay if g == "decay" else 0.0)
            out.append((float(glr), float(wd), bool(o.get("frozen", False))))
        return out

    def step(self, lr: Optional[float] = None) -> None:
        """One AdamW step from the gradients of the last ``model.backward``."""
        hp = self.hyperparams(lr)
        model = self.model
        norm = model._grad_norm(hp)
        self.last_grad_norm = norm
        if not math.isfinite(norm):
            raise FloatingPointError("the gradients contain NaN or Inf; the step was skipped and "
                                     "the parameters are unchanged")
        if self.clip_grad_norm is not None:
            coef = self.clip_grad_norm / (norm + 1e-6)
            if coef < 1.0:
                model._grad_scale(hp, coef)
        self.step_count += 1
        model._adamw(hp, self.betas[0], self.betas[1], self.eps, self.step_count)

    def state_dict(self) -> Dict[str, Any]:
        return {"step": self.step_count, "lr": self.lr, "betas": self.betas, "eps": self.eps,
                "weight_decay": self.weight_decay, "groups": self.groups,
                "clip_grad_norm": self.clip_grad_norm}

    def load_state_dict(self, d: Dict[str, Any]) -> None:
        self.step_count = int(d["step"])


def _positive(name, v, allow_zero=False) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {v!r}") from None
    if not math.isfinite(f) or f < 0 or (f == 0 and not allow_zero):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} "
                         f"finite number, got {v!r}")
    return f
