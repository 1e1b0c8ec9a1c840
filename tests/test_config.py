"""An audit's settings (service/xich/engine/config.py): valid by construction, defaults declared once."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from xich.cli import _audit_parser
from xich.engine.config import AuditConfig
from xich.errors import XichError


@pytest.mark.parametrize("bad,flag", [({"clusters": 0}, "--clusters must be at least 1"),
                                      ({"mosaics_per_pair": 1001}, "--mosaics-per-pair must be at most 1000"),
                                      ({"seed": 1.5}, "--seed must be a whole number"),
                                      ({"cam": "quick"}, "--cam 'quick'"),
                                      ({"mosaic_size": 4}, "--mosaic-size must be at least 8"),
                                      ({"classes": 5}, "--classes must be at most 1000 class names")])
def test_a_config_that_cannot_work_cannot_be_made(bad, flag):
    with pytest.raises(XichError, match=flag):
        AuditConfig(model="cifar:resnet20", data="d", **bad)


def test_classes_and_the_empty_training_split_are_read_once_as_the_cli_and_a_request_give_them():
    assert AuditConfig(model="m", data="d", classes="cat, dog").classes == ("cat", "dog")
    assert AuditConfig(model="m", data="d", classes=["cat", "dog"]).classes == ("cat", "dog")
    assert AuditConfig(model="m", data="d", classes="").classes is None
    assert AuditConfig(model="m", data="d", train_split="").train_split is None
    assert AuditConfig(model="m", data="d").train_split == "train"


def test_the_clis_defaults_are_the_configs():
    parser = argparse.ArgumentParser()
    _audit_parser(parser.add_subparsers(dest="command"))
    args = vars(parser.parse_args(["audit", "--model", "cifar:resnet20", "--data", "d"]))
    given = {f.name: f.default for f in fields(AuditConfig) if f.name in args and f.name not in ("model", "data")}
    assert len(given) >= 18  # every setting with a flag
    assert {name: args[name] for name in given} == given
    assert AuditConfig(**{f.name: args[f.name] for f in fields(AuditConfig) if f.name in args}) == \
        AuditConfig(model="cifar:resnet20", data="d")


def test_the_control_is_off_unless_asked_for():
    """Retired from the default audit by the rare-look benchmark (docs/science.md, section 9); ``--control`` turns it
    on, and ``--no-control`` (old scripts) keeps the default."""
    parser = argparse.ArgumentParser()
    _audit_parser(parser.add_subparsers(dest="command"))
    base = ["audit", "--model", "cifar:resnet20", "--data", "d"]
    assert AuditConfig(model="m", data="d").control is False
    assert vars(parser.parse_args(base))["control"] is False
    assert vars(parser.parse_args([*base, "--control"]))["control"] is True
    assert vars(parser.parse_args([*base, "--no-control"]))["control"] is False
    assert vars(parser.parse_args([*base, "--control", "--no-control"]))["control"] is False
