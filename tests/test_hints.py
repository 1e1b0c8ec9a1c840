"""Hints that name the cause and only what exists: every option a message names is one of the command it names (or
of some xich command), the database hint per command, the Prefect hints, the class list of `xich register`, refusals
that never say "none" for a missing value (issue 26)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sqlalchemy.exc import OperationalError

from xich.cli import build_parser, error_line, main
from xich.errors import XichError
from xich.run.deploy import DEPLOY_COMMAND, why_not_started
from xich.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "service" / "xich"
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
COMMAND = re.compile(r"\b(xich|prefect)(?: ([a-z][a-z-]*))?")
# the options of other tools that a hint may name, with the tool named before them in the same text
OTHER_TOOLS = {"prefect": {"--no-prompt", "--name"}}


def command_options() -> dict[str, set[str]]:
    """Each xich command's options (its parser's), and "" for the top level's."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(getattr(a, "choices", None), dict))
    found = {name: {o for a in p._actions for o in a.option_strings} for name, p in sub.choices.items()}
    return {**found, "": {o for a in parser._actions for o in a.option_strings}}


def unknown_options(text: str, options: dict[str, set[str]]) -> list[str]:
    """Options in ``text`` that the command named before them lacks (`xich CMD …`, `prefect …`), or, where none is
    named, that no xich command has."""
    every = set().union(*options.values())
    marks = [(m.start(), m.group(1), m.group(2)) for m in COMMAND.finditer(text)]
    wrong = []
    for m in OPTION.finditer(text):
        before = [(tool, cmd) for at, tool, cmd in marks if at < m.start()]
        tool, cmd = before[-1] if before else (None, None)
        allowed = (OTHER_TOOLS["prefect"] if tool == "prefect" else
                   options.get(cmd, every) | options[""] if tool == "xich" else every)
        if m.group() not in allowed:
            wrong.append(m.group())
    return wrong


def source_texts() -> list[tuple[str, str]]:
    """(where, text) of every string in the package, an f-string's literal parts joined."""
    texts = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            else:
                continue
            texts.append((f"{path.relative_to(ROOT)}:{node.lineno}", text))
    return texts


def test_every_option_a_message_names_exists():
    options = command_options()
    wrong = [(where, unknown_options(text, options)) for where, text in source_texts()]
    assert [w for w in wrong if w[1]] == []


def test_the_option_walk_can_fail():
    options = command_options()
    assert unknown_options("record one with `xich audit --model-name NAME`", options) == []
    assert unknown_options("check the URL, or use --no-db", options) == []  # xich audit has it
    assert unknown_options("`xich history --no-db`", options) == ["--no-db"]
    assert unknown_options("`prefect --no-prompt deploy --all`", options) == ["--all"]
    assert unknown_options("use --nothing-like-it", options) == ["--nothing-like-it"]


