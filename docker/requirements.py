"""Print requirement lines from pyproject.toml, for the image builds (stdlib only: it runs in the base image).

    python requirements.py --only torch torchvision            # the torch layer of the worker image
    python requirements.py --without torch torchvision         # the rest of the worker image
    python requirements.py --without torch torchvision grad-cam scikit-learn matplotlib   # the service image
    python requirements.py --build-system                      # what `pip install -e .` needs without isolation

pyproject.toml stays the one place that pins versions: the images read it rather than a copy. A name given that
pyproject.toml does not list is an error, so a renamed dependency cannot slip back into the service image.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path


def requirement_name(requirement: str) -> str:
    """PEP 503 normalised name of a requirement line (``psycopg[binary]>=3.1`` -> ``psycopg``)."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if name is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", name.group(1)).lower()


def select(requirements: list[str], *, only: list[str] | None = None, without: list[str] | None = None) -> list[str]:
    """The requirements named in ``only``, or all but those in ``without``; a name not among them is an error."""
    named = {requirement_name(r): r for r in requirements}
    asked = [requirement_name(n) for n in (only or without or [])]
    if unknown := [n for n in asked if n not in named]:
        raise ValueError(f"not a dependency in pyproject.toml: {', '.join(unknown)}")
    if only is not None:
        return [named[n] for n in asked]
    return [r for n, r in named.items() if n not in asked]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", default=Path(__file__).with_name("pyproject.toml"), type=Path,
                        help="default: pyproject.toml beside this script (where the image builds copy both)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--only", nargs="+", metavar="NAME")
    group.add_argument("--without", nargs="+", metavar="NAME")
    group.add_argument("--build-system", action="store_true")
    args = parser.parse_args(argv)
    project = tomllib.loads(args.pyproject.read_text())
    try:
        if args.build_system:
            lines = project["build-system"]["requires"]
        else:
            lines = select(project["project"]["dependencies"], only=args.only, without=args.without)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
