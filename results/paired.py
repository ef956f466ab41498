"""Add the gap's paired statistics to distilled rows written before the experiment kept them.

    python results/paired.py --teacher results/teacher-cifar12/model.safetensors \
        results/cifar12 results/cifar12-long

A row's gap (student top-1 minus teacher top-1 on the same test images) is one draw: how far it
can be trusted depends on the images the two models disagree on. ``polyvit.metrics.paired_gap``
gives the images only the student gets right, those only the teacher gets right, and the gap's
paired standard error; ``experiment.run`` stores them in new rows. For an older V3 or final row
this script loads the student from its distillation's last checkpoint (``runs/<row>/``, kept on
the machine that ran it, not in git), evaluates it against the teacher on the full CIFAR-10 test
set, and adds the three figures to the row's JSON only if the student's top-1 and fidelity are the
row's own to the image, and its logit cosine and KL the row's to rounding (otherwise the checkpoint is not the model the row measured, and the row
is left as it is). The folder's table.md is then written again.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import polyvit
from polyvit import experiment
from polyvit.cli import load_data
from polyvit.metrics import evaluate


def backfill(folder: str, teacher, test) -> int:
    """The rows of ``folder`` given paired statistics; returns how many were added."""
    added = 0
    for path in sorted(glob.glob(os.path.join(folder, "*-*.json"))):
        with open(path) as f:
            row = json.load(f)
        if row.get("method") not in ("V3", "final") or "gap_se" in row:
            continue
        label = os.path.basename(path)[:-len(".json")]
        ckpt = os.path.join(folder, "runs", label, "checkpoint.safetensors")
        if not os.path.exists(ckpt):
            print(f"{path}: no checkpoint at {ckpt}; left as it is", file=sys.stderr)
            continue
        if row.get("n_test") != len(test):
            print(f"{path}: measured on {row.get('n_test')} images, not the {len(test)} here; "
                  f"left as it is", file=sys.stderr)
            continue
        student = polyvit.load(ckpt, max_batch=500)
        r = evaluate(student, teacher, (test.images, test.labels), activations=False)
        n = len(test)
        same = (round(r["student_top1"] * n) == round(row["top1"] * n)
                and round(r["fidelity"] * n) == round(row["fidelity"] * n)
                and round(r["teacher_top1"] * n) == round(row["teacher_top1"] * n)
                # counts can tie by chance; the logits' agreement with the teacher cannot
                and abs(r["logit_cosine"] - row["logit_cosine"]) <= 1e-6
                and abs(r["kl"] - row["kl"]) <= 1e-4 * abs(row["kl"]) + 1e-9)
        if not same:
            print(f"{path}: the checkpoint gives top-1 {r['student_top1']:.4f} / fidelity "
                  f"{r['fidelity']:.4f} / KL {r['kl']:.6g}, the row {row['top1']:.4f} / "
                  f"{row['fidelity']:.4f} / {row['kl']:.6g}: not the same model; left as it is",
                  file=sys.stderr)
            continue
        for k in experiment.PAIRED:
            row[k] = r[k]
        row["paired_from"] = f"{ckpt} by results/paired.py"
        experiment._write_json(path, row)
        print(f"{row['name']}: gap {100 * (row['top1'] - row['teacher_top1']):+.2f} ± "
              f"{100 * r['gap_se']:.2f} (student only {r['student_only_correct']}, teacher only "
              f"{r['teacher_only_correct']})", file=sys.stderr)
        added += 1
    rows, _ = experiment.collect(folder)
    experiment.write_table(folder, rows)
    return added


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--data", help="as polyvit experiment's --data (default: the shared CIFAR-10)")
    p.add_argument("folders", nargs="+")
    a = p.parse_args()
    teacher = polyvit.load(a.teacher, max_batch=500)
    test = load_data(a.data, "test")
    for folder in a.folders:
        print(f"{folder}: {backfill(folder, teacher, test)} rows given paired statistics",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
