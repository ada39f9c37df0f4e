"""What the stacks with their own time loops share: scripting the loop, torch's init, the LSTM-like stack.

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
from torch import Tensor, nn

F = TypeVar("F", bound=Callable[..., Any])
State = tuple[Tensor, ...]
# Activations of every LSTM-like layer, in the order its loop records them.
LSTM_ACTS = ("input", "forget", "output", "cell", "hidden")


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


class LoopLSTMStack(nn.Module):
    """Stacked LSTM-like layers, each with its own time loop, state (h, c).

    Subclasses set `layers`, whose modules have `run(x, h, c, record) -> (out (B, T, H), h, c,
    acts (5, B, T, H) in LSTM_ACTS order, or empty)`, and `drop`, applied to the input of every
    layer after the first.
    """

    layers: nn.ModuleList
    drop: nn.Module

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, T, E), state (h, c) each (L, B, H) -> out (B, T, H), new state."""
        out, state, _ = self._run(x, state, record=False)
        return out, state

    def forward_with_activations(self, x: Tensor, state: State) -> tuple[Tensor, State, dict[str, Tensor]]:
        """As forward, plus {'input','forget','output','cell','hidden': (L, B, T, H)}."""
        return self._run(x, state, record=True)

    def _run(self, x: Tensor, state: State, record: bool) -> tuple[Tensor, State, dict[str, Tensor]]:
        hs, cs, acts = [], [], []
        for i, layer in enumerate(self.layers):
            if i > 0:
                x = self.drop(x)
            with torch.jit.optimized_execution(False):
                x, h, c, act = layer.run(x, state[0][i], state[1][i], record)
            hs.append(h)
            cs.append(c)
            acts.append(act)
        new_state = (torch.stack(hs), torch.stack(cs))
        if not record:
            return x, new_state, {}
        return x, new_state, {name: torch.stack([a[n] for a in acts]) for n, name in enumerate(LSTM_ACTS)}
