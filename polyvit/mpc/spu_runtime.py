"""Run a JAX function under SecretFlow SPU and read every party's own cost profile.

``execute(fn, args, visibility, protocol=..., field=..., frac_bits=...)`` compiles ``fn`` with
SPU's JAX frontend, runs it with 2 parties (SEMI2K, CHEETAH) or 3 (ABY3) and returns the
reconstructed outputs with a :class:`CostReport`: for each party, the bytes it sent and its
send actions, SPU's per-op breakdown at the three levels SPU profiles (pphlo ops, HAL kernels,
MPC kernels), plus wall and compile time.

How the costs are read
----------------------
SPU has no API for its link statistics; with ``RuntimeConfig.enable_pphlo_profile`` and
``enable_hal_profile`` set, each runtime prints them through spdlog on the C++ **stdout**
(file descriptor 1, bypassing ``sys.stdout``) at the end of ``Runtime.run``. After spdlog's
``[date] [info] [api.cc:NNN] `` prefix the lines are (SPU 0.9.5)::

    [Profiling] SPU execution NAME completed, input processing took As, execution took Bs, output processing took Cs, total time Ds.
    HLO profiling: total time T                      (then HAL, then MPC)
    - NAME, executed N times, duration Ts, send bytes S recv bytes R, send actions SA, recv actions RA
    Link details: total send bytes S, recv bytes R, send actions SA, recv actions RA

The per-op numbers are the link's own counters read around each op (each level partitions the
total), not a cost model.

The lines carry no party id. Parties run as threads of one process (as SPU's ``Simulator``
does, over ``link.create_mem``) share fd 1 and their lines interleave, and running the program
once per party with one party profiled is not the same run: ABY3 draws its truncation roles
from public randomness negotiated afresh in every run, so which party sends less changes from
run to run. So each party is a **process** of its own (a small pool, started on first use and
kept for later calls; :func:`shutdown` stops it), linked to the others over loopback TCP
(``link.create_brpc``, which counts the same bytes and actions as mem links), and each captures
its own fd 1 around the run (``os.dup2`` into a temp file, restored in a ``finally``). The
parent process only compiles, makes the shares and reconstructs the outputs.

Definitions
-----------
* bytes: a party's ``send bytes`` (what it puts on the wire; ``recv bytes`` are kept too).
* rounds: a party's ``send actions``, the number of messages it sends. Every SEMI2K/ABY3 kernel
  measured sends one message per party per communication round, so there send actions are the
  rounds; under CHEETAH a round can carry several messages (OT extension, HE ciphertext
  batches) and send actions over-count rounds. ``CostReport.rounds`` is the maximum over
  parties. The counts include a protocol's one-time setup inside the run (CHEETAH's OT
  bootstrap happens lazily at its first OT-based op, in every run).
* comparisons: MPC-level kernels that output a comparison bit: ``msb_*`` (the sign of a shared
  value: ``x < y`` is ``msb(x - y)``; relu/max/abs/clip/sign all go through it), ``equal_*``
  (``x == y``, ``x == public``) and ``less_*``/``greater_*`` (kept for protocols that expose
  them). Bit decompositions (``a2b``), AND gates (``and_bb``) and truncation (``trunc_a``, whose
  CHEETAH form computes a wrap bit with OT) are building blocks, not comparisons, and are not
  counted; the HAL level (``f_less``, ``f_equal``, ``_sign``, ...) would count the same ops
  again. A count is of kernel calls: a comparison of two arrays is one call.

Trust
-----
SEMI2K takes its Beaver triples from SPU's default source, a *trusted first party*: rank 0
derives the correlated randomness locally from seeds shared with the others, so it is trusted
not to cheat, and SPU itself calls that mode for debugging/testing only; its offline cost is
not in these numbers. CHEETAH (homomorphic encryption + OT) is the dealer-free 2-party option;
ABY3 is 3-party replicated secret sharing with an honest majority.

SPU is optional: ``pip install "polyvit[mpc]"`` (SPU wheels exist for Python 3.10-3.11 only).
"""
from __future__ import annotations

import atexit
import ctypes
import dataclasses
import functools
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from multiprocessing.connection import Connection, wait as _wait_conns
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

