"""MPC accounting: what a model's nonlinearities cost under secure multi-party computation.

``count(model)`` counts, per block and in total, the GELU elements and the secure comparisons
they need, the polynomial multiplications that replace them, and the comparisons softmax still
needs; bytes and rounds come from the same :class:`Profile`. Elementwise ops on a block run in
parallel, so a block's rounds are the depth of its ops (GELU or poly, and softmax), not a sum
over elements; bytes are summed over elements.

Profiles are named and documented; nothing here runs MPC (see the MPC issue for the SPU path).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Union


@dataclasses.dataclass(frozen=True)
class Profile:
    """Per-element costs of one protocol. Bytes/rounds are per party."""

    name: str
    description: str
    gelu_comparisons: float          # secure comparisons per GELU element
    gelu_bytes: float
    gelu_rounds: float
    poly_mults: float                # secret x secret multiplications per polynomial element
    poly_bytes: float
    poly_rounds: float
    softmax_bytes: float             # per attention-score element
    softmax_rounds: float
    softmax_row_comparisons: str = "T-1"  # comparisons per softmax row (max by a tree)
    softmax_element_comparisons: float = 0.0  # extra comparisons per score element


SPU_SEMI2K = Profile(
    name="spu-semi2k",
    description=(
        "SecretFlow SPU 0.9.5, SEMI2K (2 parties), 64-bit ring, 18 fractional bits; bytes and "
        "rounds per element as SPU counts them for what polyvit.mpc.export runs (the "
        "constants in polyvit/mpc/spu_constants.json): GELU in the erf form "
        "0.5*x*(1 + erf(x/sqrt(2))) 749 B / 64 rounds, with 3 comparison (msb) kernels per "
        "element (jax.nn.gelu(approximate=False) would be 1951 B / 181 rounds); the quadratic "
        "in Horner form x*(a*x + b) + c with public a, b, c: 24 B / 3 rounds (one secret "
        "multiplication, no comparison); softmax over the last axis 697 B / 119 rounds per "
        "element at 65 tokens, T-1 comparisons per row for the max. For whole-model bytes per "
        "op, block and kind use polyvit.mpc.cost (or polyvit.mpc.run for SPU itself). "
        "SEMI2K's default Beaver source is a trusted first party (debugging only, per SPU)."),
    gelu_comparisons=3.0, gelu_bytes=749.0, gelu_rounds=64.0,
    poly_mults=1.0, poly_bytes=24.0, poly_rounds=3.0,
    softmax_bytes=697.0, softmax_rounds=119.0,
)

PROFILES: Dict[str, Profile] = {SPU_SEMI2K.name: SPU_SEMI2K}
DEFAULT_PROFILE = SPU_SEMI2K.name


def _profile(p: Union[str, Profile]) -> Profile:
    if isinstance(p, Profile):
        return p
    if p not in PROFILES:
        raise ValueError(f"unknown MPC profile {p!r}; known: {sorted(PROFILES)}")
    return PROFILES[p]


def _softmax_row_comparisons(profile: Profile, T: int) -> float:
    if profile.softmax_row_comparisons == "T-1":
        return float(T - 1)
    return float(profile.softmax_row_comparisons)


def count(model_or_config: Any, profile: Union[str, Profile] = DEFAULT_PROFILE,
          batch: int = 1) -> Dict[str, Any]:
    """Costs of the nonlinearities of one forward pass over ``batch`` images."""
    cfg = getattr(model_or_config, "config", model_or_config)
    prof = _profile(profile)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    T, H, NH = cfg.seq_len, cfg.mlp_hidden, cfg.num_heads
    act_elems = batch * T * H
    sm_elems = batch * NH * T * T
    sm_comp = batch * NH * T * (_softmax_row_comparisons(prof, T) +
                                T * prof.softmax_element_comparisons)
    blocks = []
    tot = dict(gelu_elements=0, gelu_comparisons=0.0, poly_elements=0, poly_mults=0.0,
               softmax_elements=0, softmax_comparisons=0.0, bytes=0.0, rounds=0.0)
    for i, act in enumerate(cfg.act):
        g = act == "gelu"
        b = dict(block=i, activation=act,
                 gelu_elements=act_elems if g else 0,
                 gelu_comparisons=act_elems * prof.gelu_comparisons if g else 0.0,
                 poly_elements=0 if g else act_elems,
                 poly_mults=0.0 if g else act_elems * prof.poly_mults,
                 softmax_elements=sm_elems, softmax_comparisons=sm_comp)
        b["bytes"] = act_elems * (prof.gelu_bytes if g else prof.poly_bytes) + \
            sm_elems * prof.softmax_bytes
        b["rounds"] = (prof.gelu_rounds if g else prof.poly_rounds) + prof.softmax_rounds
        for k in tot:
            tot[k] += b[k]
        blocks.append(b)
    all_gelu_comp = cfg.depth * act_elems * prof.gelu_comparisons
    all_sm_comp = cfg.depth * sm_comp
    remaining = tot["gelu_comparisons"]
    out = {
        "profile": prof.name, "batch": batch, "blocks": blocks, "total": tot,
        # as the seed reports it: comparison ops of the activations only
        "gelu_comparison_pct": 100.0 * remaining / all_gelu_comp if all_gelu_comp else 0.0,
        # the whole model's comparisons, softmax included
        "model_comparison_pct": 100.0 * (remaining + all_sm_comp) / (all_gelu_comp + all_sm_comp),
        "all_gelu": {"gelu_comparisons": all_gelu_comp, "softmax_comparisons": all_sm_comp},
    }
    return out


def describe(profile: Union[str, Profile] = DEFAULT_PROFILE) -> str:
    p = _profile(profile)
    return f"{p.name}: {p.description}"
