"""The nightly flow through its deployment on the native stack (a Prefect server on PostgreSQL, a process worker):
the repository's prefect.yaml deploys ``nightly`` with its cron, and a run of that deployment audits the version
registered without an audit, through the ``audit`` deployment, on the worker.

The Prefect client runs in a subprocess (tests/stack.py ``prefect_python``), as in tests/test_prefect_stack.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import yaml
from sqlalchemy import text

from stack import log_tail, prefect_cli, prefect_python, prefect_worker
from xich.records.db import make_engine

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"classes": ["circle"], "clusters": 2, "mosaics_per_pair": 2, "train_split": "", "per_image": 0, "null": False,
            "device": "cpu"}

DRIVER = """
\"\"\"python driver.py TIMEOUT AUDIT_NAME: the nightly deployment's schedules; run it; wait until it and the
audit run it starts (AUDIT_NAME) are final; the cron's own runs (02:00) stay SCHEDULED and are not waited for.\"\"\"
import json, sys, time

from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

timeout, audit_name = float(sys.argv[1]), sys.argv[2]
with get_client(sync_client=True) as client:
    nightly = client.read_deployment_by_name("audit-new-versions/nightly")
    schedules = [{"cron": s.schedule.cron, "timezone": s.schedule.timezone, "active": s.active}
                 for s in nightly.schedules]
run = run_deployment("audit-new-versions/nightly", timeout=0)
t0 = time.monotonic()
with get_client(sync_client=True) as client:
    while True:
        runs = client.read_flow_runs(limit=50)
        final = {r.name for r in runs if r.state is not None and r.state.is_final()}
        nightly_final = any(r.id == run.id and r.state is not None and r.state.is_final() for r in runs)
        if nightly_final and audit_name in final:
            break
        if time.monotonic() - t0 > timeout:
            break
        time.sleep(1)
print(json.dumps({"schedules": schedules, "nightly": str(run.id), "wait_s": time.monotonic() - t0, "runs": [
    {"id": str(r.id), "name": r.name, "state": r.state.type.value if r.state else None,
     "message": r.state.message if r.state else None, "deployment_id": str(r.deployment_id),
     "worker": (r.labels or {}).get("prefect.worker.name")} for r in runs]}))
"""


def test_the_nightly_deployment_has_its_cron_and_audits_the_unaudited(prefect_server, results_db, synth_data, tmp_path):
    import torch

    from xich.engine.models import build_model

    cron = next(d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
                if d["name"] == "nightly")["schedules"][0]
    suffix = uuid.uuid4().hex[:8]
    torch.manual_seed(0)
    torch.save(build_model("cifar:resnet20", 3).state_dict(), tmp_path / "w.pt")
    xich_env = {"XICH_DATABASE_URL": results_db, "XICH_STORE_URL": str(tmp_path / "store"),
                "XICH_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    prefect_cli(prefect_server, "work-pool", "create", "--type", "process", "--overwrite", "xich-process")
    prefect_cli(prefect_server, "deploy", "--name", "audit", "--name", "nightly", cwd=REPO)  # the repository's file
    registered = subprocess.run(
        [str(Path(sys.executable).with_name("xich")), "register", "--model", f"nightly-{suffix}", "--version", "1",
         "--spec", "cifar:resnet20", "--weights", str(tmp_path / "w.pt"), "--dataset", str(synth_data),
         "--settings", json.dumps(SETTINGS)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=prefect_server.client_environ(xich_env))
    assert registered.returncode == 0, registered.stderr
    (tmp_path / "driver.py").write_text(DRIVER)
    with prefect_worker(prefect_server, "xich-process", f"nightly-{suffix}", log_dir=tmp_path, env=xich_env) as worker:
        result = json.loads(prefect_python(prefect_server, tmp_path / "driver.py", "300", f"nightly-{suffix}-1",
                                            timeout=360).splitlines()[-1])
    logs = log_tail(worker.log, 40)

    assert result["schedules"] == [{"cron": cron["cron"], "timezone": cron["timezone"], "active": True}]
    assert cron["cron"] == "0 2 * * *"
    states = {r["name"]: r for r in result["runs"]}
    nightly = next(r for r in result["runs"] if r["id"] == result["nightly"])
    assert nightly["state"] == "COMPLETED", f"{result}\n{logs}"
    audit = states[f"nightly-{suffix}-1"]  # the audit the nightly flow started through the audit deployment
    assert audit["state"] == "COMPLETED" and audit["worker"] == f"nightly-{suffix}", f"{result}\n{logs}"
    engine = make_engine(results_db)
    try:
        with engine.connect() as conn:
            runs = conn.execute(text("SELECT r.status, q.run_id FROM audit_run r "
                                     "JOIN audit_request q ON q.run_id = r.id")).all()
            classes = conn.execute(text("SELECT class_name FROM run_class")).scalars().all()
    finally:
        engine.dispose()
    assert [r.status for r in runs] == ["complete"] and classes == ["circle"]
