"""The experiment runner's recipes: V3's loss, the final recipe's progressive stages, the recipe
recorded in each row and checked on reuse; and a training run's plan, checked on resume."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from safetensors import safe_open

import polyvit
from polyvit import experiment
from polyvit.datasets import Dataset
from polyvit.training import Distiller, Stage

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.247, 0.2435, 0.2616)


def _data(n, seed):
    """uint8 NHWC images whose class (0..3) is the brightest quadrant."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 120, (n, 16, 16, 3)).astype(np.uint8)
    y = rng.integers(0, 4, n)
    for i, (r, c) in enumerate([(0, 0), (0, 8), (8, 0), (8, 8)]):
        x[y == i, r:r + 8, c:c + 8] += 100
    return Dataset(x, y.astype(np.int64), classes=["a", "b", "c", "d"], name="synthetic")


@pytest.fixture(scope="module")
def teacher():
    cfg = polyvit.ViTConfig(img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2,
                            mlp_ratio=2.0, num_classes=4, mean=MEAN, std=STD)
    t = polyvit.ViT(cfg, max_batch=64, seed=0)
    polyvit.train(t, _data(256, 1), epochs=2, lr=2e-3, batch_size=32, progress=False,
                  magnitude=None, mixup=None)
    return t


def test_final_stages_split_blocks_and_epochs():
    one = experiment.final_stages(list(range(12)), 10, 1, 5e-4, 9)
    assert len(one) == 1 and one[0].epochs == 10 and one[0].blocks is None
    three = experiment.final_stages(list(range(12)), 10, 3, 5e-4, 9)
    assert [s.epochs for s in three] == [3, 3, 4]          # the remainder on the last stage
    assert [s.blocks for s in three] == [list(range(4)), list(range(8)), list(range(12))]
    assert all(s.fit == "directfit" and s.magnitude == 9 and s.lr == 5e-4 for s in three)
    two = experiment.final_stages([0, 1, 2], 5, 2, 1e-3, None)
    assert [s.blocks for s in two] == [[0, 1], [0, 1, 2]] and [s.epochs for s in two] == [2, 3]
    with pytest.raises(ValueError, match="exceeds the 2 replaced blocks"):
        experiment.final_stages([0, 1], 10, 3, 5e-4, 9)
    with pytest.raises(ValueError, match="exceeds the 2 epochs"):
        experiment.final_stages(list(range(6)), 2, 3, 5e-4, 9)
    with pytest.raises(ValueError, match="positive integer"):
        experiment.final_stages([0, 1], 2, 0, 5e-4, 9)


def test_default_final_is_progressive_where_it_can_be():
    assert experiment.default_stages_n(list(range(12)), 10) == 2
    assert experiment.default_stages_n([0, 1, 2, 3, 4, 5], 10) == 2
    assert experiment.default_stages_n([0], 10) == 1        # a single block: nothing to split
    assert experiment.default_stages_n(list(range(12)), 1) == 1   # a single epoch


def _run(teacher, out, **kw):
    args = dict(configs=["full"], epochs=2, batch_size=32, calibration=64, methods=["V3", "final"],
                out=str(out), magnitude=None, progress=False)
    args.update(kw)
    return experiment.run(teacher, _data(128, 2), _data(64, 3), **args)


