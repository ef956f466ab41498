#!/usr/bin/env bash
# The one script a GPU session runs, in one call: build polyvit with its CUDA engine, run
# tests/test_cuda.py, then the GPU benchmark (bench/gpu_train.py). Everything it writes goes to
# $OUT (default ./gpu_out): build.log, test_cuda.log, cuda_errors.json (the errors the tests
# measured per config and precision), checks.log (bench/gpu_sanitize.py: large widths and
# compute-sanitizer), bench.log and one gpu_train-*.json per model (8 files at most: what the
# device tool brings back). Meant to
# stay under 9 minutes (GPU_CHECK_LIMIT seconds, default 530): the benchmark gets whatever the
# build and the tests leave, at most 330 s.
#
#   bash bench/gpu_check.sh
#   OUT=/tmp/o BENCH_ARGS="--models vit_small_patch16_224 --no-compile" bash bench/gpu_check.sh
#   SANITIZE_TOOLS=memcheck GPU_CHECK_LIMIT=350 bash bench/gpu_check.sh   # a shorter call
#   PROBE=1 bash bench/gpu_check.sh                                        # + bench/gpu_probe.py
#   SANITIZE=0 bash bench/gpu_check.sh           # no large-width check, no compute-sanitizer
#   TEACHER_SECONDS=200 TEACHER_DATA=.gpudata/cifar10-jpeg.tar.gz bash bench/gpu_check.sh
#       # + the wider CIFAR-10 teacher (bench/gpu_teacher.py) in 200 s, into $OUT/teacher.tar
#       # (TEACHER_EPOCHS=100: that many epochs instead of as many as fit)
#   TESTS=0 BENCH=0 SANITIZE=0 EXPERIMENT_SECONDS=400 TEACHER_DATA=.gpudata/cifar10-jpeg.tar.gz \
#     bash bench/gpu_check.sh
#       # the seed's experiment (issue 11) on the CUDA engine with results/cifar12/run.sh's
#       # arguments, stopped after N seconds, into $OUT/experiment.tar (rows, logs, table;
#       # EXPERIMENT_TEACHER=path: another teacher); TESTS=0 / BENCH=0 leave out steps 3 and 5
#       # EXPERIMENT_PLAN=file: instead, one experiment per line of the file (its arguments,
#       # e.g. "--configs hybrid-6 --methods final --epochs 40"), into out-<line number>,
#       # all within EXPERIMENT_SECONDS (bench/experiment_plan.sh); several files ("a.txt b.txt"):
#       # one lane each, run side by side, into /tmp/gpu_experiment/<file name>
#
# A test failure does not stop the benchmark (device time is scarce); the script still exits
# non-zero at the end. A failed build, or a build without the CUDA engine, stops it at once.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
OUT=${OUT:-$ROOT/gpu_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
LIMIT=${GPU_CHECK_LIMIT:-530}
PYTEST_ARGS=${PYTEST_ARGS:--q -rs --maxfail=10}
BENCH_ARGS=${BENCH_ARGS:---variants fused pad}
export PYTHONUNBUFFERED=1
SECONDS=0

stamp() { echo "== [${SECONDS}s] $*"; }

stamp "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader \
  2>/dev/null || echo "nvidia-smi: not available"
if command -v nvcc >/dev/null; then nvcc --version | tail -2; else echo "nvcc: not on PATH"; fi
"$PY" -c "import sys, numpy, torch; print('python', sys.version.split()[0], '| numpy', \
numpy.__version__, '| torch', torch.__version__, 'cuda', torch.version.cuda, '| GPU visible to torch:', \
torch.cuda.is_available())" || echo "(torch not importable)"

# 1. wheels carried along in .whl/ (scipy-openblas32 is not in the GPU image)
if compgen -G ".whl/*.whl" >/dev/null; then
  stamp "installing the carried wheels: $(ls .whl)"
  "$PY" -m pip install -q --no-index --no-deps .whl/*.whl 2>&1 | tail -5
fi

# 2. build with the CUDA engine (POLYVIT_CUDA=1: the build fails if it cannot build it)
stamp "pip install --no-build-isolation -e . (POLYVIT_CUDA=1)"
# --no-deps --no-index: the GPU machine has no network, and everything polyvit needs is there
POLYVIT_CUDA=1 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . 2>&1 \
  | tee "$OUT/build.log" | tail -20
"$PY" - <<'EOF'
import sys

import polyvit

info = polyvit.build_info()
print("build_info:", info)
if not polyvit.HAS_CUDA:
    sys.exit("FAILED: polyvit was built without its CUDA extension (polyvit.HAS_CUDA is False); "
             "see build.log")
if not polyvit.cuda.is_available():
    sys.exit(f"FAILED: the CUDA extension is built but polyvit sees no GPU: {info.get('cuda')}")
for i in range(polyvit.cuda.device_count()):
    print(f"cuda:{i}:", polyvit.cuda.device_info(i))
EOF

# 3. the CUDA engine against the CPU engine
TEST_RC=0
if [ "${TESTS:-1}" != 0 ]; then
stamp "pytest tests/test_cuda.py"
set +e
# shellcheck disable=SC2086
POLYVIT_CUDA_ERRORS="$OUT/cuda_errors.json" timeout 240 "$PY" -m pytest $PYTEST_ARGS \
  -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/test_cuda.log"
TEST_RC=${PIPESTATUS[0]}
set -e
fi
if [ -f "$OUT/cuda_errors.json" ]; then
  "$PY" - "$OUT/cuda_errors.json" <<'EOF' || true
import json, sys

d = json.load(open(sys.argv[1]))
print("measured relative errors, CUDA vs CPU engine (worst over the configs):")
for prec, cases in d["measured"].items():
    if not isinstance(cases, dict) or not all(isinstance(v, dict) for v in cases.values()):
        print(f"  {prec}: {cases}")
        continue
    lw = max(cases, key=lambda c: cases[c]["logits"])
    gw = max(cases, key=lambda c: cases[c]["grad_worst"])
    print(f"  {prec}: logits {cases[lw]['logits']:.2e} ({lw}); gradients "
          f"{cases[gw]['grad_worst']:.2e} ({gw}, {cases[gw]['grad_worst_tensor']})")
EOF
fi

# 4. what the tests cannot see: the benchmark's launch shapes (width 384/768) against the CPU
# engine, and compute-sanitizer (out-of-bounds accesses, shared-memory races, divergent
# barriers) over a workload that runs every kernel. Logged to checks.log.
set +e
CHECK_RC=0
if [ "${SANITIZE:-1}" != 0 ]; then
  stamp "bench/gpu_sanitize.py large (float32 at ViT-S/B widths against the CPU engine)"
  {
    timeout 150 "$PY" bench/gpu_sanitize.py large
    echo "gpu_sanitize.py large: exit status $?"
    SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
    if [ -n "$SAN" ]; then
      for tool in ${SANITIZE_TOOLS:-memcheck racecheck synccheck}; do
        echo "== compute-sanitizer --tool $tool"
        timeout 90 "$SAN" --tool "$tool" --error-exitcode 9 --print-limit 20 \
          "$PY" bench/gpu_sanitize.py workload 2>&1 | tail -25
        rc=${PIPESTATUS[0]}
        echo "compute-sanitizer $tool: exit status $rc"
      done
    else
      echo "compute-sanitizer: not found"
    fi
  } 2>&1 | tee "$OUT/checks.log"
  CHECK_RC=$(grep -cE "FAILED|exit status [1-9]" "$OUT/checks.log")
fi
# PROBE=1: bench/gpu_probe.py too (GEMM rates per operand type and attention row alignment,
# polyvit's per-op profile per precision), its JSON appended to checks.log: the device tool
# brings back 8 files at most, and the benchmark's own take all 8 with this script's logs
if [ "${PROBE:-0}" = 1 ]; then
  stamp "bench/gpu_probe.py (into checks.log)"
  timeout 150 "$PY" bench/gpu_probe.py 2>&1 | tee -a "$OUT/checks.log" | grep -v '^ \|^{\|^}'
fi
set -e

# TEACHER_SECONDS=N: the wider CIFAR-10 teacher (issue 11), its epochs fitted to N seconds;
# one tar back ($OUT/teacher.tar: log, console, plan, float16 weights)
TEACHER_RC=0
if [ "${TEACHER_SECONDS:-0}" -gt 0 ]; then
  stamp "bench/gpu_teacher.py (${TEACHER_SECONDS}s, data ${TEACHER_DATA:-?})"
  set +e
  timeout $((TEACHER_SECONDS + 150)) "$PY" bench/gpu_teacher.py --data "${TEACHER_DATA:?}" \
    --budget "$TEACHER_SECONDS" ${TEACHER_EPOCHS:+--epochs "$TEACHER_EPOCHS"} \
    --out /tmp/gpu_teacher/run 2>&1 | tail -20
  TEACHER_RC=${PIPESTATUS[0]}
  cp /tmp/gpu_teacher/teacher.tar "$OUT/" 2>/dev/null
  tail -c 3000 /tmp/gpu_teacher/run/train.log 2>/dev/null | tr '\r' '\n' | grep -v "%" | tail -8
  set -e
fi

# EXPERIMENT_SECONDS=N: the seed's experiment (issue 11) on the CUDA engine, with the arguments
# of the CPU run (results/cifar12/run.sh), stopped by SIGTERM after N seconds (finished rows
# are kept, an unfinished distillation writes its checkpoint); one tar back without weights
EXP_RC=0
if [ "${EXPERIMENT_SECONDS:-0}" -gt 0 ]; then
  EXP_TEACHER=${EXPERIMENT_TEACHER:-results/teacher-cifar12/model.safetensors}
  # never past GPU_CHECK_LIMIT: 30 s kept for packing what ran (a slow build eats into it)
  EXP_MAX=$((LIMIT - SECONDS - 30))
  if [ "$EXPERIMENT_SECONDS" -gt "$EXP_MAX" ]; then
    echo "experiment: ${EXPERIMENT_SECONDS}s asked, ${EXP_MAX}s left before GPU_CHECK_LIMIT"
    EXPERIMENT_SECONDS=$((EXP_MAX > 10 ? EXP_MAX : 10))
  fi
  stamp "polyvit experiment --device cuda (${EXPERIMENT_SECONDS}s, teacher $EXP_TEACHER)"
  rm -rf /tmp/gpu_experiment && mkdir -p /tmp/gpu_experiment
  set +e
  if [ -n "${EXPERIMENT_PLAN:-}" ]; then
    # several plan files: one lane each, run side by side (one small model's steps leave most
    # of the GPU idle between kernel launches), the CPU cores shared out for augmentation
    read -r -a PLANS <<< "$EXPERIMENT_PLAN"
    NPLANS=${#PLANS[@]}
    LANE_THREADS=$(( $(nproc) / NPLANS > 0 ? $(nproc) / NPLANS : 1 ))
    PIDS=()
    for plan in "${PLANS[@]}"; do
      lane=$(basename "$plan" .txt)
      dir=/tmp/gpu_experiment
      [ "$NPLANS" -gt 1 ] && dir=/tmp/gpu_experiment/$lane && mkdir -p "$dir"
      echo "lane $lane: $plan, $LANE_THREADS threads, into $dir"
      OMP_NUM_THREADS=$LANE_THREADS PY="$PY" bash bench/experiment_plan.sh "$plan" \
        "$EXPERIMENT_SECONDS" "$dir" --device cuda --data "${TEACHER_DATA:?}" \
        --teacher "$EXP_TEACHER" --batch-size 128 > "$dir/console.log" 2>&1 &
      PIDS+=($!)
    done
    for pid in "${PIDS[@]}"; do
      wait "$pid"
      r=$?
      [ "$r" != 0 ] && EXP_RC=$r
    done
  else
    timeout -s TERM "$EXPERIMENT_SECONDS" "$PY" -m polyvit experiment --device cuda \
      --data "${TEACHER_DATA:?}" --teacher "$EXP_TEACHER" --configs hybrid-6 full --epochs 10 \
      --batch-size 128 --out /tmp/gpu_experiment/out > /tmp/gpu_experiment/console.log 2>&1
    EXP_RC=$?
  fi
  [ "$EXP_RC" = 124 ] && echo "experiment: stopped at its ${EXPERIMENT_SECONDS}s limit" \
    && EXP_RC=0
  for log in /tmp/gpu_experiment/console.log /tmp/gpu_experiment/*/console.log; do
    [ -f "$log" ] || continue
    echo "== $log"
    tr '\r' '\n' < "$log" | grep -v '%|\|\] *[0-9]*%' | tail -30
  done
  tar -C /tmp --exclude='*.safetensors' -cf "$OUT/experiment.tar" gpu_experiment
  set -e
fi

# 5. the benchmark, in what time is left
LEFT=$((LIMIT - SECONDS - 30))
BUDGET=$((LEFT < 330 ? LEFT : 330))
BENCH_RC=0
if [ "${BENCH:-1}" = 0 ]; then
  stamp "bench/gpu_train.py skipped (BENCH=0)"
elif [ "$BUDGET" -ge 60 ]; then
  stamp "bench/gpu_train.py (time budget ${BUDGET}s)"
  set +e
  # shellcheck disable=SC2086
  timeout $((BUDGET + 45)) "$PY" bench/gpu_train.py --out "$OUT" --time-budget "$BUDGET" \
    $BENCH_ARGS 2>&1 | tee "$OUT/bench.log"
  BENCH_RC=${PIPESTATUS[0]}
  set -e
else
  stamp "bench/gpu_train.py skipped: only ${LEFT}s left"
fi

stamp "done; files in $OUT:"
ls -l "$OUT"
if [ "$TEST_RC" -ne 0 ]; then
  echo "TESTS FAILED (pytest exit status $TEST_RC): see test_cuda.log"
  exit "$TEST_RC"
fi
if [ "$CHECK_RC" -ne 0 ]; then
  echo "CHECKS FAILED: see checks.log"
  exit 1
fi
if [ "$TEACHER_RC" -ne 0 ]; then
  echo "TEACHER FAILED (exit status $TEACHER_RC)"
  exit "$TEACHER_RC"
fi
if [ "$EXP_RC" -ne 0 ]; then
  echo "EXPERIMENT FAILED (exit status $EXP_RC): see console.log in experiment.tar"
  exit "$EXP_RC"
fi
if [ "$BENCH_RC" -ne 0 ]; then
  echo "BENCHMARK FAILED (exit status $BENCH_RC): see bench.log"
  exit "$BENCH_RC"
fi
echo "all passed"
