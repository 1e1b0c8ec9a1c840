"""Object storage for datasets and weights: a local folder or an S3 bucket, behind one small interface.

:func:`open_store` opens a store rooted at a folder (``file:///abs/path`` or a plain path) or at a bucket
and prefix (``s3://bucket/prefix``, any S3 server: MinIO, SeaweedFS, AWS; via the ``minio`` SDK). Keys are
``/``-separated paths relative to that root. :func:`fetch_uri` turns ``s3://bucket/key`` (one object) or
``s3://bucket/prefix/`` (a tree) into a local path, as ``xich audit --data/--weights`` need.

Writes are atomic: the local backend writes a temporary file beside the target and renames it; S3 sends
one PUT, so readers see the old object or the new one, never a part. S3 objects are downloaded into a
cache folder mirroring ``<endpoint>/<bucket>/<key>``, each beside a record of its ETag and size (under
``s3-meta/``), and downloaded again only when the object's ETag or size changed.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import secrets
import shutil
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

import certifi
import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from ..atomic import write_atomically
from ..errors import Unavailable, XichError

log = logging.getLogger(__name__)

TMP_PREFIX = ".xich-tmp-"  # temporary files of unfinished writes; never listed
BUSY_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"}  # worth a retry
CREDENTIAL_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
SINGLE_PUT_MIN, SINGLE_PUT_MAX = 5 * 2**20, 5 * 2**30  # S3's part size bounds: one PUT carries up to 5 GiB
DOWNLOAD_THREADS = 8


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/xich`` (``~/.cache/xich``): where S3 objects are downloaded when no cache is given."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xich"


class Store:
    """A flat namespace of objects under a root; keys are relative ``/``-separated paths."""

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing any previous object atomically."""
        raise NotImplementedError

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        """Store the content of the local file ``path`` under ``key``, replacing atomically."""
        raise NotImplementedError

    def get_bytes(self, key: str) -> bytes:
        """The object's content; :class:`XichError` if there is none."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys starting with ``prefix`` (a string prefix, as in S3: ``"test/c"`` matches ``test/cat/0.png``)."""
        raise NotImplementedError

    def fetch(self, key: str) -> Path:
        """A local file with the object's content (for S3: a cached download, refreshed when the object changed)."""
        raise NotImplementedError

    def fetch_tree(self, prefix: str, max_objects: int | None = None) -> Path:
        """A local folder holding every object under the folder ``prefix`` (``""``: the whole store) at its key.

        ``max_objects``: XichError, before any download, when more objects lie there (a source from outside)."""
        raise NotImplementedError

    def uri(self, key: str) -> str:
        """The object's URL (``file:///...`` or ``s3://bucket/...``)."""
        raise NotImplementedError

    def check_writable(self) -> None:
        """Write and remove a small probe object; :class:`XichError` naming the store if that fails.

        Called before long work whose results go here, so that a read-only folder, a missing bucket or
        refused credentials fail in seconds rather than after the audit.
        """
        raise NotImplementedError


def open_store(url: str, *, endpoint: str | None = None, access_key: str | None = None, secret_key: str | None = None,
               secure: bool = False, cache_dir: str | os.PathLike | None = None, create_bucket: bool = False) -> Store:
    """Open a store at ``url``: a local folder (``file:///abs/path`` or a path) or ``s3://bucket[/prefix]``.

    Parameters
    ----------
    url
        Root of the store.
    endpoint
        S3 server as ``host:port`` (``http://`` or ``https://`` in front sets ``secure``); required for ``s3://``.
    access_key, secret_key
        S3 credentials; None for anonymous access.
    secure
        Use HTTPS.
    cache_dir
        Where S3 downloads are kept (default :func:`default_cache_dir`). Unused for local folders.
    create_bucket
        Create a missing S3 bucket. Off by default: a misspelled bucket name should fail, not be created.

    The local folder is created by the first write. A missing S3 bucket is :class:`XichError` unless
    ``create_bucket``.
    """
    if url.startswith("s3://"):
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        store = _s3_store(url, bucket, prefix, endpoint, access_key, secret_key, secure, cache_dir)
        if create_bucket:
            store.create_bucket()
        else:
            store.require_bucket()
        return store
    return LocalStore(_local_path(url))


