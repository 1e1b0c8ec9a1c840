"""Evaluation and training splits from an image folder, a tarball of one, or CIFAR's python batches.

Layouts accepted by :func:`open_dataset`:

- ``DIR`` with ``DIR/<split>/<class>/<image>`` (torchvision ImageFolder per split);
- ``DIR`` with ``DIR/<split>.tar`` or ``DIR/<split>.tar.gz`` holding ``<split>/<class>/<image>``;
- ``FILE.tar`` / ``FILE.tar.gz`` holding ``[<top>/]<split>/<class>/<image>``;
- ``cifar10:DIR`` / ``cifar100:DIR``: torchvision's CIFAR python format (DIR or its
  ``cifar-10-batches-py`` / ``cifar-100-python`` folder). Image ids are ``index:<n>``.

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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..atomic import write_atomically
from ..errors import XichError
from ..settings import IMAGE_MAX_SIDE_FACTOR

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


Index = tuple[dict[str, list[str]], Callable[[str], np.ndarray], Callable[[str], bytes]]  # ids, decode, raw bytes


class Split:
    """One split: image ids per class, a reader from id to an RGB uint8 array (H, W, 3), and each
    image's raw bytes (for the content manifest that identifies a dataset).

    The index is built on first use, so an archived split nobody asks for is never read.
    """

    def __init__(self, name: str, where: str, index: Callable[[], Index], root: Path | None = None):
        self.name, self.where, self._index_fn, self.root = name, where, index, root
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
        out = np.stack(arrays) if arrays else np.empty((0, tile_size, tile_size, 3), dtype=np.uint8)
        return kept, torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()

    def stream(self, ids: list[str], tile_size: int, chunk: int) -> ImageStream:
        """The images of ``ids`` as chunks of at most ``chunk`` tiles, decoded when iterated (see :class:`ImageStream`)."""
        return ImageStream(self, list(ids), tile_size, chunk)

    def _read_tiles(self, ids: list[str], tile_size: int) -> tuple[list[str], list[np.ndarray]]:
        max_side = self.max_side_factor * tile_size
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

        Archives and CIFAR batches are already in memory. A folder's hashes are kept in
        ``cache_dir`` by (path, size, mtime), so a later audit of the same folder reads no image twice.
        """
        raw = self._index[2]
        ids = [i for ids in self.images.values() for i in ids]
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

    def __len__(self) -> int:
        return len(self.ids)

    def _decode(self, start: int) -> tuple[list[str], torch.Tensor]:
        kept, arrays = self.split._read_tiles(self.ids[start:start + self.chunk], self.tile_size)
        out = np.stack(arrays) if arrays else np.empty((0, self.tile_size, self.tile_size, 3), dtype=np.uint8)
        return kept, torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()

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


def content_fingerprint(splits: list[Split], cache_dir: Path | None = None) -> tuple[str, int]:
    """A dataset's identity: sha256 of its manifest (split name, image id, image sha256), and its image count.

    The same images in another folder, archive or bucket give the same fingerprint.
    """
    h, n = hashlib.sha256(), 0
    for split in sorted(splits, key=lambda s: s.name):
        for image_id, digest in sorted(split.content_hashes(cache_dir).items()):
            h.update(f"{split.name}\t{image_id}\t{digest}\n".encode())
            n += 1
    return h.hexdigest(), n


@dataclass
class Dataset:
    uri: str
    classes: list[str]
    splits: dict[str, Split]


def open_dataset(uri: str, eval_split: str, train_split: str | None, *,
                 max_side_factor: int = IMAGE_MAX_SIDE_FACTOR) -> Dataset:
    """Open the evaluation split (required) and the training split (optional: None if absent); their images wider
    or taller than ``max_side_factor`` tile sides (XICH_IMAGE_MAX_SIDE_FACTOR, from the caller's context) are not
    decoded."""
    kind, sep, rest = uri.partition(":")
    if sep and kind in ("cifar10", "cifar100"):
        splits = _cifar_splits(kind, Path(rest), uri)
    else:
        splits = _folder_splits(Path(uri), uri, {eval_split, train_split} - {None})
    if eval_split not in splits:
        raise XichError(f"--data {uri}: no evaluation split {eval_split!r} (found: {', '.join(sorted(splits)) or 'none'}); "
                        f"set --eval-split")
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


def _archive_splits(path: Path, uri: str, wanted: set[str]) -> dict[str, Split]:
    """The ``wanted`` splits inside a tarball, read into memory once (compressed images are small).

    Members are ``<split>/<class>/<image...>``, possibly under one top folder; anything else is ignored.
    """
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for info in tar:
                if info.isfile() and Path(info.name).suffix.lower() in IMAGE_SUFFIXES:
                    members[info.name.lstrip("./")] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise XichError(f"--data {uri}: cannot read archive {path} ({exc})") from None
    by_split: dict[str, dict[str, list[str]]] = {}
    prefixes: dict[str, str] = {}
    for name in members:
        p = name.split("/")
        skip = 0 if p[0] in wanted else 1 if len(p) > 1 and p[1] in wanted else None
        if skip is None or len(p) < skip + 3 or p[skip + 1].startswith("."):
            continue
        split = p[skip]
        prefixes.setdefault(split, "/".join(p[: skip + 1]))
        by_split.setdefault(split, {}).setdefault(p[skip + 1], []).append("/".join(p[skip + 1:]))
    splits = {}
    for split, images in by_split.items():
        prefix = prefixes[split]

        def read(image_id: str, prefix: str = prefix, max_side: int | None = None) -> np.ndarray:
            return _decode(members[f"{prefix}/{image_id}"], f"{path}!{prefix}/{image_id}", max_side)

        def raw(image_id: str, prefix: str = prefix) -> bytes:
            return members[f"{prefix}/{image_id}"]

        index = (_check_classes(images, f"{path}!{prefix}"), read, raw)
        splits[split] = Split(split, f"{path}!{prefix}", lambda index=index: index)
    return splits


def _is_archive(p: Path) -> bool:
    return p.name.endswith((".tar", ".tar.gz", ".tgz"))


def _folder_splits(root: Path, uri: str, wanted: set[str]) -> dict[str, Split]:
    if not root.exists():
        raise XichError(f"--data {uri}: no such file or folder")
    if root.is_file():
        if not _is_archive(root):
            raise XichError(f"--data {uri}: not a folder nor a .tar/.tar.gz archive")
        return _archive_splits(root, uri, wanted)
    splits = {p.name: _folder_split(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    for p in sorted(root.iterdir()):
        if p.is_file() and _is_archive(p):
            name = p.name.removesuffix(".gz").removesuffix(".tgz").removesuffix(".tar")
            if name not in splits:
                splits.update(_lazy_archive_split(p, name, uri))
    return splits


def _lazy_archive_split(path: Path, name: str, uri: str) -> dict[str, Split]:
    """A ``<split>.tar[.gz]`` beside the split folders, read only if the audit asks for that split."""

    def index():
        splits = _archive_splits(path, uri, {name})
        if name not in splits:
            raise XichError(f"--data {uri}: archive {path} holds no {name}/<class>/<image> files")
        return splits[name]._index

    return {name: Split(name, str(path), index)}


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
