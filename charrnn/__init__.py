"""charrnn: character-level recurrent language models from the shell and from Python.

The Python API (charrnn.api), imported on first use so that `import charrnn` loads
neither torch nor NumPy:

    load(run_or_path, device="cpu", weights="fp32", engine="auto", runs_dir="checkpoints") -> Model
    list_runs(runs_dir="checkpoints") -> list[RunInfo]
    fit(corpus=None, **options) -> RunResult   (trains a run)

Training is `fit` and the run list `list_runs` because `charrnn.train` and `charrnn.runs` are
modules: importing one (as the CLI does) rebinds that attribute to the module.
    __version__
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from charrnn.api import Model, RunInfo, fit, list_runs, load

__all__ = ["Model", "RunInfo", "__version__", "fit", "list_runs", "load"]

_API = ("Model", "RunInfo", "fit", "list_runs", "load")


def __getattr__(name: str) -> Any:
    if name in _API:
        from charrnn import api

        return getattr(api, name)
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("charrnn")
        except PackageNotFoundError:  # run from a source tree that was never installed
            found = "0.0.0+unknown"
        globals()["__version__"] = found
        return found
    raise AttributeError(f"module 'charrnn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