def fetch_uri(uri: str, *, endpoint: str | None = None, access_key: str | None = None, secret_key: str | None = None,
              secure: bool = False, cache_dir: str | os.PathLike, max_objects: int | None = None) -> Path:
    """A local path for ``uri``: ``s3://bucket/key`` downloads one object (cached), ``s3://bucket/prefix/`` (or a
    prefix holding objects) a folder of them; ``file:///path`` gives the path, and a plain path is returned as is.
    """
    if not uri.startswith("s3://"):
        return _local_path(uri) if uri.startswith("file:") else Path(uri)
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    store = _s3_store(uri, bucket, "", endpoint, access_key, secret_key, secure, cache_dir)
    if not key or key.endswith("/"):
        return store.fetch_tree(key, max_objects)
    if store.exists(key):
        return store.fetch(key)
    if not store.list(key + "/"):
        raise XichError(f"{uri}: no such object, nor objects under it, at {store.endpoint}; check the URL or upload it")
    return store.fetch_tree(key, max_objects)


# --- local folder -------------------------------------------------------------------------------

class LocalStore(Store):
    """Objects are files under ``root``; :meth:`fetch` returns the file itself."""

    def __init__(self, root: Path):
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / _clean_key(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        _atomic_write(self._path(key), lambda f: f.write(data), self.uri(key))

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        with _open_source(path, self.uri(key)) as src:
            _atomic_write(self._path(key), lambda f: shutil.copyfileobj(src, f, 2**20), self.uri(key))

    def get_bytes(self, key: str) -> bytes:
        path = self.fetch(key)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise XichError(f"{self.uri(key)}: cannot read ({exc.strerror}); check the file's permissions") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        folder = prefix.rpartition("/")[0]
        base = self._path(folder) if folder else self.root
        if not base.is_dir():
            return []
        keys = (p.relative_to(self.root).as_posix() for p in base.rglob("*")
                if p.is_file() and not p.name.startswith(TMP_PREFIX))
        return sorted(k for k in keys if k.startswith(prefix))

    def fetch(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise XichError(f"{self.uri(key)}: no such object; check the key or upload it first")
        return path

    def fetch_tree(self, prefix: str, max_objects: int | None = None) -> Path:
        folder = prefix.strip("/")  # nothing is copied: the folder is returned as it is
        path = self._path(folder) if folder else self.root
        if not path.is_dir():
            raise XichError(f"{path.as_uri()}: no such folder; check the prefix or upload the files first")
        return path

    def uri(self, key: str) -> str:
        return (self.root / key).as_uri()

    def check_writable(self) -> None:
        probe = self.root / f"{TMP_PREFIX}probe-{secrets.token_hex(4)}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(probe, "xb") as f:
                f.write(b"xich")
            probe.unlink()
        except OSError as exc:
            with suppress(OSError):
                probe.unlink(missing_ok=True)
            raise XichError(f"results store {self.root}: cannot write there ({exc.strerror or exc}); check the "
                            f"folder's permissions and free space, or set XICH_STORE_URL") from None


def _local_path(url: str) -> Path:
    if url.startswith("file:"):
        parsed = urllib.parse.urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise XichError(f"{url}: file URLs must name a local path (file:///abs/path)")
        return Path(urllib.parse.unquote(parsed.path))
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url):
        raise XichError(f"{url}: unsupported storage URL; use a local folder, file:///abs/path or s3://bucket/prefix")
    return Path(url).expanduser().absolute()


# --- S3 -----------------------------------------------------------------------------------------

class S3Store(Store):
    """Objects under ``prefix`` in ``bucket``; fetched objects are cached under ``cache_dir``."""

    def __init__(self, url: str, client: Minio, endpoint: str, bucket: str, prefix: str, cache_dir: Path):
        self.url, self.client, self.endpoint, self.bucket, self.prefix = url, client, endpoint, bucket, prefix
        where = re.sub(r"[^A-Za-z0-9._-]", "_", endpoint)
        self._files = cache_dir / "s3" / where / bucket
        self._meta = cache_dir / "s3-meta" / where / bucket
        self.downloaded = {"objects": 0, "bytes": 0}  # what this store downloaded (cache hits not counted)
        self._count_lock = threading.Lock()

    def _name(self, key: str) -> str:
        return self.prefix + _clean_key(key)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    @contextmanager
    def _errors(self, url: str) -> Iterator[None]:
        """Translate SDK and connection errors into one-line :class:`XichError` naming ``url``."""
        try:
            yield
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                msg = "no such object; check the key or upload it first"
            elif exc.code == "NoSuchBucket":
                msg = f"no bucket {self.bucket!r} at {self.endpoint}; check the bucket name or create it"
            elif exc.code in CREDENTIAL_CODES:
                msg = (f"S3 endpoint {self.endpoint} refused access ({exc.code}); check the access key and secret key "
                       f"and the bucket's permissions")
            else:
                msg = f"S3 endpoint {self.endpoint} answered {exc.code}: {exc.message}"
                if exc.code in BUSY_CODES:
                    raise Unavailable(f"{url}: {msg}") from None
            raise XichError(f"{url}: {msg}") from None
        except MinioException as exc:
            raise XichError(f"{url}: {self.endpoint} did not answer as an S3 server ({str(exc).splitlines()[0]}); "
                            f"check the endpoint address") from None
        except urllib3.exceptions.HTTPError as exc:
            reason = str(getattr(exc, "reason", None) or exc).split("): ", 1)[-1]
            raise Unavailable(f"{url}: cannot reach S3 endpoint {self.endpoint} ({reason}); "
                            f"check the endpoint address and that the server is running") from None
        except ValueError as exc:  # the SDK's checks of bucket and object names
            raise XichError(f"{url}: {exc}") from None

    def require_bucket(self) -> None:
        """:class:`XichError` if the bucket does not exist (nothing is created)."""
        with self._errors(self.url):
            if not self.client.bucket_exists(self.bucket):
                raise XichError(f"results store {self.url}: bucket {self.bucket} does not exist at {self.endpoint}; "
                                f"create it, or pass --create-bucket")

    def check_writable(self) -> None:
        self.require_bucket()
        name = f"{self.prefix}{TMP_PREFIX}probe-{secrets.token_hex(4)}"
        with self._errors(self.url):
            self.client.put_object(self.bucket, name, io.BytesIO(b"xich"), 4)
            try:
                self.client.remove_object(self.bucket, name)
            except S3Error as exc:
                if exc.code not in CREDENTIAL_CODES:
                    raise
                # XICH never deletes: a put-only policy is enough for it, at the cost of this probe object
                log.warning("%s: may not delete the probe object s3://%s/%s (%s); it stays", self.url, self.bucket,
                            name, exc.code)

    def create_bucket(self) -> None:
        """Create the bucket if it does not exist."""
        with self._errors(self.url):
            if not self.client.bucket_exists(self.bucket):
                try:
                    self.client.make_bucket(self.bucket)
                    log.info("created bucket s3://%s at %s", self.bucket, self.endpoint)
                except S3Error as exc:
                    if exc.code != "BucketAlreadyOwnedByYou":  # created meanwhile by another writer
                        raise

    def _put(self, key: str, data: BinaryIO, size: int) -> None:
        # part_size >= size: one PUT (the SDK splits by part size); above 5 GiB S3 needs a multipart upload,
        # which is also atomic: the object appears when the upload completes.
        part_size = min(max(size, SINGLE_PUT_MIN), SINGLE_PUT_MAX)
        with self._errors(self.uri(key)):
            self.client.put_object(self.bucket, self._name(key), data, size, part_size=part_size)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._put(key, io.BytesIO(data), len(data))

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        with _open_source(path, self.uri(key)) as src:
            self._put(key, src, os.fstat(src.fileno()).st_size)

    def get_bytes(self, key: str) -> bytes:
        with self._errors(self.uri(key)):
            response = self.client.get_object(self.bucket, self._name(key))
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

    def exists(self, key: str) -> bool:
        with self._errors(self.uri(key)):
            try:
                self.client.stat_object(self.bucket, self._name(key))
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject"):
                    return False
                raise
        return True

    def list(self, prefix: str = "") -> list[str]:
        return sorted(name[len(self.prefix):] for name, _, _ in self._objects(self.prefix + prefix)
                      if not name.rpartition("/")[2].startswith(TMP_PREFIX))  # e.g. a probe nobody may delete

    def _objects(self, name_prefix: str, limit: int | None = None) -> list[tuple[str, str, int]]:
        """(object name, ETag, size) of every object whose name starts with ``name_prefix``; listing stops after
        ``limit`` + 1 objects when a limit is given."""
        with self._errors(f"s3://{self.bucket}/{name_prefix}"):
            found = []
            for o in self.client.list_objects(self.bucket, prefix=name_prefix, recursive=True):
                if not o.is_dir and not o.object_name.endswith("/"):
                    found.append((o.object_name, (o.etag or "").strip('"'), o.size))
                    if limit is not None and len(found) > limit:
                        break
            return found

    def children(self, prefix: str = "") -> Iterator[tuple[str, str | None, int | None]]:
        """What lies directly under the folder ``prefix`` (``""``: the root), in key order: (name, ETag, size) of
        each object, (name, None, None) of each folder. One delimited listing, a page of at most 1,000 names at a
        time, never the objects inside the folders."""
        name_prefix = self.prefix + (_clean_key(prefix.strip("/")) + "/" if prefix.strip("/") else "")
        with self._errors(f"s3://{self.bucket}/{name_prefix}"):
            for o in self.client.list_objects(self.bucket, prefix=name_prefix, recursive=False):
                name = o.object_name[len(name_prefix):]
                if o.is_dir:
                    yield name.rstrip("/"), None, None
                elif name and not name.startswith(TMP_PREFIX):
                    yield name, (o.etag or "").strip('"'), o.size

    def iter_objects(self, prefix: str = "") -> Iterator[tuple[str, str, int]]:
        """(key, ETag, size) of every object under the folder ``prefix``, streamed in key order page by page (memory
        holds one page, however many objects there are)."""
        name_prefix = self.prefix + (_clean_key(prefix.strip("/")) + "/" if prefix.strip("/") else "")
        with self._errors(f"s3://{self.bucket}/{name_prefix}"):
            for o in self.client.list_objects(self.bucket, prefix=name_prefix, recursive=True):
                name = o.object_name
                if not o.is_dir and not name.endswith("/") and not name.rpartition("/")[2].startswith(TMP_PREFIX):
                    yield name[len(self.prefix):], (o.etag or "").strip('"'), o.size

    def fetch_listed(self, key: str, etag: str, size: int) -> Path:
        """:meth:`fetch` of an object whose ETag and size a listing gave: no request when the cache holds it."""
        name = self._name(key)
        if not self._cached(name, etag, size):
            self._download(name)
        return self._files / name

    def fetch(self, key: str) -> Path:
        name = self._name(key)
        with self._errors(self.uri(key)):
            stat = self.client.stat_object(self.bucket, name)
        if not self._cached(name, (stat.etag or "").strip('"'), stat.size):
            self._download(name)
        return self._files / name

    def fetch_tree(self, prefix: str, max_objects: int | None = None) -> Path:
        folder = prefix.strip("/")
        name_prefix = self.prefix + (_clean_key(folder) + "/" if folder else "")
        objects = self._objects(name_prefix, max_objects)
        if max_objects is not None and len(objects) > max_objects:
            raise XichError(f"s3://{self.bucket}/{name_prefix}: more than {max_objects} objects under this prefix; "
                            f"give the checkpoint object itself")
        if not objects:
            raise XichError(f"s3://{self.bucket}/{name_prefix}: no objects under this prefix at {self.endpoint}; "
                            f"check the URL or upload the files first")
        stale = [name for name, etag, size in objects if not self._cached(_clean_key(name), etag, size)]
        with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
            list(pool.map(self._download, stale))
        local = self._files / name_prefix
        wanted = {self._files / name for name, _, _ in objects}
        for path in sorted(local.rglob("*")):
            if path.is_file() and path not in wanted and not path.name.startswith(TMP_PREFIX):
                path.unlink()  # deleted from the bucket since the last fetch
                self._meta_path(path.relative_to(self._files).as_posix()).unlink(missing_ok=True)
        log.info("s3://%s/%s: %d of %d objects downloaded into %s", self.bucket, name_prefix, len(stale), len(objects), local)
        return local

    def _meta_path(self, name: str) -> Path:
        return self._meta / f"{name}.json"

    def _cached(self, name: str, etag: str, size: int) -> bool:
        """Whether the cached copy of object ``name`` is the download of this ETag and size, untouched since."""
        try:
            meta = json.loads(self._meta_path(name).read_text())
            st = (self._files / name).stat()
        except (OSError, ValueError):
            return False
        return meta == {"etag": etag, "size": size, "ino": st.st_ino, "mtime_ns": st.st_mtime_ns} and st.st_size == size

    def _download(self, name: str) -> None:
        url, dest = f"s3://{self.bucket}/{name}", self._files / name
        with self._errors(url):
            response = self.client.get_object(self.bucket, name)
            try:
                etag = response.headers.get("ETag", "").strip('"')
                _atomic_write(dest, lambda f: shutil.copyfileobj(response, f, 2**20), url)
            finally:
                response.close()
                response.release_conn()
        st = dest.stat()
        with self._count_lock:
            self.downloaded["objects"] += 1
            self.downloaded["bytes"] += st.st_size
        record = {"etag": etag, "size": st.st_size, "ino": st.st_ino, "mtime_ns": st.st_mtime_ns}
        _atomic_write(self._meta_path(name), lambda f: f.write(json.dumps(record).encode()), url)
        log.debug("downloaded %s (%d bytes) to %s", url, st.st_size, dest)


def _s3_store(url: str, bucket: str, prefix: str, endpoint: str | None, access_key: str | None, secret_key: str | None,
              secure: bool, cache_dir: str | os.PathLike | None) -> S3Store:
    """A store rooted at ``bucket``/``prefix``; ``url`` (what the user gave) names it in error messages."""
    prefix = prefix.strip("/")
    if not bucket:
        raise XichError(f"{url}: no bucket; use s3://bucket/prefix")
    if not endpoint:
        raise XichError(f"{url}: no S3 endpoint given; pass the server's address (host:port)")
    scheme, sep, host = endpoint.partition("://")
    if sep:
        secure = scheme == "https"
    else:
        host = endpoint
    http = urllib3.PoolManager(  # the SDK's defaults, but fail in seconds, not minutes, when nobody answers
        timeout=urllib3.Timeout(connect=10, read=120), maxsize=DOWNLOAD_THREADS + 2, cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]))
    try:
        client = Minio(host.rstrip("/"), access_key=access_key, secret_key=secret_key, secure=secure, http_client=http)
    except ValueError as exc:
        raise XichError(f"{url}: bad S3 endpoint {endpoint!r} ({exc}); use host:port") from None
    name_prefix = _clean_key(prefix) + "/" if prefix else ""
    return S3Store(url, client, host, bucket, name_prefix, Path(cache_dir) if cache_dir else default_cache_dir())


# --- helpers ------------------------------------------------------------------------------------

def _clean_key(key: str) -> str:
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in key.split("/")):
        raise XichError(f"invalid object key {key!r}: use a relative '/'-separated path without empty, '.' or '..' parts")
    return key


@contextmanager
def _open_source(path: str | os.PathLike, url: str) -> Iterator[BinaryIO]:
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise XichError(f"cannot upload {path} to {url}: {exc.strerror}; check the file") from None
    with f:
        yield f


def _atomic_write(dest: Path, write: Callable[[BinaryIO], object], url: str) -> None:
    """Write ``dest`` through :func:`atomic.write_atomically`, its temporary file named so that listings skip it."""
    write_atomically(dest, write, what=f"{url} ({dest})", tmp_prefix=f"{TMP_PREFIX}{dest.name}.")
