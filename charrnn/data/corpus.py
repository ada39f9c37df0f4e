"""Corpora: find or download the text, read it the one way training does, encode it once, split it.

`prepare` reads the file in chunks (two passes: hash + vocabulary, then encode), so
a corpus far larger than memory works. The encoded corpus lives in the prepared-data
cache (charrnn/data/cache.py: `<data_dir>/cache/<sha256[:16]>-<encoding>[-v<hash>]/`),
which is checked against pass 1 every time it is opened and rebuilt when damaged.
`read_text` (prime and eval text) decodes exactly as `prepare` does. A corpus can be
several files (`resolve_sources`: folders, glob patterns): they are streamed one after
another with SEPARATOR between them, and the hash covers the whole stream.
The file stays whole: both readers must share the one decoder and its error messages.
"""

from __future__ import annotations

import codecs
import contextlib
import glob
import hashlib
import http.client
import os
import stat
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from charrnn.data import cache
from charrnn.data.vocab import Vocab, capped_vocab, token_dtype, vocab_from_codepoints
from charrnn.errors import CharRNNError
from charrnn.files import os_error

CHUNK_BYTES = 2 << 20  # bytes read per chunk while preparing (bounds the transient memory)


@dataclass(frozen=True)
class BuiltinCorpus:
    filename: str
    url: str
    sha256: str
    size: int  # bytes


BUILTINS = {
    "shakespeare": BuiltinCorpus(
        filename="tinyshakespeare.txt",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        size=1_115_394,
    )
}


@dataclass(frozen=True)
class Prepared:
    """An encoded corpus: tokens (N,) memory-mapped, its vocab and where it came from."""

    tokens: np.ndarray
    vocab: Vocab
    sha256: str
    source: Path
    encoding: str
    notes: tuple[str, ...] = ()  # what preparing had to repair (a damaged cache rebuilt), one line each, for the user
    files: tuple[tuple[str, int], ...] = ()  # (path, bytes) of each file of the stream, in order


@contextlib.contextmanager
def _os_errors(what: str) -> Iterator[None]:
    """An OSError on a user's path (no space, read-only, not a folder...) as one CharRNNError."""
    try:
        yield
    except OSError as exc:
        raise os_error(exc, what) from None


def resolve_corpus(name: str, data_dir: Path, url: str | None = None) -> Path:
    """A regular file (or a link to one), or a built-in corpus name downloaded once into data_dir."""
    path = Path(name)
    with _os_errors(f"opening corpus '{name}'"):
        if name in BUILTINS and not path.exists():
            return fetch_builtin(name, data_dir, url)
        _file_mode(path, "corpus")
    return path


# Files of a corpus made of several are joined with a blank line: "\n" is in any text's
# vocabulary (a file without one still gets it from the separator), and a document
# boundary then reads like a paragraph break.
SEPARATOR = "\n\n"
_GLOB = frozenset("*?[")


def resolve_sources(names: str | Path | Sequence[str | Path], data_dir: Path, url: str | None = None) -> list[Path]:
    """The files of a corpus given as one or more sources, in stream order.

    A folder means its regular files, recursively, hidden files and folders skipped, sorted
    by path; a glob pattern is expanded here, sorted; a file or a built-in name is itself.
    Raises CharRNNError naming the source that matches no file.
    """
    names = [names] if isinstance(names, (str, Path)) else list(names)
    if not names:
        raise CharRNNError("give a corpus: a text file, a folder, a glob pattern or a built-in name.")
    files: list[Path] = []
    for name in map(str, names):
        if _GLOB & set(name) and not os.path.lexists(name):
            found = [Path(p) for p in sorted(glob.glob(name, recursive=True))]
        elif os.path.isdir(name):
            found = [Path(name)]
        else:
            files.append(resolve_corpus(name, data_dir, url))
            continue
        expanded = [f for p in found for f in (_folder_files(p) if p.is_dir() else [p])]
        if not expanded:
            raise CharRNNError(f"corpus source '{name}' matches no file: check the path or the pattern.")
        for path in expanded:
            with _os_errors(f"opening corpus '{path}'"):
                _file_mode(path, "corpus")
        files.extend(expanded)
    # A file named by two sources (a folder and a pattern) is read once, where it first came.
    seen: set[str] = set()
    return [f for f in files if not (str(f.resolve()) in seen or seen.add(str(f.resolve())))]  # type: ignore[func-returns-value]


