"""The CUDA engine's cuBLAS products, checked without a GPU.

Every transpose, leading dimension and batch stride the CUDA engine hands cuBLAS is decided in
csrc/cuda/gemm_plan.h (plain C). tests/cuda_host/gemm_plan_check.c runs each plan through a
host GEMM with cuBLAS's column-major semantics and compares with row-major math in double:
linear forward, dinp (plain and accumulating), dw; attention forward and backward assembled as
attention.cu assembles them (the permutations included). What it cannot check: cuBLAS itself
and the kernels on a GPU (tests/test_cuda.py, on a GPU).
"""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gemm_plans_match_reference_math(tmp_path):
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    exe = str(tmp_path / "gemm_plan_check")
    subprocess.run([cc, "-O1", "-std=c11", "-Wall", "-Werror", "-I", os.path.join(ROOT, "csrc"),
                    os.path.join(ROOT, "tests", "cuda_host", "gemm_plan_check.c"), "-o", exe,
                    "-lm"], check=True)
    r = subprocess.run([exe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == "all ok: 0 failure(s)", r.stdout
    checked = [l for l in lines if l.startswith("ok")]
    assert len(checked) == 30 and any("attention backward" in l for l in checked), r.stdout
    assert sum("L72" in l for l in checked) == 2, r.stdout   # padded rows (POLYVIT_CUDA_ATT_LD)
