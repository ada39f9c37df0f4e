"""A trained model over HTTP (`charrnn serve`), from Python:

    from charrnn.serve import ServeConfig, create_app, serve
    app = create_app("shakespeare", ServeConfig(workers=2))   # a FastAPI app, for any ASGI server
    serve("shakespeare", host="127.0.0.1", port=8000)          # or run it with uvicorn

The endpoints are described in charrnn.serve.app, the pool and its limits in
charrnn.serve.pool. Needs the `serve` extra (fastapi, uvicorn); importing this package
imports neither: they load when an app is made.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

from charrnn.errors import CharRNNError
from charrnn.serve.pool import ServeConfig

__all__ = ["ServeConfig", "create_app", "is_loopback", "serve"]

MISSING = "charrnn serve needs fastapi and uvicorn: pip install 'charrnn[serve]'"


def require_packages() -> None:
    """Raise CharRNNError, saying what to install, when fastapi or uvicorn is missing."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise CharRNNError(MISSING) from None


def create_app(
    run_or_path: str | Path | None = None,
    cfg: ServeConfig | None = None,
    runs_dir: str | Path = "checkpoints",
) -> Any:
    """A FastAPI app answering from the run (name in `runs_dir`, run folder, .pt or
    .safetensors file; None = the latest run). The fp32 model loads now, so a bad path
    fails here. Raises CharRNNError."""
    require_packages()
    from charrnn.rundir import resolve_checkpoint
    from charrnn.serve.app import make_app
    from charrnn.serve.pool import ModelPool

    path = resolve_checkpoint(None if run_or_path is None else str(run_or_path), Path(runs_dir))
    return make_app(ModelPool(path, cfg or ServeConfig()))


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (127.x, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    run_or_path: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    cfg: ServeConfig | None = None,
    runs_dir: str | Path = "checkpoints",
    log_level: str = "info",
) -> None:
    """Serve the run with uvicorn until interrupted. Binding beyond loopback logs a warning:
    the server has no authentication."""
    app = create_app(run_or_path, cfg, runs_dir)
    if not is_loopback(host):
        logging.getLogger("charrnn.serve").warning(no_auth_warning(host))
    run_app(app, host, port, log_level)


def no_auth_warning(host: str) -> str:
    return (
        f"serving on {host}, beyond this machine: the server has no authentication, anyone who reaches it can use it."
    )


def run_app(app: Any, host: str, port: int, log_level: str = "info") -> None:
    """Run `app` with uvicorn until interrupted. Raises CharRNNError when the port is taken."""
    import uvicorn

    if not 0 <= port <= 65535:
        raise CharRNNError(f"--port must be in [0, 65535], not {port}.")
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot listen (it has logged the reason)
        if server.started:
            raise
        raise CharRNNError(f"could not listen on {host}:{port}: is the port in use? choose another with --port.")