@pytest.mark.parametrize("command", sorted(set(command_options()) - {""}))
def test_the_cli_error_hints_name_only_options_of_their_command(command):
    """error_line's hints for a database that is down and a device out of memory, for each command."""
    options = command_options()[command]
    for exc in (OperationalError("SELECT 1", {}, Exception("connection refused")),
                torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")):
        line = error_line(exc, command)
        assert line is not None and [o for o in OPTION.findall(line) if o not in options] == [], (command, line)
    assert "--no-db" in error_line(OperationalError("SELECT 1", {}, Exception("refused")), "audit")


def test_history_without_its_database_names_no_option_it_lacks(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XICH_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:9/none")
    assert main(["history", "--model", "m"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: results database (XICH_DATABASE_URL)") and "--no-db" not in err


def test_a_refused_connection_names_the_server_and_its_fix():
    settings = Settings(prefect_api_url="http://127.0.0.1:9/api")
    try:
        raise ConnectionRefusedError(111, "Connection refused")
    except ConnectionRefusedError as refused:
        try:
            raise RuntimeError("All connection attempts failed") from refused
        except RuntimeError as exc:
            line = why_not_started(settings, exc)
    assert line.startswith("Prefect at http://127.0.0.1:9/api is not reachable: no server answers at that "
                           "PREFECT_API_URL (RuntimeError: All connection attempts failed)")
    assert "`prefect server start`" in line and "unset PREFECT_API_URL" in line and "deploy" not in line
    timed_out = RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.")
    assert "is not reachable: no server answers" in why_not_started(settings, timed_out)
    assert why_not_started(settings, ValueError("bad parameters")).startswith(
        "Prefect at http://127.0.0.1:9/api (ValueError: bad parameters)")


def test_a_missing_deployment_names_the_deployments_the_docs_use():
    from prefect.exceptions import ObjectNotFound

    line = why_not_started(Settings(prefect_api_url="http://127.0.0.1:4200/api"), ObjectNotFound(http_exc=None))
    assert f"`{DEPLOY_COMMAND}`" in line and "--all" not in line
    assert line.startswith("Prefect at http://127.0.0.1:4200/api has no deployment audit-model-version/audit")
    assert DEPLOY_COMMAND in (ROOT / "docs" / "service.md").read_text()  # the command the docs deploy with


def test_register_audit_against_a_stopped_server_says_so(synth_data, tmp_path):
    """`xich register --audit` in its own process (Prefect reads PREFECT_API_URL when it is imported), nothing
    listening at the URL: the one error line names the unreachable server and both ways out."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "XICH_"))},
           "PREFECT_API_URL": "http://127.0.0.1:9/api", "PREFECT_HOME": str(tmp_path / "prefect"),
           "XICH_DATABASE_URL": f"sqlite:///{tmp_path / 'reg.db'}", "XICH_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "xich.cli", "register", "--model", "m", "--version", "1", "--spec",
                           "cifar:resnet20", "--dataset", str(synth_data), "--audit"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: the version is registered, but its audit did not start: Prefect at "
                           "http://127.0.0.1:9/api is not reachable: no server answers at that PREFECT_API_URL"), line
    assert "start it (`prefect server start`" in line and "or unset PREFECT_API_URL" in line and "--all" not in line


def test_register_lists_the_split_classes(synth_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XICH_DATABASE_URL", f"sqlite:///{tmp_path / 'reg.db'}")
    assert main(["register", "--model", "m", "--version", "1", "--spec", "cifar:resnet20", "--dataset",
                 str(synth_data), "--settings", '{"classes": ["circle", "hexagon"]}']) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "class(es) hexagon are not in split 'test'" in err
    assert err.endswith("(available: circle, square, triangle)")
    # what a hook's sender would be answered with lists nothing of the operator's data
    from xich.records.preflight import ClassesNotInSplit, check_classes

    with pytest.raises(ClassesNotInSplit) as refused:
        check_classes(str(synth_data), ["circle", "hexagon"], None)
    assert "square" not in str(refused.value) and refused.value.available == ["circle", "square", "triangle"]


def test_a_version_refusal_says_what_is_missing_not_none(tmp_path):
    from builders import context_for
    from xich.records.persist import get_or_create_model_version

    ctx = context_for(f"sqlite:///{tmp_path / 'v.db'}")
    with ctx.session() as session:  # a hook recorded the version with weights not yet hashed
        get_or_create_model_version(session=session, name="m", version="1", spec="cifar:resnet20",
                                    weights_uri="s3://models/m/1.pt", weights_sha256=None)
        with pytest.raises(XichError) as refused:
            get_or_create_model_version(session=session, name="m", version="1", spec="cifar:resnet32",
                                        weights_uri=None, weights_sha256=None)
    message = str(refused.value)
    assert "none" not in message.split(";")[0]
    assert ("was recorded with cifar:resnet20 with weights s3://models/m/1.pt (not yet hashed), not cifar:resnet32 "
            "without weights") in message


def test_the_demo_announces_each_training_by_what_it_trains_on():
    from xich.demo import training_line

    first = training_line(2, "v1", 8, "rot180", None)
    second = training_line(4, "v2", 8, "rot180", {"circle/0001.png": 8.333, "square/0002.png": 4.0})
    assert "as before" not in first and first.endswith("on the data as written (each class's rare look rare)")
    assert second.endswith("from v1's oversample file (2 training images of the flagged looks, weights 4-8.333)")


def none_for_missing(tree: ast.AST) -> list[int]:
    """Lines of ``raise …Error(f"…{x or 'none'}…")``: a refusal that would print "none" for a missing value."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            for inner in ast.walk(node.exc):
                if (isinstance(inner, ast.BoolOp) and isinstance(inner.op, ast.Or)
                        and any(isinstance(v, ast.Constant) and v.value == "none" for v in inner.values)):
                    found.append(node.lineno)
    return found


def test_no_refusal_prints_none_for_a_missing_value():
    found = {str(path.relative_to(ROOT)): lines for path in sorted(PACKAGE.rglob("*.py"))
             if (lines := none_for_missing(ast.parse(path.read_text())))}
    assert found == {}
    assert none_for_missing(ast.parse("raise XichError(f\"not {spec} and {sha or 'none'}\")")) == [1]
