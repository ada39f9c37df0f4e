"""`charrnn serve`: a real server on a free loopback port, spoken to over HTTP with httpx."""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import one_line_error, saved_model

import charrnn
from charrnn.serve import ServeConfig, create_app, is_loopback


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn serving `path` in a thread of this process, at `url`."""

    def __init__(self, path: Path, cfg: ServeConfig) -> None:
        import uvicorn

        self.url = f"http://127.0.0.1:{free_port()}"
        port = int(self.url.rsplit(":", 1)[1])
        self.server = uvicorn.Server(uvicorn.Config(create_app(path, cfg), port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, path = saved_model(tmp_path_factory.mktemp("serve"), "lstm")
    return path


@pytest.fixture(scope="module")
def server(model_path: Path) -> Iterator[Server]:
    running = Server(model_path, ServeConfig(workers=2, queue=8, max_length=400, max_prime=50))
    yield running
    running.stop()


def events(body: str) -> list[tuple[str, dict]]:
    """(event, data) of a server-sent event stream."""
    found = []
    for block in body.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        found.append((fields["event"], json.loads(fields["data"])))
    return found


def test_health_and_info_describe_the_served_model(server: Server) -> None:
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    info = httpx.get(f"{server.url}/info").json()
    assert (info["model"], info["num_layers"], info["hidden_size"], info["vocab_size"]) == ("lstm", 2, 24, 10)
    assert info["engine"] == "numpy" and info["best_val"] is None
    assert info["settings"]["workers"] == 2


def test_a_seed_gives_the_text_model_generate_gives(server: Server, model_path: Path) -> None:
    body = {"prime": "abc", "length": 120, "temperature": 0.9, "top_k": 5, "seed": 42}
    first = httpx.post(f"{server.url}/generate", json=body).json()
    again = httpx.post(f"{server.url}/generate", json=body).json()
    expected = charrnn.load(model_path).generate("abc", length=120, temperature=0.9, top_k=5, seed=42)
    assert first["text"] == again["text"] == expected
    assert first["characters"] == 120 and first["settings"]["seed"] == 42 and first["seconds"] >= 0


def test_without_a_seed_the_answer_names_the_seed_that_repeats_it(server: Server) -> None:
    first = httpx.post(f"{server.url}/generate", json={"length": 60}).json()
    again = httpx.post(f"{server.url}/generate", json={"length": 60, "seed": first["settings"]["seed"]}).json()
    assert again["text"] == first["text"]


def test_streamed_pieces_join_to_the_generated_text(server: Server) -> None:
    body = {"prime": "ab", "length": 300, "seed": 7}
    whole = httpx.post(f"{server.url}/generate", json=body).json()["text"]
    for url, payload in (("/generate/stream", body), ("/generate", {**body, "stream": True})):
        response = httpx.post(server.url + url, json=payload)
        assert response.headers["content-type"].startswith("text/event-stream")
        got = events(response.text)
        assert got[-1][0] == "done" and got[-1][1]["text"] == whole
        assert "".join(data["text"] for kind, data in got[:-1] if kind == "piece") == whole


def test_eight_concurrent_requests_each_get_what_they_would_get_alone(server: Server, model_path: Path) -> None:
    model = charrnn.load(model_path)
    alone = {seed: model.generate("a", length=300, seed=seed) for seed in range(8)}

    def ask(seed: int) -> str:
        return httpx.post(
            f"{server.url}/generate", json={"prime": "a", "length": 300, "seed": seed}, timeout=30
        ).json()["text"]

    with concurrent.futures.ThreadPoolExecutor(8) as threads:
        together = dict(zip(range(8), threads.map(ask, range(8))))
    assert together == alone


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ("not json", 400, None),
        ("[1, 2]", 422, "body"),
        ('{"length": "5"}', 422, "length"),
        ('{"length": 5.5}', 422, "length"),
        ('{"lenght": 5}', 422, "lenght"),
        ('{"length": -1}', 422, "length"),
        ('{"length": 401}', 422, "length"),
        ('{"prime": "' + "a" * 51 + '"}', 422, "prime"),
        ('{"temperature": -0.5}', 422, "temperature"),
        ('{"top_p": 1.5}', 422, "top_p"),
        ('{"seed": -3}', 422, "seed"),
        ('{"stream": 1}', 422, "stream"),
        ('{"weights": "int4"}', 422, "weights"),
    ],
)
def test_bad_requests_get_4xx_naming_the_field(server: Server, body: str, status: int, field: str | None) -> None:
    response = httpx.post(f"{server.url}/generate", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["field"] == field
    assert field is None or field in response.json()["detail"]


def test_characters_outside_the_vocabulary_get_422_naming_them(server: Server) -> None:
    response = httpx.post(f"{server.url}/generate/stream", json={"prime": "abXY"})
    assert response.status_code == 422
    assert response.json()["field"] == "prime" and "'X', 'Y'" in response.json()["detail"]


def test_a_full_queue_answers_503_with_retry_after_and_a_client_leaving_frees_its_worker(model_path: Path) -> None:
    busy = Server(model_path, ServeConfig(workers=1, queue=0, max_length=10**7))
    try:
        with httpx.Client(base_url=busy.url, timeout=30) as client:
            with client.stream("POST", "/generate/stream", json={"length": 10**7}) as long:
                chunks = long.iter_raw()  # kept: dropping the iterator would close the stream
                assert next(chunks).startswith(b"event: piece")  # drawing has begun on the only worker
                refused = client.post("/generate", json={"length": 5})
                assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            deadline = time.monotonic() + 10  # the stream was closed: its drawing stops
            while client.get("/health").json()["admitted"]:
                assert time.monotonic() < deadline, "the abandoned stream kept its worker"
                time.sleep(0.05)
            assert client.post("/generate", json={"length": 5}).status_code == 200
    finally:
        busy.stop()


def test_serve_without_fastapi_says_what_to_install(runner, monkeypatch: pytest.MonkeyPatch) -> None:
    from charrnn.cli import app

    monkeypatch.setitem(sys.modules, "fastapi", None)
    one_line_error(runner.invoke(app, ["serve", "anything"]), "pip install 'charrnn[serve]'")


def test_serve_of_an_unknown_run_is_one_line_error(runner) -> None:
    from charrnn.cli import app

    one_line_error(runner.invoke(app, ["serve", "nope"]), "unknown run or checkpoint 'nope'")


def test_binding_beyond_loopback_warns_that_there_is_no_authentication(
    runner, model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import charrnn.serve
    from charrnn.cli import app

    hosts = []
    monkeypatch.setattr(charrnn.serve, "run_app", lambda _app, host, _port: hosts.append(host))
    quiet = runner.invoke(app, ["serve", str(model_path)])
    loud = runner.invoke(app, ["serve", str(model_path), "--host", "0.0.0.0"])
    assert quiet.exit_code == loud.exit_code == 0 and hosts == ["127.0.0.1", "0.0.0.0"]
    assert quiet.stderr == "" and loud.stderr.count("\n") == 1 and "no authentication" in loud.stderr
    assert is_loopback("::1") and is_loopback("localhost") and not is_loopback("192.168.1.2")


def test_charrnn_serve_serves_a_run_by_name_with_its_best_validation_loss(trained: str, runner, tmp_path: Path) -> None:
    from charrnn.cli import app

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(charrnn.__file__).parents[1])}
    process = subprocess.Popen(
        [sys.executable, "-m", "charrnn", "serve", trained, "--port", str(port), "--workers", "1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                info = httpx.get(f"http://127.0.0.1:{port}/info").json()
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "charrnn serve did not start"
                time.sleep(0.1)
        assert info["best_val"] == pytest.approx(charrnn.runs(tmp_path / "checkpoints")[0].best_val)
        text = httpx.post(f"http://127.0.0.1:{port}/generate", json={"prime": "The", "length": 80, "seed": 5}).json()
        sampled = runner.invoke(app, ["sample", trained, "--prime", "The", "-n", "80", "--seed", "5"])
        assert sampled.stdout == "The" + text["text"] + "\n"
    finally:
        process.terminate()
        process.wait(10)


def test_a_safetensors_export_serves_the_same_text(model_path: Path, tmp_path: Path) -> None:
    exported = charrnn.export(model_path, out=tmp_path / "model.safetensors")
    served = Server(exported, ServeConfig(workers=1))
    try:
        body = {"prime": "ab", "length": 50, "seed": 9}
        text = httpx.post(f"{served.url}/generate", json=body).json()["text"]
    finally:
        served.stop()
    assert text == charrnn.load(model_path).generate("ab", length=50, seed=9)
