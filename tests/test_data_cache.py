"""The prepared-data cache is checked before it is trusted, and preparing a corpus ends in a
result or one clean error: damaged caches are rebuilt with one note, killed prepares leave
nothing behind, OS errors and special files are one `error:` line, nothing outside the data
folder is touched, and prime text is read exactly as training reads a corpus."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import make_text, one_line_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charrnn.cli import app
from charrnn.data.corpus import fetch_builtin, prepare, read_text, resolve_corpus
from charrnn.errors import CharRNNError

ROOT = Path(__file__).resolve().parents[1]


def the_cache(data: Path) -> Path:
    (folder,) = [p for p in (data / "cache").iterdir() if not p.name.startswith(".")]
    return folder


def leftovers(data: Path) -> list[str]:
    return (
        sorted(p.name for p in (data / "cache").iterdir() if p.name.startswith("."))
        if (data / "cache").is_dir()
        else []
    )


def snapshot(root: Path, skip: Path) -> dict[str, tuple]:
    """Every entry under root but `skip`: links by target, files by content and mode."""
    seen = {}
    for path in sorted(root.rglob("*")):
        if path == skip or skip in path.parents:
            continue
        info = path.lstat()
        if path.is_symlink():
            seen[str(path)] = ("link", os.readlink(path))
        elif path.is_file():
            seen[str(path)] = ("file", path.read_bytes(), info.st_mode)
        else:
            seen[str(path)] = ("other", info.st_mode)
    return seen


@contextlib.contextmanager
def no_hang(seconds: int = 20):
    """Fail instead of hanging (a named pipe opened the wrong way blocks forever)."""

    def alarm(*_):
        raise TimeoutError(f"still blocked after {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# -- a damaged cache is rebuilt, with one note --------------------------------------------


def _retype(folder: Path, outside: Path) -> None:
    tokens = folder / "tokens.npy"
    np.save(tokens, np.load(tokens).astype(np.int8))  # same size, another dtype in the header


def _out_of_range(folder: Path, outside: Path) -> None:
    ids = np.load(folder / "tokens.npy", mmap_mode="r+")
    ids[len(ids) // 2] = 200
    ids.flush()


def _tokens_link(folder: Path, outside: Path) -> None:
    shutil.copy(folder / "tokens.npy", outside / "tokens.npy")  # a sound copy: only the link is wrong
    (folder / "tokens.npy").unlink()
    (folder / "tokens.npy").symlink_to(outside / "tokens.npy")


def _folder_link(folder: Path, outside: Path) -> None:
    shutil.move(folder, outside / "moved")
    folder.symlink_to(outside / "moved")


def _vocab(text: str):
    return lambda folder, outside: (folder / "vocab.json").write_text(text, encoding="utf-8")


DAMAGES = {
    "truncated tokens.npy": (
        lambda f, o: os.truncate(f / "tokens.npy", (f / "tokens.npy").stat().st_size - 7),
        "tokens.npy is truncated",
    ),
    "bytes after the ids": (lambda f, o: (f / "tokens.npy").open("ab").write(b"\0"), "bytes after its ids"),
    "tokens.npy with a wrong header dtype": (_retype, "holds int8 ids, expected uint8"),
    "tokens.npy not an array": (lambda f, o: (f / "tokens.npy").write_bytes(b"hello"), "no readable .npy header"),
    "tokens.npy a named pipe": (
        lambda f, o: ((f / "tokens.npy").unlink(), os.mkfifo(f / "tokens.npy")),
        "tokens.npy is not a plain file",
    ),
    "missing vocab.json": (lambda f, o: (f / "vocab.json").unlink(), "vocab.json is missing"),
    "vocab.json not JSON": (_vocab("{not json"), "vocab.json is not valid JSON"),
    "vocab.json not an object": (_vocab("[1, 2]"), "vocab.json is not a JSON object"),
    "vocab.json chars not a string": (_vocab('{"chars": 5, "byte_level": false}'), "chars as a string"),
    "vocab.json byte_level not a bool": (_vocab('{"chars": "ab", "byte_level": 0}'), "byte_level as true or false"),
    "vocab.json other symbols": (_vocab('{"chars": "ab", "byte_level": false}'), "does not list the corpus's symbols"),
    "ids out of range": (_out_of_range, "ids outside the vocabulary"),
    "tokens.npy a link out of the data folder": (_tokens_link, "tokens.npy is a symbolic link"),
    "the cache folder a link out of the data folder": (_folder_link, "it is a symbolic link"),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_a_damaged_cache_is_rebuilt_with_one_note_and_nothing_outside_touched(tmp_path: Path, damage: str) -> None:
    corpus, data, outside = tmp_path / "c.txt", tmp_path / "data", tmp_path / "outside"
    corpus.write_text(make_text(5000), encoding="utf-8")
    outside.mkdir()
    fresh = prepare(corpus, data)
    expected, vocab, folder = np.array(fresh.tokens), fresh.vocab, the_cache(data)
    del fresh  # its map would see the damage
    hurt, reason = DAMAGES[damage]
    hurt(folder, outside)
    before = snapshot(tmp_path, data / "cache")

    again = prepare(corpus, data)

    assert (
        np.array_equal(again.tokens, expected) and again.vocab == vocab and again.sha256 == prepare(corpus, data).sha256
    )
    assert again.tokens.dtype == expected.dtype and isinstance(again.tokens, np.memmap)
    assert len(again.notes) == 1 and reason in again.notes[0], again.notes
    assert again.notes[0].startswith(f"the prepared-data cache '{folder}' was damaged (")
    assert again.notes[0].endswith("): rebuilt it")
    assert snapshot(tmp_path, data / "cache") == before  # the link targets and the corpus unchanged
    assert not folder.is_symlink() and not (folder / "tokens.npy").is_symlink()
    assert leftovers(data) == [] and prepare(corpus, data).notes == ()


def test_a_sound_cache_is_reused_without_a_note(tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(3000), encoding="utf-8")
    first = prepare(corpus, tmp_path / "data")
    stamp = (the_cache(tmp_path / "data") / "tokens.npy").stat().st_mtime_ns
    second = prepare(corpus, tmp_path / "data")
    assert second.notes == () and np.array_equal(first.tokens, second.tokens)
    assert (the_cache(tmp_path / "data") / "tokens.npy").stat().st_mtime_ns == stamp


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pristine")
    (root / "c.txt").write_text(make_text(300, 5), encoding="utf-8")
    prepare(root / "c.txt", root / "data")
    return root


def _npy_header(count: int, descr: str) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": (count,)})
    return buf.getvalue()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    which=st.sampled_from(["tokens.npy", "vocab.json", "both"]),
    raw=st.one_of(
        st.binary(max_size=400),
        st.builds(
            lambda d, body: _npy_header(301, d) + body,
            st.sampled_from(["|u1", "<u2", "|i1", "<f4"]),
            st.binary(min_size=290, max_size=310),
        ),
        st.builds(
            lambda v: json.dumps(v).encode(),
            st.dictionaries(
                st.sampled_from(["chars", "byte_level", "x"]),
                st.one_of(st.text(max_size=40), st.booleans(), st.integers()),
            ),
        ),
    ),
)
def test_any_bytes_in_the_cache_give_a_valid_corpus_or_one_error(
    tmp_path_factory, pristine: Path, which: str, raw: bytes
) -> None:
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(pristine / "data", root / "data")
    folder = the_cache(root / "data")
    for name in ["tokens.npy", "vocab.json"] if which == "both" else [which]:
        (folder / name).write_bytes(raw)
    try:
        data = prepare(pristine / "c.txt", root / "data")
    except CharRNNError:
        return
    assert len(data.tokens) == len((pristine / "c.txt").read_text(encoding="utf-8"))
    assert int(np.max(data.tokens)) < len(data.vocab)
    assert data.vocab.decode(data.tokens.tolist()) == (pristine / "c.txt").read_text(encoding="utf-8")


def test_a_cache_another_process_published_first_is_kept_when_sound_and_replaced_when_not(
    tmp_path: Path, corpus: Path
) -> None:
    from charrnn.data import cache

    data = prepare(corpus, tmp_path / "data")
    folder, ids = the_cache(tmp_path / "data"), np.array(data.tokens)
    theirs = (folder / "tokens.npy").stat().st_ino
    cache.store(folder, data.vocab, len(ids), [ids])  # loses the rename to a sound folder: keeps it
    assert (folder / "tokens.npy").stat().st_ino == theirs
    os.truncate(folder / "tokens.npy", 100)
    cache.store(folder, data.vocab, len(ids), [ids])  # loses it to a damaged one: replaces it
    assert (folder / "tokens.npy").stat().st_ino != theirs
    assert np.array_equal(cache.open_cache(folder, data.vocab, len(ids)), ids)
    assert leftovers(tmp_path / "data") == []


# -- a killed prepare leaves nothing behind ------------------------------------------------


def _big_corpus(path: Path, megabytes: int = 48) -> int:
    """Write a corpus of about `megabytes` MB (fast: one block repeated); returns its characters."""
    text = make_text(20_000, 7) * 52  # about 1 MB
    block = text.encode("utf-8")
    with open(path, "wb") as f:
        f.writelines(block for _ in range(megabytes))
    return len(text) * megabytes


def _start_prepare(corpus: Path, data: Path) -> subprocess.Popen:
    """`charrnn prepare` in a child, returned once it is encoding (its temp folder exists)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "charrnn", "prepare", str(corpus), "--data-dir", str(data)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not any(".tmp." in name for name in leftovers(data)):
        assert proc.poll() is None, f"prepare ended before it was stopped: {proc.stderr.read()!r}"
        assert time.monotonic() < deadline, "no temp folder after 60 s"
        time.sleep(0.002)
    return proc


