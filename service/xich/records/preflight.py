"""What a registration can check before any worker runs: paths made absolute, the checkpoint readable and
shaped like its spec, the classes asked for present in the dataset. No torch (the hooks and ``xich
register`` stay light): a checkpoint is read as the zip or pickle file ``torch.save`` writes, its tensors
reduced to their shapes by an unpickler that builds nothing else.

What cannot be checked here (an ``s3://`` or MLflow source, a ``torchvision:`` or ``python:`` spec's
keys) the worker checks first thing; a failure there is recorded on the audit request.
"""

from __future__ import annotations

import os
import pickle
import re
import tarfile
import zipfile
from collections import OrderedDict
from pathlib import Path

from ..boundary import MLFLOW_SCHEMES
from ..errors import XichError

# depth → BasicBlocks per stage of the CIFAR ResNets (models.CIFAR_DEPTHS, which imports torch)
CIFAR_BLOCKS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9}
ARCHIVE_LISTING_LIMIT = 512 << 20  # bytes: a larger archive's classes are checked by the worker
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def absolute_uri(uri: str | None, flag: str) -> str | None:
    """A local path (also after ``cifar10:`` / ``cifar100:``) made absolute; URIs (``s3://``, ``runs:/``,
    ``models:/``, ``mlflow-artifacts:/``) unchanged. A relative path stored as given would work only for workers started in the
    registering process's folder."""
    if uri is None or "://" in uri or uri.startswith(MLFLOW_SCHEMES):
        return uri
    kind, sep, rest = uri.partition(":")
    if sep and kind in ("cifar10", "cifar100"):
        return f"{kind}:{os.path.abspath(os.path.expanduser(rest))}"
    if not uri.strip():
        raise XichError(f"{flag}: empty path; give a path or an s3:// URI")
    return os.path.abspath(os.path.expanduser(uri))


def check_checkpoint(path: str | Path, spec: str, flag: str = "--weights") -> None:
    """Refuse a checkpoint whose CIFAR ResNet depth differs from ``spec`` (blocks counted from its keys);
    a file that is neither a zip nor a pickle is refused too. Other specs: only readability."""
    shapes = checkpoint_shapes(path, flag)
    kind, _, arch = spec.partition(":")
    if shapes is None or kind != "cifar" or arch not in CIFAR_BLOCKS:
        return
    keys = [k.removeprefix("module.") for k in shapes]
    blocks = {}
    for key in keys:
        found = re.match(r"layer(\d+)\.(\d+)\.", key)
        if found:
            stage, block = int(found.group(1)), int(found.group(2))
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
    if not blocks:
        raise XichError(f"{flag} {path}: holds no CIFAR ResNet stages (no layer1.0.… keys), so it does not fit "
                        f"the spec {spec}; give a {spec} checkpoint or the spec of this checkpoint")
    n = CIFAR_BLOCKS[arch]
    if set(blocks.values()) != {n}:
        depth = 6 * max(blocks.values()) + 2
        raise XichError(f"{flag} {path}: a ResNet-{depth} checkpoint ({max(blocks.values())} blocks per stage), not "
                        f"the spec {spec} ({n} blocks per stage); give the spec cifar:resnet{depth} or a {spec} "
                        f"checkpoint")


