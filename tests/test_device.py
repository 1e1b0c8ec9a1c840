"""xich.device.resolve_device: a --device that parses but cannot be used fails before any work."""

from __future__ import annotations

import pytest
import torch

from xich.engine.device import resolve_device
from xich.errors import XichError


def test_default_and_cpu():
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name, fragment", [
    ("cuda:99", "--device cuda:99: not usable here ("),  # no driver here; no 100th GPU on a GPU machine
    ("cud", "--device cud: not usable here (Expected one of cpu, cuda"),
    ("xpu", "--device xpu: not usable here ("),  # a backend this torch was built without
])
def test_unusable_device_names_the_flag(name, fragment):
    with pytest.raises(XichError) as info:
        resolve_device(name)
    msg = str(info.value)
    assert msg.startswith(fragment) and msg.endswith("; use cpu or cuda") and "\n" not in msg
