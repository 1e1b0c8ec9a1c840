"""The rare-look benchmark (issue 24; section 9 of docs/science.md): the ground-truth cases, the models of each tier,
the audits with every signal and the peers (``bench/sections/rare_looks.py``), then the tables
(``bench/sections/rare_looks_report.py``).

    make rare-looks        # = .venv/bin/python bench/rare_looks.py  (needs ../shared/data; see docs/science.md §9)
    .venv/bin/python bench/rare_looks.py --tiers ft --e2e-seeds 0,1,2 --e2e-conditions 5
    .venv/bin/python bench/rare_looks.py --report-only   # tables and records again from the cached case records
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench/ is a package
from bench.sections.rare_looks import CACHE, run  # noqa: E402
from bench.sections.rare_looks_report import report  # noqa: E402
from bench.shared import ROOT  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiers", default="cheap,e2e,ft,ft-flat", help="comma-separated: cheap, e2e, ft, ft-flat")
    ap.add_argument("--seeds", default="0,1,2", help="cheap tier seeds")
    ap.add_argument("--conditions", default="2,5,10", help="rarities (percent) of the cheap tier")
    ap.add_argument("--e2e-seeds", default="0,1,2", help="seeds of the end-to-end tiers (e2e, ft, ft-flat)")
    ap.add_argument("--e2e-conditions", default="5", help="rarities (2, 5, 10) of the end-to-end tiers (e2e, ft, ft-flat)")
    ap.add_argument("--epochs", type=int, default=5, help="end-to-end epochs (from scratch)")
    ap.add_argument("--ft-epochs", type=int, default=8, help="fine-tuning epochs (tiers ft, ft-flat)")
    ap.add_argument("--ft-lr", type=float, default=1e-3, help="fine-tuning learning rate (tiers ft, ft-flat)")
    ap.add_argument("--train-per-super", type=int, default=600)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fresh", action="store_true", help="retrain and re-audit cached cases")
    ap.add_argument("--no-cleanlab", action="store_true")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--machine", help="the machine and its load, as the tables should state it")
    ap.add_argument("--out", default=str(ROOT / "docs"))
    args = ap.parse_args(argv)
    if not args.report_only:
        run(args)
    report(CACHE / "records", Path(args.out), " ".join(sys.argv[1:]),
           args.machine or f"a {os.cpu_count()}-core machine, {args.threads} torch threads per process")


if __name__ == "__main__":
    main()
