"""The demo's product path over several seeds (one demo per seed): does v1's audit flag the rare look, does v2,
trained from v1's oversample file, get the look right more often, and where does the paper's dominance put it?

    .venv/bin/python bench/bench_demo_seeds.py [--seeds 0 1 2 3 4] [--epochs 8] [--augment rot180]
        [--out /tmp/xich-demo-seeds]

Per seed (4 classes, one rare look each): the classes whose rare look's cluster v1's audit flags (the headline
signal), the classes where the look's accuracy rose / fell from v1 to v2, its mean accuracy v1 -> v2, the classes
where dominance ranked it least or second-least in v1 and where it moved up in v2, and the significant losses of
those clusters v1 -> v2. ``--augment`` is the training augmentation (default: the demo's, ``rot180``).
Measured runs are in docs/benchmarks.md (2026-12-07, seeds 0-4: flagged in 20 of 20 classes, accuracy up in 6 and
down in none, moved up in 12 of 20, losses 49 -> 30).
"""

from __future__ import annotations

import argparse
import time

from xich.demo import AUGMENT, run_demo
from xich.engine.train import AUGMENTATIONS


def seed_row(findings: dict) -> dict:
    """The product path's numbers of one demo run (``run_demo``'s findings per version)."""
    v1, v2 = findings["v1"][1], findings["v2"][1]
    pairs = [(a.accuracy, b.accuracy) for a, b in zip(v1, v2) if a.accuracy is not None and b.accuracy is not None]
    return {"classes": len(v1), "flagged_v1": sum(f.flagged for f in v1),
            "accuracy_up": sum(b > a for a, b in pairs), "accuracy_down": sum(b < a for a, b in pairs),
            "accuracy_v1": sum(a for a, _ in pairs) / len(pairs), "accuracy_v2": sum(b for _, b in pairs) / len(pairs),
            "found_v1": sum(f.found for f in v1),
            "moved_up": sum(a.rank is not None and b.rank is not None and b.rank < a.rank for a, b in zip(v1, v2)),
            "losses_v1": sum(f.losses for f in v1), "losses_v2": sum(f.losses for f in v2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--out", default="/tmp/xich-demo-seeds")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--augment", default=AUGMENT, choices=list(AUGMENTATIONS))
    args = ap.parse_args()
    rows = []
    t0 = time.perf_counter()
    for seed in args.seeds:
        t = time.perf_counter()
        row = seed_row(run_demo(f"{args.out}/seed{seed}", seed=seed, epochs=args.epochs, say=lambda line: None,
                                augment=args.augment))
        rows.append(row)
        print(f"seed {seed} ({time.perf_counter() - t:.0f} s): flagged in v1 {row['flagged_v1']}/{row['classes']}; "
              f"rare look's accuracy up in {row['accuracy_up']}, down in {row['accuracy_down']} "
              f"({row['accuracy_v1']:.3f} -> {row['accuracy_v2']:.3f}); dominance: least or second-least in v1 "
              f"{row['found_v1']}/{row['classes']}, moved up in v2 {row['moved_up']}; losses {row['losses_v1']} -> "
              f"{row['losses_v2']}", flush=True)
    total = lambda k: sum(r[k] for r in rows)  # noqa: E731
    n = total("classes")
    print(f"overall ({len(rows)} seeds, {n} classes, augment {args.augment}, {args.epochs} epochs, "
          f"{time.perf_counter() - t0:.0f} s): flagged in v1 {total('flagged_v1')}/{n}; accuracy up "
          f"{total('accuracy_up')}, down {total('accuracy_down')} (per seed mean "
          f"{min(r['accuracy_v1'] for r in rows):.3f}-{max(r['accuracy_v1'] for r in rows):.3f} -> "
          f"{min(r['accuracy_v2'] for r in rows):.3f}-{max(r['accuracy_v2'] for r in rows):.3f}); dominance least or "
          f"second-least in v1 {total('found_v1')}/{n}, moved up {total('moved_up')}/{n}; losses "
          f"{total('losses_v1')} -> {total('losses_v2')}")


if __name__ == "__main__":
    main()