def _folder_files(folder: Path) -> list[Path]:
    """Files under `folder` (not following linked folders), hidden ones and hidden folders skipped."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(Path(root) / n for n in names if not n.startswith("."))
    return sorted(found)


def file_list(files: Sequence[Path]) -> list[dict]:
    """What a run records of its corpus files: absolute path and size in bytes."""
    return [{"path": str(Path(f).resolve()), "bytes": os.stat(f).st_size} for f in files]


def changed_files(recorded: list[dict], current: list[dict]) -> str:
    """What differs between two `file_list`s, in words ('' when the lists agree)."""
    before = {r.get("path"): r.get("bytes") for r in recorded if isinstance(r, dict)}
    after = {r["path"]: r["bytes"] for r in current}
    parts = [f"file added: {p}" for p in after if p not in before]
    parts += [f"file removed: {p}" for p in before if p not in after]
    parts += [f"file changed: {p}" for p in after if p in before and before[p] != after[p]]
    return "; ".join(parts[:3]) + (f" (and {len(parts) - 3} more)" if len(parts) > 3 else "")


def fetch_builtin(name: str, data_dir: Path, url: str | None = None) -> Path:
    """Download built-in corpus `name` into data_dir unless a verified copy is there."""
    spec = BUILTINS[name]
    target = Path(data_dir) / spec.filename
    with _os_errors(f"downloading '{name}'"):
        if target.is_file() and file_sha256(target) == spec.sha256:
            return target
        cache.make_folder(target.parent)
        # One download at a time; whoever holds the lock knows any .part file is a killed one's.
        with cache.hold_lock(target.parent / f".{spec.filename}.lock"):
            for stale in target.parent.glob(f".{spec.filename}.part*"):
                cache.remove(stale)
            if not (target.is_file() and file_sha256(target) == spec.sha256):
                _download(name, url or spec.url, spec, target)
    return target


def _download(name: str, source: str, spec: BuiltinCorpus, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{spec.filename}.part", dir=target.parent)
    try:
        with open(fd, "wb") as out:
            out.writelines(_blocks(name, source, spec.size))
            out.flush()
            os.fsync(out.fileno())
        digest = file_sha256(Path(tmp))
        if digest != spec.sha256:
            raise CharRNNError(
                f"download of '{name}' from {source} has sha256 {digest[:12]}..., "
                f"expected {spec.sha256[:12]}...: check the URL or pass the file instead."
            )
        os.replace(tmp, target)
    except OSError as exc:  # a local error (a full disk): a write or fsync names no file, so name it
        exc.filename = exc.filename or str(target)
        raise
    finally:
        Path(tmp).unlink(missing_ok=True)


def _blocks(name: str, source: str, size: int) -> Iterator[bytes]:
    """The body at `source`, up to size + 1 bytes (the digest rejects more without filling the
    disk); a network failure (URLError, timeout, reset, bad URL) is a CharRNNError."""
    try:
        with urllib.request.urlopen(source, timeout=30) as response:
            got = 0
            while got <= size and (block := response.read(CHUNK_BYTES)):
                got += len(block)
                yield block
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise CharRNNError(
            f"could not download '{name}' from {source} ({getattr(exc, 'reason', exc)}): pass a local text "
            "file instead, or set CHARRNN_SHAKESPEARE_URL / --corpus-url to a reachable mirror."
        ) from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with _open_source(path, "file") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------
# Reading: only regular files (links to them are fine), decoded one way.

_KINDS = {stat.S_IFIFO: "a named pipe", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device"}


def _file_mode(path: Path, what: str, pipe_ok: bool = False) -> int:
    """st_mode of `path` (links followed); a missing path, a folder or a special file is a CharRNNError."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        known = f": pass a text file or a built-in name ({', '.join(BUILTINS)})" if what == "corpus" else ""
        raise CharRNNError(f"{what} '{path}' does not exist{known}.") from None
    if stat.S_ISDIR(mode):
        raise CharRNNError(f"{what} '{path}' is a directory: pass a text file.")
    if not (stat.S_ISREG(mode) or (pipe_ok and stat.S_ISFIFO(mode))):
        raise _not_regular(path, what, mode)
    return mode


