"""Reading and writing model weights.

polyvit's own files are `safetensors <https://github.com/huggingface/safetensors>`_ files
holding every parameter under its timm name, with the model's :class:`~polyvit.config.ViTConfig`
(as JSON) in the file's metadata, so :func:`load` needs nothing but the path::

    polyvit.io.save(model, "vit.safetensors")
    model = polyvit.io.load("vit.safetensors")

Weights from other code bases are brought in by renaming them to timm's names
(:func:`from_timm`, :func:`from_torchvision`, :func:`from_hf`, or a declarative rename map:
:func:`apply_rename_map`, with built-in maps in :data:`BUILTIN_MAPS` for plain PyTorch
``nn.MultiheadAttention`` ViTs), inferring a config from the tensor shapes
(:func:`infer_config`) plus whatever the shapes cannot tell (heads, LayerNorm eps, GELU form,
pooling, input normalisation: from the caller, a ``config`` in the file's metadata, the rename
map or a Hugging Face ``config.json``) and loading them (:func:`from_state_dict`,
:func:`import_weights`, :func:`convert`; ``python -m polyvit convert`` on the command line)::

    model = polyvit.io.import_weights("vit_b_16.pth")          # torchvision checkpoint
    model = polyvit.io.import_weights("model.safetensors", hf_config="config.json")  # HF ViT
    model = polyvit.io.import_weights("mine.pth", rename_map="my_map.json", num_heads=4)

An architecture polyvit cannot compute exactly (no class token, layer scale, q/k norm, register
or distillation tokens, relative position bias, conv stems, heads with hidden layers, bias-free
norms, post-norm blocks where a config says so, ...) is refused with a ValueError saying what
differs: an import never yields a model that silently computes something else. What no weight
and no config shows (e.g. post-norm code with pre-norm names, ReLU instead of GELU) cannot be
checked: the built-in maps say which forward they assume.

This package only touches ``model.config`` and ``model.params`` (a dict name -> float32 view
into the engine's buffer); the model class is imported lazily, and torch is imported only to
read ``.pth``/``.pt``/``.bin`` files or to convert torch tensors handed in by the caller.

The package's modules:

- ``files``: polyvit's safetensors files (:func:`save`, :func:`load`) and reading any weights
  file (:func:`read_state_dict`);
- ``state``: :func:`load_state_dict` and :class:`LoadResult`;
- ``formats``: the layouts (:data:`FORMATS`), :func:`detect_format` and the timm, torchvision
  and Hugging Face renamers;
- ``maps`` and ``builtin_maps``: rename maps and the built-in ones (:data:`BUILTIN_MAPS`);
- ``configs``: configs written by others (file metadata, rename maps, HF ``config.json``);
- ``infer``: :func:`infer_config`, a config from the tensor shapes;
- ``importer``: :func:`from_state_dict`, :func:`import_weights` and :func:`convert`;
- ``_common``: helpers they share.
"""
from __future__ import annotations

# PathLike, DEFAULT_LN_EPS and _convert_file (python -m polyvit convert) are not in __all__
from ._common import PathLike  # noqa: F401
from .importer import _convert_file, convert, from_state_dict, import_weights  # noqa: F401
from .files import load, read_state_dict, save
from .formats import (DEFAULT_LN_EPS, FORMATS, detect_format, from_hf,  # noqa: F401
                      from_timm, from_torchvision)
from .infer import infer_config
from .maps import BUILTIN_MAPS, apply_rename_map, load_rename_map
from .state import LoadResult, load_state_dict

__all__ = [
    "save",
    "load",
    "load_state_dict",
    "LoadResult",
    "read_state_dict",
    "detect_format",
    "from_timm",
    "from_torchvision",
    "from_hf",
    "infer_config",
    "from_state_dict",
    "import_weights",
    "FORMATS",
    "BUILTIN_MAPS",
    "load_rename_map",
    "apply_rename_map",
    "convert",
]
