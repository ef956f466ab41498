"""The CUDA engine's per-element functors (csrc/cuda/ops.cu), checked on the host: no GPU needed.

ops.cu writes each elementwise op and each column-sum term as a ``__host__ __device__`` functor.
tests/cuda_host/ops_host_check.cu includes ops.cu, runs those functors on the CPU through host
copies of the drivers' index logic, and compares them with the CPU engine's own C code
(csrc/cpu/embed.c, layernorm.c, activation.c, adamw.c, compiled here with setup.py's flags), or
with copies of the few static CPU loops that cannot be linked alone (pooling in model.c, the
bias seed and dbias loop of gemm.c). This test compiles it with gcc and nvcc into tmp_path, runs
it and requires every line to say ok. Only nvcc and gcc are needed: not a GPU, not a CUDA
driver, not polyvit's build.

What it checks:
  * the formulas: image normalisation (uint8 NCHW and NHWC, float32; against the contract in
    csrc/cuda/pv_cuda.h), patch im2col, token assembly and its backward, bias + residual, GELU
    (erf and tanh forms, forward and backward: exactly against activation.c's scalar formulas,
    within a measured bound against the engine's AVX2 build), the poly activation (width 1 and
    width H, forward, dinp and the coefficient gradients), token and average pooling and their
    backward, gradient scaling and AdamW over a parameter table with frozen groups (three steps
    against pv_grad_scale / pv_adamw_step themselves);
  * the index arithmetic of both paths of every elementwise op: the float4 bulk (where the
    launch wrapper would choose it) and the scalar path (everywhere, on odd sizes such as C not
    a multiple of 4, and for GELU on pointers off 16-byte alignment), with guard words around
    every buffer and poisoned outputs, so a missed, doubled or out-of-bounds element fails;
  * in-place use: dinp == dout in the GELU and poly backward, out == residual in bias_residual;
  * the column sums (bias gradient, layernorm dw/db, poly coefficient sums) in k_colsum's exact
    summation order, one chunk and several (rows not a multiple of the 256-row chunk, stage 2
    over the partials), and the scratch sizes the wrappers allocate;
  * the 64-bit path of divmod.
Tolerances: bitwise equality wherever the functor evaluates the same float expression in the
same order as the CPU; where the order of a reduction differs by design (column sums over more
than 8 rows, poly coefficient sums) or the CPU engine uses its AVX2 approximations (GELU), a
measured bound, justified next to its definition in the .cu file.

What it does not check: the kernels themselves and their launch logic (grid sizes, the
vectorisation decision in each cu_* wrapper: the harness takes both paths where that decision
could), the warp and block reductions (layernorm forward and backward rows, the gradient norm),
the attention and GEMM code, and the GPU's own arithmetic (nvcc contracts a*b+c into FMAs in
device code; the device erff/expf/tanhf differ from glibc's in the last bits). The summation
orders of k_elementwise, k_colsum and k_poly_coef_final are reproduced by host copies in the
harness, so a change to one of those kernels must be mirrored there. The real GPU execution of
all of it is checked only by tests/test_cuda.py, on a GPU.

Cost: about 3-5 s to build (nvcc's host compile of the harness is most of it; gcc runs beside
it) and under 1 s to run, on 2 cores.

Environment: CUDA_HOME / CUDA_PATH, else nvcc on PATH, else /usr/local/cuda*/bin/nvcc (skipped
with the reason when there is none); POLYVIT_MARCH as in setup.py (the CPU reference is compiled
the way the CPU engine is).
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "tests" / "cuda_host" / "ops_host_check.cu"
CPU_REFS = ("embed", "layernorm", "activation", "adamw")
# activation.c once more without its AVX2 block (-U__AVX2__): the engine's scalar formulas,
# under other names, for the exact GELU comparison
SCALAR_RENAMES = ("gelu_forward", "gelu_backward", "poly_forward", "poly_backward",
                  "pv_erf_scalar")
# every area the harness must have covered (a substring of at least one check line)
EXPECTED = ("divmod", "images_u8 nchw", "images_u8 nhwc", "images_f32 float4", "images_f32 scalar",
            "im2col float4", "im2col scalar", "tokens_assemble float4", "tokens_assemble scalar",
            "tokens_backward dpos float4", "tokens_backward dpatch scalar",
            "bias_residual bias+residual, out==res", "bias_backward M=1000",
            "layernorm dw C=37 rows=600 stride=111", "gelu fwd erf float4", "gelu fwd tanh scalar",
            "gelu bwd erf float4 (dinp == dout)", "gelu bwd tanh scalar unaligned (dinp == dout)",
            "vs engine build", "poly fwd float4 H=16 width=1", "poly fwd scalar H=13 width=13",
            "poly bwd dinp float4 (dinp == dout) H=16 width=16",
            "poly bwd dinp scalar (dinp == dout) H=13 width=1", "poly bwd ds H=300 width=1",
            "pool_tokens float4 token", "pool_tokens scalar avg", "pool_backward float4 avg",
            "pool_backward scalar token", "grad_scale", "adamw p", "adamw frozen groups untouched",
            "scratch sizes", "guard words")


def find_nvcc() -> str | None:
    """CUDA_HOME / CUDA_PATH, nvcc on PATH, then the usual install places."""
    candidates = [os.path.join(os.environ[v], "bin", "nvcc")
                  for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    candidates.append(shutil.which("nvcc"))
    candidates += ["/usr/local/cuda/bin/nvcc"] + sorted(glob.glob("/usr/local/cuda-*/bin/nvcc"),
                                                        reverse=True)
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def cpu_cflags() -> list[str]:
    """setup.py's cpu_extension() flags (release build), POLYVIT_MARCH included."""
    flags = ["-std=c11", "-fopenmp", "-Wall", "-Wno-unknown-pragmas", "-fno-math-errno", "-O3"]
    march = os.environ.get("POLYVIT_MARCH", "native")
    if march and march != "none":
        flags.append(f"-march={march}")
    return flags + ["-I", str(ROOT / "csrc")]


