"""The hooks receiver records a version without hashing its weights (a multi-GB checkpoint would outlast the
sender's timeout); the first worker that reads the weights records their hash, and other weights are refused."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from xich.records.db import Base, make_engine
from xich.errors import XichError
from xich.records.persist import get_or_create_model_version


@pytest.fixture
def session(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        yield s
    engine.dispose()


def _version(session, uri, sha):
    return get_or_create_model_version(session=session, name="m", version="1", spec="cifar:resnet20", weights_uri=uri,
                                       weights_sha256=sha, version_flag=None)


def test_a_worker_records_the_hash_of_weights_a_hook_registered_unhashed(session):
    assert _version(session, "s3://b/w.pt", None).weights_sha256 is None  # the hook
    assert _version(session, "s3://b/w.pt", "a" * 64).weights_sha256 == "a" * 64  # the worker
    assert _version(session, "s3://b/w.pt", None).weights_sha256 == "a" * 64  # the hook again: still the same source
    with pytest.raises(XichError, match="register these weights as a new version"):
        _version(session, "s3://b/w.pt", "b" * 64)  # the file changed under the URI since


def test_an_unhashed_registration_of_other_weights_is_refused(session):
    _version(session, "s3://b/w.pt", None)
    with pytest.raises(XichError, match="register these weights as a new version"):
        _version(session, "s3://b/other.pt", None)
