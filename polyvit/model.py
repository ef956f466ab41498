"""The public model: a ViT held by the C engine, with NumPy views of its parameters."""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, Optional, Tuple, Union

import numpy as np

from ._checks import as_float32, check_finite
from ._lib import _C
from .activations import gelu_quadratic_fit
from .config import ViTConfig, normalise_blocks, preset_config

_ACT_CODE = {"gelu": 0, "poly": 1}
_PRECISIONS = {"fp32": 0, "tf32": 1, "bf16": 2}
_BUFFERS = ("params", "grads", "m", "v")


def _engine_config(cfg: ViTConfig) -> Dict[str, Any]:
    return dict(img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans,
                embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads,
                hidden=cfg.mlp_hidden, num_classes=cfg.num_classes, ln_eps=cfg.ln_eps,
                act=[_ACT_CODE[a] for a in cfg.act], gelu_tanh=int(cfg.gelu == "tanh"),
                qkv_bias=int(cfg.qkv_bias), final_norm=int(cfg.final_norm),
                pool=int(cfg.global_pool == "avg"), fc_norm=int(cfg.fc_norm),
                poly_width=[cfg.poly_width(i) for i in range(cfg.depth)])


class ViT:
    """A Vision Transformer (timm's layout) whose forward and backward run in polyvit's C engine.

    ``max_batch`` sizes the activation memory, allocated once: training steps take at most that
    many images; ``forward`` splits larger inputs into chunks.

    ``device="cuda"`` (or ``"cuda:N"``) runs the model in the CUDA engine (``polyvit._C_cuda``),
    with ``precision`` ``"fp32"`` (the reference), ``"tf32"`` or ``"bf16"`` (tensor-core matrix
    products, float32 weights and activations). Everything else behaves as on the CPU. On a GPU,
    ``params`` and ``grads`` are host mirrors: each access of ``model.params`` returns arrays
    holding the device's current values, and writes into them reach the device at the next engine
    call. Keep such a dict only between engine calls, not across training steps.
    """

    def __init__(self, config: Union[ViTConfig, Dict[str, Any]], max_batch: int = 64,
                 seed: Optional[int] = 0, device: str = "cpu", precision: str = "fp32"):
        if isinstance(config, dict):
            config = ViTConfig.from_dict(config)
        if not isinstance(config, ViTConfig):
            raise TypeError(f"config must be a ViTConfig or a dict, got {type(config).__name__}")
        if isinstance(max_batch, bool) or not isinstance(max_batch, (int, np.integer)) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
        ordinal = _parse_device(device)
        _parse_precision(precision, ordinal)
        self.config = config
        self._max_batch = int(max_batch)
        self._cuda = None  # the CUDA engine while the model lives on a GPU
        self._precision = "fp32"
        # on a GPU the host engine only mirrors the buffers: no activations for a real batch
        self._build(self._max_batch if ordinal is None else 1)
        if seed is not None:
            self.init_weights(seed)
        if ordinal is not None:
            self.to(device, precision)

    # construction -------------------------------------------------------------------------
    def _build(self, engine_batch: int) -> None:
        engine = _C.Engine(_engine_config(self.config), engine_batch)
        table = engine.tensors()
        specs = self.config.param_specs()
        # the C layout and the Python spec are written separately; they must agree exactly
        assert [(n, tuple(s), g) for n, s, _, g in table] == [(n, s, g) for n, s, g in specs], \
            "engine layout disagrees with ViTConfig.param_specs()"
        self._engine = engine
        self._layout = [(n, tuple(s), off, g) for n, s, off, g in table]
        self._bufs = {b: engine.buffer(b) for b in _BUFFERS}
        self._views_of = {b: self._views(b) for b in _BUFFERS}
        # where each buffer's latest values are, while on a GPU: "both", "host" or "device"
        self._fresh = {b: "both" for b in _BUFFERS}
        self.param_groups = {n: g for n, _, _, g in self._layout}
        self._last_forward_chunked = False

    def _views(self, which: str) -> Dict[str, np.ndarray]:
        buf = self._bufs[which]
        out = {}
        for name, shape, off, _ in self._layout:
            size = int(np.prod(shape))
            out[name] = buf[off:off + size].reshape(shape)
        return out

    # buffers: live views on the CPU, synchronised host mirrors on a GPU ------------------------
    def _host(self, which: str) -> Dict[str, np.ndarray]:
        if self._cuda is not None:
            if self._fresh[which] == "device":
                self._cuda.download(which, self._bufs[which])
            self._fresh[which] = "host"  # handed out: the caller may write into it
        return self._views_of[which]

    @property
    def params(self) -> Dict[str, np.ndarray]:
        """Every parameter by timm name (views of the engine's buffer; host mirrors on a GPU)."""
        return self._host("params")

    @property
    def grads(self) -> Dict[str, np.ndarray]:
        """Gradients of the last ``backward``, by timm name."""
        return self._host("grads")

    @property
    def _moments(self) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
        return self._host("m"), self._host("v")

    def _device(self, reads=(), writes=(), overwrites=()):
        """Bring the buffers a device call reads up to date there, and record what it changes
        (``overwrites``: written whole, so the host copy need not be uploaded first)."""
        for b in tuple(reads) + tuple(writes):
            if self._fresh[b] == "host":
                self._cuda.upload(b, self._bufs[b])
                self._fresh[b] = "both"
        for b in tuple(writes) + tuple(overwrites):
            self._fresh[b] = "device"
        return self._cuda

    # optimizer entry points (polyvit.AdamW calls these) -----------------------------------------
    def _grad_norm(self, hp) -> float:
        if self._cuda is None:
            return self._engine.grad_norm(hp)
        return self._device(reads=("grads",)).grad_norm(hp)

    def _grad_scale(self, hp, coef: float) -> None:
        if self._cuda is None:
            return self._engine.grad_scale(hp, coef)
        self._device(writes=("grads",)).grad_scale(hp, coef)

    def _adamw(self, hp, beta1: float, beta2: float, eps: float, step: int) -> None:
        if self._cuda is None:
            return self._engine.adamw(hp, beta1, beta2, eps, step)
        self._device(reads=("grads",), writes=("params", "m", "v")).adamw(hp, beta1, beta2, eps, step)

    def _buffer_copies(self) -> Dict[str, np.ndarray]:
        """Host copies of the four whole buffers, current wherever they live."""
        out = {}
        for b in _BUFFERS:
            self._host(b)
            out[b] = self._bufs[b].copy()
        return out

    # devices ---------------------------------------------------------------------------------
    @property
    def device(self) -> str:
        """"cpu" or "cuda:N"."""
        return "cpu" if self._cuda is None else f"cuda:{self._cuda.device}"

    @property
    def precision(self) -> str:
        """The matrix-product precision: "fp32" (always on the CPU), "tf32" or "bf16"."""
        return self._precision

    def to(self, device: str, precision: Optional[str] = None) -> "ViT":
        """Move the model (weights, gradients, optimizer moments) to ``"cpu"`` or ``"cuda[:N]"``,
        in place; returns the model. On failure (no GPU, not enough memory) the model stays
        where it was, unchanged."""
        ordinal = _parse_device(device)
        prec = _parse_precision(precision if precision is not None else
                                (self._precision if ordinal is not None else "fp32"), ordinal)
        here = None if self._cuda is None else self._cuda.device
        if ordinal is None:
            if here is not None:
                state = self._buffer_copies()
                cuda, self._cuda = self._cuda, None
                try:
                    self._build(self._max_batch)
                except BaseException:
                    self._cuda = cuda
                    raise
                for b in _BUFFERS:
                    self._bufs[b][...] = state[b]
            self._precision = "fp32"
            return self
        if ordinal == here:
            self._cuda.set_precision(_PRECISIONS[prec])
            self._precision = prec
            return self
        from . import cuda as _cuda_mod

        engine = _cuda_mod._new_engine(_engine_config(self.config), self._max_batch, ordinal)
        engine.set_precision(_PRECISIONS[prec])
        state = self._buffer_copies()
        for b in _BUFFERS:
            engine.upload(b, state[b])
        if here is None:
            # the host engine becomes a mirror: drop its activations for max_batch images
            self._build(1)
            for b in _BUFFERS:
                self._bufs[b][...] = state[b]
        self._cuda = engine
        self._fresh = {b: "both" for b in _BUFFERS}
        self._precision = prec
        return self

    @classmethod
    def preset(cls, name: str, max_batch: int = 64, seed: Optional[int] = 0, device: str = "cpu",
               precision: str = "fp32", **overrides) -> "ViT":
        """A model from a named preset (``polyvit.PRESETS``); keyword overrides go to the config."""
        return cls(preset_config(name, **overrides), max_batch=max_batch, seed=seed,
                   device=device, precision=precision)

    def init_weights(self, seed: int = 0) -> None:
        """timm's initialisation: linear weights N(0, 0.02) truncated at +-2, zero biases, unit
        norms, position embedding N(0, 0.02), class token N(0, 1e-6); the patch projection as
        PyTorch's Conv2d default (uniform +-1/sqrt(fan_in)); poly blocks get the default fit."""
        rng = np.random.default_rng(seed)
        for name, shape, _, group in self._layout:
            p = self.params[name]
            if name == "cls_token":
                p[...] = rng.normal(0.0, 1e-6, shape)
            elif name == "pos_embed":
                p[...] = _trunc_normal(rng, shape, 0.02)
            elif name.startswith("patch_embed.proj."):
                fan_in = self.config.in_chans * self.config.patch_size ** 2
                p[...] = rng.uniform(-1, 1, shape) / math.sqrt(fan_in)
            elif group == "decay":
                p[...] = _trunc_normal(rng, shape, 0.02)
            elif group == "poly":
                pass
            elif name.endswith("weight"):  # norms
                p[...] = 1.0
            else:
                p[...] = 0.0
        a, b, c = gelu_quadratic_fit()
        for i in range(self.config.depth):
            if self.config.act[i] == "poly":
                self._set_coeffs(i, {"a": a, "b": b, "c": c, "s": 1.0})

    # properties ---------------------------------------------------------------------------
    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def device_bytes(self) -> int:
        """Device memory this model holds on its GPU (0 on the CPU)."""
        return 0 if self._cuda is None else self._cuda.device_bytes

    @property
    def num_params(self) -> int:
        return int(sum(np.prod(s) for _, s, _, _ in self._layout))

    def __repr__(self) -> str:
        c = self.config
        acts = "".join("P" if a == "poly" else "G" for a in c.act)
        return (f"ViT(img={c.img_size}, patch={c.patch_size}, dim={c.embed_dim}, depth={c.depth}, "
                f"heads={c.num_heads}, mlp={c.mlp_hidden}, classes={c.num_classes}, "
                f"blocks={acts}, params={self.num_params:,}, max_batch={self.max_batch}"
                + ("" if self._cuda is None else f", device={self.device}, precision={self.precision}")
                + ")")

    # forward / backward -------------------------------------------------------------------
    def _image_layout(self, shape) -> str:
        """'nchw' or 'nhwc' for a 4-d image batch of this model, else a ValueError."""
        c = self.config
        if len(shape) == 3 and (shape == (c.in_chans, c.img_size, c.img_size) or
                                shape == (c.img_size, c.img_size, c.in_chans)):
            raise ValueError(f"images must be a 4-d batch of shape (B, {c.in_chans}, "
                             f"{c.img_size}, {c.img_size}), got one image of shape "
                             f"{tuple(shape)}; use x[None]")
        if len(shape) == 4 and shape[1:] == (c.in_chans, c.img_size, c.img_size):
            return "nchw"
        if len(shape) == 4 and shape[1:] == (c.img_size, c.img_size, c.in_chans):
            return "nhwc"
        raise ValueError(f"images must have shape (B, {c.in_chans}, {c.img_size}, {c.img_size}) "
                         f"(NCHW; uint8 images may also be NHWC), got {tuple(shape)}")

    def preprocess(self, images, unit: bool = True) -> np.ndarray:
        """Model input from raw images: uint8 (NCHW or NHWC, 0..255) are scaled to [0, 1];
        float images are taken to be in [0, 1] already (``unit=True``); then the model's stored
        ``mean``/``std`` normalisation is applied, as ``(x - mean) / std`` in float32 (what
        torchvision's ToTensor + Normalize compute). Returns float32 NCHW."""
        a = np.asarray(images)
        if a.dtype == np.uint8:
            x = a.astype(np.float32) / np.float32(255.0)
        elif a.dtype.kind == "f" and unit:
            x = as_float32(a, "images")
        else:
            raise TypeError(f"preprocess takes uint8 images or float images in [0, 1], got "
                            f"dtype {a.dtype}")
        if self._image_layout(x.shape) == "nhwc":
            x = x.transpose(0, 3, 1, 2)
        c = self.config
        if c.mean is not None:
            mean = np.asarray(c.mean, np.float32).reshape(1, -1, 1, 1)
            std = np.asarray(c.std, np.float32).reshape(1, -1, 1, 1)
            x = (x - mean) / std
        return np.ascontiguousarray(x, dtype=np.float32)

    def _images(self, x, preprocess: Optional[bool] = None) -> np.ndarray:
        """Validate the whole batch; return it as float32 NCHW model input, or as uint8 to be
        preprocessed chunk by chunk (so a large uint8 set never exists as float32 at once).
        On a GPU, float images in [0, 1] with ``preprocess=True`` come back as they are (NCHW):
        their normalisation runs on the device (``_device_input``)."""
        a = np.asarray(x) if not isinstance(x, np.ndarray) else x
        if a.dtype == np.uint8:
            if preprocess is False:
                raise TypeError("uint8 images always need preprocessing (scaling to [0, 1]); "
                                "do not pass preprocess=False with them")
            self._image_layout(a.shape)
            if a.shape[0] == 0:
                raise ValueError("images is an empty batch")
            return a
        if a.dtype.kind in "iub":
            raise TypeError(f"images must be uint8 (raw pixels, preprocessed by the model) or "
                            f"floating point (float32, NCHW); got dtype {a.dtype}")
        a = as_float32(a, "images")
        if preprocess and self._cuda is not None:
            if self._image_layout(a.shape) == "nhwc":
                a = a.transpose(0, 3, 1, 2)
            a = np.ascontiguousarray(a)
        elif preprocess:
            a = self.preprocess(a)
        elif self._image_layout(a.shape) != "nchw":
            c = self.config
            raise ValueError(f"float images must be NCHW (B, {c.in_chans}, {c.img_size}, "
                             f"{c.img_size}), got {a.shape}")
        if a.shape[0] == 0:
            raise ValueError("images is an empty batch")
        check_finite(a, "images")
        return a

    def forward(self, x, capture: Union[bool, Iterable[int], int] = False,
                preprocess: Optional[bool] = None):
        """Logits (B, num_classes).

        Images: float32 NCHW model input (already normalised), or uint8 pixels (NCHW or NHWC)
        which are scaled to [0, 1] and normalised with the model's stored mean/std
        (``preprocess``); ``preprocess=True`` does the same for float images in [0, 1].
        ``capture=True`` (or a list of block indices) also returns ``{block: (B, T, H) array}``
        of each block's MLP pre-activations (the fc1 output the activation sees).
        """
        x = self._images(x, preprocess)
        blocks = [] if capture is False or capture is None else \
            normalise_blocks(None if capture is True else capture, self.config.depth)
        mb, B = self.max_batch, x.shape[0]
        logits, caps = [], {i: [] for i in blocks}
        for s in range(0, B, mb):
            if self._cuda is not None:
                eng = self._device(reads=("params",))
                logits.append(eng.forward(*self._device_input(x[s:s + mb], bool(preprocess))))
            else:
                eng = self._engine
                chunk = self.preprocess(x[s:s + mb]) if x.dtype == np.uint8 else x[s:s + mb]
                logits.append(eng.forward(chunk))
            for i in blocks:
                caps[i].append(eng.preact(i))
        self._last_forward_chunked = B > mb
        out = logits[0] if len(logits) == 1 else np.concatenate(logits)
        if not blocks:
            return out
        return out, {i: (v[0] if len(v) == 1 else np.concatenate(v)) for i, v in caps.items()}

    __call__ = forward

    def _device_input(self, chunk: np.ndarray, unit: bool = False):
        """(images, scale, shift) for the CUDA engine, which computes x * scale + shift per
        channel on the device: uint8 pixels go up as they are (scaled from 0..255 and
        normalised there), float images in [0, 1] (``unit``) are normalised there, other
        float32 input is model input already."""
        Cin, c = self.config.in_chans, self.config
        if chunk.dtype != np.uint8 and not unit:
            return (np.ascontiguousarray(chunk, dtype=np.float32), np.ones(Cin, np.float32),
                    np.zeros(Cin, np.float32))
        pixel = 255.0 if chunk.dtype == np.uint8 else 1.0
        if c.mean is None:
            scale, shift = np.full(Cin, 1.0 / pixel), np.zeros(Cin)
        else:
            mean, std = np.asarray(c.mean, np.float64), np.asarray(c.std, np.float64)
            scale, shift = 1.0 / (pixel * std), -mean / std
        return (np.ascontiguousarray(chunk), scale.astype(np.float32), shift.astype(np.float32))

    def backward(self, dlogits) -> None:
        """Gradients of every parameter (into ``model.grads``, overwritten) from dL/dlogits of the
        last forward batch."""
        if self._last_forward_chunked:
            raise ValueError(f"the last forward ran in chunks (batch > max_batch={self.max_batch});"
                             f" backward needs a forward of at most max_batch images")
        g = as_float32(dlogits, "dlogits")
        K = self.config.num_classes
        last = (self._cuda or self._engine).last_batch
        if g.ndim != 2 or g.shape[1] != K:
            raise ValueError(f"dlogits must have shape (B, {K}), got {g.shape}")
        if last and g.shape[0] != last:
            raise ValueError(f"dlogits has batch {g.shape[0]} but the last forward had {last}")
        check_finite(g, "dlogits")
        self._run_backward(g)

    def _run_backward(self, g: np.ndarray) -> None:
        if self._cuda is None:
            self._engine.backward(g)
        else:
            self._device(reads=("params",), overwrites=("grads",)).backward(g)

    def train_step(self, x, labels=None, teacher_logits=None, loss=None, optimizer=None,
                   lr: Optional[float] = None, preprocess: Optional[bool] = None) -> float:
        """Forward, loss, backward and one optimizer step; returns the loss.

        A non-finite loss or gradient raises ``FloatingPointError`` before anything is updated.
        """
        from .losses import Loss

        if loss is None:
            loss = Loss()
        if optimizer is None:
            raise ValueError("train_step needs an optimizer, e.g. polyvit.AdamW(model, lr=1e-3)")
        if optimizer.model is not self:
            raise ValueError("the optimizer belongs to another model")
        x = self._images(x, preprocess)
        if x.dtype == np.uint8 and self._cuda is None:
            x = self.preprocess(x)  # on a GPU, uint8 images are normalised on the device
        if x.shape[0] > self.max_batch:
            raise ValueError(f"a training batch of {x.shape[0]} exceeds max_batch="
                             f"{self.max_batch}; build the model with a larger max_batch")
        # on a GPU, float images in [0, 1] are still to be normalised (on the device)
        unit = self._cuda is not None and x.dtype != np.uint8 and bool(preprocess)
        logits = self.forward(x, preprocess=True if unit else None)
        if not np.isfinite(logits).all():
            raise FloatingPointError("the model's logits contain NaN or Inf (the model has "
                                     "diverged); the step was skipped and the parameters are "
                                     "unchanged")
        value, dlogits = loss(logits, labels=labels, teacher_logits=teacher_logits)
        if not math.isfinite(value):
            raise FloatingPointError(f"the loss is {value}; the step was skipped and the "
                                     f"parameters are unchanged")
        self._run_backward(dlogits)
        optimizer.step(lr)
        return float(value)

    # activations ---------------------------------------------------------------------------
    def set_activation(self, blocks, kind: str, coeffs=None, per_channel: bool = False) -> None:
        """Switch ``blocks`` to ``"gelu"`` or ``"poly"``, keeping every other weight (and the
        optimizer moments of unchanged tensors).

        ``coeffs`` for poly: ``None`` (the default quadratic fit of GELU, or the block's current
        coefficients when it is already poly), ``(a, b, c)`` / ``(a, b, c, s)`` or a dict with
        keys ``a, b, c[, s]``; scalars, or vectors of the MLP width with ``per_channel=True``.
        """
        kind = str(kind).lower()
        if kind not in _ACT_CODE:
            raise ValueError(f"unknown activation {kind!r}; choose 'gelu' or 'poly'")
        idx = normalise_blocks(blocks, self.config.depth)
        parsed = self._parse_coeffs(coeffs, per_channel) if kind == "poly" else None
        if kind == "gelu" and coeffs is not None:
            raise ValueError("coefficients only apply to poly activations")
        act = list(self.config.act)
        pc = list(self.config.poly_per_channel)
        for i in idx:
            act[i] = kind
            pc[i] = bool(per_channel) if kind == "poly" else False
        new_cfg = self.config.replace(act=act, poly_per_channel=pc)
        old_vals = {n: v.copy() for n, v in self.params.items()}
        # carry a poly block's current coefficients across a per-block <-> per-channel switch
        if new_cfg != self.config:
            old_m = {n: v.copy() for n, v in self._moments[0].items()}
            old_v = {n: v.copy() for n, v in self._moments[1].items()}
            old_specs = {n: s for n, s, _ in self.config.param_specs()}
            self.config = new_cfg
            self._build(self._max_batch if self._cuda is None else 1)
            if self._cuda is not None:
                # the device model has the old layout: a new one, filled from the host mirror
                from . import cuda as _cuda_mod

                dev = _cuda_mod._new_engine(_engine_config(new_cfg), self._max_batch,
                                            self._cuda.device)
                dev.set_precision(_PRECISIONS[self._precision])
                self._cuda = dev
                self._fresh = {b: "host" for b in _BUFFERS}
            for n, shape, _, _ in self._layout:
                if n in old_vals and old_specs[n] == shape:
                    self.params[n][...] = old_vals[n]
                    self._moments[0][n][...] = old_m[n]
                    self._moments[1][n][...] = old_v[n]
        if kind == "poly":
            a0, b0, c0 = gelu_quadratic_fit()
            for i in idx:
                base = {"a": a0, "b": b0, "c": c0, "s": 1.0}
                if parsed is None:
                    # keep existing coefficients of a block that was poly already
                    for k in "abcs":
                        n = f"blocks.{i}.mlp.act.{k}"
                        if n in old_vals:
                            base[k] = old_vals[n].mean() if old_vals[n].shape != self.params[n].shape \
                                else old_vals[n]
                    self._set_coeffs(i, base)
                else:
                    self._set_coeffs(i, {**base, **parsed})

    def _parse_coeffs(self, coeffs, per_channel: bool) -> Optional[Dict[str, np.ndarray]]:
        if coeffs is None:
            return None
        if isinstance(coeffs, dict):
            unknown = set(coeffs) - set("abcs")
            if unknown or not {"a", "b", "c"} <= set(coeffs):
                raise ValueError(f"coefficient dict needs keys a, b, c (and optionally s); got "
                                 f"{sorted(coeffs)}")
            d = dict(coeffs)
        else:
            try:
                seq = list(coeffs)
            except TypeError:
                raise TypeError("coeffs must be (a, b, c), (a, b, c, s) or a dict") from None
            if len(seq) not in (3, 4):
                raise ValueError(f"coeffs must have 3 or 4 entries (a, b, c[, s]), got {len(seq)}")
            d = dict(zip("abcs", seq))
        H = self.config.mlp_hidden
        out = {}
        for k, v in d.items():
            a = as_float32(v, f"coefficient {k}")
            if a.ndim == 0 or a.size == 1 and not per_channel:
                a = a.reshape(1)
            if per_channel:
                if a.size == 1:
                    a = np.full(H, a.reshape(-1)[0], np.float32)
                if a.shape != (H,):
                    raise ValueError(f"per-channel coefficient {k} must have shape ({H},), got {a.shape}")
            elif a.shape != (1,):
                raise ValueError(f"coefficient {k} must be a scalar (per-block); pass "
                                 f"per_channel=True for vectors of length {H}")
            check_finite(a, f"coefficient {k}")
            out[k] = a
        return out

    def _set_coeffs(self, block: int, coeffs: Dict[str, Any]) -> None:
        for k in "abcs":
            self.params[f"blocks.{block}.mlp.act.{k}"][...] = coeffs[k]

    def coefficients(self, block: int) -> Optional[Dict[str, np.ndarray]]:
        """Copies of a poly block's a, b, c, s (None for a GELU block)."""
        block = normalise_blocks(block, self.config.depth)[0]
        if self.config.act[block] != "poly":
            return None
        return {k: self.params[f"blocks.{block}.mlp.act.{k}"].copy() for k in "abcs"}

    # state ---------------------------------------------------------------------------------
    def copy(self, max_batch: Optional[int] = None) -> "ViT":
        """An independent model with the same config and weights (optimizer state not copied)."""
        other = ViT(self.config, max_batch=max_batch or self.max_batch, seed=None,
                    device=self.device, precision=self.precision)
        for n, v in self.params.items():
            other.params[n][...] = v
        return other

    def state_dict(self) -> Dict[str, np.ndarray]:
        """Copies of every parameter, by timm name."""
        return {n: v.copy() for n, v in self.params.items()}

    def load_state_dict(self, state_dict, strict: bool = True) -> None:
        from .io import load_state_dict

        load_state_dict(self, state_dict, strict=strict)

    def save(self, path, metadata: Optional[Dict[str, str]] = None,
             dtype: str = "float32") -> None:
        """Save to safetensors (timm names, config in the metadata; float32 or float16)."""
        from .io import save

        save(self, path, metadata=metadata, dtype=dtype)


def _parse_device(device) -> Optional[int]:
    """None for the CPU, the ordinal for "cuda" / "cuda:N"."""
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda:0', got {device!r}")
    d = device.strip().lower()
    if d == "cpu":
        return None
    if d == "cuda":
        return 0
    if d.startswith("cuda:") and d[5:].isdigit():
        return int(d[5:])
    raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'")


def _parse_precision(precision, ordinal: Optional[int]) -> str:
    if precision not in _PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {sorted(_PRECISIONS)}")
    if ordinal is None and precision != "fp32":
        raise ValueError(f"precision {precision!r} applies to CUDA models; the CPU engine "
                         f"computes in float32")
    return precision


def _trunc_normal(rng, shape, std):
    # timm's trunc_normal_(std=.02) truncates at +-2 (absolute), i.e. effectively never
    return np.clip(rng.normal(0.0, std, shape), -2.0, 2.0)
