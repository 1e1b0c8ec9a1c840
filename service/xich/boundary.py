"""The trust boundary (docs/security.md): where outside input — a registry hook's body and tags, an ``audit_request``
row read back at night, ``xich register``'s flags — becomes an audit request, and is checked once, here.

* a model spec's kind must be one the operator allows (``XICH_HOOKS_ALLOWED_SPECS``: ``cifar:``, ``torchvision:``,
  ``python:MODULE`` only for a module the operator names);
* a dataset, weights or labels source from outside must lie under a root or bucket prefix the operator allows
  (``XICH_HOOKS_ALLOWED_SOURCES``), after resolving ``file://``, ``..`` and symlinks; a refusal names the rule, never
  what exists there;
* names, versions and JSON are bounded (length, NUL and line breaks, nesting depth, NaN/Infinity, numbers that
  overflow to infinity, integers of more than MAX_INT_DIGITS digits);
* a setting that becomes one folder of a path (a split, a class) is one plain name (:func:`check_path_name`);
* strings from outside are escaped before they reach a log line.

Settings are checked by ``registration.audit_config`` (``config.check_config``), the validator the audit itself uses.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import urllib.parse
from datetime import datetime, timezone
from collections.abc import Iterator
from pathlib import Path

from .errors import XichError
from .label_sets import BUILTIN_LABEL_SETS

MAX_NAME = 255  # model names and versions (the columns of model, model_version and hook_delivery)
MAX_JSON_DEPTH = 16
MAX_INT_DIGITS = 4300  # Python's own default limit for int(str): a longer integer raises ValueError in json.loads
MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")  # read through the operator's MLflow server
DATASET_KINDS = ("cifar10:", "cifar100:")  # a dataset URI may name CIFAR's pickled batches: cifar10:DIR
# a walk of a source (a checkpoint folder): at most this many entries, this deep, this long
WALK_MAX_FILES, WALK_MAX_DEPTH, WALK_MAX_S = 10_000, 8, 2.0


class Outside(XichError):
    """Outside input refused by the boundary: the rule it breaks, for a 4xx answer (nothing of what exists)."""


def check_spec_kinds(kinds: list[str]) -> list[str]:
    """The operator's allow-list itself: ``kind:`` prefixes, or ``python:MODULE`` (never a bare ``python:``)."""
    for kind in kinds:
        if kind.startswith("python:"):
            if not re.fullmatch(r"python:[A-Za-z_][\w.]*", kind):
                raise ValueError(f"{kind!r}: python: is allowed only for a module the operator names, "
                                 f"e.g. python:mypkg.models")
        elif not re.fullmatch(r"[a-z][a-z0-9]*:", kind):
            raise ValueError(f"{kind!r}: expected a spec kind such as cifar: or torchvision:")
    return kinds


def check_spec(spec: object, allowed: list[str]) -> str:
    """``spec`` when its kind is allowed; Outside otherwise (``python:M:callable`` needs ``python:M`` allowed)."""
    if not isinstance(spec, str) or not spec or len(spec) > 500 or not spec.isprintable():
        raise Outside("model spec: give text of at most 500 printable characters, e.g. cifar:resnet20")
    for kind in allowed:
        if kind.startswith("python:"):
            if spec.startswith(kind + ":"):
                return spec
        elif spec.startswith(kind):
            return spec
    raise Outside(f"model spec {escape(spec, 80)}: its kind is not allowed for audit requests "
                  f"(XICH_HOOKS_ALLOWED_SPECS); the operator allows a kind there")


def check_name(value: object, what: str) -> str:
    """A model name or version: 1 to MAX_NAME printable characters (no NUL, no line breaks)."""
    if not isinstance(value, str) or not value or len(value) > MAX_NAME or not value.isprintable():
        raise Outside(f"{what}: give 1 to {MAX_NAME} printable characters (no NUL, no line breaks)")
    return value


PATH_SETTINGS = ("eval_split", "train_split")  # settings that become a folder (or <name>.tar[.gz]) under the dataset


