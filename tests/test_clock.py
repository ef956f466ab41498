"""polyvit._clock: a run's wall clock leaves out a Ctrl-Z (SIGTSTP) suspension."""
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGTSTP"), reason="POSIX job control only")

CHILD = r"""
import sys, time
from polyvit import _clock
assert _clock.install()
t0, c0 = time.time(), _clock.now()
print("ready", flush=True)
sys.stdin.readline()            # the parent suspends and resumes us meanwhile
print(f"{time.time() - t0:.3f} {_clock.now() - c0:.3f} {_clock.suspended_seconds():.3f}", flush=True)
"""


def _state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_suspension_is_not_counted():
    p = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True,
                         start_new_session=True)   # as under nohup: no controlling shell
    try:
        assert p.stdout.readline().strip() == "ready"
        os.kill(p.pid, signal.SIGTSTP)
        deadline = time.time() + 10
        while _state(p.pid) != "T":              # the handler stops the process itself
            assert time.time() < deadline, "SIGTSTP did not stop the process"
            time.sleep(0.01)
        time.sleep(1.5)
        os.kill(p.pid, signal.SIGCONT)
        out, _ = p.communicate("go\n", timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    wall, clock, suspended = map(float, out.split())
    assert wall >= 1.5
    assert suspended >= 1.4
    assert clock == pytest.approx(wall - suspended, abs=0.05)
    assert clock < wall - 1.4


def test_without_install_the_clock_is_time():
    from polyvit import _clock
    assert abs(_clock.now() + _clock.suspended_seconds() - time.time()) < 0.05
