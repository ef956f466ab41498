#!/bin/bash
# Do the final recipe's progressive stages cost Hybrid-6 its gap? (issue 11: at 10 epochs,
# Hybrid-6 final in 2 stages of 5 epochs, results/cifar12/, misses the -0.3 bar: -0.67 ± 0.20,
# fidelity 94.88, and V3, one stage of 10 epochs from V2, reaches 94.89.) The per-epoch curves
# show fidelity falling 3 to 3.5 points when the second half of the blocks joins, and 5
# epochs only climbing back. This runs the final recipe in one stage over the same 10 epochs
# (all six blocks from the V2 student, trainable coefficients, pure logit MSE), otherwise
# results/cifar12/run.sh's arguments: about 75 minutes on 2 CPU cores. Its V3 is
# results/cifar12/'s (one stage already). Stopped and started again, it resumes.
cd "$(dirname "$0")/../.." || exit 1
exec python -m polyvit experiment --teacher results/teacher-cifar12/model.safetensors \
  --configs hybrid-6 --methods final --final-stages 1 --epochs 10 --batch-size 128 \
  --out results/cifar12-stages "$@"
