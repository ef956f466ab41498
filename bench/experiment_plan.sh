#!/usr/bin/env bash
# Run several `polyvit experiment`s one after another within one time limit: one per line of a
# plan file (its arguments; blank lines and lines starting with # are skipped), each into
# OUT/out-<line number>, after the common arguments given here. At the limit the running one
# gets SIGTERM (it finishes its step and writes its checkpoint) and no further line starts.
# Exit status: 0 when every line that ran finished or was stopped by the limit, else the last
# failing line's status. bench/gpu_check.sh runs it for EXPERIMENT_PLAN=file.
#
#   bash bench/experiment_plan.sh PLAN SECONDS OUT [COMMON ARGUMENTS...]
#   PY=python3.12 bash bench/experiment_plan.sh bench/plans/cifar12-patience.txt 480 /tmp/x \
#     --device cuda --data .gpudata/cifar10-jpeg.tar.gz \
#     --teacher results/teacher-cifar12/model.safetensors --batch-size 128
set -uo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 PLAN SECONDS OUT [COMMON ARGUMENTS...]" >&2
  exit 2
fi
PLAN=$1 LIMIT=$2 OUT=$3
shift 3
PY=${PY:-python3}
[ -f "$PLAN" ] || { echo "$0: no plan file $PLAN" >&2; exit 2; }
case "$LIMIT" in ''|*[!0-9]*) echo "$0: SECONDS must be a whole number, got '$LIMIT'" >&2; exit 2 ;; esac
mkdir -p "$OUT" || exit 2
SECONDS=0
n=0 rc=0
while IFS= read -r args || [ -n "$args" ]; do
  n=$((n + 1))
  case "$args" in ''|'#'*) continue ;; esac
  left=$((LIMIT - SECONDS))
  if [ "$left" -le 0 ]; then
    echo "== plan line $n not started: the ${LIMIT}s limit is spent"
    continue
  fi
  echo "== [${SECONDS}s] plan line $n: $args"
  # shellcheck disable=SC2086   # the line's arguments split as the shell would split them
  timeout -s TERM "$left" "$PY" -m polyvit experiment "$@" --out "$OUT/out-$n" $args
  r=$?
  if [ "$r" = 124 ]; then
    echo "== plan line $n stopped at the ${LIMIT}s limit (its checkpoint is in $OUT/out-$n/runs)"
  elif [ "$r" != 0 ]; then
    echo "== plan line $n failed (exit status $r)"
    rc=$r
  fi
done < "$PLAN"
exit "$rc"