def check_path_name(value: object, what: str) -> str:
    """``value`` when it can be one folder name under a dataset's root (a split, a class): text without ``/``,
    ``\\`` or NUL, and not ``.`` or ``..``; Outside otherwise, before anything joins it to a path or lists it."""
    if isinstance(value, str) and value not in ("", ".", "..") and not any(c in value for c in "/\\\x00"):
        return value
    raise Outside(f"{what} {escape(value, 80)!r}: a split or class name is one folder's name; give it without "
                  f"/, \\ or NUL, and not . or ..")


def check_path_settings(settings: object, what: str) -> None:
    """:func:`check_path_name` on a request's settings that become paths (PATH_SETTINGS and each of ``classes``);
    other types are left to ``config.check_config``, which runs the same check on the AuditConfig."""
    if not isinstance(settings, dict):
        return
    names = [(f"{what}: {key}", settings[key]) for key in PATH_SETTINGS if isinstance(settings.get(key), str)
             and settings[key] != ""]  # train_split "": no training split
    classes = settings.get("classes")
    if isinstance(classes, str) and classes:
        classes = [c.strip() for c in classes.split(",")]
    if isinstance(classes, list):
        names += [(f"{what}: classes", c) for c in classes if isinstance(c, str)]
    for where, name in names:
        check_path_name(name, where)


def check_source(uri: str, allowed: list[str], what: str) -> str:
    """``uri`` when it lies under an allowed root (a local folder, or ``s3://bucket/prefix/``); Outside otherwise.

    A local path must be absolute (``file:///…`` too); it is resolved (``..``, symlinks) before the comparison, so a
    link that points out of a root is refused. An ``s3://`` key may hold no ``.``, ``..`` or empty part. MLflow URIs
    (runs:/, models:/, mlflow-artifacts:/) are read through the operator's MLflow server and pass.
    """
    rule = (f"{what} {escape(uri, 120)}: not under a source the operator allows (XICH_HOOKS_ALLOWED_SOURCES: "
            f"local roots and s3://bucket/prefix/)")
    if not isinstance(uri, str) or not uri or len(uri) > 1000 or not uri.isprintable():
        raise Outside(f"{what}: give a path or URI of at most 1000 printable characters")
    if uri.startswith(MLFLOW_SCHEMES):
        return uri
    body = uri
    for kind in DATASET_KINDS:
        body = body.removeprefix(kind)
    if body.startswith("s3://"):
        if _s3_under(body, [a for a in allowed if a.startswith("s3://")]):
            return uri
        raise Outside(rule)
    path = _local(body)
    if path is None:
        raise Outside(rule)
    for root in allowed:
        if root.startswith("s3://"):
            continue
        base = Path(root).resolve()
        if path == base or base in path.parents:
            return uri
    raise Outside(rule)


def _local(body: str) -> Path | None:
    """The resolved local path of a ``file:`` URL or an absolute path; None for anything else."""
    if body.startswith("file:"):
        parsed = urllib.parse.urlparse(body)
        if parsed.netloc not in ("", "localhost") or parsed.query or parsed.fragment:
            return None
        body = urllib.parse.unquote(parsed.path)
    elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", body):
        return None  # another scheme (http:, ftp:, …)
    if not body.startswith("/") or "\x00" in body:
        return None
    return Path(os.path.realpath(body))


def _s3_under(uri: str, allowed: list[str]) -> bool:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket or any(part in (".", "..") for part in key.split("/")) or "//" in key.rstrip("/") or "\\" in key:
        return False
    for root in allowed:
        root_bucket, _, prefix = root.removeprefix("s3://").partition("/")
        prefix = prefix.strip("/")
        if bucket == root_bucket and (not prefix or key == prefix or key.startswith(prefix + "/")):
            return True
    return False


def check_sources(fields: dict[str, str | None], allowed: list[str]) -> None:
    """:func:`check_source` for each named source that is given (labels: only a file, not a built-in set)."""
    for what, uri in fields.items():
        if uri is None or (what.endswith("labels") and uri in BUILTIN_LABEL_SETS):
            continue
        check_source(uri, allowed, what)


