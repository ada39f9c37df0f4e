"""The built-in corpus download, against a loopback HTTP server."""

import hashlib
import http.server
import threading
from pathlib import Path

import pytest
from helpers import SHARED_CORPUS

from charrnn.cli import app
from charrnn.data import corpus as corpus_mod
from charrnn.data.corpus import BuiltinCorpus, fetch_builtin
from charrnn.errors import CharRNNError


@pytest.fixture
def server():
    """Serve {path: bytes} on 127.0.0.1; yields (base_url, files, hit counter)."""
    files: dict[str, bytes] = {}
    hits = {"n": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits["n"] += 1
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", files, hits
    httpd.shutdown()


def test_download_verifies_and_reuses(server, tmp_path: Path, monkeypatch) -> None:
    base, files, hits = server
    body = "To be, or not to be.\n".encode() * 50
    files["/small.txt"] = body
    spec = BuiltinCorpus("small.txt", base + "/small.txt", hashlib.sha256(body).hexdigest(), len(body))
    monkeypatch.setitem(corpus_mod.BUILTINS, "small", spec)
    path = fetch_builtin("small", tmp_path)
    assert path.read_bytes() == body and hits["n"] == 1
    assert fetch_builtin("small", tmp_path) == path and hits["n"] == 1  # verified copy reused
    path.write_bytes(b"tampered")
    fetch_builtin("small", tmp_path)
    assert path.read_bytes() == body and hits["n"] == 2


def test_wrong_content_is_rejected_and_not_kept(server, tmp_path: Path) -> None:
    base, files, _ = server
    files["/x"] = b"not shakespeare"
    with pytest.raises(CharRNNError, match="sha256"):
        fetch_builtin("shakespeare", tmp_path, base + "/x")
    assert list(tmp_path.iterdir()) == []


def test_offline_says_pass_a_file(runner, server) -> None:
    base, _, _ = server
    result = runner.invoke(app, ["prepare", "shakespeare", "--corpus-url", base + "/missing"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: could not download") and "local text file" in result.stderr


@pytest.mark.skipif(not SHARED_CORPUS.is_file(), reason="tiny-shakespeare not found in ../shared/corpora")
def test_shakespeare_through_the_cli(runner, server, monkeypatch) -> None:
    base, files, hits = server
    files["/input.txt"] = SHARED_CORPUS.read_bytes()
    monkeypatch.setenv("CHARRNN_SHAKESPEARE_URL", base + "/input.txt")
    result = runner.invoke(app, ["prepare", "shakespeare"])
    assert result.exit_code == 0, result.output
    assert "1,115,394" in result.output and "65 symbols" in result.output
    assert Path("data/tinyshakespeare.txt").stat().st_size == 1_115_394
    runner.invoke(app, ["prepare", "shakespeare"])
    assert hits["n"] == 1
