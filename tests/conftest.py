from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xich.synth import SynthSpec, write_synth


@pytest.fixture(scope="session", autouse=True)
def _embedded_default_in_tmp(tmp_path_factory):
    """The CLI records audits in XICH_DATABASE_URL: keep the tests' records out of the working tree."""
    root = tmp_path_factory.mktemp("xich-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XICH_DATABASE_URL", f"sqlite:///{root / 'xich.db'}")
        mp.setenv("XICH_STORE_URL", str(root / "store"))
        mp.setenv("XICH_CACHE_DIR", str(root / "cache"))
        yield


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A small planted-bias dataset (3 shapes x 3 looks; 12 test, 30 train images per class)."""
    root = tmp_path_factory.mktemp("synth")
    write_synth(root, SynthSpec(classes=3, subgroups=3, rare_fraction=0.1, train_per_class=30, test_per_subgroup=4))
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads and lose much (6x here) when another process holds the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
