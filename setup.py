"""Build polyvit._C (the CPU engine) from csrc/ with OpenMP, linked to scipy-openblas32.

Environment:
  POLYVIT_MARCH     -march value for the C engine (default "native"; "none" to omit). The engine
                    is built on the machine that runs it, like any source install.
  POLYVIT_SANITIZE  e.g. "address,undefined": build with sanitizers (see README, "Sanitizers").
  POLYVIT_DEBUG=1   -O0 -g.
  POLYVIT_CUDA      auto (default: build polyvit._C_cuda when nvcc is found), 1 (must build:
                    fail if nvcc or cuBLAS is missing), 0 (never).
  CUDA_HOME         the CUDA toolkit (else CUDA_PATH, nvcc on PATH, /usr/local/cuda).
  POLYVIT_CUDA_ARCH compute capabilities, e.g. "80;90" (the default; machine code for each and
                    PTX for the last, so newer GPUs JIT it). "90a" style entries are accepted.
  NVCC_FLAGS        extra nvcc flags.
cuBLAS comes from the toolkit (lib64/libcublas.so) or, where the toolkit lacks it, from the
PyPI wheel nvidia-cublas (nvidia/cu13/lib) or nvidia-cublas-cu12 (nvidia/cublas/lib).
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def openblas_dirs():
    try:
        import scipy_openblas32 as ob
    except ImportError:
        sys.exit("polyvit needs scipy-openblas32 at build time: pip install scipy-openblas32")
    return ob.get_include_dir(), ob.get_lib_dir()


def cpu_extension():
    inc, lib = openblas_dirs()
    sources = ["csrc/module.c", "csrc/module_data.c", "csrc/module_mix.c",
               "csrc/module_fixed.c", "csrc/layout.c", "csrc/error.c", "csrc/bindings.c"] + sorted(glob.glob("csrc/cpu/*.c"))
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


# ---- the CUDA extension ----------------------------------------------------------------------
def find_cuda_home():
    """A toolkit directory with bin/nvcc and include/cuda_runtime.h (an nvcc on PATH may be a
    wrapper script outside the toolkit: then the usual install places are tried)."""
    def ok(home):
        return home and os.path.exists(os.path.join(home, "bin", "nvcc")) and \
            os.path.exists(os.path.join(home, "include", "cuda_runtime.h"))

    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home:
            if not ok(home):
                sys.exit(f"{var}={home} has no bin/nvcc and include/cuda_runtime.h")
            return home
    nvcc = shutil.which("nvcc")
    if nvcc and ok(os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))):
        return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    for home in ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True):
        if ok(home):
            return home
    return None


def find_cublas(home):
    """(include dir, lib dir, [link args]) for cuBLAS and cuBLASLt, or None."""
    candidates = [(os.path.join(home, "include"), os.path.join(home, d))
                  for d in ("lib64", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib", "lib")]
    sites = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]] + sys.path
    for site in dict.fromkeys(p for p in sites if p and os.path.isdir(p)):
        for sub in ("nvidia/cu13", "nvidia/cublas", "nvidia/cu12"):
            root = os.path.join(site, sub)
            candidates.append((os.path.join(root, "include"), os.path.join(root, "lib")))
    for inc, lib in candidates:
        if not os.path.exists(os.path.join(inc, "cublas_v2.h")):
            continue
        libs = []
        for name in ("cublas", "cublasLt"):
            plain = os.path.join(lib, f"lib{name}.so")
            versioned = sorted(glob.glob(os.path.join(lib, f"lib{name}.so.[0-9]*")), key=len)
            if os.path.exists(plain):
                libs.append(f"-l{name}")
            elif versioned:  # wheels ship only libcublas.so.13: link that file by name
                libs.append(f"-l:{os.path.basename(versioned[0])}")
        if len(libs) == 2:
            return inc, lib, libs
    return None


def find_cudart(home, extra_dirs):
    """(lib dir, link args) for the CUDA runtime: static where the toolkit has libcudart_static.a
    (importing polyvit._C_cuda then needs no libcudart.so), else the shared library."""
    dirs = [os.path.join(home, d) for d in ("lib64", "targets/x86_64-linux/lib",
                                              "targets/sbsa-linux/lib", "lib")] + extra_dirs
    for d in dirs:
        if os.path.exists(os.path.join(d, "libcudart_static.a")):
            return d, ["-l:libcudart_static.a", "-ldl", "-lrt", "-lpthread"]
    for d in dirs:
        shared = sorted(glob.glob(os.path.join(d, "libcudart.so*")), key=len)
        if shared:
            return d, [f"-l:{os.path.basename(shared[0])}"]
    return None


def cuda_archs():
    spec = os.environ.get("POLYVIT_CUDA_ARCH", "80;90")
    archs = [a.strip() for a in spec.replace(",", ";").split(";") if a.strip()]
    if not archs or not all(a.rstrip("af").isdigit() for a in archs):
        sys.exit(f"POLYVIT_CUDA_ARCH must list compute capabilities like '80;90', got {spec!r}")
    flags = []
    for a in archs:
        flags.append(f"-gencode=arch=compute_{a},code=sm_{a}")
    last = archs[-1].rstrip("af")
    flags.append(f"-gencode=arch=compute_{last},code=compute_{last}")  # PTX for newer GPUs
    return archs, flags


def cuda_extension():
    mode = os.environ.get("POLYVIT_CUDA", "auto").lower()
    if mode not in ("auto", "1", "0"):
        sys.exit(f"POLYVIT_CUDA must be auto, 1 or 0, got {mode!r}")
    if mode == "0":
        return None
    home = find_cuda_home()
    blas = find_cublas(home) if home else None
    if home is None or blas is None:
        what = "nvcc" if home is None else f"cuBLAS (not in {home} nor in an nvidia-cublas wheel)"
        if mode == "1":
            sys.exit(f"POLYVIT_CUDA=1 but {what} was not found; set CUDA_HOME or "
                     f"pip install nvidia-cublas")
        print(f"polyvit: building without the CUDA engine ({what} not found)", file=sys.stderr)
        return None
    inc, lib, blas_libs = blas
    rt = find_cudart(home, [lib])
    if rt is None:
        if mode == "1":
            sys.exit(f"POLYVIT_CUDA=1 but the CUDA runtime library was not found under {home}")
        print(f"polyvit: building without the CUDA engine (no libcudart under {home})",
              file=sys.stderr)
        return None
    rt_dir, rt_libs = rt
    archs, _ = cuda_archs()
    ext = Extension(
        "polyvit._C_cuda",
        sources=["csrc/module_cuda.c", "csrc/bindings.c", "csrc/layout.c", "csrc/error.c"],
        include_dirs=["csrc", numpy.get_include(), os.path.join(home, "include"), inc],
        define_macros=[("NPY_TARGET_VERSION", "NPY_1_22_API_VERSION"),
                       ("PV_CUDA_ARCHS", '"' + ";".join(archs) + '"')],
        library_dirs=list(dict.fromkeys([lib, rt_dir])),
        extra_link_args=blas_libs + rt_libs + ["-lstdc++"],
        runtime_library_dirs=list(dict.fromkeys(["$ORIGIN/../nvidia/cu13/lib",
                                                 "$ORIGIN/../nvidia/cublas/lib", lib, rt_dir])),
        extra_compile_args=["-std=c11", "-O2", "-Wall"],
        depends=glob.glob("csrc/cuda/*.h") + glob.glob("csrc/*.h"),
    )
    ext.cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    ext.cuda_home = home
    ext.cuda_include = inc
    return ext


class BuildExt(build_ext):
    """Compiles an extension's .cu files with nvcc into objects linked with its C sources."""

    def build_extension(self, ext):
        cu = getattr(ext, "cuda_sources", None)
        if cu:
            nvcc = os.path.join(ext.cuda_home, "bin", "nvcc")
            _, gencode = cuda_archs()
            out_dir = os.path.join(self.build_temp, "cuda")
            os.makedirs(out_dir, exist_ok=True)
            flags = ["-std=c++17", "-O3", "-Xcompiler", "-fPIC", "-Icsrc", "-I" + ext.cuda_include,
                     "--expt-relaxed-constexpr", "-lineinfo"] + gencode
            flags += os.environ.get("NVCC_FLAGS", "").split()
            objects = []
            for src in cu:
                obj = os.path.join(out_dir, os.path.basename(src) + ".o")
                deps = [src] + glob.glob("csrc/cuda/*.h") + ["csrc/polyvit.h"]
                if self.force or not os.path.exists(obj) or \
                        os.path.getmtime(obj) < max(os.path.getmtime(d) for d in deps):
                    cmd = [nvcc, "-c", src, "-o", obj] + flags
                    print(" ".join(cmd))
                    subprocess.check_call(cmd)
                objects.append(obj)
            ext.extra_objects = objects
        super().build_extension(ext)


extensions = [cpu_extension()]
_cuda = cuda_extension()
if _cuda is not None:
    extensions.append(_cuda)
setup(ext_modules=extensions, cmdclass={"build_ext": BuildExt})
