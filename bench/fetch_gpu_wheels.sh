#!/usr/bin/env bash
# Wheels the GPU machine lacks (it has Python 3.12, numpy, torch, timm, nvcc, nvidia-cublas,
# safetensors, pillow; no network): scipy-openblas32, which polyvit's CPU engine links. Run here,
# then carry .whl with the device call; bench/gpu_check.sh installs .whl/*.whl first.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "scipy-openblas32>=0.3.27"
ls -la .whl
