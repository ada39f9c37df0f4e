"""One sampling step as a plain torch module, for ONNX and TorchScript export.

The step of charrnn's fused kinds (lstm, gru, rnn) written out with matrix products, so
both exporters see only elementwise ops and matmuls (torch's nn.LSTM/GRU/RNN export as
sequence ops whose state layout differs between runtimes):

    inputs   ids (B,) int64        h (L, B, H) float32     c (L, B, H)  (lstm only)
    outputs  logits (B, V)         h_out (L, B, H)         c_out (L, B, H)  (lstm only)

Gate layouts are torch's: lstm rows i, f, g, o; gru rows r, z, n (n sees r * (W_hn h + b_hn)).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from charrnn.models.charrnn import CharRNN


class _Layers(nn.Module):
    """The weights of a FusedStack, one (W_ih, W_hh, b_ih, b_hh) per layer, and the head."""

    def __init__(self, model: CharRNN) -> None:
        super().__init__()
        self.embed = nn.Parameter(model.embed.weight.detach().clone(), requires_grad=False)  # (V, E)
        self.w_ih = nn.ParameterList()
        self.w_hh = nn.ParameterList()
        self.b_ih = nn.ParameterList()
        self.b_hh = nn.ParameterList()
        for layer in model.stack.layers:
            self.w_ih.append(nn.Parameter(layer.weight_ih_l0.detach().clone(), requires_grad=False))
            self.w_hh.append(nn.Parameter(layer.weight_hh_l0.detach().clone(), requires_grad=False))
            self.b_ih.append(nn.Parameter(layer.bias_ih_l0.detach().clone(), requires_grad=False))
            self.b_hh.append(nn.Parameter(layer.bias_hh_l0.detach().clone(), requires_grad=False))
        self.head_w = nn.Parameter(model.head.weight.detach().clone(), requires_grad=False)  # (V, H)
        self.head_b = nn.Parameter(model.head.bias.detach().clone(), requires_grad=False)  # (V,)
        self.num_layers = len(model.stack.layers)


class LSTMStep(_Layers):
    def forward(self, ids: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.embed[ids]  # (B, E)
        hs, cs = [], []
        for i in range(self.num_layers):
            gates = x @ self.w_ih[i].t() + self.b_ih[i] + h[i] @ self.w_hh[i].t() + self.b_hh[i]  # (B, 4H)
            gi, gf, gg, go = gates.chunk(4, dim=1)
            c_new = torch.sigmoid(gf) * c[i] + torch.sigmoid(gi) * torch.tanh(gg)
            x = torch.sigmoid(go) * torch.tanh(c_new)
            hs.append(x)
            cs.append(c_new)
        return x @ self.head_w.t() + self.head_b, torch.stack(hs), torch.stack(cs)


class GRUStep(_Layers):
    def forward(self, ids: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        x = self.embed[ids]  # (B, E)
        hs = []
        for i in range(self.num_layers):
            xr, xz, xn = (x @ self.w_ih[i].t() + self.b_ih[i]).chunk(3, dim=1)
            hr, hz, hn = (h[i] @ self.w_hh[i].t() + self.b_hh[i]).chunk(3, dim=1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            x = (1 - z) * n + z * h[i]
            hs.append(x)
        return x @ self.head_w.t() + self.head_b, torch.stack(hs)


class RNNStep(_Layers):
    def forward(self, ids: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        x = self.embed[ids]  # (B, E)
        hs = []
        for i in range(self.num_layers):
            x = torch.tanh(x @ self.w_ih[i].t() + self.b_ih[i] + h[i] @ self.w_hh[i].t() + self.b_hh[i])
            hs.append(x)
        return x @ self.head_w.t() + self.head_b, torch.stack(hs)


STEPS: dict[str, type[_Layers]] = {"lstm": LSTMStep, "gru": GRUStep, "rnn": RNNStep}


def step_module(model: CharRNN) -> nn.Module:
    """The step of `model` (a fused kind: the caller checks) in eval mode."""
    return STEPS[model.cfg.model](model).eval()


def io_names(kind: str) -> tuple[list[str], list[str]]:
    """(input names, output names) of the step of `kind`."""
    if kind == "lstm":
        return ["ids", "h", "c"], ["logits", "h_out", "c_out"]
    return ["ids", "h"], ["logits", "h_out"]