def checkpoint_shapes(path: str | Path, flag: str = "--weights") -> dict[str, tuple[int, ...]] | None:
    """Tensor name → shape of the state_dict in a ``torch.save`` file (under ``state_dict`` / ``model`` if
    wrapped); None when the file needs more than tensors, dicts, lists and scalars to read (the worker
    decides then). XichError: unreadable, or neither a zip nor a pickle."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(0)
            if head.startswith(b"PK"):
                with zipfile.ZipFile(f) as zf:
                    data = next((n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
                    if data is None:
                        raise XichError(f"{flag} {path}: a zip file without data.pkl, not a PyTorch checkpoint")
                    obj = _ShapeUnpickler(zf.open(data)).load()
            else:
                for _ in range(3):  # the legacy format: magic number, protocol version, system info, then the object
                    _ShapeUnpickler(f).load()
                obj = _ShapeUnpickler(f).load()
    except _Unsupported:
        return None
    except OSError as exc:
        raise XichError(f"{flag} {path}: cannot read it ({exc.strerror or exc}); give a readable file") from None
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, TypeError, AttributeError,
            IndexError, KeyError):
        raise XichError(f"{flag} {path}: not a PyTorch checkpoint (torch.save of a state_dict)") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, _Tensor) for v in obj.values()):
        return None
    return {str(k): v.shape for k, v in obj.items()}


class _Unsupported(Exception):
    """The pickle refers to something other than tensors and plain containers."""


class _Tensor:
    def __init__(self, shape: tuple[int, ...]):
        self.shape = tuple(int(x) for x in shape)


class _Storage:
    """Stands in for a typed storage: its bytes are never read."""


def _rebuild_tensor(storage, offset, size, *rest) -> _Tensor:
    return _Tensor(size)


def _rebuild_parameter(tensor, *rest) -> _Tensor:
    return tensor


class _ShapeUnpickler(pickle.Unpickler):
    """Builds dicts, lists and scalars; a tensor becomes its shape; any other global is not built."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch._utils" and name.startswith("_rebuild_tensor"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name.endswith("Storage"):
            return _Storage
        raise _Unsupported(f"{module}.{name}")

    def persistent_load(self, pid) -> _Storage:
        return _Storage()


def check_classes(dataset_uri: str, classes: list[str] | str | None, eval_split: str | None) -> None:
    """Refuse classes that the dataset's evaluation split lacks, where its class folders can be listed cheaply
    (a local folder, or a local archive up to ARCHIVE_LISTING_LIMIT); else the worker checks them."""
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",")]
    if not classes or "://" in dataset_uri or dataset_uri.startswith(("cifar10:", "cifar100:")):
        return
    split = eval_split or "test"
    found = _split_classes(Path(dataset_uri), split)
    if found is None:
        return
    missing = [c for c in classes if c not in found]
    if missing:
        raise ClassesNotInSplit(f"settings: class(es) {', '.join(missing)} are not in split {split!r} of dataset "
                                f"{dataset_uri}; ask only for classes of that split", available=sorted(found))


class ClassesNotInSplit(XichError):
    """Classes asked for that the split lacks. The message lists none of the split's classes (a hook's sender is
    answered with it); ``available`` holds them for the local command line (`xich register`), which lists them as
    `xich audit` does."""

    def __init__(self, message: str, *, available: list[str]):
        super().__init__(message)
        self.available = available


def _split_classes(root: Path, split: str) -> set[str] | None:
    """The class folder names of ``split`` (None: not listable here)."""
    if root.is_dir() and (root / split).is_dir():
        return {p.name for p in (root / split).iterdir() if p.is_dir() and not p.name.startswith(".")}
    archive = root if root.is_file() else next(
        (root / f"{split}{ext}" for ext in (".tar.gz", ".tgz", ".tar") if (root / f"{split}{ext}").is_file()), None)
    if archive is None or archive.stat().st_size > ARCHIVE_LISTING_LIMIT:
        return None
    found: set[str] = set()
    try:
        with tarfile.open(archive, "r:*") as tar:
            for info in tar:
                parts = info.name.lstrip("./").split("/")
                if not info.isfile() or not parts[-1].lower().endswith(IMAGE_SUFFIXES):
                    continue
                at = 0 if parts[0] == split else 1 if len(parts) > 1 and parts[1] == split else None
                if at is not None and len(parts) >= at + 3:
                    found.add(parts[at + 1])
    except (tarfile.TarError, OSError, EOFError):
        return None  # the worker's reading of it says what is wrong
    return found or None


def preflight(*, model_spec: str, weights: str | None, dataset_uri: str, settings: dict) -> None:
    """Every check a registration can make without torch: the local checkpoint against its spec, the classes
    asked for against the dataset's evaluation split."""
    if weights and "://" not in weights and not weights.startswith(("runs:/", "models:/")):
        check_checkpoint(weights, model_spec)
    check_classes(dataset_uri, settings.get("classes"), settings.get("eval_split"))
