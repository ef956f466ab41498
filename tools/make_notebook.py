"""Writes notebooks/quickstart.ipynb (without outputs; CI executes it: tests/test_notebook.py).

    python tools/make_notebook.py
"""
import nbformat as nbf
nb = nbf.v4.new_notebook()
md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
cells = [
md("""# polyvit quickstart: from a GELU ViT to an MPC-friendly quadratic ViT

This notebook walks through the method on the assets that ship inside the package (no network,
no data download): a 12-block ViT trained by polyvit on CIFAR-10 and 500 real CIFAR-10 test images.

1. load the GELU teacher and the images;
2. **V1**: replace GELU in every block with the static least-squares quadratic;
3. look at each block's real pre-activations against the fitted polynomial;
4. **V2**: DirectFit on real activations with the per-layer Scale Fix;
5. a short **distillation** with trainable coefficients and pure logit MSE, with its curves;
6. the results table and what the replacement saves under MPC.

It runs top to bottom in a few minutes on 2 CPU cores (CI executes it). `EPOCHS` below sets the
length of the distillation."""),
code("""import os, tempfile, time
import numpy as np
import polyvit
from polyvit import fit, mpc, plots
from polyvit.demo import load_assets
from polyvit.losses import Loss
from polyvit.metrics import evaluate
from polyvit.training import Distiller, Stage
from IPython.display import Image, Markdown, display

EPOCHS = int(os.environ.get("POLYVIT_NB_EPOCHS", "4"))
work = tempfile.mkdtemp(prefix="polyvit-quickstart-")
teacher, train, test, classes = load_assets()
print(teacher)
print(f"{len(train[0])} images to calibrate and distil, {len(test[0])} to evaluate; classes: {classes}")"""),
md("## The teacher\n\nTop-1 on the held-out half of the images. `evaluate` also reports fidelity (agreement with the teacher's predictions) and the cosine between logits; for the teacher against itself those are 1."),
code("""rows = []
def add_row(name, model, seconds=0.0):
    r = evaluate(model, teacher, test)
    rows.append(dict(name=name, top1=r["student_top1"], fidelity=r["fidelity"],
                     cosine=r["logit_cosine"], gelu_pct=mpc.count(model)["gelu_comparison_pct"],
                     seconds=seconds))
    print(f"{name:<32s} top-1 {100*r['student_top1']:5.1f}%  fidelity {100*r['fidelity']:5.1f}%  "
          f"cosine {r['logit_cosine']:.3f}")
add_row("teacher (GELU)", teacher)"""),
md("## V1: the static fit\n\nEvery block gets the same quadratic, the least-squares fit of GELU on [-3, 3] weighted by a standard normal. It knows nothing about the activations the network actually produces: how far it falls depends on how wide the teacher's pre-activations are (a well-trained ViT's reach far outside [-3, 3], and V1 collapses: in the 12-block teacher shipped here, 6-20% of the first three blocks' pre-activations lie outside [-3, 3], and V1 falls from about 83% to about 24%)."),
code("""t = time.time()
v1 = polyvit.student(teacher, "all")
fit.static(v1, "all")
add_row("Full, V1 static fit", v1, time.time() - t)
print("V1 coefficients (a, b, c):", [round(float(v), 4) for v in (v1.coefficients(0)[k].item() for k in "abc")])"""),
md("## What the blocks really see\n\nThe teacher's MLP pre-activations on the calibration images, per block, with GELU and the V1 polynomial over them. Where the histogram reaches outside [-3, 3] the static quadratic grows far away from GELU."),
code("""pre = fit.collect_preactivations(teacher, train[0], "all", max_samples=200_000)
for b, v in pre.items():
    print(f"block {b}: pre-activations in [{v.min():7.2f}, {v.max():7.2f}], 1st-99th percentile "
          f"[{np.percentile(v, 1):6.2f}, {np.percentile(v, 99):6.2f}]")
display(Image(plots.plot_fits(v1, pre, os.path.join(work, "fits-v1.png"), title="V1: static fit")))"""),
md("## V2: DirectFit + Scale Fix\n\nEach block's quadratic is fitted to GELU on that block's own pre-activations, then the Scale Fix rescales it so that the block's output keeps the teacher's scale."),
code("""t = time.time()
v2 = polyvit.student(teacher, "all", max_batch=64)
reports = fit.directfit(v2, teacher, train[0], "all")
add_row("Full, V2 DirectFit + Scale Fix", v2, time.time() - t)
for r in reports:
    d = r.to_dict()
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items() if not isinstance(v, list)})
display(Image(plots.plot_fits(v2, pre, os.path.join(work, "fits-v2.png"), title="V2: DirectFit + Scale Fix")))"""),
md("## Distillation with trainable coefficients\n\nThe student learns from the GELU teacher's logits alone (pure logit MSE, no labels), with RandAugment + Mixup/CutMix and a cosine learning rate; the polynomial coefficients train too, at their own learning rate. The log holds accuracy and fidelity per epoch on the held-out images."),
code("""t = time.time()
d = Distiller(v2, teacher, train, test, loss=Loss(mse=1.0, ce=0.0), coeff_lr=1e-2, batch_size=50,
              seed=0, workdir=os.path.join(work, "distill"), progress=False,
              stages=[Stage(epochs=EPOCHS, lr=3e-4, warmup_epochs=1.0, magnitude=9)])
d.run()
add_row(f"Full, distilled ({EPOCHS} short epochs)", v2, time.time() - t)
display(Image(plots.plot_curves({"Full, trainable coefficients": d.log_path},
                                os.path.join(work, "curves.png"), title="distillation")))"""),
md("## Results\n\nThe same table as `python -m polyvit demo`. 'GELU comparisons left' is the share of the GELU teacher's secure comparisons in the MLP activations that the model still needs: 0% for Full."),
code("""from polyvit.demo import table
display(Markdown(table(rows)))"""),
md("## What it saves under MPC\n\nPer-element costs measured with SecretFlow SPU 0.9.5 (SEMI2K, 64-bit ring, 18 fractional bits): the activations of one forward pass, GELU teacher vs the Full student. `polyvit.mpc` runs the model under SPU itself when the `mpc` extra is installed."),
code("""for name, m in (("teacher", teacher), ("Full student", v2)):
    c = mpc.count(m)["total"]
    print(f"{name:<13s} {c['bytes'] / 1e6:7.1f} MB and {c['rounds']:5.0f} rounds per image in the "
          f"activations and softmax; secure comparisons: {c['gelu_comparisons']:9.0f} (GELU) + "
          f"{c['softmax_comparisons']:6.0f} (softmax)")"""),
]
nb["cells"] = cells
nb["metadata"] = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                  "language_info": {"name": "python"}}
# stable cell ids: nbformat draws random ones, which made every regeneration a diff of all cells
for i, cell in enumerate(nb.cells):
    cell["id"] = f"cell-{i:02d}"
nbf.write(nb, "notebooks/quickstart.ipynb")
