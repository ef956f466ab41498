"""Model configuration: the small description from which the engine derives everything.

A ViT here is a fixed architecture (timm's ``VisionTransformer``), so a config fully
determines the parameter layout, the activation buffers and the forward/backward passes.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

ACTIVATIONS = ("gelu", "poly")


@dataclasses.dataclass
class ViTConfig:
    """Architecture of a Vision Transformer in timm's layout.

    ``act`` holds one activation per block (``"gelu"``, the exact erf form, or ``"poly"``,
    ``y = s * (a*x^2 + b*x + c)``); ``poly_per_channel`` says, for poly blocks, whether the
    coefficients are scalars (one set per block) or vectors of the MLP width.
    ``None`` for either means "all GELU" / "all per-block".

    Options for checkpoints that differ from timm's defaults: ``gelu`` ("erf", exact, or
    "tanh", the approximation) for GELU blocks; ``qkv_bias``; ``final_norm`` (timm's ``norm``
    on every token before pooling); ``global_pool`` ("token": the class token, or "avg": the
    mean of the patch tokens); ``fc_norm`` (a LayerNorm after pooling, timm's ``fc_norm``);
    ``mlp_dim`` (an explicit MLP width, overriding ``mlp_ratio``); ``mean``/``std`` (input
    normalisation stored with the model and applied by ``forward`` to uint8 images).
    """

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    ln_eps: float = 1e-6
    act: Optional[Sequence[str]] = None
    poly_per_channel: Optional[Sequence[bool]] = None
    gelu: str = "erf"
    qkv_bias: bool = True
    final_norm: bool = True
    global_pool: str = "token"
    fc_norm: bool = False
    mlp_dim: Optional[int] = None
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None

    def __post_init__(self) -> None:
        for name in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads",
                     "num_classes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"config.{name} must be a positive integer, got {v!r}")
        if not isinstance(self.mlp_ratio, (int, float)) or self.mlp_ratio <= 0:
            raise ValueError(f"config.mlp_ratio must be a positive number, got {self.mlp_ratio!r}")
        if not isinstance(self.ln_eps, (int, float)) or not (0 < self.ln_eps < 1):
            raise ValueError(f"config.ln_eps must be in (0, 1), got {self.ln_eps!r}")
        self.ln_eps = float(self.ln_eps)
        if self.gelu not in ("erf", "tanh"):
            raise ValueError(f"config.gelu must be 'erf' or 'tanh', got {self.gelu!r}")
        if self.global_pool not in ("token", "avg"):
            raise ValueError(f"config.global_pool must be 'token' or 'avg', got {self.global_pool!r}")
        for name in ("qkv_bias", "final_norm", "fc_norm"):
            if not isinstance(getattr(self, name), (bool, int)) or getattr(self, name) not in (0, 1):
                raise ValueError(f"config.{name} must be True or False, got {getattr(self, name)!r}")
            setattr(self, name, bool(getattr(self, name)))
        if self.mlp_dim is not None and (isinstance(self.mlp_dim, bool) or
                                         not isinstance(self.mlp_dim, int) or self.mlp_dim <= 0):
            raise ValueError(f"config.mlp_dim must be a positive integer, got {self.mlp_dim!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("config.mean and config.std go together: give both or neither")
        if self.mean is not None:
            try:
                mean = tuple(float(v) for v in self.mean)
                std = tuple(float(v) for v in self.std)
            except (TypeError, ValueError):
                raise ValueError("config.mean and config.std must be sequences of numbers") from None
            if len(mean) != self.in_chans or len(std) != self.in_chans:
                raise ValueError(f"config.mean and config.std need one value per input channel "
                                 f"({self.in_chans})")
            if not all(v > 0 and v == v and v != float("inf") for v in std):
                raise ValueError("config.std values must be positive and finite")
            self.mean, self.std = mean, std
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size "
                             f"{self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads "
                             f"{self.num_heads}")
        if self.mlp_hidden < 1:
            raise ValueError("embed_dim * mlp_ratio must be at least 1")
        act = ["gelu"] * self.depth if self.act is None else [str(a).lower() for a in self.act]
        if len(act) != self.depth:
            raise ValueError(f"config.act has {len(act)} entries for depth {self.depth}")
        for a in act:
            if a not in ACTIVATIONS:
                raise ValueError(f"unknown activation {a!r}; choose from {ACTIVATIONS}")
        pc = [False] * self.depth if self.poly_per_channel is None else \
            [bool(p) for p in self.poly_per_channel]
        if len(pc) != self.depth:
            raise ValueError(f"config.poly_per_channel has {len(pc)} entries for depth "
                             f"{self.depth}")
        # per-channel only means something for poly blocks; normalise so equal models compare equal
        self.act = tuple(act)
        self.poly_per_channel = tuple(p and a == "poly" for p, a in zip(pc, act))

    # derived sizes -------------------------------------------------------------------------
    @property
    def mlp_hidden(self) -> int:
        return self.mlp_dim if self.mlp_dim is not None else int(self.embed_dim * self.mlp_ratio)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def seq_len(self) -> int:
        return self.num_patches + 1

    def poly_width(self, block: int) -> int:
        """Number of coefficients per poly parameter in ``block`` (0 for GELU blocks)."""
        if self.act[block] != "poly":
            return 0
        return self.mlp_hidden if self.poly_per_channel[block] else 1

    def flops_per_image(self) -> float:
        """Forward multiply-adds x2 of the GEMMs and attention products (no elementwise work)."""
        T, C, H, N = self.seq_len, self.embed_dim, self.mlp_hidden, self.num_patches
        pe = 2 * N * C * self.in_chans * self.patch_size ** 2
        block = 2 * T * (3 * C * C + C * C + 2 * C * H) + 2 * 2 * T * T * C
        return float(pe + self.depth * block + 2 * C * self.num_classes)

    # parameter layout (names, shapes, optimizer groups), in timm's names ---------------------
    def param_specs(self) -> List[Tuple[str, Tuple[int, ...], str]]:
        """(name, shape, group) for every parameter, in the engine's buffer order.

        Groups: ``decay`` (matrix weights), ``no_decay`` (biases and norms), ``embed``
        (class token and position embedding), ``poly`` (activation coefficients).
        """
        C, H, T, K = self.embed_dim, self.mlp_hidden, self.seq_len, self.num_classes
        p, ci = self.patch_size, self.in_chans
        specs: List[Tuple[str, Tuple[int, ...], str]] = [
            ("cls_token", (1, 1, C), "embed"),
            ("pos_embed", (1, T, C), "embed"),
            ("patch_embed.proj.weight", (C, ci, p, p), "decay"),
            ("patch_embed.proj.bias", (C,), "no_decay"),
        ]
        for i in range(self.depth):
            b = f"blocks.{i}."
            specs += [
                (b + "norm1.weight", (C,), "no_decay"),
                (b + "norm1.bias", (C,), "no_decay"),
                (b + "attn.qkv.weight", (3 * C, C), "decay"),
            ]
            if self.qkv_bias:
                specs.append((b + "attn.qkv.bias", (3 * C,), "no_decay"))
            specs += [
                (b + "attn.proj.weight", (C, C), "decay"),
                (b + "attn.proj.bias", (C,), "no_decay"),
                (b + "norm2.weight", (C,), "no_decay"),
                (b + "norm2.bias", (C,), "no_decay"),
                (b + "mlp.fc1.weight", (H, C), "decay"),
                (b + "mlp.fc1.bias", (H,), "no_decay"),
            ]
            w = self.poly_width(i)
            if w:
                specs += [(b + f"mlp.act.{c}", (w,), "poly") for c in "abcs"]
            specs += [
                (b + "mlp.fc2.weight", (C, H), "decay"),
                (b + "mlp.fc2.bias", (C,), "no_decay"),
            ]
        if self.final_norm:
            specs += [("norm.weight", (C,), "no_decay"), ("norm.bias", (C,), "no_decay")]
        if self.fc_norm:
            specs += [("fc_norm.weight", (C,), "no_decay"), ("fc_norm.bias", (C,), "no_decay")]
        specs += [
            ("head.weight", (K, C), "decay"),
            ("head.bias", (K,), "no_decay"),
        ]
        return specs

    # (de)serialisation -----------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["act"] = list(self.act)
        d["poly_per_channel"] = list(self.poly_per_channel)
        for k in ("mean", "std"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ViTConfig":
        if not isinstance(d, dict):
            raise ValueError(f"a config must be a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> "ViTConfig":
        try:
            d = json.loads(s)
        except json.JSONDecodeError as e:
            raise ValueError(f"the stored config is not valid JSON ({e})") from None
        return cls.from_dict(d)

    def replace(self, **changes: Any) -> "ViTConfig":
        return ViTConfig.from_dict({**self.to_dict(), **changes})


# Presets: timm's ViTs at 224, and small-image models for 32x32 inputs (CIFAR). -------------
PRESETS: Dict[str, Dict[str, Any]] = {
    "vit_tiny_patch16_224": dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch16_224": dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16_224": dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "vit_tiny_patch32_224": dict(img_size=224, patch_size=32, embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch32_224": dict(img_size=224, patch_size=32, embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch32_224": dict(img_size=224, patch_size=32, embed_dim=768, depth=12, num_heads=12),
    # 32x32 inputs, patch 4 -> 64 patches + class token = 65 tokens, 10 classes (CIFAR-10)
    "vit_tiny_patch4_32": dict(img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3,
                               num_classes=10),
    "vit_small_patch4_32": dict(img_size=32, patch_size=4, embed_dim=384, depth=12, num_heads=6,
                                num_classes=10),
    "vit_mini_patch4_32": dict(img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4,
                               num_classes=10),
}


def preset_config(name: str, **overrides: Any) -> ViTConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return ViTConfig.from_dict({**PRESETS[name], **overrides})


def normalise_blocks(blocks: Any, depth: int) -> List[int]:
    """Accept an int, an iterable of ints, ``"all"`` or ``None`` (all); validate the range."""
    if blocks is None or (isinstance(blocks, str) and blocks == "all"):
        return list(range(depth))
    if isinstance(blocks, (int,)) and not isinstance(blocks, bool):
        blocks = [blocks]
    if isinstance(blocks, str) or not isinstance(blocks, Iterable):
        raise TypeError(f"blocks must be an int, a list of ints or 'all', got {blocks!r}")
    out = []
    for b in blocks:
        if isinstance(b, bool) or not isinstance(b, int):
            try:
                import numpy as np
                if isinstance(b, np.integer):
                    b = int(b)
                else:
                    raise TypeError
            except TypeError:
                raise TypeError(f"block indices must be integers, got {b!r}") from None
        if not -depth <= b < depth:
            raise ValueError(f"block index {b} out of range for depth {depth}")
        out.append(b % depth)
    return sorted(set(out))
