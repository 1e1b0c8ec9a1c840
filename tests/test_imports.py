"""What the light entry points import: `xich register`, `xich db` and the registry hooks must not load torch
(the service image has none) nor Prefect (1–2 s); nor mlflow, which the hooks import only to read a source."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "prefect", "matplotlib", "sklearn", "pytorch_grad_cam", "mlflow")


@pytest.mark.parametrize("modules", [["xich.cli"], ["xich.registration", "xich.migrate", "xich.persist"],
                                     ["xich.hooks", "xich.hook_mapping", "xich.mlflow_registry", "xich.deliveries"]])
def test_light_modules_import_nothing_heavy(modules):
    code = (f"import sys, json; import {', '.join(modules)}; "
            f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       check=True).stdout)
    assert loaded == [], f"importing {modules} loads {loaded}"
