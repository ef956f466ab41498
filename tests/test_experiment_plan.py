"""bench/experiment_plan.sh: several experiments in one device call, within one time limit.

The script is shell; a stand-in for Python (PY=...) records each experiment's arguments and
sleeps as long as its --epochs says, so the limit, the skipped lines and the exit status can
be checked here without a GPU or a real experiment.
"""
import os
import shutil
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "experiment_plan.sh")

FAKE = r"""#!/usr/bin/env bash
# "python -m polyvit experiment ARGS": sleeps --epochs tenths of a second; --epochs 99 fails
e=1 prev= out=
for a in "$@"; do
  [ "$prev" = --epochs ] && e=$a
  [ "$prev" = --out ] && out=$a
  prev=$a
done
echo "$*" >> "$LOG"
trap 'echo "TERM epochs=$e" >> "$LOG"; exit 130' TERM
[ "$e" = 99 ] && exit 7
sleep "$(awk -v e="$e" 'BEGIN { print e / 10 }')" & wait $!
mkdir -p "$out" && touch "$out/done"
"""

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def _run(tmp_path, plan_text, limit, *common):
    fake = tmp_path / "fakepy"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    plan = tmp_path / "plan.txt"
    plan.write_text(plan_text)
    log = tmp_path / "calls.log"
    env = dict(os.environ, PY=str(fake), LOG=str(log))
    t0 = time.monotonic()
    p = subprocess.run(["bash", SCRIPT, str(plan), str(limit), str(tmp_path / "o"), *common],
                       env=env, capture_output=True, text=True, timeout=60)
    calls = log.read_text().splitlines() if log.exists() else []
    return p, calls, time.monotonic() - t0


def test_every_line_runs_in_order_with_the_common_arguments(tmp_path):
    p, calls, _ = _run(tmp_path, "# a comment\n\n--configs a --epochs 1\n--configs b --epochs 2",
                       30, "--device", "cuda")
    assert p.returncode == 0, p.stdout + p.stderr
    o = tmp_path / "o"
    # the last line has no newline and still runs; out-<n> counts the file's lines
    assert calls == [f"-m polyvit experiment --device cuda --out {o}/out-3 --configs a --epochs 1",
                     f"-m polyvit experiment --device cuda --out {o}/out-4 --configs b --epochs 2"]
    assert (o / "out-3" / "done").exists() and (o / "out-4" / "done").exists()


def test_the_limit_stops_the_running_line_and_starts_no_other(tmp_path):
    p, calls, took = _run(tmp_path, "--epochs 1\n--epochs 600\n--epochs 1\n", 2)
    assert p.returncode == 0, p.stdout + p.stderr   # stopped by the limit is not a failure
    assert took < 20
    assert calls[-1] == "TERM epochs=600" and len(calls) == 3
    assert "plan line 2 stopped at the 2s limit" in p.stdout
    assert "plan line 3 not started" in p.stdout
    assert not (tmp_path / "o" / "out-3").exists()


def test_a_failing_line_is_reported_and_the_others_still_run(tmp_path):
    p, calls, _ = _run(tmp_path, "--epochs 99\n--epochs 1\n", 30)
    assert p.returncode == 7
    assert "plan line 1 failed (exit status 7)" in p.stdout
    assert len(calls) == 2 and (tmp_path / "o" / "out-2" / "done").exists()


@pytest.mark.parametrize("args, why", [([], "usage"), (["nope.txt", "5", "o"], "no plan file"),
                                       (["PLAN", "5s", "o"], "whole number")])
def test_bad_arguments_are_refused(tmp_path, args, why):
    args = [str(tmp_path / "plan.txt") if a == "PLAN" else a for a in args]
    (tmp_path / "plan.txt").write_text("--epochs 1\n")
    p = subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=30,
                       cwd=tmp_path)
    assert p.returncode == 2 and why in p.stderr