def parse_json(text: str | bytes, what: str) -> object:
    """JSON from outside: NaN and Infinity refused, and so are numbers that overflow to infinity (``1e999``) and
    integers longer than MAX_INT_DIGITS digits; nesting at most MAX_JSON_DEPTH deep; Outside otherwise."""
    def no_constant(name: str) -> object:
        raise Outside(f"{what}: {name} is not a JSON number; give a finite number")

    def finite(token: str) -> float:
        value = float(token)
        if not math.isfinite(value):
            raise Outside(f"{what}: the number {escape(token, 40)} is beyond a 64-bit float; give a finite number")
        return value

    def bounded_int(token: str) -> int:
        if len(token.lstrip("-")) > MAX_INT_DIGITS:
            raise Outside(f"{what}: an integer of {len(token.lstrip('-'))} digits (more than {MAX_INT_DIGITS}); "
                          f"give a smaller number")
        return int(token)

    try:
        value = json.loads(text, parse_constant=no_constant, parse_float=finite, parse_int=bounded_int)
    except RecursionError:
        raise Outside(f"{what}: nested deeper than {MAX_JSON_DEPTH} levels") from None
    except UnicodeDecodeError:
        raise Outside(f"{what} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise Outside(f"{what} is not JSON ({exc.msg} at character {exc.pos})") from None
    except ValueError as exc:  # whatever else the parser raises on a number (Python's int-digit limit)
        raise Outside(f"{what}: a number JSON cannot hold here ({escape(exc, 120)}); give a smaller number") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise Outside(f"{what}: nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def parse_json_object(text: str | None, what: str) -> dict | None:
    """A JSON object given on the command line (``--settings``, ``--registry-metadata``); None for None."""
    if text is None:
        return None
    value = parse_json(text, what)
    if not isinstance(value, dict):
        raise Outside(f"{what}: pass a JSON object like '{{\"stage\": \"staging\"}}', got {type(value).__name__}")
    return value


def parse_port(text: str, what: str) -> int:
    """A TCP port number, 1 to 65535."""
    if not text.isascii() or not text.isdigit() or len(text) > 5 or not 0 < int(text) < 65536:
        raise Outside(f"{what} {text[:20]!r}: not a port; give a number from 1 to 65535")
    return int(text)


def parse_time(text: str | None, what: str) -> datetime | None:
    """An ISO 8601 time (UTC when it names no zone); None for None."""
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise Outside(f"{what} {text[:40]!r}: not an ISO 8601 time; write e.g. 2026-11-29T12:00:00Z") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _depth(value: object) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                break
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def escape(value: object, limit: int = 200) -> str:
    """``value`` for a log line or a message: control characters (CR, LF, NUL, ESC…) written as escapes, cut at
    ``limit`` characters, so an outside string cannot forge a line or flood one."""
    text = str(value)
    cut = text[:limit]
    shown = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in cut)
    return shown + (f"…(+{len(text) - limit})" if len(text) > limit else "")


def walk_files(folder: Path, what: str) -> Iterator[str]:
    """Relative paths of the files under ``folder``, bounded (WALK_MAX_FILES entries, WALK_MAX_DEPTH deep,
    WALK_MAX_S seconds); symlinks are not followed. Outside past a bound."""
    deadline, seen, pending = time.monotonic() + WALK_MAX_S, 0, [(folder, 0)]
    while pending:
        current, depth = pending.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            seen += 1
            if seen > WALK_MAX_FILES or time.monotonic() > deadline:
                raise Outside(f"{what}: a folder with more than {WALK_MAX_FILES} entries, or too slow to read; "
                              f"give the checkpoint file itself")
            if entry.is_dir(follow_symlinks=False):
                if depth + 1 >= WALK_MAX_DEPTH:
                    raise Outside(f"{what}: a folder nested deeper than {WALK_MAX_DEPTH} levels; give the "
                                  f"checkpoint file itself")
                pending.append((Path(entry.path), depth + 1))
            elif entry.is_file(follow_symlinks=False):
                yield Path(entry.path).relative_to(folder).as_posix()
