"""Where the tests find ``../shared/data`` (real CIFAR-10 JPEGs and pretrained CIFAR ResNets; its README).

``XICH_SHARED_DATA`` points elsewhere (CI's copy, or an absent folder to check that a required run fails).
Tests that need it carry ``@pytest.mark.shared_data`` and skip through :func:`require`; under
``XICH_REQUIRE_ALL=1`` (``.ci/run``) the skip becomes a failure (see conftest.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench/ is a package
# one definition of where the data lies and of the CIFAR subsets, for the tests and the benchmarks
from bench.shared import CIFAR_JPEG as CIFAR10, RESNET20, SHARED, extract_test_images  # noqa: E402,F401


def present() -> bool:
    """Whether the CIFAR-10 JPEG tarballs and the ResNet-20 checkpoint are there."""
    return RESNET20.is_file() and (CIFAR10 / "test.tar.gz").is_file() and (CIFAR10 / "train.tar.gz").is_file()


REASON = f"../shared/data missing: no CIFAR-10 JPEGs or ResNet-20 checkpoint under {SHARED}"
skip_without = pytest.mark.skipif(not present(), reason=REASON)


def require() -> None:
    """Skip the calling test (a failure under XICH_REQUIRE_ALL) when the data is absent."""
    if not present():
        pytest.skip(REASON)
