"""CharRNN: embedding -> stacked recurrent layers -> linear head over the vocabulary.

The recurrent part is a "stack": any module with
    forward(x (B, T, E), state) -> (out (B, T, H), state)
where `state` is a tuple of tensors, each (L, B, H): (h, c) for LSTM kinds,
(h,) for the others. Kinds listed in `FUSED_MODELS` use one torch module per
layer (cuDNN / oneDNN kernels); further kinds register their stack class in
`STACKS`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from charrnn.config import ModelConfig

State = tuple[Tensor, ...]

_TORCH_MODULES: dict[str, type[nn.Module]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class FusedStack(nn.Module):
    """Stacked torch RNN modules, one per layer, dropout between layers.

    One module per layer (rather than torch's num_layers) keeps every layer's
    weights addressable by the same names for every depth: layers.{l}.weight_ih_l0.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        module = _TORCH_MODULES[cfg.model]
        sizes = [cfg.embedding_size] + [cfg.hidden_size] * (cfg.num_layers - 1)
        self.layers = nn.ModuleList(module(n, cfg.hidden_size, batch_first=True) for n in sizes)
        self.drop = nn.Dropout(cfg.dropout)
        self.is_lstm = cfg.model == "lstm"
        if self.is_lstm:
            # Forget-gate bias 1 (Gers et al. 2000; Jozefowicz et al. 2015): remember by default.
            h = cfg.hidden_size
            for layer in self.layers:
                with torch.no_grad():
                    layer.bias_ih_l0[h : 2 * h].fill_(1.0)
                    layer.bias_hh_l0[h : 2 * h].zero_()

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        new: list[list[Tensor]] = [[] for _ in state]
        for i, layer in enumerate(self.layers):
            if i > 0:
                x = self.drop(x)
            if self.is_lstm:
                x, (h, c) = layer(x, (state[0][i : i + 1], state[1][i : i + 1]))
                new[0].append(h)
                new[1].append(c)
            else:
                x, h = layer(x, state[0][i : i + 1])
                new[0].append(h)
        return x, tuple(torch.cat(parts, 0) for parts in new)


# model kind -> stack class; extra kinds add themselves here (see charrnn.recurrent).
STACKS: dict[str, Callable[[ModelConfig], nn.Module]] = {k: FusedStack for k in _TORCH_MODULES}


def _stack_for(cfg: ModelConfig) -> nn.Module:
    if cfg.model not in STACKS:
        import charrnn.recurrent  # noqa: F401  registers the non-fused kinds
    return STACKS[cfg.model](cfg)


class CharRNN(nn.Module):
    """Character-level language model; `ModelConfig` is its only input."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embedding_size)
        self.drop = nn.Dropout(cfg.dropout)
        self.stack = _stack_for(cfg)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Zero state: a tuple of `cfg.state_size` tensors, each (L, B, H)."""
        shape = (self.cfg.num_layers, batch_size, self.cfg.hidden_size)
        device = device if device is not None else self.head.weight.device
        return tuple(torch.zeros(shape, device=device) for _ in range(self.cfg.state_size))

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, T) token ids -> logits (B, T, V) and the state after the last step."""
        out, state = self.stack(self.drop(self.embed(x)), state)
        return self.head(self.drop(out)), state


def detach_state(state: State) -> State:
    return tuple(s.detach() for s in state)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
