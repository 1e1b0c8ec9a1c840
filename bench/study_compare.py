"""Compare two runs of the study's sections 1-4 (``study.json``'s fig3, train_share, stability and shift): every
number, to a tolerance. Used to check that a rerun (``python bench/study.py --out DIR``) reproduces the committed
``docs/science/study.json``.

    python bench/study_compare.py docs/science/study.json /tmp/study14/science/study.json [--tol 1e-6]

Prints how many numbers were compared, how many differ by more than ``--tol`` (and the largest differences), and
which keys are in one run only; exits 1 when any differ.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

SECTIONS = ("fig3", "train_share", "stability", "shift")


def leaves(x, path: str = ""):
    """(path, value) for every number, string and null under ``x``."""
    if isinstance(x, dict):
        for k, v in x.items():
            yield from leaves(v, f"{path}/{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from leaves(v, f"{path}[{i}]")
    else:
        yield path, x


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--tol", type=float, default=1e-6, help="largest absolute difference counted as equal")
    args = ap.parse_args()
    docs = [json.load(open(p)) for p in (args.a, args.b)]
    a, b = ({p: v for s in SECTIONS for p, v in leaves(d.get(s, {}), s)} for d in docs)
    compared, differ = 0, []
    for path in sorted(a.keys() & b.keys()):
        x, y = a[path], b[path]
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
            compared += 1
            gap = abs(x - y) if not (math.isnan(x) and math.isnan(y)) else 0.0
            if not gap <= args.tol:
                differ.append((gap, path, x, y))
        elif x != y:
            differ.append((math.inf, path, x, y))
    only = sorted(a.keys() ^ b.keys())
    print(f"{compared} numbers compared in {', '.join(SECTIONS)}; {len(differ)} differ by more than {args.tol:g}; "
          f"{len(only)} keys in one run only")
    for gap, path, x, y in sorted(differ, key=lambda t: -t[0])[:20]:
        print(f"  {path}: {x!r} against {y!r}")
    for path in only[:20]:
        print(f"  only in {'the first' if path in a else 'the second'}: {path}")
    return 1 if differ or only else 0


if __name__ == "__main__":
    sys.exit(main())
