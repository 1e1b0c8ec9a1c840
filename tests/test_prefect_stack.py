"""The native Prefect stack the flows run on: a server on PostgreSQL, a process work pool, two process workers.

The Prefect clients (deploy, trigger, read back) run in a subprocess (tests/stack.py ``prefect_python``), so
that no Prefect setting, logger or thread enters the pytest process.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from contextlib import ExitStack

import pytest

from stack import create_process_pool, log_tail, prefect_missing, prefect_python, prefect_worker

if (_missing := prefect_missing()) is not None:
    pytest.skip(f"native Prefect stack not tested: {_missing}", allow_module_level=True)

log = logging.getLogger(__name__)

NAP_SECONDS = 3  # long enough that a worker holding one run (limit 1) cannot also take the other

FLOW = '''
import json
import os
import time
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run


@flow
def nap(seconds: float, out: str) -> None:
    """Sleeps; leaves OUT/<flow run id>.json saying which worker's process ran it."""
    started = time.time()
    time.sleep(seconds)
    Path(out, f"{flow_run.id}.json").write_text(json.dumps(
        {"worker": os.environ.get("PREFECT__WORKER_NAME"), "pid": os.getpid(), "started": started,
         "ended": time.time()}))
'''

DRIVER = '''
"""python driver.py SOURCE POOL RUNS SECONDS OUT TIMEOUT: deploy SOURCE/nap.py:nap to POOL, start RUNS flow runs,
wait until all are final (or TIMEOUT s), print one JSON line."""
import json
import sys
import time

from prefect import flow
from prefect.client.orchestration import get_client

source, pool, runs, seconds, out, timeout = sys.argv[1:]
t0 = time.monotonic()
deployment_id = flow.from_source(source=source, entrypoint="nap.py:nap").deploy(
    name="nap", work_pool_name=pool, print_next_steps=False)
deploy_s = time.monotonic() - t0
with get_client(sync_client=True) as client:
    t1 = time.monotonic()
    ids = [client.create_flow_run_from_deployment(deployment_id, parameters={"seconds": float(seconds), "out": out}).id
           for _ in range(int(runs))]
    while True:
        found = [client.read_flow_run(i) for i in ids]
        if all(r.state is not None and r.state.is_final() for r in found) or time.monotonic() - t1 > float(timeout):
            break
        time.sleep(0.25)
    wait_s = time.monotonic() - t1
print(json.dumps({"deploy_s": deploy_s, "wait_s": wait_s, "runs": [
    {"id": str(r.id), "state": r.state.type.value if r.state else None, "labels": dict(r.labels or {}),
     "created": r.created.timestamp(),
     "start_time": r.start_time.timestamp() if r.start_time else None,
     "end_time": r.end_time.timestamp() if r.end_time else None} for r in found]}))
'''


def test_two_process_workers_split_two_runs(prefect_server, tmp_path, record_property):
    timings: dict[str, float] = {"server_start_s": prefect_server.timings["start_s"]}
    suffix = uuid.uuid4().hex[:8]
    pool, names = f"pool-{suffix}", [f"worker-a-{suffix}", f"worker-b-{suffix}"]
    source, out = tmp_path / "source", tmp_path / "out"
    source.mkdir()
    out.mkdir()
    (source / "nap.py").write_text(FLOW)
    (tmp_path / "driver.py").write_text(DRIVER)

    began = time.monotonic()
    create_process_pool(prefect_server, pool)
    timings["pool_create_s"] = time.monotonic() - began
    with ExitStack() as started:
        workers = [started.enter_context(prefect_worker(prefect_server, pool, name, log_dir=tmp_path, wait=False))
                   for name in names]  # both start side by side
        for worker in workers:
            worker.wait_online()
        timings["workers_online_s"] = max(w.timings["start_s"] for w in workers)
        result = json.loads(prefect_python(prefect_server, tmp_path / "driver.py", str(source), pool, "2",
                                           str(NAP_SECONDS), str(out), "60", timeout=120).splitlines()[-1])
    timings["workers_stop_s"] = max(w.timings["stop_s"] for w in workers)

    runs = result["runs"]
    logs = "\n".join(f"--- {w.log.name}:\n{log_tail(w.log, 30)}" for w in workers)
    assert [r["state"] for r in runs] == ["COMPLETED", "COMPLETED"], f"{runs}\n{logs}"
    taken_by = [r["labels"].get("prefect.worker.name") for r in runs]
    assert sorted(taken_by) == sorted(names), f"both runs taken by {taken_by}, not one each:\n{logs}"
    for run, worker in zip(runs, taken_by):  # the label names the worker whose process really ran the flow
        assert json.loads((out / f"{run['id']}.json").read_text())["worker"] == worker

    timings.update(deploy_s=result["deploy_s"], trigger_to_both_final_s=result["wait_s"],
                   run_latency_s=max(r["start_time"] - r["created"] for r in runs),  # created -> flow running
                   run_duration_s=max(r["end_time"] - r["start_time"] for r in runs),
                   runs_overlap_s=min(r["end_time"] for r in runs) - max(r["start_time"] for r in runs))
    for key, value in timings.items():
        record_property(key, round(value, 2))
    log.info("prefect stack timings: %s", {k: round(v, 1) for k, v in timings.items()})
