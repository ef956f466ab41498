"""The CUDA engine's own code, run on the CPU.

tests/cuda_emu/ builds csrc/cuda/*.cu as C++ against a CPU stand-in for the CUDA runtime and
cuBLAS: every kernel launch runs every block and thread (one coroutine per GPU thread, switched
at __syncthreads and warp shuffles, so barriers, shared memory and shuffles behave as CUDA
defines them), device memory is host memory filled with NaNs when allocated, and the cuBLAS
products are computed on the host (TF32/bf16 compute types round their inputs as tensor cores
do). Then the whole of tests/test_cuda.py (every op, training steps, moves, errors against the
CPU engine) runs against it. What this cannot see: cuBLAS itself, the real GPU's memory model
and timing, and nvcc's code generation; those need tests/test_cuda.py on a GPU
(bench/gpu_check.sh).
"""
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "cuda_emu"))


@pytest.fixture(scope="module")
def emulated_engine(tmp_path_factory):
    if not (shutil.which("g++") and shutil.which("gcc")):
        pytest.skip("the emulation build needs g++ and gcc")
    if sys.platform != "linux":
        pytest.skip("the CUDA emulator is written for Linux")
    import build as emu_build

    return emu_build.build(str(tmp_path_factory.mktemp("cuda_emu")))


def test_emulated_module_reports_itself(emulated_engine):
    r = subprocess.run([sys.executable, "-c", "import polyvit; print(polyvit.cuda.device_info(0)); "
                        "print(polyvit.cuda.is_available(), polyvit.build_info()['cuda'])"],
                       env=dict(os.environ, POLYVIT_CUDA_MODULE=emulated_engine),
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "polyvit CPU emulator" in r.stdout and "True" in r.stdout and "cpu-emulator" in r.stdout


def test_cuda_suite_passes_on_the_emulated_engine(emulated_engine):
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                        os.path.join(ROOT, "tests", "test_cuda.py")],
                       env=dict(os.environ, POLYVIT_CUDA_MODULE=emulated_engine),
                       capture_output=True, text=True, cwd=ROOT, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    m = re.search(r"(\d+) passed", out)
    assert m and int(m.group(1)) >= 50, out[-3000:]
    # only the tests that need PyTorch's CUDA (filling a real GPU) may skip
    skips = re.findall(r"SKIPPED \[\d+\] ([^\n]*)", out)
    assert len(skips) <= 2, "\n".join(skips)
