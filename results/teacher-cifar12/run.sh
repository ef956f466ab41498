#!/bin/bash
# The 12-block CIFAR-10 teacher (issue 11): re-running this script resumes from
# results/teacher-cifar12/checkpoint.safetensors, so the run goes on session after session.
cd "$(dirname "$0")/../.." || exit 1
# finished (model.safetensors written): nothing to do, even once the checkpoint is gone
if [ -f results/teacher-cifar12/model.safetensors ] && \
   [ ! -f results/teacher-cifar12/checkpoint.safetensors ]; then
  echo "results/teacher-cifar12/model.safetensors: the teacher has finished" >&2
  exit 0
fi
exec python -m polyvit train --preset vit_mini_patch4_32 --depth 12 --embed-dim 128 --num-heads 4 \
  --epochs 100 --lr 1e-3 --warmup 5 --batch-size 128 --weight-decay 0.05 --label-smoothing 0.1 \
  --magnitude 9 --checkpoint-every 100 --seed 0 --out results/teacher-cifar12
