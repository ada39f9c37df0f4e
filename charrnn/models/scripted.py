"""What the stacks with their own time loops share: scripting the loop, and torch's init.

The loops of charrnn.models.custom and charrnn.models.variants are TorchScript functions,
scripted at import and run with the graph executor's optimisation off
(`torch.jit.optimized_execution(False)`): on a CPU it has no fuser to offer, and its
profiling pass would spend seconds re-optimising at each new shape or grad mode
(training, evaluation, sampling one step at a time).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, TypeVar, cast

import torch
from torch import nn

F = TypeVar("F", bound=Callable[..., Any])


def script(fn: F) -> F:
    """TorchScript `fn`, or `fn` itself where scripting fails (e.g. no .py sources shipped).

    torch >= 2.9 flags torch.jit as deprecated; users need not see that.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return cast(F, torch.jit.script(fn))
        except (OSError, RuntimeError):
            return fn


def uniform_(params: list[nn.Parameter], hidden_size: int) -> None:
    """torch's RNN init: U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias."""
    bound = 1.0 / math.sqrt(hidden_size)
    with torch.no_grad():
        for p in params:
            p.uniform_(-bound, bound)