PROTOCOLS = {"semi2k": ("SEMI2K", 2), "aby3": ("ABY3", 3), "cheetah": ("CHEETAH", 2)}
FIELDS = {64: "FM64", 128: "FM128"}
VISIBILITIES = ("secret", "public")
LEVELS = ("hlo", "hal", "mpc")
INSTALL_HINT = 'pip install "polyvit[mpc]" (SecretFlow SPU; Python 3.10-3.11 only)'

# MPC kernel names that produce a comparison bit (see the module docstring).
COMPARISON_PREFIXES = ("msb", "equal", "less", "greater")

_ROUNDS_NOTE = "rounds = send actions (messages) per party; one message per party per round here."
NOTES = {
    "semi2k": (
        "SEMI2K: Beaver triples from SPU's default TrustedFirstParty source (rank 0 generates "
        "the correlated randomness from seeds shared with the others; SPU calls this mode "
        "debugging/testing only); that offline cost is not counted. CHEETAH is the "
        "dealer-free 2-party option.",
        _ROUNDS_NOTE,
    ),
    "aby3": (
        "ABY3: 3-party replicated secret sharing, honest majority, no dealer. Truncation roles "
        "are drawn from public randomness in every run, so which party sends less varies "
        "between runs.",
        _ROUNDS_NOTE,
    ),
    "cheetah": (
        "CHEETAH: dealer-free 2-party protocol (homomorphic encryption for linear ops, OT for "
        "nonlinear ones); its OT bootstrap runs inside the first OT-based op and is counted. "
        "The parties' roles and costs differ; bytes vary by ~0.1% between runs.",
        "rounds = send actions (messages) per party; CHEETAH can send several messages per "
        "round, so this over-counts rounds.",
    ),
}

_LINE_PREFIX = r"(?:^|\] )"
_RE_EXEC = re.compile(
    r"\[Profiling\] SPU execution (?P<name>.*) completed, input processing took (?P<inp>\S+)s, "
    r"execution took (?P<exe>\S+)s, output processing took (?P<out>\S+)s, "
    r"total time (?P<tot>\S+)s\.")
_RE_SECTION = re.compile(_LINE_PREFIX + r"(?P<level>HLO|HAL|MPC) profiling: total time (?P<t>\S+)$")
_RE_OP = re.compile(
    _LINE_PREFIX + r"- (?P<name>.+), executed (?P<count>\d+) times, duration (?P<t>\S+)s, "
    r"send bytes (?P<sb>\d+) recv bytes (?P<rb>\d+), send actions (?P<sa>\d+), "
    r"recv actions (?P<ra>\d+)$")
_RE_LINK = re.compile(
    r"Link details: total send bytes (?P<sb>\d+), recv bytes (?P<rb>\d+), "
    r"send actions (?P<sa>\d+), recv actions (?P<ra>\d+)")


@dataclasses.dataclass(frozen=True)
class OpCost:
    """One line of SPU's profile: an op (``level`` "hlo") or kernel ("hal", "mpc")."""

    level: str
    name: str
    count: int            # times executed (a vectorized op on a whole array counts once)
    seconds: float
    send_bytes: int
    recv_bytes: int
    send_actions: int
    recv_actions: int

    @property
    def is_comparison(self) -> bool:
        return self.level == "mpc" and self.name.startswith(COMPARISON_PREFIXES)


@dataclasses.dataclass(frozen=True)
class PartyCost:
    """What one party sent and received over the whole run (SPU's "Link details")."""

    rank: int
    send_bytes: int
    recv_bytes: int
    send_actions: int
    recv_actions: int
    exec_seconds: float   # SPU's "execution took" for this party
    ops: Tuple[OpCost, ...]

    def level(self, level: str) -> Tuple[OpCost, ...]:
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}; one of {LEVELS}")
        return tuple(o for o in self.ops if o.level == level)

    def op(self, name: str, level: Optional[str] = None) -> OpCost:
        for o in self.ops:
            if o.name == name and (level is None or o.level == level):
                return o
        raise KeyError(f"no op {name!r} in party {self.rank}'s profile")

    def comparisons(self) -> Tuple[OpCost, ...]:
        return tuple(o for o in self.ops if o.is_comparison)


