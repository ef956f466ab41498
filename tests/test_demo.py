"""The embedded demo: its assets ship inside the package and the pipeline runs on them."""
from __future__ import annotations

import numpy as np

import polyvit
from polyvit import demo


def test_assets_ship_with_the_package():
    assert demo.assets_present()
    teacher, train, test, classes = demo.load_assets(max_batch=32)
    assert teacher.config.act == ("gelu",) * teacher.config.depth
    assert teacher.config.mean is not None  # uint8 images are preprocessed by the model
    assert train[0].dtype == np.uint8 and train[0].shape[1:] == (32, 32, 3)
    assert len(classes) == 10 and set(np.unique(test[1])) == set(range(10))
    # a real teacher, not noise: far above chance on images it never saw
    acc = (teacher.forward(test[0]).argmax(1) == test[1]).mean()
    assert acc > 0.2


def test_demo_runs_end_to_end():
    rows = demo.run(epochs=1, progress=False)
    names = [r["name"] for r in rows]
    assert names[0] == "teacher (GELU)" and len(rows) == 4
    assert rows[0]["fidelity"] == 1.0 and rows[0]["gelu_pct"] == 100.0
    assert all(r["gelu_pct"] == 0.0 for r in rows[1:])
    assert "| Full, V1 static fit |" in demo.table(rows)
