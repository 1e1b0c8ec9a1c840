"""A dataset that is a folder tree in S3 (``s3://bucket/prefix/<split>/<class>/<image>``), on a real SeaweedFS: each
shard lists and fetches only the classes it audits (training objects included), the dataset's fingerprint comes
from the listing (no image fetched for it), and the audit's numbers equal those of the same tree in a local folder.
"""

from __future__ import annotations

import json
import tarfile
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xich.engine.audit import run_audit
from xich.engine.datasets import content_fingerprint, open_dataset
from xich.errors import XichError
from xich.records.store import open_store
from xich.run.context import open_context
from xich.run.pipeline import open_recorded_run
from xich.settings import Settings

from stack import ACCESS_KEY, SECRET_KEY
from toy_nets import brightness_config

CLASSES = ["ant", "bee", "cat", "dog"]
SIZES = {"test": 6, "train": 5}  # images per class


def _write_dataset(root: Path) -> Path:
    """4 classes of 32×32 PNGs of one colour each (seeded), per split; ``root``."""
    rng = np.random.default_rng(7)
    for split, n in SIZES.items():
        for cls in CLASSES:
            (root / split / cls).mkdir(parents=True)
            for k in range(n):
                colour = rng.integers(0, 256, size=3, dtype=np.uint8)
                Image.fromarray(np.tile(colour, (32, 32, 1))).save(root / split / cls / f"{k:02d}.png")
    return root


def _settings(database_url: str, seaweedfs, cache: Path) -> Settings:
    return Settings(database_url=database_url, s3_endpoint=seaweedfs.endpoint, s3_access_key=ACCESS_KEY,
                    s3_secret_key=SECRET_KEY, cache_dir=str(cache))


def _cached_keys(cache: Path, bucket: str) -> set[str]:
    """The object keys downloaded into ``cache`` (``<cache>/s3/<endpoint>/<bucket>/<key>``)."""
    (endpoint,) = (cache / "s3").iterdir()
    where = endpoint / bucket
    return {p.relative_to(where).as_posix() for p in where.rglob("*") if p.is_file()}


def _numbers(result) -> dict:
    return {c.name: {"hierarchy": c.hierarchy, "dominance": c.dominance,
                     "clusters": [(k.members, k.train_count, k.train_share, k.score) for k in c.clusters]}
            for c in result.classes}


@pytest.fixture
def s3_dataset(seaweedfs, tmp_path) -> tuple[str, str, Path]:
    root = _write_dataset(tmp_path / "local")
    bucket = f"xich-ds-{uuid.uuid4().hex[:10]}"
    seaweedfs.seed(bucket, {f"ds/{p.relative_to(root).as_posix()}": p for p in sorted(root.rglob("*.png"))})
    return bucket, f"s3://{bucket}/ds/", root


def test_two_shards_each_fetch_only_their_classes_and_agree_with_the_local_folder(s3_dataset, seaweedfs, results_db,
                                                                                   tmp_path):
    bucket, uri, root = s3_dataset
    options = dict(train_split="train", tile_size=32)
    shards, results = 2, {}
    for k in (1, 0):  # shard 1 first; shard 0 (the parent) audits its own classes and finishes the run
        cache = tmp_path / f"cache-{k}"
        ctx = open_context(_settings(results_db, seaweedfs, cache))
        try:
            data = ctx.data_path(uri)
            assert data == uri  # a folder tree stays a URI: nothing is fetched before a class is read
            assert not (cache / "s3").exists()
            config = brightness_config(data, data_uri=uri, **options)
            with open_recorded_run(ctx, config, model_name="brightness", model_version="v1") as rec:
                mine = rec.opened.classes[k::shards]
                assert not (cache / "s3").exists()  # the fingerprint came from the listing
                assert [images.name for images, _ in rec.audit_pending(mine, wait=False)] == mine
                if k == 0:
                    results["s3"] = rec.finish()
            expected = {f"ds/{split}/{cls}/{i:02d}.png" for split, n in SIZES.items() for cls in mine
                        for i in range(n)}
            assert _cached_keys(cache, bucket) == expected  # its classes' objects, eval and training, no others
            downloaded = ctx.data_source(uri).downloaded
            assert downloaded == {"objects": len(expected),
                                  "bytes": sum((root / key.removeprefix("ds/")).stat().st_size for key in expected)}
        finally:
            ctx.close()
    assert sorted(results["s3"].to_dict()["classes"][i]["name"] for i in range(4)) == CLASSES
    local = run_audit(brightness_config(root, **options))
    assert _numbers(results["s3"]) == _numbers(local)


def test_a_class_is_fetched_once_then_served_from_the_etag_cache(s3_dataset, seaweedfs, tmp_path):
    bucket, uri, root = s3_dataset
    store = lambda: open_store(uri, **_settings("sqlite://", seaweedfs, tmp_path / "cache").s3_options())  # noqa: E731
    first = store()
    split = open_dataset(uri, "test", "train", first).splits["test"]
    split.load(split.images["bee"], 32)
    assert first.downloaded["objects"] == SIZES["test"]
    again = store()
    split = open_dataset(uri, "test", "train", again).splits["test"]
    assert np.array_equal(split.load(split.images["bee"], 32), open_dataset(str(root), "test", None)
                          .splits["test"].load([f"bee/{i:02d}.png" for i in range(SIZES["test"])], 32))
    assert again.downloaded == {"objects": 0, "bytes": 0}


