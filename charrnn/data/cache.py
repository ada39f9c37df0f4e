"""The prepared-data cache: one folder per encoded corpus, checked before it is trusted.

Layout of `<data_dir>/cache/` (key = `<sha256[:16]>-<encoding>[-v<vocab hash>][-m<max vocab>]`):

    <key>/tokens.npy         .npy header, then N ids in token_dtype(len(vocab)): (N,)
    <key>/vocab.json         {"chars": "<the symbols, sorted>", "byte_level": false}
    .<key>.lock              flock(2) held by whoever builds or repairs <key>; removed on release
    .<key>.tmp.<random>/     a build in progress, renamed to <key> once complete

`open_or_build` maps a folder only after checking it against what reading the
corpus found (its vocabulary and character count); a damaged folder is removed
and built again, and a note says so. Nothing below `cache/` is followed when it is
a symbolic link: a link in place of a folder or file is removed itself, never its
target. `<data_dir>` and `<data_dir>/cache` themselves may be links (a cache on
another disk is the user's choice).

Leftovers of a killed build: a writer holds its key's lock from before it creates
its temp folder until after the rename, and the kernel drops a flock when its
holder dies. So whoever can take a key's lock knows that key's temp folders are
orphans and removes them. Unlike a pid in the name this needs no guess about pid
reuse and holds when several machines share the data folder (NFS maps flock to
its cluster-wide locks). The file stays whole: validating, building and cleaning up
share one lock protocol.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from charrnn.data.vocab import Vocab, token_dtype
from charrnn.errors import CharRNNError
from charrnn.files import atomic_write_text, fsync_dir, open_nofollow

CHECK_IDS = 1 << 24  # ids per slice while checking them (bounds the transient memory, 16 MB as uint8)
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a planted pipe never hangs


class Damaged(Exception):
    """A cache folder that disagrees with its corpus; the message says how, e.g. 'tokens.npy is truncated'."""


def folder_for(data_dir: Path, sha: str, encoding: str, fixed: Vocab | None, max_vocab: int = 0) -> Path:
    """The cache folder of a corpus with content hash `sha`, read as `encoding` (and a fixed
    vocabulary, or a vocabulary capped at `max_vocab` symbols: other ids, so another folder)."""
    key = f"{sha[:16]}-{encoding}"
    if fixed is not None:
        key += "-v" + hashlib.sha256("".join(fixed.chars).encode("utf-8", "surrogatepass")).hexdigest()[:8]
    if max_vocab:
        key += f"-m{max_vocab}"
    return data_dir / "cache" / key


def open_or_build(
    folder: Path, vocab: Vocab, count: int, build: Callable[[Path], None]
) -> tuple[np.memmap, tuple[str, ...]]:
    """The checked tokens of `folder`, calling build(folder) first when it is missing or
    damaged; the notes (one line each) say what was repaired."""
    sweep(folder.parent)
    with contextlib.suppress(Damaged):
        tokens = open_cache(folder, vocab, count)
        if tokens is not None:
            return tokens, ()
    make_folder(folder.parent)
    with hold_lock(folder.parent / f".{folder.name}.lock"):
        notes: tuple[str, ...] = ()
        try:  # again: another process may have built or repaired it while we waited
            tokens = open_cache(folder, vocab, count)
            if tokens is not None:
                return tokens, ()
        except Damaged as exc:
            remove(folder)
            notes = (f"the prepared-data cache '{folder}' was damaged ({exc}): rebuilt it",)
        build(folder)
        try:
            tokens = open_cache(folder, vocab, count)
        except Damaged as exc:
            raise CharRNNError(
                f"the prepared-data cache '{folder}' is damaged right after it was written ({exc}): "
                "check the disk, then run the command again."
            )
        assert tokens is not None
        return tokens, notes


# ---------------------------------------------------------------------------------------
# Reading: every field checked, nothing followed.


def open_cache(folder: Path, vocab: Vocab, count: int) -> np.memmap | None:
    """`folder`'s tokens mapped read-only, (count,); None when there is no folder.
    Raises Damaged when its vocabulary is not `vocab` or its tokens are not `count` valid ids."""
    try:
        info = os.lstat(folder)
    except (FileNotFoundError, NotADirectoryError):  # the latter: the data folder is a file (make_folder says so)
        return None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise Damaged("it is a symbolic link" if stat.S_ISLNK(info.st_mode) else "it is not a folder")
    dir_fd = _open_member(folder, os.O_DIRECTORY)
    try:
        with os.fdopen(_open_member("vocab.json", 0, dir_fd), "rb") as f:
            _check_vocab(f, vocab)
        with os.fdopen(_open_member("tokens.npy", 0, dir_fd), "rb") as f:
            tokens = _map_tokens(f, token_dtype(len(vocab)), count)
    finally:
        os.close(dir_fd)
    _check_ids(tokens, len(vocab))
    return tokens


def _open_member(name: Path | str, flags: int, dir_fd: int | None = None) -> int:
    """A read-only fd on a plain file (or, with O_DIRECTORY, a folder) that is no link."""
    try:
        fd = os.open(name, _READ_FLAGS | flags, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        raise Damaged(f"{name} is missing" if not flags else "it changed while it was read") from None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise Damaged(f"{name} is a symbolic link") from None
    if not flags and not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise Damaged(f"{name} is not a plain file")
    return fd


def _check_vocab(f: BinaryIO, vocab: Vocab) -> None:
    expected = vocab.to_dict()
    raw = f.read(8 * len(json.dumps(expected)) + 4096)  # bounded: a planted huge file is not read whole
    if f.read(1):
        raise Damaged("vocab.json is too large")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise Damaged("vocab.json is not valid JSON") from None
    if not isinstance(data, dict):
        raise Damaged("vocab.json is not a JSON object")
    if not isinstance(data.get("chars"), str) or not isinstance(data.get("byte_level"), bool):
        raise Damaged("vocab.json needs chars as a string and byte_level as true or false")
    if data != expected:
        raise Damaged("vocab.json does not list the corpus's symbols")


def _map_tokens(f: BinaryIO, dtype: np.dtype, count: int) -> np.memmap:
    """Check the .npy header and the file size against (count,) ids of `dtype`, then map it."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        reader = readers.get(np.lib.format.read_magic(f))
        if reader is None:
            raise Damaged("tokens.npy has an unknown header version")
        shape, fortran_order, stored = reader(f)
    except (ValueError, SyntaxError, TypeError, OverflowError, RecursionError, MemoryError):
        raise Damaged("tokens.npy has no readable .npy header") from None
    if stored != dtype:
        raise Damaged(f"tokens.npy holds {stored} ids, expected {dtype}")
    if fortran_order or shape != (count,):
        raise Damaged(f"tokens.npy has shape {shape}, expected ({count},)")
    size, needed = os.fstat(f.fileno()).st_size, f.tell() + count * dtype.itemsize
    if size != needed:
        raise Damaged("tokens.npy is truncated" if size < needed else "tokens.npy has bytes after its ids")
    return np.memmap(f, dtype=dtype, mode="r", offset=f.tell(), shape=(count,))


