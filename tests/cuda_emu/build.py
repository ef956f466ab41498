"""Build the CUDA engine for the CPU emulator: polyvit's own csrc/cuda/*.cu compiled as C++
against this folder's stand-ins for the CUDA runtime and cuBLAS, plus the usual C binding,
into a `_C_cuda` extension module. Load it with POLYVIT_CUDA_MODULE=<path>.

    python tests/cuda_emu/build.py /tmp/emu      # prints the module's path
    POLYVIT_CUDA_MODULE=$(python tests/cuda_emu/build.py /tmp/emu) python -m pytest tests/test_cuda.py
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def build(out_dir: str, jobs: int = 2, sanitize: str = "") -> str:
    """Compile into out_dir; returns the module's path. sanitize: e.g. "address,undefined"
    (then run Python with the sanitizer runtimes preloaded, as tools/sanitize.sh does)."""
    import numpy

    cxx = shutil.which("g++") or shutil.which("c++")
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cxx or not cc:
        raise FileNotFoundError("the emulation build needs g++ and gcc")
    os.makedirs(out_dir, exist_ok=True)
    csrc = os.path.join(ROOT, "csrc")
    cxxflags = ["-std=c++17", "-O1", "-g", "-fPIC", "-DPV_CUDA_EMULATION", "-I", HERE, "-I", csrc]
    if sanitize:
        cxxflags += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer"]
    cflags = ["-std=c11", "-O1", "-g", "-fPIC", "-I", csrc, "-I", sysconfig.get_paths()["include"],
              "-I", numpy.get_include(), "-DNPY_TARGET_VERSION=NPY_1_22_API_VERSION",
              '-DPV_CUDA_ARCHS="cpu-emulator"']
    if sanitize:
        cflags += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer"]
    jobs_ = []
    for src in sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu"))):
        jobs_.append([cxx, "-x", "c++"] + cxxflags + ["-c", src])
    jobs_.append([cxx] + cxxflags + ["-c", os.path.join(HERE, "emu.cpp")])
    for name in ("module_cuda", "bindings", "layout", "error"):
        jobs_.append([cc] + cflags + ["-c", os.path.join(csrc, name + ".c")])
    objects = []
    for cmd in jobs_:
        obj = os.path.join(out_dir, os.path.basename(cmd[-1]) + ".o")
        cmd += ["-o", obj]
        objects.append(obj)

    def run(cmd):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"{' '.join(cmd)}\n{r.stdout}{r.stderr}")

    with ThreadPoolExecutor(jobs) as ex:
        list(ex.map(run, jobs_))
    out = os.path.join(out_dir, "_C_cuda" + sysconfig.get_config_var("EXT_SUFFIX"))
    run([cxx, "-shared", "-o", out] + objects + ([f"-fsanitize={sanitize}"] if sanitize else []))
    return out


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--sanitize=")]
    san = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--sanitize=")]
    print(build(args[0] if args else os.path.join(ROOT, "build", "cuda_emu"),
                sanitize=san[0] if san else ""))
