"""Corpora: find or download the text, encode it once into a cached token array, split it.

`prepare` reads the file in chunks (two passes: hash + vocabulary, then
encode), so a corpus far larger than memory works. The cache lives in
`<data_dir>/cache/<sha256[:16]>-<encoding>/` as `tokens.npy` (smallest unsigned
integer dtype that fits) and `vocab.json`, and is read back with a memory map.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from charrnn.errors import CharRNNError
from charrnn.vocab import Vocab, token_dtype, vocab_from_codepoints

CHUNK_BYTES = 2 << 20  # bytes read per chunk while preparing (bounds the transient memory)


@dataclass(frozen=True)
class BuiltinCorpus:
    filename: str
    url: str
    sha256: str
    size: int


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


def resolve_corpus(name: str, data_dir: Path, url: str | None = None) -> Path:
    """A file path, or a built-in corpus name downloaded once into data_dir.

    Raises CharRNNError when the file is missing or the download fails.
    """
    path = Path(name)
    if name in BUILTINS and not path.exists():
        return fetch_builtin(name, data_dir, url)
    if not path.exists():
        known = ", ".join(BUILTINS)
        raise CharRNNError(f"corpus '{name}' does not exist: pass a text file or a built-in name ({known}).")
    if path.is_dir():
        raise CharRNNError(f"corpus '{name}' is a directory: pass a text file.")
    return path


def fetch_builtin(name: str, data_dir: Path, url: str | None = None) -> Path:
    """Download built-in corpus `name` into data_dir unless a verified copy is there."""
    spec = BUILTINS[name]
    target = Path(data_dir) / spec.filename
    if target.is_file() and file_sha256(target) == spec.sha256:
        return target
    source = url or spec.url
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.filename}.", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with open(fd, "wb") as out, urllib.request.urlopen(source, timeout=30) as response:
            shutil.copyfileobj(response, out)
        digest = file_sha256(tmp)
        if digest != spec.sha256:
            raise CharRNNError(
                f"download of '{name}' from {source} has sha256 {digest[:12]}..., "
                f"expected {spec.sha256[:12]}...: check the URL or pass the file instead."
            )
        tmp.replace(target)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CharRNNError(
            f"could not download '{name}' from {source} ({reason}): pass a local text file instead, "
            "or set CHARRNN_SHAKESPEARE_URL / --corpus-url to a reachable mirror."
        )
    finally:
        tmp.unlink(missing_ok=True)
    return target


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_encoding(encoding: str) -> str:
    """Normalise an encoding name; 'bytes' means a byte-level vocabulary."""
    if encoding == "bytes":
        return encoding
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise CharRNNError(f"unknown encoding '{encoding}': use e.g. utf-8, latin-1, cp1252 or bytes.")
    return "utf-8" if name in ("utf-8", "utf-8-sig") else name


def _codepoint_chunks(path: Path, encoding: str, on_bytes: Callable[[bytes], None]) -> Iterator[np.ndarray]:
    """Yield the file's code points, chunk by chunk, as uint32 arrays."""
    if encoding == "bytes":
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
                on_bytes(chunk)
                yield np.frombuffer(chunk, dtype=np.uint8).astype(np.uint32)
        return
    # utf-8-sig strips a leading byte-order mark and is otherwise plain UTF-8.
    decoder = codecs.getincrementaldecoder("utf-8-sig" if encoding == "utf-8" else encoding)()
    offset = 0  # bytes of the file handed to the decoder so far
    with open(path, "rb") as f:
        while True:
            chunk = f.read(CHUNK_BYTES)
            on_bytes(chunk)
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                at = offset - pending + exc.start
                raise CharRNNError(
                    f"'{path}' is not valid {encoding}: byte 0x{exc.object[exc.start]:02x} at offset {at} "
                    "cannot be decoded; pass --encoding latin-1 (or the file's codec) or --encoding bytes."
                )
            except UnicodeError as exc:  # codec-level problems without a position, e.g. a missing BOM
                raise CharRNNError(
                    f"'{path}' is not valid {encoding} ({exc}); pass the file's codec with --encoding "
                    "or --encoding bytes."
                )
            offset += len(chunk)
            if text:
                yield np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
            if not chunk:
                return


