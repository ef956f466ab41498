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


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    p = tmp_path / "table.md"
    p.write_bytes(b"old")

    def boom(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save(str(p), boom)
    assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["table.md"]
