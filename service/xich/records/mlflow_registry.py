"""MLflow's model registry through its client (``mlflow-skinny``): where a version's weights are, its facts, and
the tags XICH writes back on it after an audit.

Light: ``mlflow`` is imported only inside the functions that call it. Errors are XichError when asking again
cannot help (no such run, model or artifact; refused) and Unavailable when it may (the server did not answer;
the MLflow client has already retried, per ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..atomic import write_atomically
from ..boundary import WALK_MAX_FILES, check_source, walk_files
from ..errors import Unavailable, XichError
from .registration import recorded_registry_metadata
from ..result import AuditResult, least_dominant_share
from ..settings import Settings

MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".th", ".ckpt")
# MLflow errors that the same call cannot get past; any other (a connection refused, a 5xx) may pass later
_PERMANENT = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "PERMISSION_DENIED", "UNAUTHENTICATED",
              "BAD_REQUEST", "NOT_FOUND", "INVALID_STATE", "RESOURCE_ALREADY_EXISTS"}


def is_mlflow_uri(uri: str | None) -> bool:
    return uri is not None and uri.startswith(MLFLOW_SCHEMES)


def without_credentials(uri: str) -> str:
    """``uri`` without a ``user:password@`` part, for logs, answers and stored metadata."""
    return re.sub(r"(?<=://)[^/@\s]+@", "", uri)


def fetch_source(uri: str, settings: Settings, max_objects: int | None = None) -> Path:
    """A local copy of a registry version's source: ``s3://`` through the store (cached by ETag; a prefix of more
    than ``max_objects`` objects refused before any download), ``runs:/``, ``models:/`` and ``mlflow-artifacts:/``
    through the MLflow client, a path or ``file:`` as it is."""
    if is_mlflow_uri(uri):
        return download_artifact(uri, tracking_uri=settings.mlflow_tracking_uri, cache_dir=settings.cache_dir)
    from .store import fetch_uri

    path = fetch_uri(uri, **settings.s3_options(), max_objects=max_objects)
    if not path.exists():
        raise XichError(f"{uri}: no such file or folder")
    return path


def download_artifact(uri: str, *, tracking_uri: str | None, cache_dir: str | os.PathLike) -> Path:
    """A local copy of an MLflow artifact URI (a file or a folder), downloaded once per location into ``cache_dir``.

    A run's artifacts and a registered version's source do not change, so a copy is reused (a ``models:/`` alias
    is resolved first, so a moved alias is a new location); a changed one would still be caught, by the weights'
    SHA-256 recorded with the version. Each download goes to a folder of its own, named by ``KEY.path`` once
    complete, so threads or processes fetching the same location at once never touch each other's files.
    """
    if not tracking_uri:
        raise XichError(f"{uri}: XICH_MLFLOW_TRACKING_URI is not set; give the MLflow server's address to read "
                        f"runs:/ and models:/ sources")
    root = Path(cache_dir).resolve() / "mlflow"  # absolute: MLflow answers with absolute paths
    root.mkdir(parents=True, exist_ok=True)
    location = models_uri_location(uri, tracking_uri) if uri.startswith("models:/") else uri
    key = hashlib.sha256(f"{without_credentials(tracking_uri)} {location}".encode()).hexdigest()[:24]
    marker = root / f"{key}.path"
    if marker.is_file() and Path(marker.read_text()).exists():
        return Path(marker.read_text())
    folder = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=root))
    try:
        import mlflow.artifacts

        with _mlflow_errors(uri, tracking_uri):
            local = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(folder),
                                                        tracking_uri=tracking_uri)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    write_atomically(marker, local.encode())  # a reader sees no marker or a complete one
    return Path(local)


def models_uri_location(uri: str, tracking_uri: str) -> str:
    """Where the artifacts of ``models:/NAME/VERSION[/path]`` (or an alias, or a logged model ``models:/m-…``)
    live: the version's download URI (a logged model's artifact location), plus the path.

    MLflow's own resolution of ``models:/`` asks the process-wide registry URI, whatever registry URI it is given
    (mlflow/store/artifact/models_artifact_repo.py), so it is resolved here through a client of ``tracking_uri``.
    """
    from mlflow import MlflowClient
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    base, path = ModelsArtifactRepository.split_models_uri(uri)
    with _mlflow_errors(uri, tracking_uri):
        found = get_model_name_and_version(client, base)
        root = (client.get_logged_model(found[0]).artifact_location if len(found) == 1
                else client.get_model_version_download_uri(*found))
    return f"{root.rstrip('/')}/{path}" if path else root


def checkpoint_in(folder: Path, weights_file: str | None, uri: str) -> str:
    """The checkpoint's path inside a source that is a folder: ``weights_file`` if given, else its one file
    with a checkpoint suffix (.pt, .pth, .th, .ckpt). The folder is walked within bounds (boundary.walk_files),
    and an error names no file of it: the source may come from outside."""
    files = sorted(walk_files(folder, uri))
    if weights_file is not None:
        if weights_file not in files:
            raise XichError(f"{uri}: no file {weights_file[:200]!r} (xich.weights_file) in it")
        return weights_file
    found = [f for f in files if f.endswith(CHECKPOINT_SUFFIXES)]
    if not found:
        raise XichError(f"{uri}: a folder without a checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)}); XICH reads "
                        f"a state_dict: log one with mlflow.pytorch.log_state_dict, or name the file with the tag "
                        f"xich.weights_file")
    if len(found) > 1:
        raise XichError(f"{uri}: a folder holding {len(found)} checkpoint files; name the one to audit with the "
                        f"tag xich.weights_file (its path in the folder)")
    return found[0]


def resolve_weights(source: str, *, weights_file: str | None, settings: Settings,
                    allowed_sources: list[str] | None = None) -> tuple[str, Path]:
    """(the weights URI the workers fetch, a local copy to hash) of a version's source, a file or a folder.

    A ``models:/`` source is recorded as where its artifacts live: a path inside ``models:/m-…`` would read as
    a model name and a stage. ``allowed_sources`` (a source from outside: XICH_HOOKS_ALLOWED_SOURCES): the source,
    and where a ``models:/`` one lives, must lie under one of them (boundary.check_source) before anything is read.
    """
    if allowed_sources is not None:
        check_source(source, allowed_sources, "weights")
    if source.startswith("models:/") and settings.mlflow_tracking_uri:
        source = models_uri_location(source, settings.mlflow_tracking_uri)
        if allowed_sources is not None:
            check_source(source, allowed_sources, "weights")
    local = fetch_source(source, settings, max_objects=WALK_MAX_FILES if allowed_sources is not None else None)
    if local.is_dir():
        relative = checkpoint_in(local, weights_file, source)
        return f"{source.rstrip('/')}/{relative}", local / relative
    if weights_file is not None:
        raise XichError(f"{source}: a file, not a folder, so xich.weights_file {weights_file!r} names nothing in it")
    return source, local


def tracking_uri_for(*, model: str | None, version: str | None, settings: Settings, engine) -> str | None:
    """The MLflow server of a registered version: XICH_MLFLOW_TRACKING_URI, else the one recorded with the version
    when the hook registered it (so workers need no MLflow setting of their own)."""
    if settings.mlflow_tracking_uri or model is None or version is None:
        return settings.mlflow_tracking_uri
    metadata = recorded_registry_metadata(engine=engine, model=model, version=version)
    return (metadata or {}).get("tracking_uri")


def version_facts(name: str, version: str, *, tracking_uri: str | None) -> dict:
    """A registered version's source, run id, tags and creation time (ms), read from the MLflow server."""
    if not tracking_uri:
        raise XichError(f"model {name!r} version {version}: XICH_MLFLOW_TRACKING_URI is not set, and an alias event "
                        f"carries no source; give the MLflow server's address")
    from mlflow import MlflowClient

    with _mlflow_errors(f"model {name!r} version {version}", tracking_uri):
        mv = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).get_model_version(name, version)
    return {"source": mv.source, "run_id": mv.run_id or None, "tags": dict(mv.tags or {}),
            "creation_timestamp": mv.creation_timestamp}