NVCC = find_nvcc()
GCC = shutil.which("gcc")
if NVCC is None:
    pytest.skip("no nvcc (not in $CUDA_HOME/bin, $CUDA_PATH/bin, on PATH nor in "
                "/usr/local/cuda*/bin): the host-side check of csrc/cuda/ops.cu needs it to "
                "compile (no GPU needed)", allow_module_level=True)
if GCC is None:
    pytest.skip("no gcc on PATH: it compiles the CPU reference (csrc/cpu/*.c)",
                allow_module_level=True)


def _wait(procs: list[tuple[list[str], subprocess.Popen]]) -> None:
    for cmd, p in procs:
        try:
            out, _ = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
            pytest.fail(f"timed out: {' '.join(cmd)}\n{out}")
        if p.returncode != 0:
            pytest.fail(f"compile failed ({p.returncode}): {' '.join(cmd)}\n{out}")


def _start(cmd: list[str]) -> tuple[list[str], subprocess.Popen]:
    return cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 cwd=ROOT)


def test_ops_functors_match_cpu_engine(tmp_path):
    t0 = time.perf_counter()
    cflags = cpu_cflags()
    objs, jobs = [], []
    # the harness's host compile is the slow step: start it first, the C files beside it
    harness_obj = str(tmp_path / "ops_host_check.o")
    # -ffp-contract=off: the host pass of the functors is evaluated as written, as the C
    # reference is (gcc's ISO C11 mode contracts nothing); on x86-64 without -march there is
    # no FMA anyway, but aarch64 has one. -O0 for the host code: the results are the same
    # IEEE operations at any level without fast-math, and it halves the compile (measured on
    # 2 cores: 3.3 s against 5.5 s at -O2). PTX for one virtual arch only, no ptxas: nvcc
    # always compiles the device side of ops.cu's kernels, but nothing here is launched, so no
    # machine code is needed (7.2 s with the default sm_75 cubin + PTX at -O2).
    jobs.append(_start([NVCC, "-c", str(HARNESS), "-o", harness_obj, "-std=c++17", "-O0",
                        "--expt-relaxed-constexpr", "-I", str(ROOT / "csrc"),
                        "-arch=compute_80", "-code=compute_80",
                        "-Xcompiler", "-ffp-contract=off"]))
    for name in CPU_REFS:
        obj = str(tmp_path / f"{name}.o")
        jobs.append(_start([GCC, *cflags, "-c", str(ROOT / "csrc" / "cpu" / f"{name}.c"),
                            "-o", obj]))
        objs.append(obj)
    scalar_obj = str(tmp_path / "activation_scalar.o")
    jobs.append(_start([GCC, *cflags, "-U__AVX2__", *[f"-D{s}=scalar_{s}" for s in SCALAR_RENAMES],
                        "-c", str(ROOT / "csrc" / "cpu" / "activation.c"), "-o", scalar_obj]))
    objs.append(scalar_obj)
    _wait(jobs)
    exe = str(tmp_path / "ops_host_check")
    _wait([_start([NVCC, harness_obj, *objs, "-o", exe, "-lgomp", "-lm"])])
    t_build = time.perf_counter() - t0

    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")  # the CPU reference's results do not depend on it
    run = subprocess.run([exe], capture_output=True, text=True, timeout=300, env=env)
    out = run.stdout + (f"\n[stderr]\n{run.stderr}" if run.stderr else "")
    t_run = time.perf_counter() - t0 - t_build
    print(f"ops_host_check: build {t_build:.1f} s, run {t_run:.1f} s")
    lines = [ln for ln in run.stdout.splitlines() if ln.strip()]
    bad = [ln for ln in lines if not ln.startswith("ok ")]
    assert run.returncode == 0 and not bad, (
        f"ops_host_check exited {run.returncode}; failing lines:\n" + "\n".join(bad) +
        f"\n\nfull output:\n{out}")
    assert lines and lines[-1].endswith(" 0 failed"), f"no summary line:\n{out}"
    missing = [e for e in EXPECTED if not any(e in ln for ln in lines)]
    assert not missing, f"checks missing from the output: {missing}\n{out}"