def _not_regular(path: Path, what: str, mode: int) -> CharRNNError:
    kind = _KINDS.get(stat.S_IFMT(mode), "a special file")
    also = ", or pass '-' to read standard input" if what == "file" else ""
    return CharRNNError(f"{what} '{path}' is not a regular file ({kind}): save the text to a file and pass that{also}.")


def _open_source(path: Path, what: str, pipe_ok: bool = False) -> BinaryIO:
    """`path` open for reading. O_NONBLOCK unless a pipe is wanted: a pipe swapped in after
    the check cannot hang the open, and fstat then refuses it."""
    pipe = stat.S_ISFIFO(_file_mode(path, what, pipe_ok))
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (0 if pipe else os.O_NONBLOCK))
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or (pipe and stat.S_ISFIFO(mode))):
        os.close(fd)
        raise _not_regular(path, what, mode)
    return os.fdopen(fd, "rb")


def check_encoding(encoding: str) -> str:
    """Normalise an encoding name; 'bytes' means a byte-level vocabulary."""
    if encoding == "bytes":
        return encoding
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        raise CharRNNError(f"unknown encoding '{encoding}': use e.g. utf-8, latin-1, cp1252 or bytes.") from None
    if not getattr(info, "_is_text_encoding", True):  # base64, zlib, rot13...: bytes to bytes, not text
        raise CharRNNError(f"'{encoding}' is not a text encoding: use e.g. utf-8, latin-1, cp1252 or bytes.")
    return "utf-8" if info.name in ("utf-8", "utf-8-sig") else info.name


def _decoder(encoding: str) -> codecs.IncrementalDecoder:
    """The one decoder of `prepare` and `read_text`: a leading UTF-8 byte-order mark is dropped
    (other codecs keep their own rule: utf-16 drops it, utf-16-le keeps it); bytes are U+0000..U+00FF."""
    return codecs.getincrementaldecoder({"bytes": "latin-1", "utf-8": "utf-8-sig"}.get(encoding, encoding))()


def _undecodable(source: str, encoding: str, exc: UnicodeError, at: int, hint: str) -> CharRNNError:
    if isinstance(exc, UnicodeDecodeError):
        return CharRNNError(
            f"{source} is not valid {encoding}: byte 0x{exc.object[exc.start]:02x} at offset {at} "
            f"cannot be decoded; {hint}"
        )
    return CharRNNError(f"{source} is not valid {encoding} ({exc}); {hint}")  # no position, e.g. a missing BOM


def _codepoint_chunks(path: Path, encoding: str, on_bytes: Callable[[bytes], None]) -> Iterator[np.ndarray]:
    """Yield the file's code points, chunk by chunk, as uint32 arrays."""
    with _open_source(path, "corpus") as f:
        if encoding == "bytes":  # the same as _decoder's latin-1, without the detour through str
            for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
                on_bytes(chunk)
                yield np.frombuffer(chunk, dtype=np.uint8).astype(np.uint32)
            return
        decoder, offset = _decoder(encoding), 0  # offset: bytes of the file handed to the decoder so far
        while True:
            chunk = f.read(CHUNK_BYTES)
            on_bytes(chunk)
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeError as exc:
                at = offset - pending + getattr(exc, "start", 0)
                raise _undecodable(
                    f"'{path}'", encoding, exc, at, "pass --encoding latin-1 (or the file's codec) or --encoding bytes."
                ) from None
            offset += len(chunk)
            if text:
                yield np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
            if not chunk:
                return