def write_back(*, registry_metadata: dict | None, model: str, version: str, result: AuditResult, report_uri: str,
               settings: Settings) -> dict[str, str] | None:
    """Set the audit's tags on the MLflow version it came from; None (nothing written) for another origin.

    ``xich.run_id``; ``xich.least_dominant_share`` (see ``result.least_dominant_share``; not written without a
    training split); ``xich.report``: the report's URI in the results store (as the Prefect summary links it).
    The worker's XICH_MLFLOW_TRACKING_URI wins over the one recorded at registration.
    """
    if not registry_metadata or registry_metadata.get("registry") != "mlflow":
        return None
    tracking_uri = settings.mlflow_tracking_uri or registry_metadata.get("tracking_uri")  # as tracking_uri_for
    if not tracking_uri:
        raise XichError(f"{model} {version} came from MLflow, but no tracking URI is known: set "
                        f"XICH_MLFLOW_TRACKING_URI for the workers")
    name, mlflow_version = registry_metadata.get("name", model), str(registry_metadata.get("version", version))
    tags = {"xich.run_id": result.run_id, "xich.report": report_uri}
    share = least_dominant_share(result.classes)
    if share is not None:
        tags["xich.least_dominant_share"] = f"{share:.4f}"
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    with _mlflow_errors(f"model {name!r} version {mlflow_version}", tracking_uri):
        for key, value in tags.items():
            client.set_model_version_tag(name, mlflow_version, key, value)
    return tags


@contextmanager
def _mlflow_errors(what: str, tracking_uri: str) -> Iterator[None]:
    """MLflow's exceptions as XichError (asking again cannot help) or Unavailable (it may), naming the server."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        server = without_credentials(tracking_uri)
        message = " ".join(without_credentials(exc.message).split())[:300]
        if exc.error_code in _PERMANENT:
            raise XichError(f"{what}: MLflow at {server} says {message}") from None
        raise Unavailable(f"{what}: MLflow at {server} did not answer ({message})") from None