def test_recipes_recorded_progressive_final_and_reuse_checked(teacher, tmp_path):
    rows = _run(teacher, tmp_path)     # the default: 2 progressive stages
    v3, final = rows[1], rows[2]
    lines = experiment.table(rows).splitlines()
    assert lines[0].startswith("| model | top-1 | gap | ± s.e. | fidelity |")
    assert [c.strip() for c in lines[2].split("|")[3:5]] == ["", ""]  # the teacher: no gap
    gap = 100 * (final["top1"] - final["teacher_top1"])
    assert lines[4].split("|")[3].strip() == f"{gap:+.2f}" and final["teacher_top1"] == rows[0]["top1"]
    assert lines[4].split("|")[4].strip() == f"{100 * final['gap_se']:.2f}"
    # the discordant pairs account for the whole gap, on the row's own test images
    n = final["n_test"]
    assert final["student_only_correct"] - final["teacher_only_correct"] == \
        round(n * (final["top1"] - final["teacher_top1"]))
    assert "gap_se" not in rows[0]
    assert v3["recipe"]["loss"] == {"kl": 0.9, "ce": 0.1, "temperature": 4.0}
    assert v3["recipe"]["trainable_coeffs"] is False and v3["recipe"]["coeff_lr"] is None
    assert final["recipe"]["loss"] == {"mse": 1.0, "ce": 0.0} and final["recipe"]["trainable_coeffs"]
    assert [s["blocks"] for s in final["recipe"]["stages"]] == [[0, 1], [0, 1, 2, 3]]
    assert [s["epochs"] for s in final["recipe"]["stages"]] == [1, 1]
    # the progressive run ends with every block quadratic, and its log holds both stages
    assert [b["activation"] for b in final["blocks"]] == ["poly"] * 4
    assert final["gelu_comparison_pct"] == 0.0
    log = [json.loads(l) for l in open(tmp_path / "runs" / "Full-4-final" / "log.jsonl")]
    assert [(r["stage"], r["epoch"]) for r in log if r["type"] == "epoch"] == [(0, 0), (1, 0)]
    # run again with the same recipe: both rows kept as they are
    again = _run(teacher, tmp_path, final_stages_n=2)
    assert again[2]["fidelity"] == final["fidelity"] and again[1]["seconds"] == v3["seconds"]
    # another recipe over the same folder: refused, not mixed in
    with pytest.raises(ValueError, match="another recipe.*--redo"):
        _run(teacher, tmp_path, final_stages_n=1)
    with pytest.raises(ValueError, match="another recipe"):
        _run(teacher, tmp_path, v3_loss="mse", final_stages_n=2, methods=["V3"])
    # --redo recomputes: the distillation starts over (its old log kept aside), from V2
    redone = _run(teacher, tmp_path, final_stages_n=1, methods=["final"], redo=True)
    assert len(redone[1]["recipe"]["stages"]) == 1 and redone[1]["recipe"]["stages"][0]["blocks"] is None
    log = [json.loads(l) for l in open(tmp_path / "runs" / "Full-4-final" / "log.jsonl")]
    assert [(r["stage"], r["epoch"]) for r in log if r["type"] == "epoch"] == [(0, 0), (0, 1)]
    assert os.path.exists(tmp_path / "runs" / "Full-4-final" / "log.jsonl.old")


def test_bad_recipe_arguments_fail_before_any_work(teacher, tmp_path):
    with pytest.raises(ValueError, match="v3_loss"):
        _run(teacher, tmp_path, v3_loss="kl")
    with pytest.raises(ValueError, match="exceeds the 2 epochs"):
        _run(teacher, tmp_path, configs=["hybrid-3", "full"], final_stages_n=3)
    assert not os.path.exists(tmp_path / "Hybrid-3-V3.json")
    with pytest.raises(ValueError, match="exceeds the 1 replaced blocks"):
        _run(teacher, tmp_path, configs=["hybrid-1"], final_stages_n=2)


def test_the_v3_loss_choice_changes_the_training(teacher, tmp_path):
    """kd and mse give different students (the loss reaches the Distiller)."""
    kd = _run(teacher, tmp_path / "kd", methods=["V3"], epochs=1)[1]
    mse = _run(teacher, tmp_path / "mse", methods=["V3"], epochs=1, v3_loss="mse")[1]
    assert mse["recipe"]["loss"] == {"mse": 1.0, "ce": 0.0}
    assert kd["logit_cosine"] != mse["logit_cosine"]


def _distiller(teacher, workdir, epochs=2, lr=1e-3, seed=0):
    s = polyvit.full(teacher, max_batch=32)
    return Distiller(s, teacher, _data(96, 4), stages=[Stage(epochs=epochs, lr=lr, magnitude=None)],
                     batch_size=32, workdir=str(workdir), progress=False, seed=seed)


def test_resume_under_another_plan_is_refused(teacher, tmp_path):
    d = _distiller(teacher, tmp_path)
    d.run(stop_after_steps=2)
    with pytest.raises(ValueError, match=r"another plan \(stages differ"):
        _distiller(teacher, tmp_path, epochs=3).run()
    with pytest.raises(ValueError, match="another plan"):
        _distiller(teacher, tmp_path, lr=2e-3).run()
    # the same plan resumes; resume=False starts over with the old log kept aside
    hist = _distiller(teacher, tmp_path).run()
    assert len(hist) == 2
    _distiller(teacher, tmp_path, epochs=1).run(resume=False)
    assert os.path.exists(tmp_path / "log.jsonl.old")


