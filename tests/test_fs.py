"""polyvit._fs.atomic_save: all or nothing, and the permissions an ordinary write would give."""
import os
import stat

import pytest

from polyvit._fs import atomic_save


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def test_a_new_file_gets_the_umask_mode_and_an_old_one_keeps_its_own(tmp_path):
    old = os.umask(0o022)
    try:
        p = tmp_path / "row.json"
        atomic_save(str(p), lambda f: f.write(b"{}"))
        assert p.read_bytes() == b"{}" and _mode(p) == 0o644   # not mkstemp's 0o600
        os.chmod(p, 0o640)
        atomic_save(str(p), lambda f: f.write(b"[]"))
        assert p.read_bytes() == b"[]" and _mode(p) == 0o640
    finally:
        os.umask(old)


@pytest.mark.parametrize("proc", [True, False], ids=["proc-status", "set-and-restore"])
def test_the_umask_is_read_without_being_changed(tmp_path, monkeypatch, proc):
    import builtins

    from polyvit import _fs

    if proc and not os.path.exists("/proc/self/status"):
        pytest.skip("no /proc/self/status on this system")
    if not proc:   # as on a system without /proc: the fallback
        real_open = builtins.open

        def no_proc(f, *a, **k):
            if str(f).startswith("/proc/"):
                raise FileNotFoundError(f)
            return real_open(f, *a, **k)

        monkeypatch.setattr(builtins, "open", no_proc)
    old = os.umask(0o027)
    try:
        assert _fs._umask() == 0o027
        assert os.umask(0o027) == 0o027   # still set after reading it
        p = tmp_path / "log.jsonl"
        atomic_save(str(p), lambda f: f.write(b""))
        assert _mode(p) == 0o640
    finally:
        os.umask(old)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    p = tmp_path / "table.md"
    p.write_bytes(b"old")

    def boom(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save(str(p), boom)
    assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["table.md"]
