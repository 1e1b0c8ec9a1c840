"""What every benchmark sets up: where the repository and the shared data are, the CIFAR-10 classes and the
public checkpoints, a clock that prints elapsed time, the number formats and the line that says where a number
was measured.
Only the standard library is imported here (numpy and torch where a function needs them), so that a benchmark
measuring what its imports cost (``bench_full_audit.py``) measures its own.

A script in ``bench/`` is run as ``python bench/NAME.py``; it puts the repository root on ``sys.path`` and imports
``bench.shared`` (and, for the study, ``bench.sections``), so nothing here depends on the working directory.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout, or $XICH_SHARED_DATA (as the tests read it)
SHARED = Path(os.environ.get("XICH_SHARED_DATA") or ROOT.parent / "shared" / "data")
CIFAR_JPEG = SHARED / "cifar10-jpeg"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
WEIGHTS = {"resnet20": "resnet20-12fca82f.th", "resnet32": "resnet32-d509ac18.th",
           "resnet44": "resnet44-014dd654.th", "resnet56": "resnet56-4bfd9763.th"}
RESNET20 = SHARED / "cifar-resnet" / WEIGHTS["resnet20"]


class Clock:
    """Wall time per section (sections interleave: each model is loaded once for all of them)."""

    def __init__(self, spent: dict[str, float] | None = None, total: float | None = None):
        self.spent: dict[str, float] = defaultdict(float, spent or {})
        self.t0, self.final = time.perf_counter(), total

    def section(self, name: str):
        clock = self

        class _Span:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                clock.spent[name] += time.perf_counter() - self.t

        return _Span()

    def total(self) -> float:
        return self.final if self.final is not None else time.perf_counter() - self.t0


def say(clock: Clock, msg: str) -> None:
    print(f"[{clock.total():7.1f} s] {msg}", flush=True)


def fmt(v, nd: int = 2) -> str:
    """``v`` to ``nd`` decimals; ``–`` for a missing or NaN value."""
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def mean_known(vals) -> float | None:
    """The mean of the values that are neither None nor NaN; None when there are none."""
    import numpy as np

    v = [x for x in vals if x is not None and not np.isnan(x)]
    return float(np.mean(v)) if v else None


def extract_test_images(root: Path, classes: list[str], per_class: int) -> Path:
    """The first ``per_class`` CIFAR-10 test JPEGs of each of ``classes``, as the image folder ``root/test/<class>/``
    (a temporary copy, never the repository); returns ``root``. The tests' CIFAR subsets are made by it too."""
    import shutil
    import tarfile

    wanted = dict.fromkeys(classes, 0)
    with tarfile.open(CIFAR_JPEG / "test.tar.gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and wanted.get(parts[1], per_class) < per_class:
                target = root / "test" / parts[1] / parts[2]
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                wanted[parts[1]] += 1
            if all(v >= per_class for v in wanted.values()):
                break
    return root


def absent(*paths: Path) -> bool:
    """Whether a file a benchmark needs is missing; if so, says which (the benchmark then skips)."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"skipped: {', '.join(missing)} absent (../shared/data is needed; see its README.md)")
    return bool(missing)


def peak_rss_mb(field: str = "VmHWM") -> float:
    """This process's peak resident memory (``VmHWM``; ``VmRSS``: the current one), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def environment() -> str:
    """Where a number was measured: the commit (and whether the tree had changes), Python, torch, threads, CPUs,
    the date."""
    import torch

    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return (f"code {commit}; Python {platform.python_version()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch thread(s) on {platform.machine()} with "
            f"{os.cpu_count()} CPU(s); {time.strftime('%Y-%m-%d')}")