# ---------------------------------------------------------------------------------------
# Preparing: pass 1 (hash, symbols, count), the cache, pass 2 when it must be (re)built.


def prepare(
    path: Path | Sequence[Path],
    data_dir: Path,
    encoding: str = "utf-8",
    vocab: Vocab | None = None,
    max_vocab: int = 0,
) -> Prepared:
    """Encode `path` into the token cache (once per content hash) and map it.

    `vocab` fixes the vocabulary (e.g. a task's full alphabet) instead of
    taking the file's own symbols; `max_vocab` keeps the file's most frequent
    symbols and maps the others to one unknown symbol (charrnn.data.vocab.capped_vocab).
    Raises CharRNNError for an empty or undecodable file, one with symbols
    outside a given `vocab`, or an OS error.
    """
    files = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    path, encoding = (files[0] if len(files) == 1 else files), check_encoding(encoding)  # type: ignore[assignment]
    with _os_errors(f"preparing '{files[0]}'"):
        counts = np.zeros(0x110000, dtype=np.int64) if max_vocab and vocab is None else None
        sha, symbols, count = _scan(path, encoding, counts)
        if counts is not None:
            expected = capped_vocab(counts, max_vocab, byte_level=encoding == "bytes")
        else:
            expected = _vocab_for(path, symbols, encoding, vocab)
        folder = cache.folder_for(Path(data_dir), sha, encoding, vocab, max_vocab if counts is not None else 0)
        # Checking the cache (header, size, vocab.json, a max over the ids) costs about 2% of
        # pass 1, which reads the whole corpus anyway: see benchmarks/RESULTS.md, "Cache check".
        tokens, notes = cache.open_or_build(
            folder, expected, count, lambda into: _encode_into(path, encoding, expected, count, into, sha)
        )
    sizes = tuple((str(f), os.stat(f).st_size) for f in files)
    return Prepared(
        tokens=tokens, vocab=expected, sha256=sha, source=files[0], encoding=encoding, notes=notes, files=sizes
    )


def _label(path: Path | list[Path]) -> str:
    return f"'{path}'" if isinstance(path, Path) else f"'{path[0]}' and {len(path) - 1} more file(s)"


def _stream_chunks(path: Path | list[Path], encoding: str, on_bytes: Callable[[bytes], None]) -> Iterator[np.ndarray]:
    """The code points of one file, or of several joined by SEPARATOR (hashed as its UTF-8 bytes)."""
    if isinstance(path, Path):
        yield from _codepoint_chunks(path, encoding, on_bytes)
        return
    sep = np.array([ord(c) for c in SEPARATOR], dtype=np.uint32)
    for i, one in enumerate(path):
        if i:
            on_bytes(SEPARATOR.encode("utf-8"))
            yield sep
        yield from _codepoint_chunks(one, encoding, on_bytes)


def _scan(path: Path | list[Path], encoding: str, counts: np.ndarray | None = None) -> tuple[str, np.ndarray, int]:
    """Pass 1: the content's sha256, its sorted code points and its character count (and,
    into `counts` when given, the occurrences of each code point)."""
    digest = hashlib.sha256()
    seen = np.zeros(0x110000, dtype=bool)
    count = 0
    for cps in _stream_chunks(path, encoding, digest.update):
        if counts is not None:
            found = np.bincount(cps)
            counts[: len(found)] += found
        seen[np.unique(cps) if cps.size < 4096 else np.flatnonzero(np.bincount(cps))] = True
        count += cps.size
    if count == 0:
        raise CharRNNError(f"corpus {_label(path)} is empty: give it some text.")
    return digest.hexdigest(), np.flatnonzero(seen), count


