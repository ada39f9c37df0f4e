"""CharRNN: embedding -> stacked recurrent layers -> linear head over the vocabulary.

The recurrent part is a "stack": any module with
    forward(x (B, T, E), state) -> (out (B, T, H), state)
where `state` is a tuple of tensors, each (L, B, H): (h, c) for LSTM kinds,
(h,) for the others. Kinds listed in `FUSED_MODELS` use one torch module per
layer (cuDNN / oneDNN kernels); the other kinds use the stacks of
charrnn.models.custom (peephole, gated feedback) and charrnn.models.variants (mlstm,
mogrifier-lstm, ln-lstm). `_stack_for` holds the one table kind -> stack class.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from charrnn.config import ModelConfig
from charrnn.models.dropout import SequenceDropout

State = tuple[Tensor, ...]

_TORCH_MODULES: dict[str, type[nn.Module]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class FusedStack(nn.Module):
    """Stacked torch RNN modules, one per layer, dropout between layers.

    One module per layer (rather than torch's num_layers) keeps every layer's
    weights addressable by the same names for every depth: layers.{l}.weight_ih_l0.

    With `weight_drop`, each training forward multiplies the hidden-to-hidden
    matrices by a fresh DropConnect mask (Wan et al. 2013; as in AWD-LSTM, Merity
    et al. 2017): one mask per batch, the same at every step, so the fused
    cuDNN/oneDNN kernel still runs the whole sequence.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        module = _TORCH_MODULES[cfg.model]
        sizes = [cfg.embedding_size] + [cfg.hidden_size] * (cfg.num_layers - 1)
        self.layers = nn.ModuleList(module(n, cfg.hidden_size, batch_first=True) for n in sizes)
        self.drop = SequenceDropout(cfg.dropout, cfg.dropout_mask)
        self.weight_drop = cfg.weight_drop
        self.is_lstm = cfg.model == "lstm"
        # Biases keep torch's init, U(-1/sqrt(H), 1/sqrt(H)). A forget-gate bias of 1 (Gers et
        # al. 2000) slows the first few hundred steps, and runs planned for a time budget are
        # that short (see benchmarks/RESULTS.md, "Planner calibration", forget-gate bias).

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        new: list[list[Tensor]] = [[] for _ in state]
        for i, layer in enumerate(self.layers):
            if i > 0:
                x = self.drop(x)
            hx = (state[0][i : i + 1], state[1][i : i + 1]) if self.is_lstm else state[0][i : i + 1]
            x, h = self._run_layer(layer, x, hx)
            if self.is_lstm:
                new[0].append(h[0])
                new[1].append(h[1])
            else:
                new[0].append(h)
        return x, tuple(torch.cat(parts, 0) for parts in new)

    def _run_layer(self, layer: nn.Module, x: Tensor, hx: object) -> tuple[Tensor, object]:
        if not (self.training and self.weight_drop > 0):
            return layer(x, hx)
        dropped = {"weight_hh_l0": F.dropout(layer.weight_hh_l0, self.weight_drop, True)}
        with warnings.catch_warnings():
            # cuDNN copies weights that are not in its flat buffer, and says so each call.
            warnings.filterwarnings("ignore", message=".*contiguous chunk of memory.*")
            return torch.func.functional_call(layer, dropped, (x, hx))


def _stack_for(cfg: ModelConfig) -> nn.Module:
    """The recurrent stack of `cfg.model`: the one table of model kind -> stack class."""
    if cfg.model in _TORCH_MODULES:
        return FusedStack(cfg)
    if cfg.model in ("mlstm", "mogrifier-lstm", "ln-lstm"):
        from charrnn.models.variants import VariantStack  # scripts its loops at import, as custom.py

        return VariantStack(cfg)
    # Imported here, not at the top: custom.py compiles its time loops with TorchScript
    # when imported, which models of the fused kinds never need to pay for.
    from charrnn.models.custom import GatedFeedbackStack, PeepholeLSTMStack

    stacks: dict[str, type[nn.Module]] = {
        "peephole-lstm": PeepholeLSTMStack,
        "gf-rnn": GatedFeedbackStack,
        "gf-gru": GatedFeedbackStack,
        "gf-lstm": GatedFeedbackStack,
    }
    return stacks[cfg.model](cfg)


class CharRNN(nn.Module):
    """Character-level language model; `ModelConfig` is its only input."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embedding_size)
        self.drop = SequenceDropout(cfg.dropout, cfg.dropout_mask)
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


def detach_state(state: State, dtype: torch.dtype | None = None) -> State:
    """The state cut from the graph (truncated BPTT), optionally cast to `dtype`."""
    return tuple(s.detach().to(dtype) if dtype is not None else s.detach() for s in state)


def count_parameters(model: nn.Module) -> int:
    """Parameters of a built model; for a CharRNN it equals charrnn.limits.parameter_count(cfg),
    the formula that counts from the config alone (tests/test_ptfile.py checks every kind)."""
    return sum(p.numel() for p in model.parameters())
