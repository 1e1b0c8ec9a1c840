"""How often the demo finds its planted rare subgroup, over several seeds (one demo per seed).

    .venv/bin/python bench/bench_demo_seeds.py [--seeds 0 1 2 3 4] [--epochs 8] [--out /tmp/xich-demo-seeds]
"""

from __future__ import annotations

import argparse
import time

from xich.demo import run_demo


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--out", default="/tmp/xich-demo-seeds")
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args()
    total = found = 0
    for seed in args.seeds:
        t = time.perf_counter()
        _, findings = run_demo(f"{args.out}/seed{seed}", seed=seed, epochs=args.epochs, say=lambda line: None)
        hits = sum(f.found for f in findings)
        total, found = total + len(findings), found + hits
        ranks = ", ".join(f"{f.class_name} rank {f.rank}/{f.n_clusters} ({f.rare_in_cluster}/{f.rare_total})" for f in findings)
        print(f"seed {seed}: found in {hits} of {len(findings)} classes ({time.perf_counter() - t:.0f} s) — {ranks}", flush=True)
    print(f"overall: {found} of {total} classes ({found / total:.0%}) over {len(args.seeds)} seeds")


if __name__ == "__main__":
    main()