def _vocab_for(path: Path | list[Path], symbols: np.ndarray, encoding: str, fixed: Vocab | None) -> Vocab:
    if fixed is None:
        return vocab_from_codepoints(symbols, byte_level=encoding == "bytes")
    outside = sorted({chr(c) for c in symbols} - set(fixed.chars))
    if outside:
        raise CharRNNError(f"{_label(path)} has symbols outside the fixed vocabulary: {outside[:10]}.")
    return fixed


def _encode_into(path: Path | list[Path], encoding: str, vocab: Vocab, count: int, folder: Path, sha: str = "") -> None:
    """Pass 2: write the cache folder (through cache.store: a temp folder renamed into place)."""
    cache.store(folder, vocab, count, _ids(path, encoding, vocab, sha))


def _ids(path: Path | list[Path], encoding: str, vocab: Vocab, sha: str) -> Iterator[np.ndarray]:
    """The file's ids, chunk by chunk; raises when the file is no longer what pass 1 read."""
    codepoints, unknown_id = vocab.codepoints, vocab.unknown_id
    if unknown_id is not None:  # a capped vocabulary: every code point not kept is the unknown symbol
        lut = np.full(0x110000, unknown_id, dtype=np.uint32)
    else:
        lut = np.full(int(codepoints.max()) + 1, len(vocab), dtype=np.uint32)  # len(vocab): not a symbol
    lut[codepoints] = np.arange(len(vocab))
    dtype, digest = token_dtype(len(vocab)), hashlib.sha256()
    changed = CharRNNError(f"{_label(path)} changed while it was being prepared: run the command again.")
    for cps in _stream_chunks(path, encoding, digest.update):
        if cps.size and int(cps.max()) >= len(lut):
            raise changed
        ids = lut[cps]
        if ids.size and int(ids.max()) >= len(vocab):
            raise changed
        yield ids.astype(dtype)
    if sha and digest.hexdigest() != sha:
        raise changed


def split(tokens: np.ndarray, val_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """First (1 - val_frac) trains, the last val_frac validates (contiguous, as nanoGPT)."""
    # The small margin keeps a product that is an integer on paper (950 * 90/95) from
    # rounding down below it.
    cut = int(len(tokens) * (1.0 - val_frac) + 1e-6)
    return tokens[:cut], tokens[cut:]


def hold_out(tokens: np.ndarray, test_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """(the text trained and validated on, the last test_frac of `tokens` held out for testing)."""
    cut = len(tokens) - int(round(len(tokens) * test_frac))
    return tokens[:cut], tokens[cut:]


def split_parts(tokens: np.ndarray, val_frac: float, test_frac: float = 0.0) -> tuple[np.ndarray, ...]:
    """(train, val, test): contiguous, in that order. The test part is held out first; `val_frac`
    is the validation share of what is left (as TrainConfig.val_frac), which training splits
    with `split` exactly as here."""
    head, test = hold_out(tokens, test_frac)
    return (*split(head, val_frac), test)


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """Whole text of a small file (prime, eval), decoded exactly as `prepare` decodes a corpus;
    '-' reads standard input. A named pipe is read once to its end like '-' (`--prime-file <(cmd)`
    passes one; `prepare` refuses one as it reads a corpus twice); devices and sockets are refused."""
    encoding = check_encoding(encoding)
    if str(path) == "-":
        raw, source = sys.stdin.buffer.read(), "standard input"
    else:
        with _os_errors(f"reading '{path}'"), _open_source(Path(path), "file", pipe_ok=True) as f:
            raw, source = f.read(), f"'{path}'"
    try:
        return _decoder(encoding).decode(raw, final=True)
    except UnicodeError as exc:
        raise _undecodable(source, encoding, exc, getattr(exc, "start", 0), "pass --encoding with the file's codec.")