def test_checkpoint_without_a_plan_still_resumes(teacher, tmp_path):
    """Checkpoints written before plans were recorded (the teacher's, mid-run) resume."""
    d = _distiller(teacher, tmp_path)
    d.run(stop_after_steps=2)
    ck = str(tmp_path / "checkpoint.safetensors")
    with safe_open(ck, "np") as f:
        meta = dict(f.metadata())
    del meta["plan"]
    save_file(load_file(ck), ck, metadata=meta)
    hist = _distiller(teacher, tmp_path, epochs=3).run()   # nothing to compare against
    assert len(hist) == 3


def test_balanced_sample():
    from polyvit.datasets import balanced_sample

    labels = np.repeat(np.arange(10), 100)          # stored class by class, as CIFAR-10's JPEGs
    idx = balanced_sample(labels, 250, seed=3)
    assert len(idx) == 250 and len(np.unique(idx)) == 250 and np.all(np.diff(idx) > 0)
    assert np.bincount(labels[idx]).tolist() == [25] * 10
    assert np.array_equal(idx, balanced_sample(labels, 250, seed=3))
    assert not np.array_equal(idx, balanced_sample(labels, 250, seed=4))
    assert np.bincount(labels[balanced_sample(labels, 13)]).tolist() == [2, 2, 2] + [1] * 7
    short = np.array([0, 0, 0, 0, 0, 1, 2])             # a class with too few: the rest fill in
    assert sorted(np.bincount(short[balanced_sample(short, 6)]).tolist()) == [1, 1, 4]
    assert len(balanced_sample(labels, 5000)) == 1000 and len(balanced_sample(labels, 0)) == 0
    with pytest.raises(ValueError, match="non-negative integer"):
        balanced_sample(labels, -1)


def test_per_epoch_evaluation_takes_every_class(teacher, monkeypatch):
    """eval_size picks a class-balanced subset, not the first images (which, in an archive
    stored class by class, are one class)."""
    import polyvit.metrics

    seen = []
    real = polyvit.metrics.evaluate

    def spy(model, t, data, **kw):
        seen.append(np.asarray(data[1]))
        return real(model, t, data, **kw)

    monkeypatch.setattr(polyvit.metrics, "evaluate", spy)
    test = _data(64, 5)
    order = np.argsort(test.labels, kind="stable")
    by_class = test[order]
    d = Distiller(polyvit.full(teacher, max_batch=32), teacher, _data(64, 4), by_class,
                  stages=[Stage(epochs=1, magnitude=None)], batch_size=32, eval_size=16,
                  progress=False)
    d.run()
    counts = np.bincount(seen[-1], minlength=4)
    assert len(seen[-1]) == 16 and counts.min() >= 3, counts


def test_machine_names_the_gpu_a_row_ran_on(monkeypatch):
    """A row's "machine" says which GPU ran it: the first H200 rows recorded only the host's
    processor, and their wall times read as CPU times."""
    class OnGpu:
        device = "cuda:1"

    seen = []

    def info(ordinal):
        seen.append(ordinal)
        return {"name": "NVIDIA H200"}

    monkeypatch.setattr(polyvit.cuda, "device_info", info)
    host = experiment.machine()
    assert "cuda" not in host and host.endswith("cores")
    assert experiment.machine(OnGpu()) == host + "; cuda:1 NVIDIA H200"
    assert seen == [1]

    def broken(ordinal):
        raise RuntimeError("driver gone")

    monkeypatch.setattr(polyvit.cuda, "device_info", broken)
    assert experiment.machine(OnGpu()) == host + "; cuda:1 a CUDA device (RuntimeError)"