def test_a_killed_prepare_is_cleaned_up_by_the_next_one(tmp_path: Path) -> None:
    corpus, data = tmp_path / "big.txt", tmp_path / "data"
    chars = _big_corpus(corpus)
    proc = _start_prepare(corpus, data)
    proc.kill()
    proc.wait()
    assert any(".tmp." in name for name in leftovers(data))  # what the kill left
    again = prepare(corpus, data)
    assert len(again.tokens) == chars and again.notes == ()
    assert leftovers(data) == []


def test_a_running_prepare_keeps_its_temp_folder_while_another_prepares(tmp_path: Path) -> None:
    corpus, other, data = tmp_path / "big.txt", tmp_path / "small.txt", tmp_path / "data"
    chars = _big_corpus(corpus, 32)
    other.write_text(make_text(2000), encoding="utf-8")
    proc = _start_prepare(corpus, data)
    proc.send_signal(signal.SIGSTOP)  # alive, holding its lock, mid-encode
    try:
        busy = [name for name in leftovers(data) if ".tmp." in name]
        prepare(other, data)  # sweeps leftovers: must not take the live one's
        assert all((data / "cache" / name).is_dir() for name in busy)
    finally:
        proc.send_signal(signal.SIGCONT)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    assert leftovers(data) == [] and len(prepare(corpus, data).tokens) == chars


