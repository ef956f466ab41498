"""Training and distillation: the teacher trainer (labels only) and the Distiller (a frozen GELU
teacher, a polynomial student, both fed the same augmented batch).

One loop serves both. It runs a list of :class:`Stage` s (each: the blocks that are quadratic,
epochs, learning rate, augmentation strength), with warmup + cosine annealing per stage, an
evaluation every epoch, a progress bar, a JSONL log, and checkpoints that hold the model, the
AdamW moments and step, the schedule and data position, so that a resumed run continues with
exactly the batches and losses an uninterrupted run would have seen. A non-finite loss stops the
run with a clear message and never overwrites the last good checkpoint. SIGINT (Ctrl-C) or
SIGTERM (``kill``) during a run lets the step under way finish, writes a checkpoint and raises
KeyboardInterrupt, so that nothing done is lost; a second signal stops at once.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import threading
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from . import _clock
from .config import ViTConfig, normalise_blocks
from .losses import Loss
from .optim import AdamW

CKPT_FORMAT = "polyvit-checkpoint-1"


@dataclasses.dataclass
class Stage:
    """One phase of training.

    ``blocks``: the blocks that are quadratic from this stage on (cumulative with earlier
    stages; None keeps the model as it is). Newly replaced blocks get coefficients by ``fit``:
    ``"directfit"`` (DirectFit + Scale Fix on calibration images), ``"static"`` or ``"keep"``
    (the defaults of ``set_activation``). ``magnitude``/``num_ops``: RandAugment strength
    (``magnitude=None`` turns it off); ``mixup``: keyword arguments of polyvit.mixup.Mixup
    (None: no Mixup/CutMix)."""

    epochs: int
    lr: float = 5e-4
    blocks: Any = None
    fit: str = "directfit"
    warmup_epochs: float = 0.0
    min_lr: float = 1e-6
    magnitude: Optional[int] = 9
    num_ops: int = 2
    mixup: Optional[Dict[str, Any]] = dataclasses.field(
        default_factory=lambda: dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5))

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"a stage needs a positive integer number of epochs, got {self.epochs!r}")
        if not (self.lr >= 0 and math.isfinite(self.lr)):
            raise ValueError(f"stage lr must be a non-negative number, got {self.lr!r}")
        if self.fit not in ("directfit", "static", "keep"):
            raise ValueError(f"stage fit must be 'directfit', 'static' or 'keep', got {self.fit!r}")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise ValueError("warmup_epochs must lie between 0 and the stage's epochs")


def cosine_lr(step: int, total: int, base: float, warmup: int, min_lr: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from ``base`` down to ``min_lr``."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return min_lr + 0.5 * (base - min_lr) * (1.0 + math.cos(math.pi * t))


def _as_dataset(data, what: str):
    if data is None:
        return None
    if isinstance(data, tuple) and len(data) == 2:
        from .datasets import Dataset

        x, y = np.asarray(data[0]), np.asarray(data[1])
        if x.dtype != np.uint8 or x.ndim != 4:
            raise ValueError(f"{what} images must be uint8 NHWC (N, H, W, C), got {x.dtype} "
                             f"with shape {x.shape}")
        return Dataset(np.asarray(x), np.asarray(y), classes=[str(i) for i in range(int(np.max(y)) + 1)],
                       name=what)
    if hasattr(data, "images") and hasattr(data, "labels"):
        return data
    raise TypeError(f"{what} must be a polyvit Dataset or an (images, labels) pair of uint8 "
                    f"NHWC images and integer labels")


class _StopRequest:
    """SIGINT / SIGTERM while a run is under way: remembered, not raised, so that the loop can
    finish its step and write a checkpoint first (a second signal raises KeyboardInterrupt at
    once). Installed only in the main thread (Python's rule for handlers); a signal the process
    ignores (SIGINT in a shell's background job) stays ignored."""

    def __init__(self):
        self.requested: Optional[str] = None
        self._old: Dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.requested is not None:
            raise KeyboardInterrupt(f"{signal.Signals(signum).name} again: stopped at once")
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old = signal.getsignal(sig)
                if old is signal.SIG_IGN or old is None:
                    continue
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Trainer:
    """The shared loop. Use :func:`train` (teacher, labels only) or :class:`Distiller`."""

    def __init__(self, model, train_data, eval_data=None, teacher=None,
                 loss: Optional[Loss] = None, stages: Optional[Sequence[Stage]] = None,
                 batch_size: int = 64, weight_decay: float = 0.05, label_smoothing: float = 0.1,
                 trainable_coeffs: bool = True, coeff_lr: Optional[float] = None,
                 clip_grad_norm: Optional[float] = 1.0, seed: int = 0,
                 workdir: Optional[str] = None, checkpoint_every: Optional[int] = None,
                 eval_size: Optional[int] = None, calibration_size: int = 256,
                 progress: bool = True, log_every: int = 10):
        if stages is None or len(stages) == 0:
            raise ValueError("give at least one Stage (epochs, lr, ...)")
        self.model = model
        self.teacher = teacher
        self.train_data = _as_dataset(train_data, "train_data")
        self.eval_data = _as_dataset(eval_data, "eval_data")
        if self.train_data is None or len(self.train_data) == 0:
            raise ValueError("train_data is empty")
        cfg = model.config
        imgs = self.train_data.images
        if imgs.dtype != np.uint8 or imgs.ndim != 4 or imgs.shape[1:] != (cfg.img_size, cfg.img_size, cfg.in_chans):
            raise ValueError(f"train_data images must be uint8 NHWC of shape (N, {cfg.img_size}, "
                             f"{cfg.img_size}, {cfg.in_chans}), got {imgs.dtype} {imgs.shape}")
        if teacher is not None and (teacher.config.num_classes != cfg.num_classes):
            raise ValueError("student and teacher must have the same number of classes")
        if batch_size > model.max_batch:
            raise ValueError(f"batch_size {batch_size} exceeds the model's max_batch {model.max_batch}")
        if len(self.train_data) < batch_size:
            raise ValueError(f"train_data has {len(self.train_data)} images, fewer than one batch "
                             f"of {batch_size}")
        self.stages = list(stages)
        self.batch_size = int(batch_size)
        self.label_smoothing = float(label_smoothing)
        self.loss = loss if loss is not None else (
            Loss(ce=1.0, label_smoothing=0.0) if teacher is None else Loss(mse=1.0, ce=0.0))
        if self.loss.needs_teacher and teacher is None:
            raise ValueError("this loss needs a teacher (MSE/KL term); use polyvit.Distiller")
        self.trainable_coeffs = bool(trainable_coeffs)
        self.seed = int(seed)
        self.workdir = workdir
        self.checkpoint_every = checkpoint_every
        self.eval_size = eval_size
        self.calibration_size = int(calibration_size)
        self.progress = bool(progress)
        self.log_every = max(1, int(log_every))
        groups = {"poly": {"weight_decay": 0.0}}
        if coeff_lr is not None:
            groups["poly"]["lr"] = float(coeff_lr)
        if not self.trainable_coeffs:
            groups["poly"] = {"frozen": True}
        base_lr = max(s.lr for s in self.stages) or 1e-3
        self.optimizer = AdamW(model, lr=base_lr, weight_decay=weight_decay, groups=groups,
                               clip_grad_norm=clip_grad_norm)
        # what the run is, written into each checkpoint: resuming under another plan would
        # silently train something that is neither run
        self.plan = {"stages": [dataclasses.asdict(st) for st in self.stages],
                     "loss": {"ce": self.loss.ce, "mse": self.loss.mse, "kl": self.loss.kl,
                              "temperature": self.loss.temperature,
                              "label_smoothing": self.loss.label_smoothing},
                     "batch_size": self.batch_size, "train_size": len(self.train_data),
                     "weight_decay": float(weight_decay), "label_smoothing": self.label_smoothing,
                     "trainable_coeffs": self.trainable_coeffs,
                     "coeff_lr": None if coeff_lr is None else float(coeff_lr),
                     "clip_grad_norm": None if clip_grad_norm is None else float(clip_grad_norm)}
        self.plan = json.loads(json.dumps(   # tuples -> lists, as read back
            self.plan, default=lambda o: o.tolist() if hasattr(o, "tolist") else repr(o)))
        self._coeff_lr = coeff_lr
        # position: stage, epoch within stage, batch within epoch, global step
        self.state: Dict[str, Any] = dict(stage=0, epoch=0, batch=0, step=0, stage_started=False,
                                          loss_sum=0.0, loss_n=0, history=[], log_bytes=0,
                                          done=False, wall_seconds=0.0, epoch_seconds=0.0)
        self._wall_t0: Optional[float] = None    # run()'s start, less the earlier sessions' time
        self._epoch_t0: Optional[float] = None

    # ---- paths --------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Optional[str]:
        return os.path.join(self.workdir, "checkpoint.safetensors") if self.workdir else None

    @property
    def log_path(self) -> Optional[str]:
        return os.path.join(self.workdir, "log.jsonl") if self.workdir else None

    # ---- data ----------------------------------------------------------------------------
    def _loader(self, stage: Stage, epoch_id: int):
        from .loader import DataLoader

        augment = None
        if stage.magnitude is not None:
            from .augment import RandAugment

            augment = RandAugment(num_ops=stage.num_ops, magnitude=stage.magnitude)
        mixup = None
        if stage.mixup is not None:
            from .mixup import Mixup

            mixup = Mixup(**{"label_smoothing": self.label_smoothing,
                             "num_classes": self.model.config.num_classes, **stage.mixup})
        cfg = self.model.config
        mean = cfg.mean if cfg.mean is not None else (0.0,) * cfg.in_chans
        std = cfg.std if cfg.std is not None else (1.0,) * cfg.in_chans
        loader = DataLoader(self.train_data, self.batch_size, shuffle=True,
                            seed=self.seed, drop_last=True,
                            augment=augment, mixup=mixup, normalize=(mean, std),
                            progress=False)
        loader.set_epoch(epoch_id)
        return loader

    def _calibration_images(self) -> np.ndarray:
        n = min(self.calibration_size, len(self.train_data))
        idx = np.random.default_rng([self.seed, 7]).choice(len(self.train_data), n, replace=False)
        return self.train_data.images[np.sort(idx)]

    # ---- stage transitions -----------------------------------------------------------------
    def _enter_stage(self, stage: Stage) -> None:
        if stage.blocks is None:
            return
        want = normalise_blocks(stage.blocks, self.model.config.depth)
        new = [i for i in want if self.model.config.act[i] != "poly"]
        if not new:
            return
        if stage.fit == "directfit":
            if self.teacher is None:
                raise ValueError("DirectFit needs a teacher")
            from .fit import directfit

            directfit(self.model, self.teacher, self._calibration_images(), new)
        elif stage.fit == "static":
            from .fit import static

            static(self.model, new)
        else:
            self.model.set_activation(new, "poly")

    # ---- one step --------------------------------------------------------------------------
    def _step(self, x: np.ndarray, targets: np.ndarray, lr: float) -> float:
        teacher_logits = self.teacher.forward(x) if self.loss.needs_teacher else None
        labels = targets if self.loss.needs_labels else None
        loss = self.loss
        if labels is not None and np.ndim(labels) == 1 and loss.label_smoothing == 0 and \
                self.label_smoothing:
            # hard labels (no Mixup this stage): smooth them here; Mixup's soft targets
            # already carry the smoothing
            loss = Loss(ce=loss.ce, mse=loss.mse, kl=loss.kl, temperature=loss.temperature,
                        label_smoothing=self.label_smoothing)
        return self.model.train_step(x, labels=labels, teacher_logits=teacher_logits,
                                     loss=loss, optimizer=self.optimizer, lr=lr)

    def evaluate(self) -> Optional[Dict[str, Any]]:
        if self.eval_data is None:
            return None
        from .metrics import evaluate

        data = self.eval_data
        if self.eval_size is not None and self.eval_size < len(data):
            from .datasets import balanced_sample

            # the same class-balanced images every epoch (not the first ones: test archives
            # may be stored class by class)
            data = data[balanced_sample(data.labels, self.eval_size, self.seed)]
        r = evaluate(self.model, self.teacher, (data.images, data.labels), activations=False)
        keep = ("student_top1", "student_top5", "teacher_top1", "fidelity", "logit_cosine", "kl")
        return {k: r[k] for k in keep if k in r}

    # ---- the loop --------------------------------------------------------------------------
    def run(self, resume: bool = True, stop_after_steps: Optional[int] = None) -> List[Dict[str, Any]]:
        """Train through every stage; returns the epoch history. With ``resume`` and a
        checkpoint in ``workdir``, continues from it. ``stop_after_steps`` ends the call after
        that many steps of this call (with a checkpoint), e.g. for time-sliced runs."""
        if self.workdir:
            os.makedirs(self.workdir, exist_ok=True)
            if resume and os.path.exists(self.checkpoint_path):
                self.load_checkpoint(self.checkpoint_path)
            elif self.state["step"] == 0 and self.log_path and os.path.exists(self.log_path):
                # a fresh run in a folder with an older run's log: keep that log beside, so
                # that this one's log (and its curves) hold this run alone
                os.replace(self.log_path, self.log_path + ".old")
        # wall time over every session of the run (older checkpoints did not record it)
        self._wall_t0 = _clock.now() - self.state.get("wall_seconds", 0.0)
        try:
            with _StopRequest() as stop_request:
                return self._run(stop_after_steps, stop_request)
        finally:   # (with no workdir there is no checkpoint to have recorded it)
            self.state["wall_seconds"] = self.wall_seconds
            self._wall_t0 = self._epoch_t0 = None

    @property
    def wall_seconds(self) -> float:
        """Seconds this run has taken, summed over its sessions (resumes), fits and per-epoch
        evaluations included; 0 before it starts."""
        if self._wall_t0 is not None:
            return _clock.now() - self._wall_t0
        return float(self.state.get("wall_seconds", 0.0))

    def _stopped(self, why: str) -> KeyboardInterrupt:
        where = (f"a checkpoint at step {self.state['step']} is in {self.checkpoint_path}; run "
                 f"again to resume" if self.workdir else "no workdir, so no checkpoint")
        return KeyboardInterrupt(f"{why}: training stopped after step {self.state['step']}; "
                                 f"{where}")

    def _run(self, stop_after_steps: Optional[int], stop_request: _StopRequest):
        st = self.state
        steps_this_call = 0
        while st["stage"] < len(self.stages) and not st["done"]:
            stage = self.stages[st["stage"]]
            if not st["stage_started"]:
                self._enter_stage(stage)
                st["stage_started"] = True
            n_batches = len(self.train_data) // self.batch_size
            total = stage.epochs * n_batches
            warmup = int(round(stage.warmup_epochs * n_batches))
            while st["epoch"] < stage.epochs:
                epoch_id = sum(s.epochs for s in self.stages[:st["stage"]]) + st["epoch"]
                loader = self._loader(stage, epoch_id)
                loader.load_state_dict({"epoch": epoch_id, "batch": st["batch"]})
                bar = None
                if self.progress:
                    from .progress import Progress

                    bar = Progress(n_batches, desc=f"stage {st['stage'] + 1}/{len(self.stages)} "
                                   f"epoch {st['epoch'] + 1}/{stage.epochs}", unit="batch")
                    bar.update(st["batch"])
                # an epoch resumed mid-way counts the earlier sessions' part of it too
                self._epoch_t0 = _clock.now() - st.get("epoch_seconds", 0.0)
                batches = iter(loader)
                for x, targets in batches:
                    local = st["epoch"] * n_batches + st["batch"]
                    lr = cosine_lr(local, total, stage.lr, warmup, min(stage.min_lr, stage.lr))
                    try:
                        value = self._step(x, targets, lr)
                    except FloatingPointError as e:
                        if bar:
                            bar.close()
                        self._log({"type": "error", "step": st["step"], "message": str(e)})
                        kept = (f"the last good checkpoint {self.checkpoint_path} is kept"
                                if self.workdir and os.path.exists(self.checkpoint_path)
                                else "no checkpoint was written")
                        raise FloatingPointError(
                            f"training stopped at stage {st['stage'] + 1}, epoch {st['epoch'] + 1}, "
                            f"step {st['step']}: {e}; {kept}. Lower the learning rate or check "
                            f"the data.") from None
                    st["step"] += 1
                    st["batch"] += 1
                    st["loss_sum"] += value
                    st["loss_n"] += 1
                    steps_this_call += 1
                    if bar:
                        bar.update(1)
                    if st["step"] % self.log_every == 0:
                        self._log({"type": "step", "stage": st["stage"], "epoch": st["epoch"],
                                   "step": st["step"], "lr": lr, "loss": value})
                    stop = stop_after_steps is not None and steps_this_call >= stop_after_steps
                    if (self.checkpoint_every and st["step"] % self.checkpoint_every == 0) or stop:
                        if st["batch"] < n_batches:
                            self.save_checkpoint()
                    if stop and st["batch"] < n_batches:
                        if bar:
                            bar.close()
                        batches.close()
                        return st["history"]
                    if stop_request.requested and st["batch"] < n_batches:
                        if self.workdir:
                            self.save_checkpoint()
                        if bar:
                            bar.close()
                        batches.close()
                        raise self._stopped(stop_request.requested)
                if bar:
                    bar.close()
                rec = {"type": "epoch", "stage": st["stage"], "epoch": st["epoch"],
                       "step": st["step"], "train_loss": st["loss_sum"] / max(1, st["loss_n"]),
                       "seconds": _clock.now() - self._epoch_t0, "eval": self.evaluate()}
                self._epoch_t0 = None
                st["history"].append(rec)
                self._log(rec)
                if self.progress:
                    ev = rec["eval"] or {}
                    msg = ", ".join(f"{k} {v:.4f}" for k, v in ev.items())
                    print(f"  epoch {epoch_id + 1}: loss {rec['train_loss']:.4f}" +
                          (f", {msg}" if msg else ""), file=sys.stderr, flush=True)
                st["epoch"] += 1
                st["batch"] = 0
                st["loss_sum"], st["loss_n"] = 0.0, 0
                self.save_checkpoint()
                if stop_request.requested:
                    raise self._stopped(stop_request.requested)
                if stop_after_steps is not None and steps_this_call >= stop_after_steps:
                    return st["history"]
            st["stage"] += 1
            st["epoch"] = 0
            st["stage_started"] = False
        st["done"] = True
        self.save_checkpoint()
        return st["history"]

    # ---- log and checkpoints ---------------------------------------------------------------
    def _log(self, rec: Dict[str, Any]) -> None:
        if not self.log_path:
            return
        with open(self.log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def save_checkpoint(self, path: Optional[str] = None) -> None:
        """Model, AdamW moments and step, position and history, atomically."""
        from safetensors.numpy import save as serialise

        from ._fs import atomic_save

        path = path or self.checkpoint_path
        if not path:
            return
        m = self.model
        tensors = {}
        for n, v in m.params.items():
            if not np.isfinite(v).all():
                raise FloatingPointError(f"parameter {n} is not finite; refusing to overwrite "
                                         f"the checkpoint {path}")
            tensors["param/" + n] = np.ascontiguousarray(v)
            tensors["adam_m/" + n] = np.ascontiguousarray(m._moments[0][n])
            tensors["adam_v/" + n] = np.ascontiguousarray(m._moments[1][n])
        self.state["wall_seconds"] = self.wall_seconds
        self.state["epoch_seconds"] = 0.0 if self._epoch_t0 is None else _clock.now() - self._epoch_t0
        st = dict(self.state)
        if self.log_path and os.path.exists(self.log_path):
            st["log_bytes"] = os.path.getsize(self.log_path)
        meta = {"format": CKPT_FORMAT, "polyvit_config": m.config.to_json(),
                "trainer_state": json.dumps(st), "optimizer_step": str(self.optimizer.step_count),
                "seed": str(self.seed), "plan": json.dumps(self.plan)}
        blob = serialise(tensors, metadata=meta)
        atomic_save(path, lambda f: f.write(blob))

    def load_checkpoint(self, path: str) -> None:
        from safetensors import safe_open

        try:
            with safe_open(path, "np") as f:
                meta = f.metadata() or {}
                if meta.get("format") != CKPT_FORMAT:
                    raise ValueError(f"{path} is not a polyvit training checkpoint")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (OSError, ValueError) as e:
            raise OSError(f"cannot resume from {path}: {e}") from None
        if int(meta.get("seed", self.seed)) != self.seed:
            raise ValueError(f"{path} was written with seed {meta.get('seed')}, this run has "
                             f"seed {self.seed}; resuming would not reproduce the run")
        if "plan" in meta:   # (checkpoints written before plans were recorded have none)
            plan = json.loads(meta["plan"])
            if plan != self.plan:
                diff = sorted(k for k in set(plan) | set(self.plan) if plan.get(k) != self.plan.get(k))
                raise ValueError(
                    f"{path} belongs to a run with another plan ({', '.join(diff)} differ: "
                    + "; ".join(f"{k} was {plan.get(k)!r}, now {self.plan.get(k)!r}" for k in diff)
                    + "); resuming would train neither run. Use the run's own settings, another "
                      "output folder, or start over (resume=False / --restart)")
        cfg = ViTConfig.from_json(meta["polyvit_config"])
        m = self.model
        if cfg != m.config:  # stages changed the activations: rebuild the layout first
            act, pc = cfg.act, cfg.poly_per_channel
            for i in range(cfg.depth):
                if act[i] != m.config.act[i] or pc[i] != m.config.poly_per_channel[i]:
                    m.set_activation(i, act[i], per_channel=pc[i])
            if cfg != m.config:
                raise ValueError(f"{path} holds a different architecture than this model")
        for n in m.params:
            m.params[n][...] = tensors["param/" + n]
            m._moments[0][n][...] = tensors["adam_m/" + n]
            m._moments[1][n][...] = tensors["adam_v/" + n]
        self.optimizer.step_count = int(meta["optimizer_step"])
        self.state = json.loads(meta["trainer_state"])
        # drop log lines written after this checkpoint (they will be written again)
        if self.log_path and os.path.exists(self.log_path):
            with open(self.log_path, "r+b") as f:
                f.truncate(self.state.get("log_bytes", 0))


class Distiller(Trainer):
    """Distil a GELU ``teacher`` into a polynomial ``student`` (see :class:`Trainer`).

    Defaults are the final recipe: pure logit MSE, trainable coefficients (their own learning
    rate with ``coeff_lr``, no weight decay). ``trainable_coeffs=False`` is V3; pass
    ``loss=Loss(kl=1, temperature=4)`` or a weighted mix for other objectives."""

    def __init__(self, student, teacher, train_data, eval_data=None, **kw: Any):
        if teacher is None:
            raise ValueError("a Distiller needs a teacher; use polyvit.train for labels only")
        super().__init__(student, train_data, eval_data, teacher=teacher, **kw)


def train(model, train_data, eval_data=None, epochs: int = 10, lr: float = 1e-3,
          warmup_epochs: float = 1.0, magnitude: Optional[int] = 9, mixup: Any = "default",
          **kw: Any) -> List[Dict[str, Any]]:
    """Train ``model`` on labels (a teacher): RandAugment + Mixup/CutMix, label smoothing,
    warmup + cosine, AdamW. Returns the epoch history; see :class:`Trainer` for options
    (batch_size, workdir for checkpoints/log/resume, seed, ...)."""
    stage = Stage(epochs=epochs, lr=lr, warmup_epochs=warmup_epochs, magnitude=magnitude)
    if mixup is None:
        stage.mixup = None
    elif mixup != "default":
        stage.mixup = dict(mixup)
    return Trainer(model, train_data, eval_data, teacher=None, stages=[stage], **kw).run()
