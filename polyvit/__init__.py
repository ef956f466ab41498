"""polyvit: Vision Transformers with quadratic activations for private (MPC) inference.

The engine is C (``polyvit._C``) and CUDA C (``polyvit._C_cuda``, imported only when a GPU is
asked for); this package is its Python face.
"""
__version__ = "0.1.0"

from ._lib import _C
from . import losses
from .activations import gelu_quadratic_fit
from .config import PRESETS, ViTConfig
from .losses import Loss
from .model import ViT
from .optim import AdamW
from .training import Distiller, Stage, Trainer, train
from .metrics import evaluate
from .students import full, hybrid, student
from . import augment, cuda, datasets, fit, loader, mixup, mpc


def set_num_threads(n: int) -> None:
    """Threads used by the engine (OpenMP; OpenBLAS runs inside them single-threaded)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"the number of threads must be an int, got {n!r}")
    _C.set_num_threads(n)


def get_num_threads() -> int:
    return _C.get_num_threads()


def build_info() -> dict:
    """How the engine was built: compiler, OpenMP, BLAS, SIMD; CUDA when present."""
    info = dict(_C.build_info())
    info["cuda"] = False
    if cuda.is_built():
        try:
            info["cuda"] = cuda.build_info()
            info["cuda"]["devices"] = cuda.device_count()
        except RuntimeError as e:  # built, but cuBLAS or the runtime does not load here
            info["cuda"] = {"error": str(e)}
    return info


#: True when the CUDA engine (polyvit._C_cuda) was built; ``polyvit.cuda.is_available()`` also
#: needs a GPU.
HAS_CUDA = cuda.is_built()


def load(path, max_batch: int = 64, **kwargs) -> ViT:
    """Load a model saved by ``ViT.save`` (safetensors with the config in its metadata)."""
    from .io import load as _load

    return _load(path, max_batch=max_batch, **kwargs)


def __getattr__(name):
    # importers live in polyvit.io; expose the common ones lazily
    if name in ("from_state_dict", "import_weights", "read_state_dict"):
        from . import io

        return getattr(io, name)
    raise AttributeError(f"module 'polyvit' has no attribute {name!r}")
