"""charrnn: character-level recurrent language models from the shell and from Python.

The Python API (charrnn.api), imported on first use so that `import charrnn` loads
neither torch nor NumPy:

    load(run_or_path, device="cpu", weights="fp32", engine="auto", runs_dir="checkpoints") -> Model
    train(corpus=None, **settings) -> RunResult   (trains a run; settings by config field name)
    runs(runs_dir="checkpoints") -> list[RunInfo]
    export(run_or_path, format="safetensors", out=None, runs_dir="checkpoints") -> Path   (charrnn.exporting)
    __version__

No module of the package is named `train`, `runs` or `export` (the library's are
`charrnn.training`, `charrnn.rundir` and `charrnn.exporting`): importing a submodule binds
its name on the package, which would hide the function of the same name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from charrnn.api import Model, RunInfo, load, runs, train
    from charrnn.exporting import export

__all__ = ["Model", "RunInfo", "__version__", "export", "load", "runs", "train"]

_API = ("Model", "RunInfo", "load", "runs", "train")


def __getattr__(name: str) -> Any:
    if name in _API:
        from charrnn import api

        return getattr(api, name)
    if name == "export":
        from charrnn.exporting import export

        return export
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
