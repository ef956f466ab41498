#!/bin/bash
# Issue 11's CPU runs in order, each resuming where it stopped: the 12-block teacher
# (results/teacher-cifar12/), then the seed's experiment on it (results/cifar12/). Start it in
# the background (nohup bash results/run-all.sh > run-all.out 2>&1 &); stop it with
# kill -TERM on the python process (pgrep -f "python -m polyvit"), which writes a checkpoint
# first, and this script stops there too.
set -e
cd "$(dirname "$0")/.."
bash results/teacher-cifar12/run.sh
bash results/cifar12/run.sh
