"""Shared helpers for the polyvit tests (no torch here: usable by the torch-free tests too)."""
from __future__ import annotations

from typing import Any, Dict, Mapping

import numpy as np

from polyvit.config import ViTConfig

# Small, deliberately odd architectures: non-power-of-two sizes, patch sizes that are not 4,
# head_dim 3..24, mixed GELU / per-block poly / per-channel poly blocks, any number of classes.
# Each dict is ViTConfig keyword arguments; ids are used as pytest ids.
CONFIGS: Dict[str, Dict[str, Any]] = {
    "img12_p3_d12_h1_gelu": dict(img_size=12, patch_size=3, in_chans=3, embed_dim=12, depth=1,
                                 num_heads=1, mlp_ratio=2.0, num_classes=5,
                                 act=("gelu",), poly_per_channel=(False,)),
    "img20_p5_d24_h4_mixed": dict(img_size=20, patch_size=5, in_chans=2, embed_dim=24, depth=3,
                                  num_heads=4, mlp_ratio=1.5, num_classes=11,
                                  act=("poly", "gelu", "poly"),
                                  poly_per_channel=(True, False, False)),
    "img16_p4_d36_h3_poly": dict(img_size=16, patch_size=4, in_chans=3, embed_dim=36, depth=2,
                                 num_heads=3, mlp_ratio=2.0, num_classes=7, ln_eps=1e-5,
                                 act=("poly", "poly"), poly_per_channel=(False, True)),
    "img8_p8_d12_h2_gelu_poly": dict(img_size=8, patch_size=8, in_chans=1, embed_dim=12, depth=2,
                                     num_heads=2, mlp_ratio=3.0, num_classes=3,
                                     act=("gelu", "poly"), poly_per_channel=(False, True)),
    "img15_p3_d24_h2_chan": dict(img_size=15, patch_size=3, in_chans=4, embed_dim=24, depth=2,
                                 num_heads=2, mlp_ratio=1.0, num_classes=1,
                                 act=("poly", "poly"), poly_per_channel=(True, True)),
}

# The config of the spec's example, used where one config is enough.
SMALL = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=24, depth=2, num_heads=2,
             mlp_ratio=2.0, num_classes=7, ln_eps=1e-6, act=("gelu", "poly"),
             poly_per_channel=(False, True))


def random_config(rng: np.random.Generator) -> Dict[str, Any]:
    """ViTConfig kwargs of a random tiny ViT (odd sizes, mixed activations)."""
    patch = int(rng.choice([2, 3, 4, 5]))
    grid = int(rng.integers(1, 5))
    heads = int(rng.integers(1, 5))
    head_dim = int(rng.choice([3, 4, 6, 8]))
    depth = int(rng.integers(1, 4))
    act = tuple(str(a) for a in rng.choice(["gelu", "poly"], size=depth))
    return dict(img_size=patch * grid, patch_size=patch, in_chans=int(rng.integers(1, 4)),
                embed_dim=heads * head_dim, depth=depth, num_heads=heads,
                mlp_ratio=float(rng.choice([1.0, 1.5, 2.0, 3.0])),
                num_classes=int(rng.integers(2, 13)), ln_eps=float(rng.choice([1e-6, 1e-5])),
                act=act, poly_per_channel=tuple(bool(b) for b in rng.integers(0, 2, size=depth)))


def make_config(**kw: Any) -> ViTConfig:
    return ViTConfig(**kw)


def random_params(cfg: ViTConfig, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """Random float32 parameters with O(1) activations everywhere, so that every gradient is
    non-trivial: unit-variance projections (attention logits ~ N(0, 1), fc1 outputs ~ N(0, 1)),
    layer norms perturbed away from (1, 0), and poly coefficients away from any default."""
    out: Dict[str, np.ndarray] = {}
    for name, shape, group in cfg.param_specs():
        leaf = name.rsplit(".", 1)[-1]
        if group == "poly":
            lo_hi = dict(a=(0.1, 0.3), b=(0.4, 0.6), c=(0.05, 0.15), s=(1.0, 1.2))[leaf]
            v = rng.uniform(*lo_hi, size=shape)
        elif group == "embed":
            v = 0.3 * rng.standard_normal(shape)
        elif group == "decay":
            fan_in = int(np.prod(shape[1:]))
            gain = 0.5 if (".proj." in name and "patch_embed" not in name) or "fc2" in name \
                else 1.0
            v = gain * rng.standard_normal(shape) / np.sqrt(fan_in)
        elif "norm" in name and leaf == "weight":
            v = 1.0 + 0.2 * rng.standard_normal(shape)
        else:  # biases, norm biases
            v = 0.1 * rng.standard_normal(shape)
        out[name] = np.ascontiguousarray(v, dtype=np.float32)
    return out


def set_params(model: Any, params: Mapping[str, np.ndarray]) -> None:
    """Write values into the model through its parameter views."""
    views = model.params
    assert set(views) == set(params), sorted(set(views) ^ set(params))
    for n, v in params.items():
        views[n][...] = v


def random_images(cfg: ViTConfig, batch: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((batch, cfg.in_chans, cfg.img_size, cfg.img_size)).astype(
        np.float32)


def rel_err(x: np.ndarray, ref: np.ndarray, tiny: float = 1e-30) -> float:
    """max|x - ref| / max|ref|: error relative to the tensor's scale (entries that are small
    only by cancellation are not over-weighted)."""
    x = np.asarray(x, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert x.shape == ref.shape, (x.shape, ref.shape)
    return float(np.max(np.abs(x - ref)) / max(float(np.max(np.abs(ref))), tiny))


def assert_rel(x: np.ndarray, ref: np.ndarray, tol: float, what: str = "") -> float:
    e = rel_err(x, ref)
    assert e <= tol, f"{what}: relative error {e:.3g} > {tol:.1g} (max|ref| = " \
                     f"{float(np.max(np.abs(np.asarray(ref, dtype=np.float64)))):.3g})"
    return e


def shared_data_dir(*files: str):
    """The shared data folder ($POLYVIT_DATA, else ../shared/data beside the repository) if it
    holds every file named, else None (tests that need it skip with a reason)."""
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    for d in (os.environ.get("POLYVIT_DATA"), os.path.join(here, "..", "..", "shared", "data")):
        if d and all(os.path.isfile(os.path.join(d, f)) for f in files):
            return d
    return None