def _check_ids(tokens: np.ndarray, vocab_size: int) -> None:
    """Every id below vocab_size: a max over slices of the map (see corpus.py for its cost)."""
    if vocab_size > np.iinfo(tokens.dtype).max:
        return  # the dtype holds no larger value
    for start in range(0, len(tokens), CHECK_IDS):
        if int(tokens[start : start + CHECK_IDS].max()) >= vocab_size:
            raise Damaged("tokens.npy has ids outside the vocabulary")


# ---------------------------------------------------------------------------------------
# Writing: a temp folder of our own, files created exclusively, one rename.


def store(folder: Path, vocab: Vocab, count: int, ids: Iterable[np.ndarray]) -> None:
    """Write tokens.npy (from chunks of ids in token_dtype(len(vocab))) and vocab.json into a
    new temp folder, then rename it to `folder`. The caller holds the folder's lock."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp.", dir=folder.parent))
    try:
        _write_tokens(tmp / "tokens.npy", token_dtype(len(vocab)), count, ids)
        atomic_write_text(tmp / "vocab.json", json.dumps(vocab.to_dict()))
        fsync_dir(tmp)
        _publish(tmp, folder, vocab, count)
    except OSError as exc:  # a write or fsync names no file; one in the temp folder is gone: name `folder`
        if exc.filename is None or str(exc.filename).startswith(str(tmp)):
            exc.filename = str(folder)
        raise
    finally:
        with contextlib.suppress(OSError):  # never hide the error that got us here
            remove(tmp)


def _write_tokens(path: Path, dtype: np.dtype, count: int, ids: Iterable[np.ndarray]) -> None:
    # Plain appends, not a writable memory map: mapped dirty pages would count in the
    # process's resident memory (923 MB for a 1 GB corpus); written pages do not.
    with os.fdopen(open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb") as out:
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (count,)}
        np.lib.format.write_array_header_1_0(out, header)
        written = 0
        for chunk in ids:
            out.write(np.ascontiguousarray(chunk, dtype=dtype).tobytes())
            written += len(chunk)
        if written != count:
            raise CharRNNError("the corpus changed while it was being prepared: run the command again.")
        out.flush()
        os.fsync(out.fileno())  # a crash after the rename must not leave a folder of holes


def _publish(tmp: Path, folder: Path, vocab: Vocab, count: int) -> None:
    try:
        os.rename(tmp, folder)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        # Someone not taking our lock (an older charrnn) got there first: keep theirs if it is sound.
        with contextlib.suppress(Damaged):
            if open_cache(folder, vocab, count) is not None:
                return
        remove(folder)
        os.rename(tmp, folder)
    fsync_dir(folder.parent)


def make_folder(folder: Path) -> None:
    """mkdir -p, with a CharRNNError naming the file in the way when a part of the path is one."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (folder, *folder.parents) if os.path.lexists(p) and not p.is_dir()), folder)
        raise CharRNNError(
            f"'{blocker}' is a file where charrnn needs a folder: move it away or pass another --data-dir."
        ) from None


