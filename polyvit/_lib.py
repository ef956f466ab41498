"""Load the compiled engine. scipy-openblas32's library is loaded first (as SciPy does), so
polyvit._C finds it wherever pip put it."""
import ctypes
import os


def _preload_openblas() -> None:
    try:
        import scipy_openblas32
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise ImportError("polyvit needs the scipy-openblas32 package: pip install scipy-openblas32") from e
    lib_dir = scipy_openblas32.get_lib_dir()
    for name in sorted(os.listdir(lib_dir)):
        if name.startswith("libscipy_openblas") and ".so" in name:
            ctypes.CDLL(os.path.join(lib_dir, name), mode=ctypes.RTLD_GLOBAL)
            return


_preload_openblas()
try:
    from . import _C  # noqa: E402
except ImportError as e:  # pragma: no cover
    raise ImportError(
        "polyvit's C engine (polyvit._C) is not built. Install with `pip install .` "
        "(or `pip install --no-build-isolation -e .` for development); original error: " + str(e)
    ) from e