@dataclasses.dataclass(frozen=True)
class CostReport:
    """Costs of one :func:`execute` call. Bytes and rounds are per party (see module doc)."""

    protocol: str
    field: int
    frac_bits: int
    world_size: int
    visibility: Tuple[str, ...]
    parties: Tuple[PartyCost, ...]      # empty when profile=False
    wall_seconds: float                 # slowest party: runtime setup + inputs + run + outputs
    party_seconds: Tuple[float, ...]    # the same per party
    compile_seconds: float              # JAX lowering + SPU compilation
    notes: Tuple[str, ...]

    @property
    def profiled(self) -> bool:
        return bool(self.parties)

    def _need(self) -> None:
        if not self.parties:
            raise ValueError("no costs: execute(..., profile=False) was used")

    @property
    def send_bytes(self) -> Tuple[int, ...]:
        """Bytes each party sent."""
        self._need()
        return tuple(p.send_bytes for p in self.parties)

    @property
    def send_actions(self) -> Tuple[int, ...]:
        """Messages each party sent."""
        self._need()
        return tuple(p.send_actions for p in self.parties)

    @property
    def bytes(self) -> int:
        """The most bytes any one party sent."""
        return max(self.send_bytes)

    @property
    def rounds(self) -> int:
        """The most messages any one party sent (= rounds for SEMI2K/ABY3; see module doc)."""
        return max(self.send_actions)

    def per_element(self, n: int) -> Tuple[float, int]:
        """(bytes per element, rounds) for an elementwise program over ``n`` elements. Bytes
        scale with ``n``; rounds do not (a vectorized op is one exchange whatever its size)."""
        if n <= 0:
            raise ValueError("n must be positive")
        return self.bytes / n, self.rounds

    def comparisons(self, rank: int = 0) -> int:
        """Comparison kernel calls party ``rank`` made (calls, not elements)."""
        self._need()
        return sum(o.count for o in self.parties[rank].comparisons())

    def comparison_cost(self, rank: int = 0) -> Tuple[int, int]:
        """(send bytes, send actions) party ``rank`` spent in comparison kernels."""
        self._need()
        cs = self.parties[rank].comparisons()
        return sum(o.send_bytes for o in cs), sum(o.send_actions for o in cs)

    def ops(self, level: str = "hlo", rank: int = 0) -> Dict[str, OpCost]:
        """Party ``rank``'s profile at one level, by op name."""
        self._need()
        return {o.name: o for o in self.parties[rank].level(level)}

    def summary(self) -> str:
        head = (f"{self.protocol} FM{self.field} f={self.frac_bits}, {self.world_size} parties, "
                f"wall {self.wall_seconds:.3f}s, compile {self.compile_seconds:.3f}s")
        if not self.parties:
            return head + " (not profiled)"
        rows = [f"  party {p.rank}: sent {p.send_bytes} B in {p.send_actions} messages, "
                f"received {p.recv_bytes} B in {p.recv_actions}; "
                f"{sum(o.count for o in p.comparisons())} comparison calls"
                for p in self.parties]
        return "\n".join([head] + rows)


def parse_profile(text: str) -> Optional[Dict[str, Any]]:
    """Parse one party's SPU profile (the lines in the module doc) from its captured stdout.
    Returns None when there is no "Link details" line; unrelated lines are ignored."""
    level = None
    ops: List[OpCost] = []
    link = None
    exec_s = float("nan")
    for line in text.splitlines():
        line = line.rstrip()
        m = _RE_EXEC.search(line)
        if m:
            exec_s = float(m.group("exe"))
            continue
        m = _RE_SECTION.search(line)
        if m:
            level = m.group("level").lower()
            continue
        m = _RE_OP.search(line)
        if m and level is not None:
            ops.append(OpCost(level, m.group("name"), int(m.group("count")), float(m.group("t")),
                              int(m.group("sb")), int(m.group("rb")), int(m.group("sa")),
                              int(m.group("ra"))))
            continue
        m = _RE_LINK.search(line)
        if m:
            link = {k: int(v) for k, v in m.groupdict().items()}
    if link is None:
        return None
    return {"link": link, "ops": tuple(ops), "exec_seconds": exec_s}


