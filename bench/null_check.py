"""Does the audit tell a trained network from one that knows nothing? The public CIFAR ResNet-56 and the same
architecture with random weights (no --weights), each audited as a model of its own on CIFAR-10 test images, with the
null model on (recorded in one temporary SQLite database, so both read the same stored null).

    PYTHONPATH=service .venv/bin/python bench/null_check.py [--model cifar:resnet56] [--classes deer,ship]
        [--per-class 1000] [--json out.json]

Prints, per model and class, the significant pairs, the score spread and the weakest look's accuracy deficit of the
model against the null's, and the verdicts ``above_null`` / ``pairs_above_null`` (``method.looks.null_comparison``).
Needs ../shared/data. The random-weight model is built with the audit's seed (0); the null with ``null_seed(0)``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench/ is a package
from bench.shared import SHARED, WEIGHTS, extract_test_images  # noqa: E402

CHECKPOINTS = {f"cifar:{name}": WEIGHTS[name] for name in ("resnet20", "resnet56")}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cifar:resnet56", choices=sorted(CHECKPOINTS))
    ap.add_argument("--classes", default="deer,ship")
    ap.add_argument("--per-class", type=int, default=1000)
    ap.add_argument("--json")
    args = ap.parse_args()
    weights = SHARED / "cifar-resnet" / CHECKPOINTS[args.model]
    if not weights.is_file():
        print(f"skipped: {weights} absent (../shared/data is needed)")
        return 0
    import torch

    from xich.engine.config import AuditConfig
    from xich.run.context import context
    from xich.run.pipeline import recorded_audit
    from xich.settings import Settings

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="xich-null-check-") as tmp:
        data = extract_test_images(Path(tmp) / "data", args.classes.split(","), args.per_class)
        with context(Settings(database_url=f"sqlite:///{tmp}/x.db", store_url=f"{tmp}/store")) as ctx:
            for name, w in (("trained", str(weights)), ("random weights", None)):
                config = AuditConfig(model=args.model, weights=w, labels="cifar10", data=str(data), train_split=None,
                                     control=False, device="cpu")
                t0 = time.perf_counter()
                result = recorded_audit(ctx, config, model_name=f"{args.model} {name}", model_version="v1")
                seconds = time.perf_counter() - t0
                for cls in result.classes:
                    n, m = cls.null, cls.null["model"]
                    rows.append({"model": name, "class": cls.name, "seconds": round(seconds, 1),
                                 "significant_pairs": m["significant_pairs"], "null_significant_pairs": n["significant_pairs"],
                                 "score_spread": m["score_spread"], "null_score_spread": n["score_spread"],
                                 "accuracy_deficit": m["accuracy_deficit"], "deficit_se": m["deficit_se"],
                                 "null_accuracy_deficit": n["accuracy_deficit"], "null_deficit_se": n["deficit_se"],
                                 "accuracy": sum(c.baselines["accuracy"] * c.eval_size for c in cls.clusters)
                                 / sum(c.eval_size for c in cls.clusters),
                                 "above_null": n["above_null"], "pairs_above_null": n["pairs_above_null"]})
                    r = rows[-1]
                    print(f"{args.model} {name:>14} {cls.name:>6}: accuracy {r['accuracy']:.3f}; significant pairs "
                          f"{r['significant_pairs']} (null {r['null_significant_pairs']}); score spread "
                          f"{r['score_spread']:.3f} (null {r['null_score_spread']:.3f}); weakest look's accuracy "
                          f"deficit {r['accuracy_deficit']:.3f} ± {r['deficit_se']:.3f} (null "
                          f"{r['null_accuracy_deficit']:.3f} ± {r['null_deficit_se']:.3f}) -> above_null "
                          f"{r['above_null']}, pairs_above_null {r['pairs_above_null']}  [{seconds:.0f} s]", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