def prepare(path: Path, data_dir: Path, encoding: str = "utf-8", vocab: Vocab | None = None) -> Prepared:
    """Encode `path` into the token cache (once per content hash) and map it.

    `vocab` fixes the vocabulary (e.g. a task's full alphabet) instead of
    taking the file's own symbols. Raises CharRNNError for an empty or
    undecodable file, or one with symbols outside a given `vocab`.
    """
    path = Path(path)
    encoding = check_encoding(encoding)
    if path.is_dir():
        raise CharRNNError(f"'{path}' is a directory: pass a text file.")
    if not path.is_file():
        raise CharRNNError(f"corpus '{path}' does not exist.")
    # Pass 1: content hash, symbol counts.
    digest = hashlib.sha256()
    seen = np.zeros(0x110000, dtype=bool)
    count = 0
    for cps in _codepoint_chunks(path, encoding, digest.update):
        seen[np.unique(cps) if cps.size < 4096 else np.flatnonzero(np.bincount(cps))] = True
        count += cps.size
    if count == 0:
        raise CharRNNError(f"corpus '{path}' is empty: give it some text.")
    sha = digest.hexdigest()
    key = f"{sha[:16]}-{encoding}"
    if vocab is not None:
        outside = sorted(set(chr(c) for c in np.flatnonzero(seen)) - set(vocab.chars))
        if outside:
            raise CharRNNError(f"'{path}' has symbols outside the fixed vocabulary: {outside[:10]}.")
        key += "-v" + hashlib.sha256("".join(vocab.chars).encode("utf-8", "surrogatepass")).hexdigest()[:8]
    cache = Path(data_dir) / "cache" / key
    if not (cache / "tokens.npy").is_file():
        if vocab is None:
            vocab = vocab_from_codepoints(np.flatnonzero(seen), byte_level=encoding == "bytes")
        _encode_into(path, encoding, vocab, count, cache)
    return load_prepared(cache, path, sha, encoding)


def _encode_into(path: Path, encoding: str, vocab: Vocab, count: int, cache: Path) -> None:
    """Pass 2: write tokens.npy and vocab.json into a temp folder, then rename it to `cache`."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", dir=cache.parent))
    try:
        codepoints = vocab.codepoints
        lut = np.zeros(int(codepoints[-1]) + 1, dtype=token_dtype(len(vocab)))
        lut[codepoints] = np.arange(len(vocab))
        # Plain appends, not a writable memory map: mapped dirty pages would count in the
        # process's resident memory (923 MB for a 1 GB corpus); written pages do not.
        at = 0
        with open(tmp / "tokens.npy", "wb") as out:
            header = {"descr": np.lib.format.dtype_to_descr(lut.dtype), "fortran_order": False, "shape": (count,)}
            np.lib.format.write_array_header_1_0(out, header)
            for cps in _codepoint_chunks(path, encoding, lambda _: None):
                out.write(lut[cps].tobytes())
                at += cps.size
        if at != count:
            raise CharRNNError(f"'{path}' changed while it was being prepared: run the command again.")
        (tmp / "vocab.json").write_text(json.dumps(vocab.to_dict()), encoding="utf-8")
        try:
            tmp.rename(cache)
        except OSError:  # another process prepared the same corpus meanwhile
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_prepared(cache: Path, source: Path, sha: str, encoding: str) -> Prepared:
    vocab = Vocab.from_dict(json.loads((cache / "vocab.json").read_text(encoding="utf-8")))
    tokens = np.load(cache / "tokens.npy", mmap_mode="r")
    return Prepared(tokens=tokens, vocab=vocab, sha256=sha, source=source, encoding=encoding)


def split(tokens: np.ndarray, val_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """First (1 - val_frac) trains, the last val_frac validates (contiguous, as nanoGPT)."""
    cut = int(len(tokens) * (1.0 - val_frac))
    return tokens[:cut], tokens[cut:]


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """Whole text of a small file (prime, eval); '-' reads standard input."""
    import sys

    if str(path) == "-":
        raw = sys.stdin.buffer.read()
        source = "standard input"
    else:
        p = Path(path)
        if p.is_dir():
            raise CharRNNError(f"'{p}' is a directory: pass a text file.")
        if not p.is_file():
            raise CharRNNError(f"file '{p}' does not exist.")
        raw = p.read_bytes()
        source = f"'{p}'"
    if encoding == "bytes":
        return raw.decode("latin-1")
    try:
        return raw.decode("utf-8-sig" if check_encoding(encoding) == "utf-8" else encoding)
    except UnicodeDecodeError as exc:
        raise CharRNNError(
            f"{source} is not valid {encoding}: byte 0x{raw[exc.start]:02x} at offset {exc.start} "
            "cannot be decoded; pass --encoding with the file's codec."
        )
    except UnicodeError as exc:
        raise CharRNNError(f"{source} is not valid {encoding} ({exc}); pass --encoding with the file's codec.")
