"""What to audit when a registry announces a model version: a mapping file, overridden per version.

The mapping file (``XICH_HOOKS_CONFIG``, TOML) gives each registered model's audit::

    [models."cifar-resnet20"]
    spec = "cifar:resnet20"                    # xich audit --model
    dataset = "s3://datasets/cifar10-jpeg/"    # xich audit --data
    labels = "cifar10"                         # optional: --labels (a built-in set, or a file the workers read)
    settings = {classes = ["cat", "dog"], clusters = 5}   # optional: xich register --settings
    weights_file = "state_dict.pth"            # optional: the checkpoint inside a source that is a folder

A version overrides its model's entry with tags (MLflow) or fields (the generic hook): ``xich.spec``,
``xich.dataset``, ``xich.labels``, ``xich.weights_file``, and ``xich.settings`` (a JSON object laid over the
entry's settings). A version without a spec and a dataset after that maps to nothing.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..boundary import parse_json
from ..errors import XichError
from ..records.registration import REQUEST_SETTINGS, audit_config

FIELDS = ("spec", "dataset", "labels", "settings", "weights_file")
TAGS = {f"xich.{name}": name for name in FIELDS}
WRITE_BACK_TAGS = ("xich.run_id", "xich.least_dominant_share", "xich.report")  # written by XICH after an audit


class NotMapped(XichError):
    """The version maps to no audit: it is recorded and answered with this reason, not refused."""


@dataclass(frozen=True)
class AuditTarget:
    """The audit a version gets: ``settings`` are ``xich register --settings`` (labels folded in)."""

    spec: str
    dataset: str
    settings: dict = field(default_factory=dict)
    weights_file: str | None = None


def read_mapping(path: str | Path) -> dict[str, dict]:
    """Registered model name → its entry (the keys of FIELDS), checked: unknown keys and settings are refused."""
    where = f"XICH_HOOKS_CONFIG {path}"
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise XichError(f"{where}: cannot read it ({exc.strerror or exc}); give the mapping file's path") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise XichError(f"{where}: not valid TOML ({exc})") from None
    if set(doc) - {"models"} or not isinstance(doc.get("models", {}), dict):
        raise XichError(f"{where}: holds {', '.join(sorted(doc))}; write one [models.\"NAME\"] table per model")
    mapping = {}
    for name, entry in doc.get("models", {}).items():
        if not isinstance(entry, dict):
            raise XichError(f"{where}: models.{name} is a {type(entry).__name__}; write a table [models.\"{name}\"]")
        _check_entry(entry, f"{where}: models.{name!r}")
        mapping[name] = entry
    return mapping


def tag_overrides(tags: dict[str, str]) -> dict:
    """The entry fields a version's ``xich.*`` tags override; an unknown ``xich.`` tag is refused (a typo would
    otherwise audit the wrong thing quietly)."""
    unknown = sorted(k for k in tags if k.startswith("xich.") and k not in TAGS and k not in WRITE_BACK_TAGS)
    if unknown:
        raise XichError(f"tag(s) {', '.join(unknown)}: not XICH tags; use {', '.join(TAGS)}")
    overrides = {TAGS[k]: v for k, v in tags.items() if k in TAGS}
    if "settings" in overrides:
        try:
            overrides["settings"] = parse_json(overrides["settings"], "tag xich.settings")  # NaN, depth refused
        except XichError as exc:
            raise XichError(f"{exc}; give an object like {{\"clusters\": 5}}") from None
    return overrides


def resolve(mapping: dict[str, dict], model: str, overrides: dict | None = None, *,
            source: str = "the mapping file") -> AuditTarget:
    """The audit of a version of ``model``: its mapping entry with ``overrides`` on top.

    NotMapped when neither gives a spec and a dataset; XichError when the result cannot be audited
    (an unknown setting, a bad value).
    """
    entry = mapping.get(model, {})
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    _check_entry(overrides, f"version of {model!r}")
    merged = {**entry, **overrides, "settings": {**entry.get("settings", {}), **overrides.get("settings", {})}}
    missing = [k for k in ("spec", "dataset") if not merged.get(k)]
    if missing:
        where = (f"model {model!r} is not in {source}" if model not in mapping
                 else f"{source} gives model {model!r} no {' and no '.join(missing)}")
        raise NotMapped(f"{where}, and the version gives no {' and no '.join(f'xich.{k}' for k in missing)}: "
                        f"nothing to audit")
    settings = dict(merged["settings"])
    if merged.get("labels"):
        settings["labels"] = merged["labels"]
    audit_config(model_spec=merged["spec"], dataset_uri=merged["dataset"], weights_uri=None, settings=settings)
    return AuditTarget(spec=merged["spec"], dataset=merged["dataset"], settings=settings,
                       weights_file=merged.get("weights_file"))


def _check_entry(entry: dict, where: str) -> None:
    unknown = sorted(set(entry) - set(FIELDS))
    if unknown:
        raise XichError(f"{where}: unknown key(s) {', '.join(unknown)}; use {', '.join(FIELDS)}")
    for key in ("spec", "dataset", "labels", "weights_file"):
        if key in entry and not isinstance(entry[key], str):
            raise XichError(f"{where}: {key} must be a string, got {type(entry[key]).__name__}")
    if not isinstance(entry.get("settings", {}), dict):
        raise XichError(f"{where}: settings must be a table/object of audit settings "
                        f"({', '.join(REQUEST_SETTINGS)}), got {type(entry['settings']).__name__}")
    if entry.get("settings"):
        # the settings alone, with a placeholder model and data: the spec and dataset may come from the version
        try:
            audit_config(model_spec=entry.get("spec", "cifar:resnet20"), dataset_uri=entry.get("dataset", "-"),
                         weights_uri=None, settings=entry["settings"])
        except XichError as exc:
            raise XichError(f"{where}: {exc}") from None
