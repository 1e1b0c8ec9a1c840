"""Evaluation and training splits from an image folder, a tarball of one, or CIFAR's python batches.

Layouts accepted by :func:`open_dataset`:

- ``DIR`` with ``DIR/<split>/<class>/<image>`` (torchvision ImageFolder per split);
- ``DIR`` with ``DIR/<split>.tar`` or ``DIR/<split>.tar.gz`` holding ``<split>/<class>/<image>``;
- ``FILE.tar`` / ``FILE.tar.gz`` holding ``[<top>/]<split>/<class>/<image>``;
- ``s3://bucket/prefix/`` with ``<split>/<class>/<image>`` objects (given the store as ``source``): listed and
  fetched one class at a time, when that class is read;
- ``cifar10:DIR`` / ``cifar100:DIR``: torchvision's CIFAR python format (DIR or its
  ``cifar-10-batches-py`` / ``cifar-100-python`` folder). Image ids are ``index:<n>``.

A tarball is read once, under caps checked from each member's header (:class:`ArchiveCaps`; sparse members, links
and devices refused), keeping in memory only the images of the splits and classes the audit asks for.

Image ids are paths relative to the split (``cat/0007.jpg``). Class indices follow the sorted class
names of the evaluation split (ImageFolder's order).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
import tarfile
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..atomic import write_atomically
from ..boundary import escape
from ..errors import XichError
from ..settings import ARCHIVE_MAX_BYTES, ARCHIVE_MEMBER_MAX_BYTES, IMAGE_MAX_SIDE_FACTOR

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision are deprecated",
                        category=DeprecationWarning)  # the one function used here is checked against PIL in the tests

try:  # deprecated since torchvision 0.29 for TorchCodec (not a dependency): PIL decodes everything when it is gone
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # pragma: no cover
    decode_jpeg = None

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


Index = tuple[dict[str, list[str]], Callable[[str], np.ndarray], Callable[[str], bytes]]  # ids, decode, raw bytes


class Split:
    """One split: image ids per class, a reader from id to an RGB uint8 array (H, W, 3), and each
    image's raw bytes (for the content manifest that identifies a dataset).

    The index is built on first use, so an archived split nobody asks for is never read.
    """

    def __init__(self, name: str, where: str, index: Callable[[], Index], root: Path | None = None,
                 manifest: Callable[[], Iterator[tuple[str, str]]] | None = None,
                 prefetch: Callable[[list[str]], None] | None = None, digests: dict[str, str] | None = None):
        self.name, self.where, self._index_fn, self.root = name, where, index, root
        self.digests = digests  # image id → sha256, computed as an archive was read (its images are not all kept)
        self.manifest = manifest  # (image id, identity) in id order without reading images (object-store folders)
        self.prefetch = prefetch  # fetch these images' objects at once, before they are read one by one
        self.skipped: dict[str, str] = {}  # image id → why load_kept left it out

    @cached_property
    def _index(self) -> Index:
        return self._index_fn()

    @property
    def images(self) -> dict[str, list[str]]:
        return self._index[0]

    def read(self, image_id: str, max_side: int | None = None) -> np.ndarray:
        """The image as RGB uint8 (H, W, 3); ImageTooLarge, from its header, when a side exceeds ``max_side``."""
        return self._index[1](image_id, max_side=max_side)

    # XICH_IMAGE_MAX_SIDE_FACTOR: :meth:`load` skips images wider or taller than this many tile sides (open_dataset)
    max_side_factor: int = IMAGE_MAX_SIDE_FACTOR

    def load(self, ids: list[str], tile_size: int) -> torch.Tensor:
        """Images as a uint8 tensor (N, 3, T, T), resized (bilinear) to the tile size when needed; images over
        the size cap are left out (see :meth:`load_kept`)."""
        return self.load_kept(ids, tile_size)[1]

    def load_kept(self, ids: list[str], tile_size: int) -> tuple[list[str], torch.Tensor]:
        """(the ids kept, their images as a uint8 tensor (N, 3, T, T)).

        An image whose width or height exceeds ``max_side_factor × tile_size`` is refused from its header, before
        it is decoded (an all-zero 12000×12000 PNG is 420 KB on disk and 430 MB decoded): it is logged, counted in
        :attr:`skipped` (image id → reason) and left out; the audit goes on with the others.
        """
        kept, arrays = self._read_tiles(ids, tile_size)
        if ids and not kept:
            raise self._none_kept(len(ids), tile_size)
        return kept, _tiles_tensor(arrays, tile_size)

    def stream(self, ids: list[str], tile_size: int, chunk: int) -> ImageStream:
        """The images of ``ids`` as chunks of at most ``chunk`` tiles, decoded when iterated (see :class:`ImageStream`)."""
        return ImageStream(self, list(ids), tile_size, chunk)

    def _read_tiles(self, ids: list[str], tile_size: int) -> tuple[list[str], list[np.ndarray]]:
        max_side = self.max_side_factor * tile_size
        if self.prefetch is not None:
            self.prefetch(ids)
        kept, arrays = [], []
        for image_id in ids:
            try:
                arr = self.read(image_id, max_side=max_side)
            except ImageTooLarge as exc:
                self.skipped[image_id] = str(exc)
                log.warning("skipped: %s", exc)
                continue
            if arr.shape[:2] != (tile_size, tile_size):
                arr = np.asarray(Image.fromarray(arr).resize((tile_size, tile_size), Image.BILINEAR))
            kept.append(image_id)
            arrays.append(arr)
        return kept, arrays

    def _none_kept(self, n: int, tile_size: int) -> XichError:
        return XichError(f"{self.where}: every one of {n} image(s) asked for is larger than "
                         f"{self.max_side_factor * tile_size} pixels a side (XICH_IMAGE_MAX_SIDE_FACTOR × tile size); "
                         f"shrink them or raise the factor")

    def content_hashes(self, cache_dir: Path | None = None) -> dict[str, str]:
        """sha256 of every image's bytes, by image id.

        Archives were hashed as they were read; CIFAR batches are in memory. A folder's hashes are kept in
        ``cache_dir`` by (path, size, mtime), so a later audit of the same folder reads no image twice.
        """
        raw = self._index[2]
        ids = [i for ids in self.images.values() for i in ids]
        if self.digests is not None:
            return {i: self.digests[i] for i in ids}
        if self.root is None or cache_dir is None:
            return {i: hashlib.sha256(raw(i)).hexdigest() for i in ids}
        cache_file = Path(cache_dir) / "hashes" / (hashlib.sha256(str(self.root.resolve()).encode()).hexdigest() + ".json")
        try:
            cached = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cached = {}
        out, fresh = {}, {}
        for i in ids:
            st = (self.root / i).stat()
            key = [st.st_size, st.st_mtime_ns]
            hit = cached.get(i)
            out[i] = hit[2] if hit and hit[:2] == key else hashlib.sha256(raw(i)).hexdigest()
            fresh[i] = key + [out[i]]
        if fresh != cached:
            try:
                write_atomically(cache_file, json.dumps(fresh))
            except XichError:
                pass  # a cache that cannot be written only costs a re-read next time
        return out


@dataclass
class ImageStream:
    """A split's images, decoded ``chunk`` at a time: memory holds two chunks (the one in use and the next, decoded
    in a background thread while the caller works), never the whole list. Iterating yields (kept ids, uint8 tensor
    (n, 3, T, T)) chunks, with images over the size cap left out as :meth:`Split.load_kept` does; the ids kept
    are also gathered in :attr:`kept`."""

    split: Split
    ids: list[str]
    tile_size: int
    chunk: int

    def __post_init__(self):
        self.kept: list[str] = []
        self.decode_s = 0.0  # seconds spent fetching and decoding, in the stream's thread

    def __len__(self) -> int:
        return len(self.ids)

    def _decode(self, start: int) -> tuple[list[str], torch.Tensor]:
        began = time.perf_counter()
        kept, arrays = self.split._read_tiles(self.ids[start:start + self.chunk], self.tile_size)
        tiles = _tiles_tensor(arrays, self.tile_size)
        self.decode_s += time.perf_counter() - began
        return kept, tiles

    def __iter__(self) -> Iterator[tuple[list[str], torch.Tensor]]:
        self.kept = []
        starts = range(0, len(self.ids), self.chunk)
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self._decode, starts[0]) if starts else None
            for n in range(len(starts)):
                kept, images = pending.result()
                pending = pool.submit(self._decode, starts[n + 1]) if n + 1 < len(starts) else None
                self.kept.extend(kept)
                yield kept, images
        if self.ids and not self.kept:
            raise self.split._none_kept(len(self.ids), self.tile_size)


def _tiles_tensor(arrays: list[np.ndarray], tile_size: int) -> torch.Tensor:
    """(T, T, 3) uint8 tiles as one (n, 3, T, T) tensor; (0, 3, T, T) for none."""
    out = np.stack(arrays) if arrays else np.empty((0, tile_size, tile_size, 3), dtype=np.uint8)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def content_fingerprint(splits: list[Split], cache_dir: Path | None = None) -> tuple[str, int]:
    """A dataset's identity: sha256 of its manifest (split name, image id, image sha256), and its image count.

    The same images in another folder or archive give the same fingerprint. A folder tree in an object store
    (``s3://bucket/prefix/``) is identified by its listing instead — each image's ETag and size, streamed in key
    order — so that no image is fetched for it: an object rewritten in place gets a new ETag and so a new
    fingerprint, and the same images in S3 and in a local folder are two datasets.
    """
    h, n = hashlib.sha256(), 0
    for split in sorted(splits, key=lambda s: s.name):
        entries = split.manifest() if split.manifest else sorted(split.content_hashes(cache_dir).items())
        for image_id, digest in entries:
            h.update(f"{split.name}\t{image_id}\t{digest}\n".encode())
            n += 1
    return h.hexdigest(), n


@dataclass
class Dataset:
    uri: str
    classes: list[str]
    splits: dict[str, Split]


def open_dataset(uri: str, eval_split: str, train_split: str | None, source: ObjectSource | None = None, *,
                 max_side_factor: int = IMAGE_MAX_SIDE_FACTOR, classes: tuple[str, ...] | None = None,
                 archive_member_max_bytes: int = ARCHIVE_MEMBER_MAX_BYTES,
                 archive_max_bytes: int = ARCHIVE_MAX_BYTES) -> Dataset:
    """Open the evaluation split (required) and the training split (optional: None if absent); their images wider
    or taller than ``max_side_factor`` tile sides (XICH_IMAGE_MAX_SIDE_FACTOR, from the caller's context) are not
    decoded.

    A tarball is read under ``archive_member_max_bytes`` and ``archive_max_bytes`` (:class:`ArchiveCaps`), its
    other splits skipped unread, and only the images of ``classes`` (the audit's ``--classes``; None: all) kept.

    ``source``: the object store ``uri`` (``s3://bucket/prefix/``) names, for a folder tree there: its classes
    are listed from the store, and a class's images are listed and fetched only when that class is read.
    """
    kind, sep, rest = uri.partition(":")
    caps, wanted_classes = ArchiveCaps(archive_member_max_bytes, archive_max_bytes), set(classes) if classes else None
    if uri.startswith("s3://"):
        if source is None:
            raise XichError(f"--data {uri}: an S3 folder dataset needs its store (XICH_S3_ENDPOINT and credentials); "
                            f"audit it through xich audit or the flows, or download it first")
        splits = _object_splits(source, uri, {eval_split, train_split} - {None}, caps, wanted_classes)
    elif sep and kind in ("cifar10", "cifar100"):
        splits = _cifar_splits(kind, Path(rest), uri)
    else:
        splits = _folder_splits(Path(uri), uri, {eval_split, train_split} - {None}, caps, wanted_classes)
    if eval_split not in splits:
        found = ", ".join(sorted(splits)) or "no split folder"
        raise XichError(f"--data {uri}: no evaluation split {eval_split!r} (found: {found}); set --eval-split")
    opened = {eval_split: splits[eval_split]}
    if train_split and train_split in splits:
        opened[train_split] = splits[train_split]
    for split in opened.values():
        split.max_side_factor = max_side_factor
    classes = sorted(opened[eval_split].images)
    return Dataset(uri, classes, opened)


class ImageTooLarge(XichError):
    """An image over the size cap, refused from its header before decoding."""


def _decode(data: bytes, where: str, max_side: int | None = None) -> np.ndarray:
    size = _jpeg_size(data)  # a JPEG of 1 or 3 channels within the cap: decode_jpeg, without PIL's header parsing
    if size is not None and (max_side is None or max(size) <= max_side) and (arr := _decode_jpeg(data)) is not None:
        return arr
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only: the size is known before decoding
            if max_side is not None and max(img.size) > max_side:
                raise ImageTooLarge(f"image {where} is {img.size[0]}×{img.size[1]} pixels, over the cap of {max_side} "
                                    f"a side (XICH_IMAGE_MAX_SIDE_FACTOR × tile size); not decoded")
            return np.asarray(img.convert("RGB"))
    except Image.DecompressionBombError as exc:  # PIL refuses to decode a pixel count that could exhaust memory
        raise XichError(f"image {where} is too large to decode safely ({str(exc).rstrip('.')}); "
                        f"shrink it or remove the file") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise XichError(f"unreadable image {where}: {exc}; remove or replace the file") from None


SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # frame headers


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header when it has 1 or 3 components (greyscale, YCbCr/RGB); None for
    anything else (CMYK, not a JPEG, a header it cannot find), which PIL then reads."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
        elif marker in SOF_MARKERS:
            height, width = int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
            return (width, height) if data[i + 9] in (1, 3) and width and height else None
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def _decode_jpeg(data: bytes) -> np.ndarray | None:
    """A greyscale or colour JPEG through ``torchvision.io.decode_jpeg``: the same pixels as PIL (both libjpeg-turbo,
    checked in tests/test_datasets.py), and faster — with the header read by :func:`_jpeg_size`, not PIL — on
    CIFAR's 32-px JPEGs and on 224-px ones (bench/bench_decode.py, numbers in docs/benchmarks.md). None when it
    refuses the file: PIL decodes it, or says what is wrong with it."""
    if decode_jpeg is None:
        return None
    try:
        decoded = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:
        return None
    return np.ascontiguousarray(decoded.permute(1, 2, 0).numpy())


def _check_classes(images: dict[str, list[str]], where: str) -> dict[str, list[str]]:
    if not images:
        raise XichError(f"{where}: no class folders with images; expected <split>/<class>/<image>")
    for cls, ids in images.items():
        if not ids:
            raise XichError(f"class folder {where}/{cls} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                            f"add images or remove the folder")
    return {c: sorted(images[c]) for c in sorted(images)}


def _folder_split(root: Path) -> Split:
    return Split(root.name, str(root), lambda: _folder_index(root), root=root)


def _folder_index(root: Path):
    images: dict[str, list[str]] = {}
    for cls_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images[cls_dir.name] = [
            p.relative_to(root).as_posix() for p in cls_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        ]

    def raw(image_id: str) -> bytes:
        path = root / image_id
        try:
            return path.read_bytes()
        except OSError as exc:
            raise XichError(f"unreadable image {path}: {exc.strerror}") from None

    def read(image_id: str, max_side: int | None = None) -> np.ndarray:
        return _decode(raw(image_id), str(root / image_id), max_side)

    return _check_classes(images, str(root)), read, raw


@dataclass(frozen=True)
class ArchiveCaps:
    """What a tarball may make a worker read (XICH_ARCHIVE_MEMBER_MAX_BYTES, XICH_ARCHIVE_MAX_BYTES): every
    member's declared size, and the sum of all of them (what the archive expands to: the decompression work and the
    memory that holds the images read), checked from each header before its data is read or skipped."""

    member_bytes: int = ARCHIVE_MEMBER_MAX_BYTES
    total_bytes: int = ARCHIVE_MAX_BYTES


def _archive_member(info: tarfile.TarInfo, total: int, caps: ArchiveCaps, where: str) -> None:
    """Refuse a member from its header (XichError naming the archive and the cap), before its data is touched: a
    size over a cap (a gzip bomb expands into its members' declared sizes), a sparse member (a few KB on disk
    that read as GBs of zeros), or anything but a regular file or a folder (links, devices, FIFOs)."""
    name = escape(info.name, 120)
    if info.size > caps.member_bytes:
        raise XichError(f"{where}: member {name} declares {info.size} bytes, over the cap of {caps.member_bytes} bytes "
                        f"a member (XICH_ARCHIVE_MEMBER_MAX_BYTES); nothing more is read: remove the member or raise "
                        f"the cap")
    if total > caps.total_bytes:
        raise XichError(f"{where}: its members declare more than {caps.total_bytes} bytes in all (XICH_ARCHIVE_MAX_BYTES, "
                        f"reached at member {name}); nothing more is read: split the archive or raise the cap")
    if info.issparse():
        raise XichError(f"{where}: member {name} is a sparse file ({info.size} bytes of mostly holes); an archive "
                        f"dataset holds regular files only: archive it without tar's sparse option")
    if not (info.isreg() or info.isdir()):
        kind = ("a symbolic link" if info.issym() else "a hard link" if info.islnk() else "a device" if info.isdev()
                else "not a regular file")
        raise XichError(f"{where}: member {name} is {kind}; an archive dataset holds regular files and folders only")


def _archive_place(name: str, wanted: set[str]) -> tuple[str, str, str] | None:
    """(split, its prefix in the archive, class) of an image member of a ``wanted`` split; None for anything else."""
    p = name.split("/")
    skip = 0 if p[0] in wanted else 1 if len(p) > 1 and p[1] in wanted else None
    if skip is None or len(p) < skip + 3 or p[skip + 1].startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    return p[skip], "/".join(p[: skip + 1]), p[skip + 1]


def _archive_splits(path: Path, uri: str, wanted: set[str], caps: ArchiveCaps = ArchiveCaps(),
                    classes: set[str] | None = None) -> dict[str, Split]:
    """The ``wanted`` splits inside a tarball, read in one pass under ``caps`` (:func:`_archive_member`).

    Members are ``<split>/<class>/<image...>``, possibly under one top folder; anything else is skipped unread
    (though its header counts against the caps). The images of ``classes`` (None: every class) are kept in memory;
    the others of a wanted split are only hashed, for the dataset's fingerprint, and read again if asked for.
    """
    members: dict[str, bytes] = {}
    digests: dict[str, str] = {}
    by_split: dict[str, dict[str, list[str]]] = {}
    prefixes: dict[str, str] = {}
    with _archive_errors(path, uri):
        for tar, info in _capped_members(path, uri, caps):
            name = info.name.lstrip("./")
            place = _archive_place(name, wanted) if info.isreg() else None
            if place is None:
                continue
            split, prefix, cls = place
            if classes is None or cls in classes:
                members[name] = tar.extractfile(info).read()
                digests[name] = hashlib.sha256(members[name]).hexdigest()
            else:  # hashed in chunks, for the fingerprint, and let go
                digests[name] = hashlib.file_digest(tar.extractfile(info), "sha256").hexdigest()
            prefixes.setdefault(split, prefix)
            by_split.setdefault(split, {}).setdefault(cls, []).append(name.removeprefix(prefix + "/"))
    splits = {}
    for split, images in by_split.items():
        prefix = prefixes[split]

        def raw(image_id: str, prefix: str = prefix) -> bytes:
            name = f"{prefix}/{image_id}"
            return members[name] if name in members else _read_member(path, name, uri, caps)

        def read(image_id: str, prefix: str = prefix, max_side: int | None = None) -> np.ndarray:
            return _decode(raw(image_id, prefix), f"{path}!{prefix}/{image_id}", max_side)

        index = (_check_classes(images, f"{path}!{prefix}"), read, raw)
        splits[split] = Split(split, f"{path}!{prefix}", lambda index=index: index,
                              digests={i.removeprefix(prefix + "/"): d for i, d in digests.items()
                                       if i.startswith(prefix + "/")})
    return splits


def _read_member(path: Path, name: str, uri: str, caps: ArchiveCaps) -> bytes:
    """One member of an archive not kept in memory (a class the audit did not ask for), found by a pass under the
    same caps."""
    with _archive_errors(path, uri):
        for tar, info in _capped_members(path, uri, caps):
            if info.isreg() and info.name.lstrip("./") == name:
                return tar.extractfile(info).read()
    raise XichError(f"--data {uri}: archive {path}: member {escape(name, 120)} is gone; the archive changed during "
                    f"the audit")


def _capped_members(path: Path, uri: str, caps: ArchiveCaps) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """Each member of the archive with its tar, in order, every header checked against the caps before its data is
    read (``_archive_member``). Read inside :func:`_archive_errors`."""
    where, total = f"--data {uri}: archive {path}", 0
    with tarfile.open(path, "r:*") as tar:
        for info in tar:
            total += info.size
            _archive_member(info, total, caps, where)
            yield tar, info


@contextmanager
def _archive_errors(path: Path, uri: str) -> Iterator[None]:
    """An archive that cannot be read (a bad header, a truncated member) as one XichError."""
    try:
        yield
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise XichError(f"--data {uri}: cannot read archive {path} ({exc})") from None


class ObjectSource(Protocol):
    """A folder tree in an object store, keys relative to the dataset's root (``records.store.S3Store``)."""

    def uri(self, key: str) -> str: ...

    def children(self, prefix: str = "") -> Iterator[tuple[str, str | None, int | None]]: ...  # (name, ETag, size)

    def iter_objects(self, prefix: str = "") -> Iterator[tuple[str, str, int]]: ...  # (key, ETag, size), key order

    def fetch_listed(self, key: str, etag: str, size: int) -> Path: ...  # a local copy, cached by ETag


FETCH_THREADS = 8  # objects downloaded at once when a chunk of images is prefetched
LISTED_CLASSES = 4  # classes whose listings a split keeps (the class in use, the next one prefetched, and slack)


class _ListedClasses(Mapping):
    """A split in an object store: class name → image ids. The class names come from one delimited listing; a
    class's objects are listed when the class is first asked for, and only the last few classes' listings are
    kept, so memory follows the classes in use, not the dataset."""

    def __init__(self, source: ObjectSource, split: str, classes: list[str], where: str):
        self.source, self.split, self._classes, self.where = source, split, set(classes), where
        self._order = classes
        self._listings: OrderedDict[str, dict[str, tuple[str, int]]] = OrderedDict()
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, cls: object) -> bool:
        return cls in self._classes

    def __getitem__(self, cls: str) -> list[str]:
        return list(self.listing(cls))

    def listing(self, cls: str) -> dict[str, tuple[str, int]]:
        """Image id → (ETag, size) of class ``cls``'s objects."""
        if cls not in self._classes:
            raise KeyError(cls)
        with self._lock:
            if cls in self._listings:
                self._listings.move_to_end(cls)
                return self._listings[cls]
        found = {key.removeprefix(f"{self.split}/"): (etag, size)
                 for key, etag, size in self.source.iter_objects(f"{self.split}/{cls}/") if _is_image_key(key)}
        if not found:
            raise XichError(f"class folder {self.where}{cls}/ has no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                            f"add images or remove the folder")
        with self._lock:
            self._listings[cls] = found
            while len(self._listings) > LISTED_CLASSES:
                self._listings.popitem(last=False)
        return found

    def fetch(self, image_id: str) -> Path:
        etag, size = self.listing(image_id.partition("/")[0])[image_id]
        return self.source.fetch_listed(f"{self.split}/{image_id}", etag, size)


def _is_image_key(key: str) -> bool:
    parts = key.split("/")
    return len(parts) >= 3 and not parts[1].startswith(".") and Path(key).suffix.lower() in IMAGE_SUFFIXES


def _object_splits(source: ObjectSource, uri: str, wanted: set[str], caps: ArchiveCaps = ArchiveCaps(),
                   classes: set[str] | None = None) -> dict[str, Split]:
    """The ``wanted`` splits of a folder tree in an object store, as :func:`_folder_splits` finds them in a folder:
    ``<split>/<class>/<image>`` objects, listed and fetched one class at a time when the class is read (by the shard
    that audits it); else a ``<split>.tar[.gz]`` object, fetched whole when the split is first read."""
    where = uri if uri.endswith("/") else uri + "/"
    folders, archives = [], {}
    for name, etag, size in source.children(""):
        if etag is None:
            folders.append(name)
        elif _is_archive(Path(name)):
            archives[name.removesuffix(".gz").removesuffix(".tgz").removesuffix(".tar")] = (name, etag, size)
    splits = {}
    for split, (key, etag, size) in archives.items():
        if split in wanted and split not in folders:
            splits[split] = _lazy_archive_split(lambda key=key, etag=etag, size=size: source.fetch_listed(key, etag, size),
                                                where + key, split, uri, caps, classes)
    for name in folders:
        if name not in wanted:
            continue
        classes = sorted(c for c, etag, _ in source.children(f"{name}/") if etag is None and not c.startswith("."))
        if not classes:
            raise XichError(f"{where}{name}/: no class folders with images; expected <split>/<class>/<image>")
        listed = _ListedClasses(source, name, classes, f"{where}{name}/")

        def read(image_id: str, listed: _ListedClasses = listed, max_side: int | None = None) -> np.ndarray:
            return _decode(raw(image_id, listed), f"{listed.where}{image_id}", max_side)

        def raw(image_id: str, listed: _ListedClasses = listed) -> bytes:
            path = listed.fetch(image_id)
            try:
                return path.read_bytes()
            except OSError as exc:
                raise XichError(f"unreadable cached copy {path} of {listed.where}{image_id}: {exc.strerror}") from None

        def manifest(name: str = name) -> Iterator[tuple[str, str]]:
            for key, etag, size in source.iter_objects(f"{name}/"):
                if _is_image_key(key):
                    yield key.removeprefix(f"{name}/"), f"etag:{etag}:{size}"

        def prefetch(ids: list[str], listed: _ListedClasses = listed) -> None:
            with ThreadPoolExecutor(FETCH_THREADS) as pool:
                list(pool.map(listed.fetch, ids))

        index = (listed, read, raw)
        splits[name] = Split(name, f"{where}{name}", lambda index=index: index, manifest=manifest, prefetch=prefetch)
    return splits


def _is_archive(p: Path) -> bool:
    return p.name.endswith((".tar", ".tar.gz", ".tgz"))


def _folder_splits(root: Path, uri: str, wanted: set[str], caps: ArchiveCaps = ArchiveCaps(),
                   classes: set[str] | None = None) -> dict[str, Split]:
    if not root.exists():
        raise XichError(f"--data {uri}: no such file or folder")
    if root.is_file():
        if not _is_archive(root):
            raise XichError(f"--data {uri}: not a folder nor a .tar/.tar.gz archive")
        return _archive_splits(root, uri, wanted, caps, classes)
    splits = {p.name: _folder_split(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    for p in sorted(root.iterdir()):
        if p.is_file() and _is_archive(p):
            name = p.name.removesuffix(".gz").removesuffix(".tgz").removesuffix(".tar")
            if name not in splits:
                splits[name] = _lazy_archive_split(lambda p=p: p, str(p), name, uri, caps, classes)
    return splits


def _lazy_archive_split(path: Callable[[], Path], where: str, name: str, uri: str, caps: ArchiveCaps,
                        classes: set[str] | None) -> Split:
    """A ``<split>.tar[.gz]`` beside the split folders, read (``path()``: fetched, for an object) only if the audit
    asks for that split."""
    split = Split(name, where, lambda: None)

    def index():
        local = path()
        splits = _archive_splits(local, uri, {name}, caps, classes)
        if name not in splits:
            raise XichError(f"--data {uri}: archive {where} holds no {name}/<class>/<image> files")
        split.digests = splits[name].digests
        return splits[name]._index

    split._index_fn = index
    return split


def _cifar_splits(kind: str, root: Path, uri: str) -> dict[str, Split]:
    folder = root / ("cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python")
    folder = folder if folder.is_dir() else root
    if kind == "cifar10":
        files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
        meta_file, names_key, labels_key = "batches.meta", "label_names", "labels"
    else:
        files = {"train": ["train"], "test": ["test"]}
        meta_file, names_key, labels_key = "meta", "fine_label_names", "fine_labels"
    if not (folder / meta_file).is_file():
        raise XichError(f"--data {uri}: no {kind.upper()} python batches in {root} (expected {folder / meta_file})")
    names = _unpickle(folder / meta_file, (names_key,))[names_key]
    splits = {}
    for split, batch_files in files.items():
        if not all((folder / f).is_file() for f in batch_files):
            continue
        batches = [_unpickle(folder / f, ("data", labels_key)) for f in batch_files]
        data = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.concatenate([np.asarray(b[labels_key]) for b in batches])
        images = {names[c]: [f"index:{n}" for n in np.flatnonzero(labels == c)] for c in range(len(names))}
        images = {c: ids for c, ids in images.items() if ids}

        def read(image_id: str, data: np.ndarray = data, max_side: int | None = None) -> np.ndarray:
            return data[int(image_id.removeprefix("index:"))]  # 32×32 by construction

        def raw(image_id: str, data: np.ndarray = data) -> bytes:
            return data[int(image_id.removeprefix("index:"))].tobytes()

        index = (_check_classes(images, str(folder)), read, raw)
        splits[split] = Split(split, str(folder), lambda index=index: index)
    return splits


def _unpickle(path: Path, keys: tuple[str, ...]) -> dict:
    """A CIFAR python batch holding ``keys``, read with :class:`_CifarUnpickler` (a data file must not run code)."""
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, path).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise XichError(f"cannot read CIFAR batch {path} ({exc})") from None
    if not isinstance(d, dict):
        raise XichError(f"cannot read CIFAR batch {path}: it holds a {type(d).__name__}, not a dict; "
                        f"replace it with the file from the original download")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    missing = [k for k in keys if k not in d]
    if missing:
        raise XichError(f"cannot read CIFAR batch {path}: no {missing[0]!r} entry; replace it with the file from the "
                        f"original download")
    return d


def _cifar_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR batch refers to: numpy's array reconstruction, under numpy 1's and 2's module names."""
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:
        from numpy.core.multiarray import _reconstruct
    # resolved here, not by importing the module the file names: numpy 2 warns on every numpy.core access
    return {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, lists, dicts, strings and numbers; refuses every other global.

    Plain ``pickle.load`` calls whatever the file names (``os.system`` included), so a tampered batch
    would run code. ``latin1`` reads the Python 2 byte strings of the original batches.
    """

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="latin1")
        self.path = path
        self.allowed = _cifar_globals()

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        raise XichError(f"CIFAR batch {self.path}: XICH refuses to unpickle {module}.{name} (a CIFAR batch holds only "
                        f"numpy arrays, lists and strings); replace the file with the one from the original download")
