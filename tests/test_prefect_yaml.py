"""prefect.yaml without a Prefect server: every deployment names a flow of flows/audit.py, and the Kubernetes
deployment's job variables, rendered into the pool's base job template (k8s/base-job-template.json) by Prefect's own
templating, give a batch/v1 Job whose one container requests the GPUs asked for."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml
from prefect.utilities.templating import apply_values

REPO = Path(__file__).resolve().parents[1]


def _deployments() -> dict[str, dict]:
    return {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}


def _render(template: dict, job_variables: dict) -> dict:
    """What a Kubernetes worker does with a flow run's job variables (BaseJobConfiguration.from_template_and_values:
    the variables' defaults, the deployment's values on top, then the placeholders filled)."""
    properties = template["variables"]["properties"]
    values = {k: v["default"] for k, v in properties.items() if v.get("default") is not None}
    return apply_values(template["job_configuration"], {**values, **job_variables})


def test_every_deployment_names_a_flow_of_flows_audit():
    flows = {node.name for node in ast.walk(ast.parse((REPO / "flows" / "audit.py").read_text()))
             if isinstance(node, ast.FunctionDef)
             and any(isinstance(d, ast.Call) and getattr(d.func, "id", "") == "flow" for d in node.decorator_list)}
    deployments = _deployments()
    assert {"audit", "nightly", "audit-gpu", "nightly-gpu", "audit-k8s"} <= set(deployments)
    for name, d in deployments.items():
        path, _, function = d["entrypoint"].partition(":")
        assert path == "flows/audit.py" and function in flows, name


def test_the_kubernetes_deployment_renders_a_job_requesting_one_gpu():
    template = json.loads((REPO / "k8s" / "base-job-template.json").read_text())
    k8s = _deployments()["audit-k8s"]
    assert k8s["work_pool"]["name"] == "xich-k8s"
    job_variables = k8s["work_pool"]["job_variables"]
    assert set(job_variables) <= set(template["variables"]["properties"])  # a worker refuses unknown variables
    config = _render(template, job_variables)
    job = config["job_manifest"]
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "prefect-job"  # the name the worker looks for to add the flow run's command
    assert container["image"] == "xich-worker:latest"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1  # an integer, as Kubernetes wants
    assert container["resources"]["requests"] == {"cpu": "4", "memory": "16Gi"}
    assert config["env"] == {"XICH_AUDIT_DEPLOYMENT": "audit-model-version/audit-k8s"}
    # the deployment's XICH_AUDIT_DEPLOYMENT names itself, so its shards and the nightly's audits stay on the pool
    flow_name = "audit-model-version"
    assert config["env"]["XICH_AUDIT_DEPLOYMENT"] == f"{flow_name}/{k8s['name']}"


@pytest.mark.parametrize("gpus", [0, 2])
def test_a_flow_run_may_ask_for_another_number_of_gpus(gpus):
    template = json.loads((REPO / "k8s" / "base-job-template.json").read_text())
    job = _render(template, {**_deployments()["audit-k8s"]["work_pool"]["job_variables"], "gpus": gpus})["job_manifest"]
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == gpus
