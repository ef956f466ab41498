"""polyvit.mpc.spu_runtime: SPU runs with every party's cost profile.

Reproduces issue 10's per-element table (SPU 0.9.5, SEMI2K, 64-bit ring, 18 fractional bits,
bytes and rounds per party): x*x 20 B / 2, a*x*x+b*x+c 28 B / 4, Horner 24 B / 3, relu 72 B / 8,
softmax 697 B / 119 (rows of 65), jax.nn.gelu(approximate=False) 1951 B / 181.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

pytest.importorskip(
    "spu", reason='SecretFlow SPU is not installed (pip install "polyvit[mpc]"; Python 3.10-3.11 '
    "only); the SPU runtime tests need it")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from polyvit.mpc import spu_runtime as sr  # noqa: E402

A, B, C = np.float32(0.125), np.float32(0.5), np.float32(0.25)
SQRT2 = np.float32(np.sqrt(2.0))


def _x(n, seed=0):
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def gelu_erf(x):
    return 0.5 * x * (1 + jax.lax.erf(x / SQRT2))


@pytest.mark.parametrize("n", [100, 300])
def test_square_semi2k_per_element(n):
    x = _x(n)
    out, rep = sr.execute(lambda x: x * x, [x], ["secret"])
    np.testing.assert_allclose(out, x.astype(np.float64) ** 2, atol=1e-4)
    assert out.dtype == np.float64 and out.shape == (n,)
    assert rep.world_size == 2 and len(rep.parties) == 2
    # bytes scale with the element count; rounds do not
    assert rep.send_bytes == (20 * n, 20 * n)
    assert rep.send_actions == (2, 2)
    assert rep.per_element(n) == (20.0, 2)
    assert rep.comparisons() == 0 and rep.comparisons(1) == 0
    p = rep.parties[0]
    assert [o.name for o in p.level("hlo") if o.send_bytes] == ["pphlo.multiply"]
    assert p.op("f_mul", "hal").send_bytes == 20 * n
    mpc = rep.ops("mpc")
    assert mpc["mul_aa"].send_bytes + mpc["trunc_a"].send_bytes == 20 * n
    assert p.recv_bytes == 20 * n and p.exec_seconds > 0
    assert rep.wall_seconds > 0 and rep.compile_seconds > 0
    assert len(rep.party_seconds) == 2 and max(rep.party_seconds) == rep.wall_seconds
    assert any("TrustedFirstParty" in s for s in rep.notes)
    assert any("CHEETAH" in s and "dealer-free" in s for s in rep.notes)


def test_polynomial_forms_public_vs_secret_coefficients():
    x = _x(200)
    xs = x.astype(np.float64)
    want = A * xs * xs + B * xs + C
    # coefficients baked into the program
    out, rep = sr.execute(lambda x: A * x * x + B * x + C, [x])
    np.testing.assert_allclose(out, want, atol=1e-4)
    assert rep.per_element(200) == (28.0, 4)
    out, rep = sr.execute(lambda x: x * (A * x + B) + C, [x])
    np.testing.assert_allclose(out, want, atol=1e-4)
    assert rep.per_element(200) == (24.0, 3)
    # the same coefficients as public args cost the same ...
    coef = [np.full((), v, np.float32) for v in (A, B, C)]
    horner = lambda x, a, b, c: x * (a * x + b) + c  # noqa: E731
    out, rep = sr.execute(horner, [x] + coef, ["secret", "public", "public", "public"])
    np.testing.assert_allclose(out, want, atol=1e-4)
    assert rep.per_element(200) == (24.0, 3) and rep.visibility[1:] == ("public",) * 3
    # ... secret ones need a secret x secret product more
    out, rep = sr.execute(horner, [x] + coef, "secret")
    np.testing.assert_allclose(out, want, atol=1e-4)
    b, r = rep.per_element(200)
    assert b > 24 and r > 3


def test_relu_and_comparisons():
    x, y = _x(100), _x(100, seed=1)
    out, rep = sr.execute(lambda x: jnp.maximum(x, 0), [x])
    np.testing.assert_allclose(out, np.maximum(x, 0), atol=1e-4)
    assert rep.per_element(100) == (72.0, 8)
    assert rep.comparisons() == 1 and rep.comparisons(1) == 1
    names = [o.name for o in rep.parties[0].comparisons()]
    assert names == ["msb_a2b"]
    assert rep.comparison_cost() == (5600, 7)
    out, rep = sr.execute(lambda x, y: (x < y).astype(jnp.float32), [x, y])
    np.testing.assert_array_equal(out, (x < y).astype(np.float64))
    assert rep.comparisons() == 1
    out, rep = sr.execute(lambda x, y: (x == y).astype(jnp.float32), [x, x])
    np.testing.assert_array_equal(out, np.ones(100))
    assert [o.name for o in rep.parties[0].comparisons()] == ["equal_ss"]
    _, rep = sr.execute(lambda x: x * x, [x])
    assert rep.comparisons() == 0


def test_softmax_semi2k():
    x = np.random.default_rng(2).standard_normal((4, 65)).astype(np.float32)
    out, rep = sr.execute(lambda x: jax.nn.softmax(x, axis=-1), [x])
    np.testing.assert_allclose(out, jax.nn.softmax(x, axis=-1), atol=5e-3)
    assert rep.per_element(x.size) == (697.0, 119)
    assert rep.comparisons() > 0
    assert {"pphlo.exponential", "pphlo.reduce"} <= set(rep.ops("hlo"))


def test_gelu_semi2k():
    x = _x(100)
    want = np.asarray(jax.nn.gelu(x, approximate=False))
    out, rep = sr.execute(lambda x: jax.nn.gelu(x, approximate=False), [x])
    np.testing.assert_allclose(out, want, atol=2e-3)
    assert rep.per_element(100) == (1951.0, 181)
    assert rep.comparisons() > 0
    # the erf form of the same function is cheaper on SPU
    out, rep = sr.execute(gelu_erf, [x])
    np.testing.assert_allclose(out, want, atol=2e-3)
    b, r = rep.per_element(100)
    assert b < 1951 and r < 181 and rep.comparisons() > 0


def test_aby3_three_parties_and_matmul_visibility():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 8)).astype(np.float32)
    w = rng.standard_normal((8, 6)).astype(np.float32)
    out, rep = sr.execute(lambda x, w: x @ w, [x, w], ["secret", "public"], protocol="aby3")
    np.testing.assert_allclose(out, x.astype(np.float64) @ w, atol=1e-3)
    assert rep.world_size == 3 and [p.rank for p in rep.parties] == [0, 1, 2]
    assert all(b > 0 for b in rep.send_bytes)
    assert rep.notes[0].startswith("ABY3")
    out2, rep2 = sr.execute(lambda x, w: x @ w, [x, w], ["secret", "secret"], protocol="aby3")
    np.testing.assert_allclose(out2, out, atol=1e-3)
    assert rep2.bytes > rep.bytes
    # elementwise square: each party's own numbers from one run. ABY3 draws the truncation
    # roles afresh in every run; in any one run exactly one party has the light role
    for _ in range(3):
        _, rep = sr.execute(lambda x: x * x, [_x(100)], protocol="aby3")
        assert sorted(rep.send_bytes) == [1200, 2000, 2000] and rep.comparisons() == 0
        assert sorted(rep.send_actions) == [2, 3, 3] and rep.rounds == 3


def test_cheetah_runs_two_parties():
    x = _x(16)
    out, rep = sr.execute(lambda x: x * x, [x], protocol="cheetah")
    np.testing.assert_allclose(out, x.astype(np.float64) ** 2, atol=1e-4)
    assert rep.world_size == 2 and all(b > 0 for b in rep.send_bytes)
    assert any("dealer-free" in s for s in rep.notes)


def test_pytree_outputs_public_only_and_profile_off():
    x = _x(10)
    (s, d), rep = sr.execute(lambda x, y: (x + y, x * y), [x, x], ["public", "public"],
                             profile=False)
    np.testing.assert_allclose(s, 2 * x, atol=1e-4)
    np.testing.assert_allclose(d, x.astype(np.float64) ** 2, atol=1e-4)
    assert not rep.profiled and len(rep.party_seconds) == 2
    with pytest.raises(ValueError, match="profile=False"):
        rep.bytes
    from spu import libspu
    out, rep = sr.execute(lambda x: {"y": x * 2.0}, [x], field=128, frac_bits=40,
                          copts=libspu.CompilerOptions(), timeout_s=300)
    np.testing.assert_allclose(out["y"], 2 * x, atol=1e-6)
    assert rep.field == 128


def _boom(*a):
    raise AssertionError("compiled although the arguments are bad")


@pytest.mark.parametrize("kw, match", [
    ({"protocol": "spdz"}, "unknown protocol"),
    ({"protocol": "ref2k"}, "unknown protocol"),
    ({"field": 32}, "unknown field"),
    ({"field": 63}, "unknown field"),
    ({"frac_bits": 0}, "frac_bits"),
    ({"frac_bits": 32}, "frac_bits"),
    ({"frac_bits": 64, "field": 128}, "frac_bits"),
    ({"frac_bits": 1.5}, "frac_bits"),
])
def test_bad_config_is_a_value_error_before_compiling(kw, match):
    with pytest.raises(ValueError, match=match):
        sr.execute(_boom, [_x(4)], **kw)


def test_bad_timeouts():
    with pytest.raises(ValueError, match="recv_timeout_s"):
        sr.execute(_boom, [_x(4)], recv_timeout_s=0)
    with pytest.raises(ValueError, match="timeout_s"):
        sr.execute(_boom, [_x(4)], timeout_s=-1)


def test_bad_visibility():
    with pytest.raises(ValueError, match="entries"):
        sr.execute(_boom, [_x(4), _x(4)], ["secret"])
    with pytest.raises(ValueError, match="secret' or 'public"):
        sr.execute(_boom, [_x(4)], ["private"])


def test_missing_spu_is_an_import_error_with_the_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "spu", None)
    with pytest.raises(ImportError, match=r'pip install "polyvit\[mpc\]"'):
        sr.execute(lambda x: x, [_x(4)])


def test_a_failing_party_propagates_without_hanging():
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="party 1 failed: RuntimeError: injected failure"):
        sr.execute(lambda x: x * x, [_x(8)], recv_timeout_s=2.0, _inject_failure=1)
    assert time.perf_counter() - t0 < 60
    # the next call starts clean
    out, rep = sr.execute(lambda x: x * x, [_x(8)], recv_timeout_s=2.0)
    assert rep.send_bytes == (160, 160)


def test_a_run_past_timeout_s_is_a_timeout_error():
    t0 = time.perf_counter()
    with pytest.raises(TimeoutError, match="did not finish"):
        sr.execute(lambda x: x * x, [_x(64)], protocol="cheetah", timeout_s=0.05)
    assert time.perf_counter() - t0 < 30
    out, rep = sr.execute(lambda x: x * x, [_x(8)])
    assert rep.send_bytes == (160, 160)


def test_fd1_capture_restores_fd1_and_passes_other_lines_through(capfd):
    before = os.fstat(1)
    with pytest.raises(ZeroDivisionError):
        with sr._Fd1Capture():
            os.write(1, b"[x] [info] [api.cc:233] Link details: total send bytes 1, recv bytes 2, "
                        b"send actions 3, recv actions 4\nsomething else\n")
            1 / 0
    after = os.fstat(1)
    assert (before.st_dev, before.st_ino) == (after.st_dev, after.st_ino)
    with sr._Fd1Capture() as cap:
        os.write(1, b"[x] [info] [api.cc:233] Link details: total send bytes 1, recv bytes 2, "
                    b"send actions 3, recv actions 4\nsomething else\n")
    assert sr.parse_profile(cap.text)["link"] == {"sb": 1, "rb": 2, "sa": 3, "ra": 4}
    out = capfd.readouterr().out
    assert "something else" in out and "Link details" not in out


SAMPLE = """\
[2026-11-25 23:35:08.609] [info] [api.cc:172] [Profiling] SPU execution f completed, input processing took 1.3e-06s, execution took 0.0029s, output processing took 1.4e-06s, total time 0.0029s.
[2026-11-25 23:35:08.609] [info] [api.cc:220] HLO profiling: total time 0.00031
[2026-11-25 23:35:08.609] [info] [api.cc:223] - pphlo.multiply, executed 1 times, duration 0.00031s, send bytes 2000 recv bytes 2000, send actions 2, recv actions 2
[2026-11-25 23:35:08.609] [info] [api.cc:220] HAL profiling: total time 0.00029
[2026-11-25 23:35:08.609] [info] [api.cc:223] - f_mul, executed 1 times, duration 0.00029s, send bytes 2000 recv bytes 2000, send actions 2, recv actions 2
[2026-11-25 23:35:08.609] [info] [api.cc:220] MPC profiling: total time 0.00024
[2026-11-25 23:35:08.609] [info] [api.cc:223] - mul_aa, executed 1 times, duration 0.00017s, send bytes 1600 recv bytes 1600, send actions 1, recv actions 1
[2026-11-25 23:35:08.609] [info] [api.cc:223] - msb_a2b, executed 3 times, duration 7.0e-05s, send bytes 400 recv bytes 400, send actions 1, recv actions 1
[2026-11-25 23:35:08.609] [info] [cheetah_mul.cc:335] unrelated line
[2026-11-25 23:35:08.609] [info] [api.cc:233] Link details: total send bytes 2000, recv bytes 2100, send actions 2, recv actions 3
"""


def test_parse_profile_line_formats():
    p = sr.parse_profile(SAMPLE)
    assert p["link"] == {"sb": 2000, "rb": 2100, "sa": 2, "ra": 3}
    assert p["exec_seconds"] == pytest.approx(0.0029)
    ops = p["ops"]
    assert [(o.level, o.name) for o in ops] == [
        ("hlo", "pphlo.multiply"), ("hal", "f_mul"), ("mpc", "mul_aa"), ("mpc", "msb_a2b")]
    assert ops[3].count == 3 and ops[3].is_comparison and not ops[2].is_comparison
    assert sr.parse_profile("nothing here\n") is None
