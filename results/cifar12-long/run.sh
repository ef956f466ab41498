#!/bin/bash
# Does a longer distillation close Hybrid-6's gap? (issue 11: at 10 epochs its final row misses
# the -0.3 bar: -0.67 on the CPU, -0.64 on an H200; results/cifar12/.) The same experiment on
# the same teacher with 30 epochs for V3 and final (final: 2 progressive stages of 15), Hybrid-6
# only. About 3.7 hours a distilled row on 2 CPU cores, a minute on an H100 (add --device cuda).
# Stopped and started again, it keeps finished rows and resumes a distillation from its
# checkpoint in results/cifar12-long/runs/.
cd "$(dirname "$0")/../.." || exit 1
exec python -m polyvit experiment --teacher results/teacher-cifar12/model.safetensors \
  --configs hybrid-6 --epochs 30 --batch-size 128 --out results/cifar12-long "$@"