def _is_profile_line(line: str) -> bool:
    return bool(_RE_EXEC.search(line) or _RE_SECTION.search(line) or _RE_OP.search(line)
                or _RE_LINK.search(line))


# --------------------------------------------------------------------------------------------
# the party processes


def _libc_fflush() -> None:
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # pragma: no cover - no libc symbol table
        pass


class _Fd1Capture:
    """Redirect file descriptor 1 (where SPU's C++ logger writes) into a temp file; always
    restores it, then writes back the lines that are not SPU's profile."""

    def __enter__(self) -> "_Fd1Capture":
        sys.stdout.flush()
        _libc_fflush()
        self._tmp = tempfile.TemporaryFile(mode="w+b")
        self._saved = os.dup(1)
        try:
            os.dup2(self._tmp.fileno(), 1)
        except BaseException:
            os.close(self._saved)
            self._tmp.close()
            raise
        self.text = ""
        return self

    def __exit__(self, *exc) -> None:
        try:
            sys.stdout.flush()
            _libc_fflush()
        finally:
            os.dup2(self._saved, 1)
            os.close(self._saved)
        self._tmp.seek(0)
        self.text = self._tmp.read().decode("utf-8", "replace")
        self._tmp.close()
        other = [ln for ln in self.text.splitlines(True) if not _is_profile_line(ln)]
        if other:
            try:
                os.write(1, "".join(other).encode())
            except OSError:  # pragma: no cover
                pass


