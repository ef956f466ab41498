"""Build polyvit._C (the CPU engine) from csrc/ with OpenMP, linked to scipy-openblas32.

Environment:
  POLYVIT_MARCH     -march value for the C engine (default "native"; "none" to omit). The engine
                    is built on the machine that runs it, like any source install.
  POLYVIT_SANITIZE  e.g. "address,undefined": build with sanitizers (see README, "Sanitizers").
  POLYVIT_DEBUG=1   -O0 -g.
"""
import glob
import os
import sys

import numpy
from setuptools import Extension, setup


def openblas_dirs():
    try:
        import scipy_openblas32 as ob
    except ImportError:
        sys.exit("polyvit needs scipy-openblas32 at build time: pip install scipy-openblas32")
    return ob.get_include_dir(), ob.get_lib_dir()


def cpu_extension():
    inc, lib = openblas_dirs()
    sources = ["csrc/module.c", "csrc/module_data.c", "csrc/module_mix.c",
               "csrc/module_fixed.c"] + sorted(glob.glob("csrc/cpu/*.c"))
    cflags = ["-std=c11", "-fopenmp", "-Wall", "-Wno-unknown-pragmas", "-fno-math-errno"]
    ldflags = ["-fopenmp"]
    march = os.environ.get("POLYVIT_MARCH", "native")
    if march and march != "none":
        cflags.append(f"-march={march}")
    sanitize = os.environ.get("POLYVIT_SANITIZE", "")
    if sanitize:
        cflags += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-O1", "-g",
                   "-fno-sanitize-recover=all"]
        ldflags += [f"-fsanitize={sanitize}"]
    elif os.environ.get("POLYVIT_DEBUG") == "1":
        cflags += ["-O0", "-g"]
    else:
        cflags += ["-O3"]
    return Extension(
        "polyvit._C",
        sources=sources,
        include_dirs=["csrc", numpy.get_include(), inc],
        define_macros=[("BLAS_SYMBOL_PREFIX", "scipy_"), ("NPY_TARGET_VERSION", "NPY_1_22_API_VERSION")],
        library_dirs=[lib],
        libraries=["scipy_openblas"],
        # installed: scipy_openblas32 sits beside polyvit in site-packages; editable/in-tree
        # builds: the absolute directory found at build time. polyvit/_lib.py also preloads it.
        runtime_library_dirs=["$ORIGIN/../scipy_openblas32/lib", lib],
        extra_compile_args=cflags,
        extra_link_args=ldflags,
        depends=glob.glob("csrc/*.h") + glob.glob("csrc/cpu/*.h"),
    )


setup(ext_modules=[cpu_extension()])
