"""The `serve` command: a trained run over HTTP (charrnn.serve), until Ctrl-C."""

import os
from pathlib import Path
from typing import Annotated

import typer

from charrnn.cli.common import Device, RunArg, RunsDir, err
from charrnn.config import Engine


def serve(
    run: RunArg = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on; beyond loopback anyone who reaches it can use it.")
    ] = ("127.0.0.1"),
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    workers: Annotated[
        int, typer.Option(min=1, max=1024, help="Generations at once, each on its own loaded model.")
    ] = 2,
    queue: Annotated[
        int, typer.Option(min=0, max=2**20, help="Requests that may wait for a worker; more get 503.")
    ] = 8,
    max_length: Annotated[int, typer.Option(min=1, max=2**30, help="Most new characters one request gets.")] = 5000,
    max_prime: Annotated[int, typer.Option(min=0, max=2**30, help="Most prime characters one request sends.")] = 10_000,
    engine: Annotated[Engine, typer.Option(help="As `charrnn sample --engine`.")] = "auto",
    device: Device = "cpu",
    runs_dir: RunsDir = Path("checkpoints"),
) -> None:
    """Serve a trained run over HTTP: POST /generate, /generate/stream (server-sent events), GET /info, /health."""
    # One BLAS thread per generation: the workers already run in parallel (see `charrnn sample`).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from charrnn.serve import ServeConfig, create_app, is_loopback, no_auth_warning, require_packages, run_app

    require_packages()
    cfg = ServeConfig(
        workers=workers, queue=queue, max_length=max_length, max_prime=max_prime, engine=engine, device=device
    )
    app = create_app(run, cfg, runs_dir)
    if not is_loopback(host):
        err.print(f"warning: {no_auth_warning(host)}", highlight=False, markup=False, soft_wrap=True)
    run_app(app, host, port)
