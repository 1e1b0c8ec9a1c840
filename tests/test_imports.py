"""What the light entry points import: `xich register`, `xich db` and the registry hooks must not load torch
(the service image has none) nor Prefect (1–2 s); nor mlflow, which the hooks import only to read a source; nor
numpy and scipy (scipy.stats alone is ~1 s), which only an audit's numbers need."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "prefect", "matplotlib", "sklearn", "pytorch_grad_cam", "mlflow", "numpy", "scipy")


@pytest.mark.parametrize("modules", [["xich.cli"], ["xich.records.registration", "xich.records.migrate", "xich.records.persist"],
                                     ["xich.hooks.receiver", "xich.hooks.mapping", "xich.records.mlflow_registry", "xich.records.deliveries"],
                                     ["xich.hooks", "xich.run.context", "xich.run.deploy", "xich.result"]])
def test_light_modules_import_nothing_heavy(modules):
    code = (f"import sys, json; import {', '.join(modules)}; "
            f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       check=True).stdout)
    assert loaded == [], f"importing {modules} loads {loaded}"


def test_register_audit_through_prefect_imports_no_torch(tmp_path):
    """`xich register --audit` with PREFECT_API_URL starts the deployment from the service image, which has no torch:
    that path may load Prefect's client, nothing heavier (here no server answers, so it fails after the import)."""
    (tmp_path / "data" / "test" / "cat").mkdir(parents=True)
    code = ("import sys, json\nfrom xich.cli import main\n"
            f"code = main(['register', '--model', 'm', '--version', '1', '--spec', 'cifar:resnet20', "
            f"'--dataset', {str(tmp_path / 'data')!r}, '--audit'])\n"
            f"print(json.dumps([code, 'prefect' in sys.modules, [m for m in {list(HEAVY[:2] + HEAVY[3:])!r} "
            "if m in sys.modules]]))")
    env = {**os.environ, "XICH_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
           "PREFECT_API_URL": "http://127.0.0.1:9/api", "PREFECT_HOME": str(tmp_path / "prefect")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    code, prefect_loaded, heavy = json.loads(done.stdout.splitlines()[-1])
    assert (code, prefect_loaded, heavy) == (2, True, []), done.stderr[-2000:]


def test_register_imports_nothing_heavy(tmp_path):
    """`xich register` (no --audit) records the version with the light modules only."""
    (tmp_path / "data" / "test" / "cat").mkdir(parents=True)
    code = ("import sys, json\nfrom xich.cli import main\n"
            f"code = main(['register', '--model', 'm', '--version', '1', '--spec', 'cifar:resnet20', "
            f"'--dataset', {str(tmp_path / 'data')!r}])\n"
            f"print(json.dumps([code, [m for m in {list(HEAVY)!r} if m in sys.modules]]))")
    env = {**os.environ, "XICH_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert json.loads(done.stdout.splitlines()[-1]) == [0, []], done.stderr[-2000:]
