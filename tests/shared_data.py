"""Where the tests find ``../shared/data`` (real CIFAR-10 JPEGs and pretrained CIFAR ResNets; its README).

``XICH_SHARED_DATA`` points elsewhere (CI's copy, or an absent folder to check that a required run fails).
Tests that need it carry ``@pytest.mark.shared_data`` and skip through :func:`require`; under
``XICH_REQUIRE_ALL=1`` (``.ci/run``) the skip becomes a failure (see conftest.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("XICH_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
CIFAR10 = SHARED / "cifar10-jpeg"
RESNET20 = SHARED / "cifar-resnet" / "resnet20-12fca82f.th"


def present() -> bool:
    """Whether the CIFAR-10 JPEG tarballs and the ResNet-20 checkpoint are there."""
    return RESNET20.is_file() and (CIFAR10 / "test.tar.gz").is_file() and (CIFAR10 / "train.tar.gz").is_file()


REASON = f"../shared/data missing: no CIFAR-10 JPEGs or ResNet-20 checkpoint under {SHARED}"
skip_without = pytest.mark.skipif(not present(), reason=REASON)


def require() -> None:
    """Skip the calling test (a failure under XICH_REQUIRE_ALL) when the data is absent."""
    if not present():
        pytest.skip(REASON)


def extract_test_images(root: Path, classes: list[str], per_class: int) -> Path:
    """The first ``per_class`` CIFAR-10 test JPEGs of each of ``classes``, as the image folder ``root/test/<class>/``
    (a temporary copy for one test module, never the repo); returns ``root``."""
    import shutil
    import tarfile

    wanted = dict.fromkeys(classes, 0)
    with tarfile.open(CIFAR10 / "test.tar.gz") as tar:
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
