"""Starting an audit on the Prefect server: the one place that calls ``run_deployment``.

The deployment is ``XICH_AUDIT_DEPLOYMENT`` (``audit-model-version/audit`` of prefect.yaml), on the server at
``PREFECT_API_URL`` (both in :class:`~xich.settings.Settings`). Prefect is imported only when an audit starts.
"""

from __future__ import annotations

from ..errors import XichError
from ..settings import Settings


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