# -- OS errors and special files: one error, nothing left ---------------------------------


def test_a_data_dir_below_a_file_is_one_error(tmp_path: Path, corpus: Path) -> None:
    (tmp_path / "blocker").write_text("a file\n")
    with pytest.raises(
        CharRNNError, match=f"'{tmp_path / 'blocker'}' is a file where charrnn needs a folder.*--data-dir"
    ):
        prepare(corpus, tmp_path / "blocker" / "data")
    assert (tmp_path / "blocker").read_text() == "a file\n"


@pytest.mark.parametrize("where", ["data", "data/cache"])
def test_a_data_dir_or_cache_that_is_a_file_is_one_error(tmp_path: Path, corpus: Path, where: str) -> None:
    if where == "data/cache":
        (tmp_path / "data").mkdir()
    (tmp_path / where).write_text("mine\n")
    with pytest.raises(CharRNNError, match=f"'{tmp_path / where}' is a file where charrnn needs a folder"):
        prepare(corpus, tmp_path / "data")
    assert (tmp_path / where).read_text() == "mine\n"


def _disk_full(*_args) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_one_error_and_leaves_no_temp_folder(tmp_path: Path, corpus: Path, monkeypatch) -> None:
    monkeypatch.setattr(os, "fsync", _disk_full)
    with pytest.raises(CharRNNError, match=r"failed on '.*data/cache/[0-9a-f]{16}-utf-8'.*free some disk space"):
        prepare(corpus, tmp_path / "data")
    monkeypatch.undo()
    assert leftovers(tmp_path / "data") == [] and list((tmp_path / "data" / "cache").iterdir()) == []
    assert prepare(corpus, tmp_path / "data").notes == ()


