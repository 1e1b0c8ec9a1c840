"""Starting an audit on the Prefect server: the one place that calls ``run_deployment``.

The deployment is ``XICH_AUDIT_DEPLOYMENT`` (``audit-model-version/audit`` of prefect.yaml), on the server at
``PREFECT_API_URL`` (both in :class:`~xich.settings.Settings`). Prefect is imported only when an audit starts.
"""

from __future__ import annotations

from ..errors import XichError
from ..settings import Settings

# what docs/service.md deploys (prefect.yaml's `audit` and `nightly`, on the process pool): not `--all`, which also
# deploys the GPU and Kubernetes deployments, whose work pools a one-machine service does not have
DEPLOY_COMMAND = "prefect --no-prompt deploy --name audit --name nightly"


def start_run(settings: Settings, parameters: dict, *, name: str | None = None):
    """A flow run of the audit deployment with ``parameters``, created and not waited for (``timeout=0``).

    Raises what Prefect raises: no such deployment (ObjectNotFound), a server that does not answer.
    """
    from prefect.deployments import run_deployment

    return run_deployment(settings.audit_deployment, parameters=parameters, timeout=0,
                          flow_run_name=name or f"{parameters['model']}-{parameters['version']}")


def start_deployment(settings: Settings, parameters: dict) -> str:
    """The id of a new flow run auditing a registered version (``audit_model_version``'s ``parameters``);
    XichError when ``PREFECT_API_URL`` is not set (there is no server to start it on)."""
    if not settings.prefect_api_url:
        raise XichError("PREFECT_API_URL is not set, so there is no Prefect server to start it on")
    return str(start_run(settings, parameters).id)


def why_not_started(settings: Settings, exc: BaseException) -> str:
    """What stopped :func:`start_run`, in words that name the cause and its fix: a server that is not reachable at
    ``PREFECT_API_URL`` (start it, or unset the variable), a deployment that is not there (deploy it), else
    Prefect's own first line."""
    url = settings.prefect_api_url
    chain, seen = [], exc
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    first = str(exc).splitlines()[0] if str(exc) else ""
    # refused (httpx's ConnectError over ConnectionRefusedError), or Prefect's own "Timed out while attempting to
    # connect to … Prefect API server"
    if any(isinstance(e, ConnectionError) or type(e).__name__ in ("ConnectError", "ConnectTimeout")
           or "attempting to connect" in str(e) for e in chain):
        return (f"Prefect at {url} is not reachable: no server answers at that PREFECT_API_URL "
                f"({type(exc).__name__}: {first}); start it (`prefect server start`, docs/service.md) or unset "
                f"PREFECT_API_URL to audit in this process")
    if type(exc).__name__ == "ObjectNotFound":
        return (f"Prefect at {url} has no deployment {settings.audit_deployment}; deploy it "
                f"(`{DEPLOY_COMMAND}`, docs/service.md) or unset PREFECT_API_URL to audit in this process")
    return (f"Prefect at {url} ({type(exc).__name__}: {first}); check the server, or unset PREFECT_API_URL to audit "
            f"in this process")