def test_the_fingerprint_follows_the_listing_without_fetching(s3_dataset, seaweedfs, tmp_path):
    bucket, uri, root = s3_dataset
    source = open_store(uri, **_settings("sqlite://", seaweedfs, tmp_path / "cache").s3_options())

    def fingerprint():
        ds = open_dataset(uri, "test", "train", source)
        return content_fingerprint(list(ds.splits.values()))

    before, n = fingerprint()
    assert n == sum(SIZES.values()) * len(CLASSES)
    assert fingerprint() == (before, n)
    # the same bytes written again: same ETag (an MD5 of one PUT), same fingerprint
    seaweedfs.client().fput_object(bucket, "ds/test/cat/03.png", str(root / "test" / "cat" / "03.png"))
    assert fingerprint() == (before, n)
    # an image rewritten in place with other content: a new ETag, a new fingerprint
    other = tmp_path / "other.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(other)
    seaweedfs.client().fput_object(bucket, "ds/test/cat/03.png", str(other))
    assert fingerprint()[0] != before
    assert source.downloaded == {"objects": 0, "bytes": 0}
    assert not (tmp_path / "cache" / "s3").exists()


def test_an_s3_dataset_without_its_store_or_with_an_empty_class_explains_itself(s3_dataset, seaweedfs, tmp_path):
    bucket, uri, root = s3_dataset
    with pytest.raises(XichError, match=r"needs its store \(XICH_S3_ENDPOINT"):
        open_dataset(uri, "test", None)
    seaweedfs.client().put_object(bucket, "ds/test/emu/readme.txt", __import__("io").BytesIO(b"x"), 1)
    source = open_store(uri, **_settings("sqlite://", seaweedfs, tmp_path / "cache").s3_options())
    split = open_dataset(uri, "test", None, source).splits["test"]
    assert list(split.images) == CLASSES + ["emu"]
    with pytest.raises(XichError, match=r"class folder s3://.*/ds/test/emu/ has no images"):
        split.images["emu"]


def test_a_split_archive_in_s3_is_fetched_whole_when_its_split_is_read(s3_dataset, seaweedfs, tmp_path):
    bucket, _, root = s3_dataset
    archive = tmp_path / "test.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root / "test", arcname="test")
    client = seaweedfs.client()
    client.fput_object(bucket, "arch/test.tar.gz", str(archive))
    for p in sorted((root / "train").rglob("*.png")):
        client.fput_object(bucket, f"arch/{p.relative_to(root).as_posix()}", str(p))
    source = open_store(f"s3://{bucket}/arch/", **_settings("sqlite://", seaweedfs, tmp_path / "cache").s3_options())
    ds = open_dataset(f"s3://{bucket}/arch/", "test", "train", source)
    assert ds.classes == CLASSES  # listing the evaluation split's classes reads its archive: the one object fetched
    assert source.downloaded == {"objects": 1, "bytes": archive.stat().st_size}
    local = open_dataset(str(root), "test", "train")
    for split in ("test", "train"):
        ids = local.splits[split].images["dog"]
        assert ds.splits[split].images["dog"] == ids
        assert np.array_equal(ds.splits[split].load(ids, 32), local.splits[split].load(ids, 32))
    assert source.downloaded["objects"] == 1 + SIZES["train"]  # and the training split's one class


def test_xich_audit_reads_an_s3_folder_dataset_class_by_class(s3_dataset, seaweedfs, tmp_path, monkeypatch):
    from xich.cli import main

    bucket, uri, root = s3_dataset
    for name, value in {"XICH_S3_ENDPOINT": seaweedfs.endpoint, "XICH_S3_ACCESS_KEY": ACCESS_KEY,
                        "XICH_S3_SECRET_KEY": SECRET_KEY, "XICH_CACHE_DIR": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "audit.json"
    assert main(["audit", "--model", "python:toy_nets:brightness", "--data", uri, "--classes", "bee,dog",
                 "--clusters", "3", "--mosaics-per-pair", "4", "--normalize", "none", "--no-control", "--device", "cpu",
                 "--tile-size", "32", "--no-db", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [c["name"] for c in doc["classes"]] == ["bee", "dog"] and doc["dataset"]["uri"] == uri
    (endpoint,) = (tmp_path / "cache" / "s3").iterdir()
    fetched = {p.relative_to(endpoint / bucket).as_posix() for p in (endpoint / bucket).rglob("*") if p.is_file()}
    assert fetched == {f"ds/{split}/{cls}/{i:02d}.png" for split, n in SIZES.items() for cls in ("bee", "dog")
                       for i in range(n)}  # --classes: only those two classes' objects
