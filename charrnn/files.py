"""Writing files that users rely on: atomically, never through a link, OS errors named.

Every file charrnn writes in a run folder or the data cache goes through here:
- `atomic_write` writes a temporary file beside the target, fsyncs it and renames it
  over the target, so a kill leaves the old content or the new one, never a torn file;
  the rename replaces a symbolic link itself, never the file it points to.
- `open_nofollow` opens a file for appending or locking with O_NOFOLLOW and refuses
  anything but a plain file with one name (a hard link to a file elsewhere would let a
  write in the run folder change that file).
- `os_error` turns an OSError on a user's path into one CharRNNError sentence.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from charrnn.errors import CharRNNError

_HINTS = {
    errno.ENOSPC: "free some disk space",
    errno.EDQUOT: "free some disk space (the quota is full)",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.EACCES: "fix its permissions or choose another folder",
    errno.EPERM: "fix its permissions or choose another folder",
    errno.ENOTDIR: "a part of that path is a file, not a folder: choose another folder",
    errno.EISDIR: "it is a folder: give a file",
    errno.EEXIST: "remove it or choose another name",
    errno.ELOOP: "it is a symbolic link, which charrnn does not write through: remove the link",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.EMFILE: "too many files are open: close some programs",
}


def os_error(exc: OSError, what: str = "", hint: str = "") -> CharRNNError:
    """The CharRNNError for `exc`: what failed, on which path, and what to do."""
    path = exc.filename if exc.filename is not None else ""
    reason = (exc.strerror or str(exc)).rstrip(".")
    doing = f"{what} " if what else ""
    where = f"'{path}'" if path else "a file"
    todo = hint or _HINTS.get(exc.errno or 0, "check the path and try again")
    return CharRNNError(f"{doing}failed on {where}: {reason}; {todo}, then run the command again.")


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call write(file) on a temp file beside `path`, fsync it, then rename over `path`.

    A crash at any moment leaves the old file or the new one; a link at `path` is
    replaced, never followed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def open_nofollow(path: Path, flags: int, mode: int = 0o644) -> int:
    """os.open with O_NOFOLLOW; refuses a link or a file with several names (CharRNNError)."""
    path = Path(path)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise linked_file_error(path) from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise linked_file_error(path)
    return fd


def linked_file_error(path: Path) -> CharRNNError:
    return CharRNNError(
        f"'{path}' is a link or not a plain file: charrnn never writes through links; "
        "remove it (or copy the real file in its place) and run the command again."
    )


def check_not_linked(path: Path) -> None:
    """Refuse `path` when it is a symbolic link or a special file (a missing path is fine)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode) or not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        raise linked_file_error(Path(path))


def link_or_copy(src: "os.PathLike[str]", dst: "os.PathLike[str]") -> None:
    """Make dst a copy of src atomically; a hard link costs no disk and no time."""
    import shutil

    tmp = Path(dst).with_name(f".{Path(dst).name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def file_identity(path: "os.PathLike[str]") -> tuple[int, ...] | None:
    """Which file is at `path` now (device, inode, size, mtime), or None when there is none.
    Every checkpoint write renames a new file into place, so any write changes it."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
