"""One safe atomic write, used by every writer of a file XICH produces (``--json``, report pages, the store's local
files and downloads, cache markers, trained checkpoints).

A unique temporary file is created exclusively in the target's folder (``mkstemp``: ``O_EXCL``, so a planted file
or symlink at a predictable name is never written through), filled, flushed to disk, then renamed over the target
(``os.replace``: readers see the old file or the new one). A target that exists and is not a regular file — a
device such as ``/dev/full``, a FIFO, a symlink, a folder — is refused before anything is written, and left alone.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

from .errors import XichError


def check_target(target: str | os.PathLike, what: str | None = None) -> Path:
    """``target`` as a Path when it is absent or a regular file; XichError otherwise (nothing is touched)."""
    target = Path(target)
    try:
        mode = os.lstat(target).st_mode
    except (FileNotFoundError, NotADirectoryError):  # nothing there: the write says whether the folder takes it
        return target
    except OSError as exc:
        raise XichError(f"{what or target}: cannot inspect it ({exc.strerror or exc}); check the path") from None
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a symlink" if stat.S_ISLNK(mode) else
                "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a FIFO" if stat.S_ISFIFO(mode) else
                "not a regular file")
        raise XichError(f"{what or target}: exists and is {kind}; XICH writes only new or regular files, "
                        f"give another path")
    return target


def write_atomically(target: str | os.PathLike, content: bytes | str | Callable[[BinaryIO], object], *,
                     what: str | None = None, tmp_prefix: str | None = None) -> Path:
    """Write ``content`` (bytes, text as UTF-8, or a function writing to a binary file) to ``target`` atomically.

    ``what`` names the target in errors (default: its path); ``tmp_prefix`` names the temporary file
    (default ``.NAME.``; the store uses its own prefix so that listings skip unfinished writes).
    XichError when the target is not a regular file or the folder cannot take the file (permissions, a full disk).
    """
    target = check_target(target, what)
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=tmp_prefix or f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide reports from their readers
        os.replace(tmp, target)
    except BaseException as exc:
        if tmp is not None:
            with suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError):
            raise XichError(f"{what or target}: cannot write it ({exc.strerror or exc}); check the folder's "
                            f"permissions and free space") from None
        raise
    return target


def _read_umask() -> int:
    mask = os.umask(0o022)  # os.umask only reads by setting: done once, at import, before any thread writes
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def check_output_dir(path: str | None, flag: str, shown: str | None = None) -> None:
    """An output folder exists (or is created) and takes a new file (probed exclusively, never through a link);
    XichError naming ``flag`` otherwise. Checked before an audit's first forward pass."""
    if path is None:
        return
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".xich-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise XichError(f"{flag} {shown or path}: cannot write in {folder} ({exc.strerror or exc}); "
                        f"check the path and its permissions") from None


def check_output_file(path: str | None, flag: str) -> None:
    """An output file's folder exists (or is created) and takes a file; the file is written later."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise XichError(f"{flag} {path}: is a folder; give a file path")
    check_target(target, f"{flag} {path}")  # a device (/dev/full), FIFO or symlink there is refused, untouched
    check_output_dir(str(target.parent), flag, shown=path)
