"""The CUDA engine's door: whether it was built, which GPUs there are, and clear errors.

``polyvit._C_cuda`` is imported only here, and only when asked: ``import polyvit`` works on
machines without a GPU, a driver or even the CUDA extension.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Dict

_module = None
_import_error = None


# POLYVIT_CUDA_MODULE=<path of a _C_cuda*.so>: load the CUDA engine from that file instead,
# e.g. the CPU emulation build that tests/test_cuda_emulated.py makes (tests/cuda_emu/).
_OVERRIDE = "POLYVIT_CUDA_MODULE"


def is_built() -> bool:
    """True when polyvit was built with its CUDA engine (nvcc was found at install time)."""
    return bool(os.environ.get(_OVERRIDE)) or importlib.util.find_spec("polyvit._C_cuda") is not None


def _load():
    global _module, _import_error
    if _module is not None:
        return _module
    if _import_error is not None:
        raise _import_error
    path = os.environ.get(_OVERRIDE)
    if path:
        spec = importlib.util.spec_from_file_location("polyvit._C_cuda", path)
        if spec is None or not os.path.isfile(path):
            raise RuntimeError(f"{_OVERRIDE}={path}: no such extension module")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _module = mod
        return _module
    if not is_built():
        _import_error = RuntimeError(
            "polyvit was installed without its CUDA engine (nvcc was not found at build time); "
            "reinstall on a machine with the CUDA toolkit: POLYVIT_CUDA=1 pip install "
            "--no-build-isolation --force-reinstall polyvit")
        raise _import_error
    try:
        from . import _C_cuda
    except ImportError as e:  # e.g. cuBLAS's library is missing at run time
        _import_error = RuntimeError(f"polyvit's CUDA engine failed to load: {e}. It needs "
                                     f"cuBLAS 13 (pip install nvidia-cublas) or the toolkit's "
                                     f"lib64 on the library path")
        raise _import_error from e
    _module = _C_cuda
    return _module


def device_count() -> int:
    """Number of CUDA devices (0 when the engine is not built or there is no GPU or driver)."""
    try:
        return _load().device_count()[0]
    except RuntimeError:
        return 0


def is_available() -> bool:
    """True when the CUDA engine is built and a GPU is present."""
    return device_count() > 0


def _require(ordinal: int = 0):
    mod = _load()
    n, reason = mod.device_count()
    if n == 0:
        raise RuntimeError(f"device='cuda' was asked for, but there is no usable GPU ({reason})")
    if not 0 <= ordinal < n:
        raise RuntimeError(f"device 'cuda:{ordinal}' does not exist: {n} CUDA device"
                           f"{'s' if n != 1 else ''} present")
    return mod


def device_info(ordinal: int = 0) -> Dict[str, Any]:
    """name, capability (major, minor), total_memory (bytes), multiprocessors."""
    return dict(_require(ordinal).device_info(ordinal))


def synchronize() -> None:
    """Wait for all of polyvit's GPU work. Every engine call already returns with its results
    ready (logits, gradients, an optimizer step), so this only matters around timings."""
    mod = _load()
    if mod.device_count()[0]:
        mod.synchronize()


def build_info() -> Dict[str, Any]:
    """CUDA runtime, driver and cuBLAS versions, and the compiled architectures."""
    return dict(_load().build_info())


def _new_engine(config: Dict[str, Any], max_batch: int, ordinal: int):
    """A CUDA engine for the model (raises RuntimeError without a GPU, MemoryError when the
    model and its activations for max_batch images do not fit)."""
    return _require(ordinal).Engine(config, max_batch, ordinal)


def profile(enable=None, reset: bool = False) -> Dict[str, float]:
    """Seconds spent per op category by CUDA models since the last reset (``enable=True`` turns
    timing on: the stream is drained around each op, so use it to see where a step goes, not to
    time it). Same categories as ``polyvit._C.profile`` on the CPU."""
    return dict(_load().profile(enable=enable, reset=reset))