def test_a_file_size_limit_in_a_real_process_is_one_error_line(tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(40_000), encoding="utf-8")

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (16_384, 16_384))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    child = subprocess.run(
        [sys.executable, "-m", "charrnn", "prepare", str(corpus), "--data-dir", str(tmp_path / "d")],
        env=env,
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = child.stderr.strip().splitlines()
    assert child.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: preparing"), child.stderr
    assert "File too large" in lines[0] and leftovers(tmp_path / "d") == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0o555 folder anyway")
def test_a_read_only_data_dir_is_one_error(tmp_path: Path, corpus: Path) -> None:
    (tmp_path / "data").mkdir(mode=0o555)
    try:
        with pytest.raises(CharRNNError, match="Permission denied.*permissions"):
            prepare(corpus, tmp_path / "data")
    finally:
        (tmp_path / "data").chmod(0o755)


@pytest.mark.parametrize("kind", ["a named pipe", "a device", "a socket"])
def test_a_special_file_as_corpus_is_refused_without_hanging(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "special"
    if kind == "a named pipe":
        os.mkfifo(path)
    elif kind == "a device":
        path = Path("/dev/zero")
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
    message = f"is not a regular file ({kind}): save the text to a file and pass that"
    with no_hang():
        for call in (lambda: resolve_corpus(str(path), tmp_path / "data"), lambda: prepare(path, tmp_path / "data")):
            with pytest.raises(CharRNNError, match=message.replace("(", r"\(").replace(")", r"\)")):
                call()


def test_a_link_to_a_regular_file_is_a_fine_corpus(tmp_path: Path, corpus: Path) -> None:
    link = tmp_path / "link.txt"
    link.symlink_to(corpus)
    data = prepare(resolve_corpus(str(link), tmp_path / "data"), tmp_path / "data")
    assert data.vocab.decode(data.tokens.tolist()) == corpus.read_text(encoding="utf-8")


@pytest.mark.parametrize("case", ["below a file", "a file", "full disk", "read-only", "named pipe", "device"])
def test_prepare_through_the_cli_gives_one_error_line(
    runner, corpus: Path, tmp_path: Path, monkeypatch, case: str
) -> None:
    data, source = tmp_path / "data", str(corpus)
    if case == "below a file":
        (tmp_path / "blocker").write_text("x")
        data = tmp_path / "blocker" / "data"
    elif case == "a file":
        data.write_text("x")
    elif case == "full disk":
        monkeypatch.setattr(os, "fsync", _disk_full)
    elif case == "read-only":  # what chmod 0o555 cannot show when the tests run as root

        def read_only(path, *args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system", str(path))

        monkeypatch.setattr(os, "mkdir", read_only)
    elif case == "named pipe":
        os.mkfifo(tmp_path / "pipe")
        source = str(tmp_path / "pipe")
    else:
        source = "/dev/zero"
    expected = {
        "below a file": "needs a folder",
        "a file": "needs a folder",
        "full disk": "free some disk space",
        "read-only": "the file system is read-only: choose a writable folder",
        "named pipe": "(a named pipe)",
        "device": "(a device)",
    }[case]
    with no_hang():
        one_line_error(runner.invoke(app, ["prepare", source, "--data-dir", str(data)]), expected)


# -- the download: leftovers and OS errors --------------------------------------------------


@pytest.fixture
def small_builtin(tmp_path: Path, monkeypatch) -> Path:
    """A built-in corpus 'small' served from a file:// URL; returns the served file."""
    import hashlib

    from charrnn.data import corpus as corpus_mod

    body = ("To be, or not to be.\n" * 40).encode()
    served = tmp_path / "served.txt"
    served.write_bytes(body)
    spec = corpus_mod.BuiltinCorpus("small.txt", served.as_uri(), hashlib.sha256(body).hexdigest(), len(body))
    monkeypatch.setitem(corpus_mod.BUILTINS, "small", spec)
    return served


def test_a_killed_download_leaves_nothing_after_the_next_one(tmp_path: Path, small_builtin: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / ".small.txt.partk1ll3d").write_bytes(b"half a download")
    path = fetch_builtin("small", data)
    assert path.read_bytes() == small_builtin.read_bytes()
    assert sorted(p.name for p in data.iterdir()) == ["small.txt"]


def test_a_full_disk_during_the_download_names_the_file(tmp_path: Path, small_builtin: Path, monkeypatch) -> None:
    data = tmp_path / "data"
    monkeypatch.setattr(os, "fsync", _disk_full)
    with pytest.raises(CharRNNError, match=r"downloading 'small' failed on '.*small\.txt'.*free some disk space"):
        fetch_builtin("small", data)
    assert list(data.iterdir()) == []


def test_a_download_into_a_data_dir_below_a_file_is_one_error(tmp_path: Path, small_builtin: Path) -> None:
    (tmp_path / "blocker").write_text("x")
    with pytest.raises(CharRNNError, match="is a file where charrnn needs a folder"):
        fetch_builtin("small", tmp_path / "blocker" / "data")


# -- prime text is read as training reads a corpus ------------------------------------------

ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "latin-1", "cp1252", "bytes"]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_read_text_and_prepare_read_the_same_characters(tmp_path: Path, encoding: str) -> None:
    text = "line one\r\nligne deux: café\r\n"
    codec = {"bytes": "utf-8", "utf-16-le": "utf-16-le", "utf-16-be": "utf-16-be"}.get(encoding, encoding)
    raw = ("\ufeff" + text).encode(codec) if codec in ("utf-8", "utf-16-le", "utf-16-be") else text.encode(codec)
    if encoding in ("latin-1", "cp1252"):
        raw = b"\xef\xbb\xbf" + raw  # a UTF-8 byte-order mark, which these codecs read as three letters
    path = tmp_path / "bom.txt"
    path.write_bytes(raw)
    data = prepare(path, tmp_path / "data", encoding)
    read = read_text(path, encoding)
    assert data.vocab.decode(data.tokens.tolist()) == read
    assert "\r\n" in read and read.endswith("café\r\n" if encoding != "bytes" else "caf\xc3\xa9\r\n")
    assert read.startswith("line") == (encoding not in ("utf-16-le", "utf-16-be", "latin-1", "cp1252", "bytes"))


def test_read_text_reads_a_named_pipe_to_its_end(tmp_path: Path) -> None:
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    writer = threading.Thread(target=lambda: pipe.write_bytes("\ufeffprime me\n".encode()))
    writer.start()
    with no_hang():
        assert read_text(pipe) == "prime me\n"
    writer.join()


def test_read_text_refuses_a_device_and_a_text_encoding_that_is_not_one(tmp_path: Path) -> None:
    with no_hang(), pytest.raises(CharRNNError, match=r"\(a device\).*or pass '-' to read standard input"):
        read_text("/dev/zero")
    (tmp_path / "t.txt").write_text("abc")
    with pytest.raises(CharRNNError, match="'base64' is not a text encoding"):
        read_text(tmp_path / "t.txt", "base64")
    with pytest.raises(CharRNNError, match="'zlib' is not a text encoding"):
        prepare(tmp_path / "t.txt", tmp_path / "data", "zlib")
