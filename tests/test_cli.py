"""The pipeline on the command line, end to end on a tiny image folder: train, fit, distill,
evaluate, report (with plots), experiment; and its user errors."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from polyvit.__main__ import main


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for split, n in (("train", 48), ("test", 16)):
        for cls in ("cat", "dog"):
            os.makedirs(root / split / cls)
            for i in range(n):
                a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                if cls == "dog":
                    a[:16] //= 2
                Image.fromarray(a).save(root / split / cls / f"{i:03d}.png")
    return str(root)


def test_pipeline(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("POLYVIT_CACHE", str(tmp_path / "cache"))
    small = ["--embed-dim", "16", "--depth", "2", "--num-heads", "2"]
    t = str(tmp_path / "teacher")
    assert main(["train", "--data", folder, *small, "--epochs", "2", "--batch-size", "16",
                 "--out", t, "--magnitude", "5"]) == 0
    teacher = os.path.join(t, "model.safetensors")
    assert os.path.exists(teacher) and os.path.exists(os.path.join(t, "log.jsonl"))
    s = str(tmp_path / "student.safetensors")
    assert main(["fit", "--data", folder, "--teacher", teacher, "--blocks", "hybrid-1",
                 "--out", s, "--calibration", "32"]) == 0
    fits = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
    assert fits and fits[0]["method"] == "directfit" and fits[0]["block"] == 0
    d = str(tmp_path / "distill")
    assert main(["distill", "--data", folder, "--teacher", teacher, "--student", s,
                 "--epochs", "1", "--batch-size", "16", "--out", d]) == 0
    ev = str(tmp_path / "eval.json")
    assert main(["evaluate", "--data", folder, "--student", os.path.join(d, "student.safetensors"),
                 "--teacher", teacher, "--out", ev]) == 0
    r = json.load(open(ev))
    assert 0 <= r["fidelity"] <= 1 and r["blocks"][0]["activation"] == "poly"
    png = str(tmp_path / "curves.png")
    assert main(["report", "--logs", os.path.join(t, "log.jsonl"), os.path.join(d, "log.jsonl"),
                 "--plot", png]) == 0
    assert os.path.getsize(png) > 1000
    out = str(tmp_path / "exp")
    assert main(["experiment", "--data", folder, "--teacher", teacher, "--configs", "hybrid-1",
                 "full", "--methods", "V1", "V2", "--out", out]) == 0
    rows = json.load(open(os.path.join(out, "Full-2-V2.json")))
    assert rows["method"] == "V2" and rows["gelu_comparison_pct"] == 0.0
    assert "python -m polyvit experiment" in rows["command"]
    assert "| Hybrid-1 V1 |" in open(os.path.join(out, "table.md")).read()
    # stopped and run again: finished rows are kept, a distillation resumes from its checkpoint
    capsys.readouterr()
    exp = ["experiment", "--data", folder, "--teacher", teacher, "--configs", "full",
           "--methods", "V2", "final", "--epochs", "1", "--batch-size", "16", "--out", out]
    assert main(exp) == 0
    first = json.load(open(os.path.join(out, "Full-2-final.json")))
    logged = [json.loads(l) for l in open(os.path.join(out, "runs", "Full-2-final", "log.jsonl"))]
    epoch_s = sum(r["seconds"] for r in logged if r.get("type") == "epoch")
    assert first["seconds"] >= epoch_s > 0
    os.remove(os.path.join(out, "Full-2-final.json"))   # as if stopped before the row was written
    capsys.readouterr()
    assert main(exp) == 0
    err = capsys.readouterr().err
    assert "Full-2 V2: kept from" in err
    again = json.load(open(os.path.join(out, "Full-2-final.json")))
    assert again["fidelity"] == first["fidelity"]        # the checkpoint's student, not a new run
    assert again["seconds"] >= epoch_s


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["fit", "--teacher", str(tmp_path / "none.safetensors"), "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "Traceback" not in err
    assert main(["evaluate", "--student", "a", "--device", "cuda"]) == 2
    assert "CUDA" in capsys.readouterr().err
    # the CPU engine has one precision: asking for another is an error before any data is read
    assert main(["train", "--epochs", "1", "--out", str(tmp_path / "t"), "--data",
                 str(tmp_path / "none"), "--precision", "bf16"]) == 2
    err = capsys.readouterr().err
    assert "--precision bf16 needs --device cuda" in err and "Traceback" not in err


def test_plot_fits(tmp_path):
    import polyvit
    from polyvit.plots import plot_fits

    m = polyvit.ViT(polyvit.ViTConfig(img_size=8, patch_size=4, embed_dim=8, depth=2, num_heads=2,
                                      num_classes=3), max_batch=4)
    m.set_activation([1], "poly", coeffs=(0.2, 0.5, 0.1, 1.2))
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    _, acts = m.forward(x, capture=True)
    p = plot_fits(m, acts, str(tmp_path / "fits.png"), title="test")
    assert os.path.getsize(p) > 1000


def test_info_reports_the_build_and_the_mpc_extra(capsys):
    import importlib.util

    from polyvit.__main__ import main as polyvit_main

    assert polyvit_main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["mpc_extra"] == {m: importlib.util.find_spec(m) is not None for m in ("spu", "jax")}
    assert info["numpy"] and info["threads"] >= 1


def test_kill_during_train_saves_a_checkpoint(folder, tmp_path):
    """`kill` (SIGTERM) on a running `polyvit train`, as on a background run: the step under way
    finishes, a checkpoint is written, the command says so and exits with 130."""
    import re
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "teacher"
    env = dict(os.environ, POLYVIT_CACHE=str(tmp_path / "cache"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.Popen([sys.executable, "-m", "polyvit", "train", "--data", folder,
                          "--embed-dim", "16", "--depth", "2", "--num-heads", "2",
                          "--epochs", "500", "--batch-size", "16", "--checkpoint-every", "5",
                          "--out", str(out)], cwd=root, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        ck = out / "checkpoint.safetensors"
        deadline = time.time() + 120
        while not ck.exists() and p.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert ck.exists(), "no checkpoint within 2 minutes"
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err[-2000:]
    m = re.search(r"SIGTERM: training stopped after step (\d+); a checkpoint at step \1 is in "
                  r".*checkpoint\.safetensors; run again to resume", err)
    assert m, err[-2000:]
    steps = [json.loads(line)["step"] for line in open(out / "log.jsonl")
             if '"type": "step"' in line]
    assert int(m.group(1)) >= 5 and all(s <= int(m.group(1)) for s in steps)