def _worker_main(argv: Sequence[str]) -> None:
    """One party: link to the others, then run the jobs the parent sends until told to stop
    (or the parent goes away)."""
    fd, rank, ports, recv_timeout_ms, link_id = argv
    conn = Connection(int(fd))
    rank = int(rank)
    try:
        from spu import api as spu_api
        from spu import libspu
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        conn.send(("err", f"{type(e).__name__}: {e}"))
        return
    # connect only once every party is up: the handshake waits recv_timeout_ms at most
    conn.send(("imported", rank))
    try:
        if conn.recv()[0] != "connect":
            return
        desc = libspu.link.Desc()
        desc.id = link_id
        desc.recv_timeout_ms = int(recv_timeout_ms)
        desc.connect_retry_times = 600
        desc.connect_retry_interval_ms = 100
        for r, port in enumerate(ports.split(",")):
            desc.add_party(f"party{r}", f"127.0.0.1:{port}")
        lctx = libspu.link.create_brpc(desc, rank)
    except (EOFError, OSError):
        return
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        conn.send(("err", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", rank))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg[0] == "stop":
            break
        _, exe_b, cfg_b, in_names, shares, out_names, profile, fault = msg
        try:
            cfg = libspu.RuntimeConfig()
            cfg.ParseFromString(cfg_b)
            exe = libspu.Executable()
            exe.ParseFromString(exe_b)
            cap = _Fd1Capture() if profile else None
            if cap is not None:
                cap.__enter__()
            try:
                t0 = time.perf_counter()
                if fault == rank:
                    raise RuntimeError(f"injected failure in party {rank}")
                rt = spu_api.Runtime(lctx, cfg)
                for name, (meta, chunks) in zip(in_names, shares):
                    sh = libspu.Share()
                    sh.meta, sh.share_chunks = meta, list(chunks)
                    rt.set_var(name, sh)
                rt.run(exe)
                outs = []
                for name in out_names:
                    sh = rt.get_var(name)
                    outs.append((sh.meta, list(sh.share_chunks)))
                wall = time.perf_counter() - t0
            finally:
                if cap is not None:
                    cap.__exit__(None, None, None)
            conn.send(("ok", cap.text if cap is not None else "", outs, wall))
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            conn.send(("err", f"{type(e).__name__}: {e}"))
    try:
        conn.close()
    finally:
        os._exit(0)  # skip brpc's static destructors


# The worker loads this file by path (not ``import polyvit``): the very module the parent runs,
# without the C engine and whatever sys.path the parent had.
_WORKER_BOOT = ("import sys, importlib.util as u; "
                "s = u.spec_from_file_location('_polyvit_spu_worker', sys.argv[1]); "
                "m = u.module_from_spec(s); sys.modules[s.name] = m; s.loader.exec_module(m); "
                "m._worker_main(sys.argv[2:])")


def _free_ports(n: int) -> List[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class _Pool:
    """``world`` party processes linked over loopback TCP."""

    def __init__(self, world: int, recv_timeout_ms: int, start_timeout_s: float = 180.0):
        self.world = world
        self.procs: List[subprocess.Popen] = []
        self.conns: List[Connection] = []
        ports = _free_ports(world)
        link_id = f"polyvit-spu-{uuid.uuid4().hex[:12]}"
        try:
            for r in range(world):
                mine, theirs = socket.socketpair()
                try:
                    p = subprocess.Popen(
                        [sys.executable, "-c", _WORKER_BOOT, os.path.abspath(__file__),
                         str(theirs.fileno()), str(r), ",".join(map(str, ports)),
                         str(recv_timeout_ms), link_id],
                        pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
                finally:
                    theirs.close()
                self.procs.append(p)
                self.conns.append(Connection(mine.detach()))
            for stage, timeout in (("imported", start_timeout_s),
                                   ("ready", 60.0 + recv_timeout_ms / 1000)):
                replies = self._gather(timeout, 5.0)
                bad = {r: m[1] for r, m in replies.items() if m[0] != stage}
                missing = sorted(set(range(world)) - set(replies))
                if bad or missing:
                    r = min(bad) if bad else missing[0]
                    why = bad.get(r, f"no answer in {timeout:.0f}s")
                    raise RuntimeError(f"SPU party {r} could not start: {why}")
                if stage == "imported":
                    for c in self.conns:
                        c.send(("connect",))
        except BaseException:
            self.close(kill=True)
            raise

    def _gather(self, timeout_s: Optional[float], fail_grace_s: Optional[float]) -> Dict[int, Any]:
        """Collect one reply per party. Stops waiting ``fail_grace_s`` after a party reports an
        error (the others are then stuck on a recv from it until their recv timeout), or after
        ``timeout_s`` overall."""
        replies: Dict[int, Any] = {}
        start = time.monotonic()
        deadline = start + timeout_s if timeout_s is not None else None
        by_conn = {c: r for r, c in enumerate(self.conns)}
        graced = False
        while len(replies) < self.world:
            pending = [c for c, r in by_conn.items() if r not in replies]
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            step = 0.5 if deadline is None else max(0.0, min(0.5, deadline - now))
            for c in _wait_conns(pending, timeout=step):
                r = by_conn[c]
                try:
                    replies[r] = c.recv()
                except (EOFError, OSError):
                    code = self.procs[r].poll()
                    replies[r] = ("err", f"the party process exited (code {code})")
            for r, p in enumerate(self.procs):  # a crash without EOF yet
                if r not in replies and p.poll() is not None and not self.conns[r].poll():
                    replies[r] = ("err", f"the party process exited (code {p.returncode})")
            if fail_grace_s is not None and not graced and \
                    any(m[0] == "err" for m in replies.values()):
                graced = True
                grace_end = time.monotonic() + fail_grace_s
                deadline = grace_end if deadline is None else min(deadline, grace_end)
        return replies

    def run(self, jobs: List[tuple], recv_timeout_s: float,
            timeout_s: Optional[float]) -> List[tuple]:
        for c, job in zip(self.conns, jobs):
            c.send(job)
        replies = self._gather(timeout_s, recv_timeout_s + 10.0)
        errs = {r: m[1] for r, m in replies.items() if m[0] != "ok"}
        if not errs and len(replies) < self.world:
            raise TimeoutError(f"the SPU run did not finish in {timeout_s}s")
        if errs or len(replies) < self.world:
            # root cause: a party that did not merely time out waiting for the others
            if errs:
                r = min(errs, key=lambda k: ("timeout" in errs[k].lower(), k))
                why = errs[r]
            else:  # pragma: no cover - defensive
                r, why = min(set(range(self.world)) - set(replies)), "no answer"
            raise RuntimeError(f"SPU party {r} failed: {why}")
        return [replies[r] for r in range(self.world)]

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def close(self, kill: bool = False) -> None:
        if not kill:
            for c in self.conns:
                try:
                    c.send(("stop",))
                except (OSError, ValueError):
                    pass
        for p in self.procs:
            if kill:
                p.kill()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for c in self.conns:
            try:
                c.close()
            except OSError:  # pragma: no cover
                pass
        self.procs, self.conns = [], []


def _start_pool(world: int, recv_timeout_ms: int, attempts: int = 3) -> _Pool:
    """The link handshake waits recv_timeout_ms for each peer; with a short timeout on a busy
    machine a slow starter can miss it (or a port can be taken meanwhile): try again."""
    for attempt in range(attempts):
        try:
            return _Pool(world, recv_timeout_ms)
        except RuntimeError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


_pools: Dict[Tuple[int, int], _Pool] = {}
_pools_lock = threading.Lock()


def shutdown() -> None:
    """Stop the party processes (they are started on first use and kept for later calls;
    this also runs at interpreter exit)."""
    with _pools_lock:
        for pool in _pools.values():
            pool.close()
        _pools.clear()


atexit.register(shutdown)


# --------------------------------------------------------------------------------------------
# validation and SPU


def _validate(protocol: str, field: int, frac_bits: int, nargs: int,
              visibility: Sequence[str]) -> Tuple[str, List[str]]:
    if not isinstance(protocol, str) or protocol.lower() not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; one of {sorted(PROTOCOLS)}")
    if isinstance(field, bool) or field not in FIELDS:
        raise ValueError(f"unknown field {field!r}; one of {sorted(FIELDS)} (ring bits)")
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, (int, np.integer)) \
            or not 0 < frac_bits < field // 2:
        raise ValueError(f"frac_bits must be an integer in (0, {field // 2}) for a "
                         f"{field}-bit ring, got {frac_bits!r}")
    if isinstance(visibility, str):
        visibility = [visibility] * nargs
    vis = [str(v).lower() for v in visibility]
    if len(vis) != nargs:
        raise ValueError(f"visibility has {len(vis)} entries for {nargs} args")
    bad = [v for v in vis if v not in VISIBILITIES]
    if bad:
        raise ValueError(f"visibility must be 'secret' or 'public', got {bad[0]!r}")
    return protocol.lower(), vis


def _import_spu():
    try:
        from spu import api as spu_api
        from spu import libspu
        from spu.utils import frontend as spu_fe
    except ImportError as e:
        raise ImportError(f"polyvit.mpc.spu_runtime needs SecretFlow SPU: {INSTALL_HINT}; "
                          f"import failed: {e}") from e
    return libspu, spu_api, spu_fe


def _named(fn: Callable) -> Callable:
    """SPU's frontend names the executable after ``fn.__name__``."""
    if isinstance(fn, functools.partial) or hasattr(fn, "__name__"):
        return fn

    def spu_fn(*a):
        return fn(*a)
    return spu_fn


def execute(fn: Callable, args: Sequence[Any], visibility: Sequence[str] = None, *,
            protocol: str = "semi2k", field: int = 64, frac_bits: int = 18,
            profile: bool = True, copts=None, recv_timeout_s: float = 120.0,
            timeout_s: Optional[float] = None, _inject_failure: Optional[int] = None):
    """Run ``fn(*args)`` under SPU; returns ``(outputs, CostReport)``.

    fn: a JAX function of positional arrays (returning an array or a pytree of arrays).
    args: NumPy arrays (floats are fed as float32, as JAX traces them).
    visibility: "secret" or "public" per arg (a single string applies to all; default all
        secret). Public args are known to every party (``Io.make_shares(x, VIS_PUBLIC)``).
    protocol: "semi2k" (2 parties; trusted-first-party Beaver triples, debugging only per
        SPU), "aby3" (3 parties) or "cheetah" (2 parties, dealer-free).
    field: ring bits, 64 or 128. frac_bits: fixed-point fractional bits, 0 < f < field/2.
    profile: read every party's profile (``enable_pphlo_profile`` and ``enable_hal_profile``
        for all parties); with False the report has timings only.
    copts: ``libspu.CompilerOptions`` or None.
    recv_timeout_s: how long a party waits for one message before failing (the link's
        ``recv_timeout_ms``); bounds the wait when another party fails.
    timeout_s: give up on the whole run after this long (TimeoutError); None waits.

    The parties are processes linked over loopback TCP, started on the first call for a world
    size and reused (see the module doc; :func:`shutdown` stops them). Outputs come back
    reconstructed, as float64 NumPy arrays in ``fn``'s output structure.

    Raises ValueError on a bad protocol/field/frac_bits/visibility before compiling,
    ImportError without SPU, RuntimeError naming the party when a party fails, TimeoutError
    past ``timeout_s`` (the party processes are then restarted on the next call).
    """
    args = list(args)
    if visibility is None:
        visibility = ["secret"] * len(args)
    proto, vis = _validate(protocol, field, frac_bits, len(args), visibility)
    if not callable(fn):
        raise TypeError("fn must be callable")
    if not recv_timeout_s > 0:
        raise ValueError("recv_timeout_s must be positive")
    if timeout_s is not None and not timeout_s > 0:
        raise ValueError("timeout_s must be positive or None")
    libspu, spu_api, spu_fe = _import_spu()
    import jax
    import jax.numpy as jnp

    prot_name, world = PROTOCOLS[proto]
    config = libspu.RuntimeConfig(protocol=getattr(libspu.ProtocolKind, prot_name),
                                  field=getattr(libspu.FieldType, FIELDS[field]),
                                  fxp_fraction_bits=int(frac_bits))
    config.enable_pphlo_profile = bool(profile)
    config.enable_hal_profile = bool(profile)
    # as JAX sees them (float64 -> float32 unless x64 is enabled)
    flat = [np.asarray(jnp.asarray(a)) for a in args]
    vis_enum = [libspu.Visibility.VIS_SECRET if v == "secret" else libspu.Visibility.VIS_PUBLIC
                for v in vis]
    in_names = [f"in{i}" for i in range(len(flat))]

    t0 = time.perf_counter()
    executable, out_shape = spu_fe.compile(
        spu_fe.Kind.JAX, _named(fn), flat, {}, in_names, vis_enum,
        lambda outs: [f"out{i}" for i in range(len(outs))],
        copts=copts if copts is not None else libspu.CompilerOptions())
    compile_s = time.perf_counter() - t0

    io = spu_api.Io(world, config)
    shares = [io.make_shares(x, v) for x, v in zip(flat, vis_enum)]
    exe_b, cfg_b = executable.SerializeToString(), config.SerializeToString()
    out_names = list(executable.output_names)
    jobs = [("run", exe_b, cfg_b, in_names,
             [(sh[r].meta, list(sh[r].share_chunks)) for sh in shares], out_names,
             bool(profile), _inject_failure) for r in range(world)]

    key = (world, int(recv_timeout_s * 1000))
    with _pools_lock:
        pool = _pools.get(key)
        if pool is not None and not pool.alive():
            pool.close(kill=True)
            pool = None
        if pool is None:
            pool = _pools[key] = _start_pool(world, key[1])
        try:
            replies = pool.run(jobs, recv_timeout_s, timeout_s)
        except BaseException:
            # a failed run can leave messages in flight: start clean next time
            _pools.pop(key, None)
            pool.close(kill=True)
            raise

    parties: List[PartyCost] = []
    if profile:
        for r, (_, text, _, _) in enumerate(replies):
            prof = parse_profile(text)
            if prof is None:
                raise RuntimeError(
                    f"no SPU profile found for party {r} on its stdout (expected a 'Link "
                    f"details: total send bytes ...' line); SPU's log format may have changed")
            lk = prof["link"]
            parties.append(PartyCost(r, lk["sb"], lk["rb"], lk["sa"], lk["ra"],
                                     prof["exec_seconds"], prof["ops"]))
    outputs = []
    for i in range(len(out_names)):
        per_party = []
        for rep in replies:
            sh = libspu.Share()
            sh.meta, sh.share_chunks = rep[2][i]
            per_party.append(sh)
        outputs.append(np.asarray(io.reconstruct(per_party), dtype=np.float64))
    _, tree = jax.tree_util.tree_flatten(out_shape)
    result = jax.tree_util.tree_unflatten(tree, outputs)
    walls = tuple(rep[3] for rep in replies)
    report = CostReport(protocol=proto, field=field, frac_bits=int(frac_bits), world_size=world,
                        visibility=tuple(vis), parties=tuple(parties), wall_seconds=max(walls),
                        party_seconds=walls, compile_seconds=compile_s, notes=NOTES[proto])
    return result, report
