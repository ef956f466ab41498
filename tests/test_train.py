"""Training and distillation: schedule, exact resume, divergence handling, and the method's
bar on a small real CIFAR-10 run (fidelity: static < DirectFit < distilled)."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from helpers import shared_data_dir

import polyvit
from polyvit import fit, metrics, students
from polyvit.losses import Loss
from polyvit.training import Distiller, Stage, Trainer, cosine_lr

HERE = os.path.dirname(os.path.abspath(__file__))
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.247, 0.2435, 0.2616)


DATA = shared_data_dir("cifar10-jpeg.tar.gz")
needs_data = pytest.mark.skipif(DATA is None, reason="../shared/data/cifar10-jpeg.tar.gz (or "
                                "$POLYVIT_DATA) is absent")


def _synthetic(n=256, seed=0, size=16):
    """uint8 NHWC images whose class (0..3) is the brightest quadrant."""
    from polyvit.datasets import Dataset

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 120, (n, size, size, 3)).astype(np.uint8)
    y = rng.integers(0, 4, n)
    h = size // 2
    for i, (r, c) in enumerate([(0, 0), (0, h), (h, 0), (h, h)]):
        x[y == i, r:r + h, c:c + h] += 100
    return Dataset(x, y.astype(np.int64), classes=["a", "b", "c", "d"], name="synthetic")


def _tiny(seed=0, **kw):
    cfg = polyvit.ViTConfig(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                            mlp_ratio=2.0, num_classes=4, mean=MEAN, std=STD, **kw)
    return polyvit.ViT(cfg, max_batch=32, seed=seed)


def test_cosine_schedule():
    lrs = [cosine_lr(s, 100, 1.0, 10, 0.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[-1] < 1e-3
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert cosine_lr(55, 100, 1.0, 10, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def _losses(log):
    return [r["loss"] for r in map(json.loads, open(log)) if r["type"] == "step"]


@pytest.mark.parametrize("teacher", [False, True], ids=["train", "distill"])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, teacher):
    data, ev = _synthetic(256, 0), _synthetic(64, 1)
    T = _tiny(seed=5) if teacher else None

    def make(wd):
        m = _tiny(seed=1)
        stages = [Stage(epochs=2, lr=2e-3, warmup_epochs=0.5, magnitude=9),
                  Stage(epochs=1, lr=1e-3, blocks=[0], fit="directfit" if teacher else "keep")]
        kw = dict(stages=stages, batch_size=32, workdir=str(wd), progress=False, log_every=1,
                  eval_size=32)
        return m, (Distiller(m, T, data, ev, **kw) if teacher else Trainer(m, data, ev, **kw))

    m1, t1 = make(tmp_path / "a")
    t1.run()
    m2, t2 = make(tmp_path / "b")
    t2.run(stop_after_steps=11)            # mid-epoch
    m3, t3 = make(tmp_path / "b")          # a new process would build everything anew
    t3.run(stop_after_steps=9)             # crosses the stage boundary (16 steps/stage 1)
    m4, t4 = make(tmp_path / "b")
    t4.run()
    a, b = _losses(tmp_path / "a" / "log.jsonl"), _losses(tmp_path / "b" / "log.jsonl")
    assert len(a) == 3 * 8 and a == b
    assert m4.config == m1.config and m1.config.act[0] == "poly"
    for n in m1.params:
        np.testing.assert_array_equal(m4.params[n], m1.params[n], err_msg=n)
    assert [r["eval"] for r in t1.state["history"]] == [r["eval"] for r in t4.state["history"]]
    # the checkpoint also loads as a model (its weights, without the optimizer's moments)
    m5 = polyvit.load(str(tmp_path / "b" / "checkpoint.safetensors"), max_batch=32)
    assert m5.config == m4.config and set(m5.params) == set(m4.params)
    for n in m4.params:
        np.testing.assert_array_equal(m5.params[n], m4.params[n], err_msg=n)


def test_wall_time_sums_the_sessions_and_not_the_gaps(tmp_path):
    """A resumed run's wall time (and a resumed epoch's seconds) carry the earlier sessions'
    time, and not the time between sessions: experiment rows report it."""
    import time

    data, ev = _synthetic(256, 0), _synthetic(64, 1)

    def make():
        return Trainer(_tiny(seed=1), data, ev, stages=[Stage(epochs=1, lr=1e-3)], batch_size=32,
                       workdir=str(tmp_path), progress=False, eval_size=32)

    t1 = make()
    slow = t1._step
    t1._step = lambda *a: (time.sleep(0.1), slow(*a))[1]   # this session: >= 0.5 s
    t1.run(stop_after_steps=5)
    w1 = t1.wall_seconds
    assert w1 >= 0.5
    time.sleep(0.5)                                         # between sessions: not counted
    t2 = make()
    start = time.time()
    t2.run()
    took = time.time() - start
    assert w1 <= t2.wall_seconds <= w1 + took
    epoch = t2.state["history"][0]["seconds"]
    assert 0.5 <= epoch <= w1 + took                        # the epoch spans both sessions
    assert make().wall_seconds == 0.0                       # (not started: nothing loaded yet)
    free = Trainer(_tiny(seed=1), data, ev, stages=[Stage(epochs=1, lr=1e-3)], batch_size=32,
                   progress=False)                          # no workdir, no checkpoint
    start = time.time()
    free.run()
    assert 0 < free.wall_seconds <= time.time() - start


@pytest.mark.parametrize("signame,at", [("SIGTERM", 5), ("SIGINT", 8)], ids=["term-mid", "int-epoch-end"])
def test_signal_saves_a_checkpoint_and_resume_loses_nothing(tmp_path, signame, at):
    """kill / Ctrl-C during a run: the step under way finishes, a checkpoint is written,
    KeyboardInterrupt says where; resuming gives exactly the uninterrupted run. Step 5 is
    mid-epoch, step 8 the last of epoch 1 (8 steps per epoch: the epoch's evaluation and
    checkpoint come first)."""
    import signal

    data, ev = _synthetic(256, 0), _synthetic(64, 1)

    def make(wd):
        m = _tiny(seed=1)
        return m, Trainer(m, data, ev, stages=[Stage(epochs=2, lr=2e-3, magnitude=9)],
                          batch_size=32, workdir=str(wd), progress=False, log_every=1,
                          eval_size=32)

    m1, t1 = make(tmp_path / "a")
    t1.run()
    m2, t2 = make(tmp_path / "b")
    real_step, calls = t2._step, []

    def step(*a):
        out = real_step(*a)
        calls.append(1)
        if len(calls) == at:
            signal.raise_signal(getattr(signal, signame))   # arrives inside the step
        return out

    t2._step = step
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match=f"{signame}.*after step {at}.*resume"):
        t2.run()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert len(calls) == at                                # no step after the signal
    m3, t3 = make(tmp_path / "b")
    t3.run()
    assert t3.state["step"] == 16
    assert _losses(tmp_path / "a" / "log.jsonl") == _losses(tmp_path / "b" / "log.jsonl")
    for n in m1.params:
        np.testing.assert_array_equal(m3.params[n], m1.params[n], err_msg=n)


def test_divergence_stops_and_keeps_the_checkpoint(tmp_path):
    data = _synthetic(128, 0)
    m = _tiny(seed=1)
    t = Trainer(m, data, stages=[Stage(epochs=3, lr=1e-3, magnitude=None)], batch_size=32,
                workdir=str(tmp_path), progress=False)
    t.run(stop_after_steps=4)              # one full epoch: a checkpoint
    ck = tmp_path / "checkpoint.safetensors"
    before = ck.read_bytes()
    m.params["head.weight"][...] = 1e38    # the model blows up
    t2 = Trainer(m, data, stages=[Stage(epochs=3, lr=1e-3, magnitude=None)], batch_size=32,
                 workdir=str(tmp_path), progress=False)
    t2.state = t.state
    with pytest.raises(FloatingPointError, match="last good checkpoint"):
        t2.run(resume=False)
    assert ck.read_bytes() == before
    errs = [json.loads(l) for l in open(tmp_path / "log.jsonl") if '"error"' in l]
    assert errs and ("NaN" in errs[0]["message"] or "Inf" in errs[0]["message"])


def test_trainer_bad_input(tmp_path):
    data = _synthetic(64, 0)
    m = _tiny()
    with pytest.raises(ValueError, match="Stage"):
        Trainer(m, data, stages=[])
    with pytest.raises(ValueError, match="epochs"):
        Stage(epochs=0)
    with pytest.raises(ValueError, match="max_batch"):
        Trainer(m, data, stages=[Stage(epochs=1)], batch_size=64)
    with pytest.raises(ValueError, match="teacher"):
        Trainer(m, data, stages=[Stage(epochs=1)], loss=Loss(mse=1.0, ce=0.0), batch_size=32)
    with pytest.raises(ValueError, match="uint8 NHWC"):
        Trainer(m, (np.zeros((64, 3, 16, 16), np.float32), np.zeros(64, int)),
                stages=[Stage(epochs=1)], batch_size=32)


@needs_data
def test_method_bar_on_real_cifar10(tmp_path):
    """A small teacher trained here on real CIFAR-10 images; then for Full: fidelity of the
    static fit < DirectFit + Scale Fix < distillation with trainable coefficients."""
    from polyvit.datasets import load_cifar10_jpeg

    cache = str(tmp_path / "cache")
    train = load_cifar10_jpeg("train", data_dir=DATA, cache_dir=cache, progress=False)
    test = load_cifar10_jpeg("test", data_dir=DATA, cache_dir=cache, progress=False)
    rng = np.random.default_rng(0)
    train = train[np.sort(rng.choice(len(train), 6000, replace=False))]
    test = test[np.sort(rng.choice(len(test), 1000, replace=False))]
    cfg = polyvit.ViTConfig(img_size=32, patch_size=4, embed_dim=48, depth=3, num_heads=2,
                            mlp_ratio=2.0, num_classes=10, mean=MEAN, std=STD)
    teacher = polyvit.ViT(cfg, max_batch=128, seed=0)
    polyvit.train(teacher, train, epochs=6, lr=3e-3, warmup_epochs=0.5, magnitude=None,
                  mixup=None, batch_size=128, progress=False)
    base = metrics.evaluate(teacher, None, (test.images, test.labels))
    assert base["student_top1"] > 0.3, base  # it learned something real

    s1 = students.full(teacher)
    fit.static(s1, "all")
    f1 = metrics.evaluate(s1, teacher, (test.images, test.labels))["fidelity"]
    s2 = students.full(teacher)
    # calibration from every class (the archive, and so this sorted subset, runs class by class)
    fit.directfit(s2, teacher, train.images[rng.choice(len(train), 256, replace=False)], "all")
    f2 = metrics.evaluate(s2, teacher, (test.images, test.labels))["fidelity"]
    s3 = s2.copy(max_batch=128)
    # a gentle learning rate: the student starts close to the teacher (3e-3 overshoots)
    Distiller(s3, teacher, train, stages=[Stage(epochs=3, lr=3e-4, magnitude=None, mixup=None)],
              batch_size=128, coeff_lr=1e-2, progress=False).run()
    f3 = metrics.evaluate(s3, teacher, (test.images, test.labels))["fidelity"]
    print(f"teacher top-1 {base['student_top1']:.3f}; fidelity static {f1:.3f} < "
          f"DirectFit {f2:.3f} < distilled {f3:.3f}")
    assert f1 < f2 < f3


@pytest.mark.parametrize("loss", [Loss(kl=1.0, ce=0.0, temperature=4.0),
                                  Loss(mse=0.5, kl=0.5, ce=0.5, label_smoothing=0.1)],
                         ids=["kl_T4", "mse+kl+ce"])
def test_distiller_other_losses_and_frozen_coefficients(loss):
    """KL with temperature and weighted mixes with cross-entropy on the (mixed) labels train;
    frozen coefficients (V3) stay exactly as fitted while the weights move."""
    data = _synthetic(128, 0)
    T = _tiny(seed=5)
    s = polyvit.hybrid(T, 1, max_batch=32)
    before = s.coefficients(0)
    w0 = s.params["blocks.0.mlp.fc1.weight"].copy()
    h = Distiller(s, T, data, data[:64], loss=loss, trainable_coeffs=False, batch_size=32,
                  stages=[Stage(epochs=2, lr=1e-3, magnitude=None)], progress=False).run()
    assert len(h) == 2 and all(math.isfinite(r["train_loss"]) for r in h)
    for k in "abcs":
        np.testing.assert_array_equal(s.coefficients(0)[k], before[k])
    assert not np.array_equal(s.params["blocks.0.mlp.fc1.weight"], w0)
    assert "fidelity" in h[-1]["eval"]
