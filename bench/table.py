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


if __name__ == "__main__":
    main()
