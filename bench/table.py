"""Print the README's results table from bench/results/*.json (python bench/table.py)."""
import glob
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    rows = []
    for path in sorted(glob.glob(os.path.join(HERE, "results", "cpu_engine_*.json"))):
        r = json.load(open(path))
        c, p, q = r["config"], r["polyvit"], r["peer"]
        rows.append(f"| {c['preset']} | {c['batch']} | {c['threads']} | "
                    f"{p['forward_img_s']:.1f} | {q['forward_img_s']:.1f} | **{r['ratio']['forward']:.2f}x** | "
                    f"{p['train_img_s']:.1f} | {q['train_img_s']:.1f} | **{r['ratio']['train']:.2f}x** | "
                    f"{p['train_gflop_s']:.0f} | {r['device']}, {r['date'][:10]} |")
    print("| model | batch | threads | polyvit fwd img/s | PyTorch fwd | ratio | polyvit train img/s "
          "| PyTorch train | ratio | polyvit train GFLOP/s | machine |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    aug = sorted(glob.glob(os.path.join(HERE, "results", "augment_*.json")))
    if aug:
        print()
        print("| images | polyvit RandAugment(2, 9), 1 thread | torchvision (PIL), 1 thread | ratio per core "
              "| + normalize + Mixup: polyvit | torchvision | ratio | 2 threads: polyvit img/s | machine |")
        print("|---|---|---|---|---|---|---|---|---|")
        for path in aug:
            r = json.load(open(path))
            p, q, k = r["polyvit"], r["peer"], r["ratio"]
            size = r["config"].get("image_size", r["config"].get("size", "?"))
            print(f"| {size} | {p['randaugment_img_s_t1']:,.0f} | {q['randaugment_img_s']:,.0f} | "
                  f"**{k['randaugment_per_core_t1']:.1f}x** | {p['pipeline_img_s_t1']:,.0f} | "
                  f"{q['pipeline_img_s']:,.0f} | **{k['pipeline_per_core_t1']:.1f}x** | "
                  f"{p.get('randaugment_img_s_t2', float('nan')):,.0f} | {r['device']}, {r['date'][:10]} |")


if __name__ == "__main__":
    main()
