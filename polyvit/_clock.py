"""The wall clock that training runs report: time.time() less the time the process spent
suspended by a job-control stop (Ctrl-Z, ``kill -TSTP``) until its ``fg`` / ``kill -CONT``.

A run suspended for an hour would otherwise log an hour-long epoch, and the experiment's wall
time per row (the figure the README reports) would count the hour. ``install()`` (called by the
long-running commands of ``python -m polyvit``) catches SIGTSTP, notes the time, stops the
process with SIGSTOP (which, unlike a re-raised SIGTSTP, the kernel does not discard for a
process group without a controlling shell, as under nohup) and, once continued, adds the pause
to the suspended total. SIGSTOP itself cannot be caught: a pause made with it is still counted.
Python runs the handler between bytecodes, so the stop lands when the current C call (one
engine op, well under a second) returns.
"""
import os
import signal
import threading
import time

_suspended = 0.0


def now() -> float:
    """Seconds, as time.time(), less the time spent suspended since install()."""
    return time.time() - _suspended


def suspended_seconds() -> float:
    return _suspended


def _on_tstp(signum, frame):
    global _suspended
    t = time.monotonic()
    os.kill(os.getpid(), signal.SIGSTOP)      # stops here until SIGCONT
    _suspended += time.monotonic() - t


def install() -> bool:
    """Catch SIGTSTP (from the main thread of a process on a POSIX system); True if installed."""
    if not hasattr(signal, "SIGTSTP") or threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTSTP) is signal.SIG_IGN:   # the parent wants it ignored
        return False
    signal.signal(signal.SIGTSTP, _on_tstp)
    return True
