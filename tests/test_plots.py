"""plots.plot_curves: a panel per quantity the logs hold, none drawn empty."""
import json

import pytest

pytest.importorskip("matplotlib")
from matplotlib.image import imread  # noqa: E402

from polyvit.plots import plot_curves  # noqa: E402


def _log(path, n, fidelity):
    with open(path, "w") as f:
        f.write(json.dumps({"type": "start"}) + "\n")
        for i in range(n):
            ev = {"student_top1": 0.5 + 0.01 * i}
            if fidelity:
                ev["fidelity"] = 0.9 + 0.001 * i
            f.write(json.dumps({"type": "epoch", "epoch": i, "train_loss": 2.0 - 0.01 * i,
                                "eval": ev}) + "\n")
    return str(path)


def test_fidelity_panel_only_when_a_log_has_fidelity(tmp_path):
    teacher = _log(tmp_path / "teacher.jsonl", 40, fidelity=False)
    student = _log(tmp_path / "student.jsonl", 5, fidelity=True)
    two = imread(plot_curves({"teacher": teacher}, str(tmp_path / "t.png")))
    three = imread(plot_curves({"teacher": teacher, "student": student}, str(tmp_path / "s.png")))
    # same height; the teacher-only figure has two panels, the mixed one three
    assert two.shape[0] == three.shape[0]
    assert two.shape[1] / three.shape[1] == pytest.approx(8.7 / 13.0, rel=0.02)


def test_logs_without_epochs_are_skipped(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"type": "start"}) + "\n")
    student = _log(tmp_path / "student.jsonl", 3, fidelity=True)
    png = plot_curves({"empty": str(empty), "student": student}, str(tmp_path / "p.png"))
    assert imread(png).shape[1] > 0


def test_read_log_while_its_run_appends(tmp_path):
    from polyvit.plots import read_log

    p = tmp_path / "log.jsonl"
    p.write_text('{"type": "epoch", "epoch": 0}\n\n{"type": "epoch", "epoch": 1}\n{"type": "st')
    assert [r["epoch"] for r in read_log(str(p))] == [0, 1]      # the cut last line left out
    p.write_text('{"type": "epoch", "epoch": 0}\n{"type": "st\n{"type": "epoch", "epoch": 1}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_log(str(p))