def remove(path: Path) -> None:
    """Remove a folder (its contents, links inside removed as links) or the entry itself when
    it is a link or a file: never anything a link points to."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(path)  # on Linux rmtree works through fds: links inside are unlinked, not followed
    else:
        os.unlink(path)


# ---------------------------------------------------------------------------------------
# Locks and leftovers.


@contextlib.contextmanager
def hold_lock(path: Path, wait: bool = True) -> Iterator[bool]:
    """Hold flock(2) on `path` (created when missing, removed on release) for the block.

    Yields False, holding nothing, when `wait` is False and another process holds it.
    Removing the file lets a process that was waiting lock a file no longer at `path`:
    a lock counts only while the locked file is the one at `path`, else it is taken again.
    """
    fd = _take_lock(path, wait)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # while still locked: nobody else can hold this file now
            os.close(fd)


def _take_lock(path: Path, wait: bool) -> int | None:
    while True:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISLNK(os.lstat(path).st_mode):
                os.unlink(path)  # a planted link: charrnn never locks through one, so no holder loses it
        fd = open_nofollow(path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            here = os.lstat(path)
        except FileNotFoundError:
            here = None
        mine = os.fstat(fd)
        if here is not None and (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino):
            return fd
        os.close(fd)


def sweep(root: Path) -> None:
    """Remove the temp folders and lock files of builds that were killed (best effort: a
    read-only cache is left as it is)."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    keys = {n[1:].split(".tmp.")[0] for n in names if n.startswith(".") and ".tmp." in n}
    keys |= {n[1:-5] for n in names if n.startswith(".") and n.endswith(".lock")}
    for key in sorted(keys):
        try:
            with hold_lock(root / f".{key}.lock", wait=False) as free:
                if free:  # no live writer of this key: its temp folders are orphans
                    for name in names:
                        if name.startswith(f".{key}.tmp."):
                            remove(root / name)
        except (OSError, CharRNNError):
            continue
