"""Stand-ins that import rich on first use, so `charrnn --help` never pays for it (~60 ms)."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_callable(module: str, name: str) -> Callable[..., Any]:
    """`module.name(...)`, imported at the first call."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    return call


class LazyConsole:
    """A rich Console built at its first use, with the given arguments."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._console: Any = None

    def __getattr__(self, attr: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._kwargs)
        return getattr(self._console, attr)