def test_an_unfinished_experiment_can_be_reported(teacher, tmp_path, monkeypatch, capsys):
    """collect / `report --rows`: the table of the rows finished so far, in the seed's order
    whatever order the configurations ran in, and the distillation still in progress."""
    from polyvit.__main__ import main

    _run(teacher, tmp_path, configs=["full", "hybrid-2"], methods=["V1", "V2", "V3"])
    # make Full-4 V3 look interrupted: no row yet, its log cut in the middle of a line
    os.remove(tmp_path / "Full-4-V3.json")
    log = tmp_path / "runs" / "Full-4-V3" / "log.jsonl"
    with open(log, "a") as f:
        f.write('{"type": "step", "sta')
    (tmp_path / "notes.json").write_text('{"unrelated": true}')   # not a row: left out
    rows, running = experiment.collect(str(tmp_path))
    assert [r["name"] for r in rows] == ["teacher (GELU)", "Hybrid-2 V1", "Hybrid-2 V2",
                                         "Hybrid-2 V3", "Full-4 V1", "Full-4 V2"]
    assert [(r["name"], r["epochs"]) for r in running] == [("Full-4 V3", 2)]
    assert set(running[0]["last"]) >= {"student_top1", "fidelity"}
    # the curves take the finished distillations' logs and the one in progress
    assert experiment.distill_logs(str(tmp_path), rows, running) == {
        "Hybrid-2 V3": str(tmp_path / "runs" / "Hybrid-2-V3" / "log.jsonl"),
        "Full-4 V3 (in progress)": str(log)}

    capsys.readouterr()
    png = tmp_path / "curves-so-far.png"
    assert main(["report", "--rows", str(tmp_path), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("| model | top-1 | gap |")
    assert "| Full-4 V2 |" in out and "| Full-4 V3 |" not in out
    assert "in progress: Full-4 V3, 2 epochs logged; after the last, top-1" in out
    assert png.stat().st_size > 10_000

    # bad input: one line, exit 2
    for argv, msg in [(["report"], "needs --logs"),
                      (["report", "--rows", str(tmp_path / "none")], "no experiment folder"),
                      (["report", "--rows", str(tmp_path), "--logs", str(log)], "not both")]:
        assert main(argv) == 2
        assert msg in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", "--rows", str(tmp_path / "empty")]) == 2
    assert "no experiment rows" in capsys.readouterr().err
    (tmp_path / "Hybrid-2-V1.json").write_text('{"name": ')
    assert main(["report", "--rows", str(tmp_path)]) == 2
    assert "Hybrid-2-V1.json is not a readable row" in capsys.readouterr().err


def test_the_teacher_row_is_written_before_any_method_runs(teacher, tmp_path, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("stopped in V1")

    monkeypatch.setattr(experiment, "make_student", broken)
    with pytest.raises(RuntimeError, match="stopped in V1"):
        _run(teacher, tmp_path, methods=["V1"])
    rows, running = experiment.collect(str(tmp_path))
    assert [r["method"] for r in rows] == ["GELU"] and running == []


def test_paired_backfill_matches_a_fresh_row_and_refuses_another_model(teacher, tmp_path, capsys):
    """results/paired.py gives an older row (no paired statistics) the figures a fresh run
    writes, from its distillation's checkpoint; a checkpoint that is not the row's model is
    refused and the row left as it is."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "paired", os.path.join(os.path.dirname(__file__), "..", "results", "paired.py"))
    paired = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(paired)
    test = _data(64, 3)
    rows = _run(teacher, tmp_path)
    fresh = {r["method"]: r for r in rows}
    for m in ("V3", "final"):                       # make them look like older rows
        path = tmp_path / f"Full-4-{m}.json"
        row = json.loads(path.read_text())
        for k in experiment.PAIRED:
            del row[k]
        path.write_text(json.dumps(row, indent=1))
    # V3's checkpoint replaced by final's: another model
    ck = tmp_path / "runs" / "Full-4-V3" / "checkpoint.safetensors"
    ck.write_bytes((tmp_path / "runs" / "Full-4-final" / "checkpoint.safetensors").read_bytes())
    assert paired.backfill(str(tmp_path), teacher, test) == 1
    final = json.loads((tmp_path / "Full-4-final.json").read_text())
    assert {k: final[k] for k in experiment.PAIRED} == {k: fresh["final"][k] for k in experiment.PAIRED}
    assert "gap_se" not in json.loads((tmp_path / "Full-4-V3.json").read_text())
    assert "not the same model" in capsys.readouterr().err
    assert f"{100 * final['gap_se']:.2f} |" in (tmp_path / "table.md").read_text()
