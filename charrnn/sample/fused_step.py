"""The fast step of the fused kinds: lstm, gru and rnn (a FusedStack of torch modules)."""

from __future__ import annotations

import torch
from torch import Tensor

from charrnn.models.charrnn import CharRNN, FusedStack, State
from charrnn.sample.step_base import FastStepper, Linear, gate_order


class FusedStepper(FastStepper):
    """The step of lstm, gru and rnn models (a FusedStack of torch modules)."""

    def __init__(self, model: CharRNN, weights: str) -> None:
        super().__init__(model, weights)
        H = self.hidden
        stack = model.stack
        assert isinstance(stack, FusedStack)
        layers = list(stack.layers)
        self.relu = self.kind == "rnn" and getattr(layers[0], "nonlinearity", "tanh") == "relu"
        # LSTM gate rows i, f, g, o -> i, f, o, g: one sigmoid over the first 3H.
        order = gate_order(H, [0, 1, 3, 2]) if self.kind == "lstm" else None
        with torch.no_grad():
            params = []  # per layer: weight_ih, weight_hh, bias_ih, bias_hh, rows reordered
            for layer in layers:
                names = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
                p = [getattr(layer, n) for n in names]
                params.append([t.detach()[order] if order is not None else t.detach() for t in p])
            w_ih0, w_hh0, b_ih0, b_hh0 = params[0]
            # (V, G): embedding row -> first layer's input projection + bias. GRU keeps b_hh
            # on the recurrent side, where its n-part is scaled by the reset gate.
            table_bias = b_ih0 if self.kind == "gru" else b_ih0 + b_hh0
            self.table = torch.addmm(table_bias, model.embed.weight.detach(), w_ih0.t())
            self.first_hh = Linear([w_hh0], b_hh0 if self.kind == "gru" else None, weights)
            # Layers >= 1: one linear over [input, h] (LSTM, RNN), or separate ih / hh (GRU).
            self.upper: list[tuple[Linear, ...]] = []
            for w_ih, w_hh, b_ih, b_hh in params[1:]:
                if self.kind == "gru":
                    ih, hh = Linear([w_ih], b_ih, weights), Linear([w_hh], b_hh, weights)
                    self.upper.append((ih, hh))
                else:
                    self.upper.append((Linear([w_ih, w_hh], b_ih + b_hh, weights),))
            self.head = Linear([model.head.weight], model.head.bias, "fp32")
        self.lins = [self.first_hh, *(lin for lins in self.upper for lin in lins)]

    def _buffers(self, batch: int) -> list[tuple[Tensor, ...]]:
        """Per layer: its buffers, then views of them that the step reads."""
        H = self.hidden
        work = []
        for i in range(self.layers):
            xh = self._empty(batch, 2 * H)  # [input, h] of layers >= 1
            if self.kind == "lstm":
                g = self._empty(batch, 4 * H)  # rows i, f, o, g
                work.append((xh, g, g[:, : 3 * H], *g.split(H, 1)))
            elif self.kind == "gru":
                gi, gh = self._empty(batch, 3 * H), self._empty(batch, 3 * H)
                rz = self._empty(batch, 2 * H)
                gi_rz, gi_n = gi.split([2 * H, H], 1)
                gh_rz, gh_n = gh.split([2 * H, H], 1)
                work.append((gi, gh, rz, gi_rz, gi_n, gh_rz, gh_n, *rz.chunk(2, 1)))
            else:
                work.append((xh, self._empty(batch, H)))
        return work

    def _step(self, x: Tensor, state: State, work: list) -> tuple[Tensor, State]:
        if self.kind == "lstm":
            return self._step_lstm(x, state[0], state[1], work)
        if self.kind == "gru":
            return self._step_gru(x, state[0], work)
        return self._step_rnn(x, state[0], work)

    def _step_lstm(self, x: Tensor, h0: Tensor, c0: Tensor, work: list) -> tuple[Tensor, State]:
        hs: list[Tensor] = []
        cs: list[Tensor] = []
        inp = x
        for i, (h, c) in enumerate(zip(h0.unbind(0), c0.unbind(0))):
            xh, gates, sig, in_gate, forget, out_gate, cell = work[i]
            if i == 0:  # (B, 4H): table row (input projection + bias) + h @ W_hh^T
                self.first_hh.into(gates, h, self.table.index_select(0, x))
            else:
                lin = self.upper[i - 1][0]
                lin.into(gates, torch.cat((inp, h), 1, out=xh), lin.bias)
            sig.sigmoid_()
            cell.tanh_()
            c = torch.mul(forget, c).addcmul_(in_gate, cell)
            inp = torch.tanh(c).mul_(out_gate)
            hs.append(inp)
            cs.append(c)
        return self.head(inp), (torch.stack(hs), torch.stack(cs))

    def _step_gru(self, x: Tensor, h0: Tensor, work: list) -> tuple[Tensor, State]:
        hs: list[Tensor] = []
        inp = x
        for i, h in enumerate(h0.unbind(0)):
            gi, gh, rz, gi_rz, gi_n, gh_rz, gh_n, reset, update = work[i]  # rows r, z, n
            if i == 0:
                torch.index_select(self.table, 0, x, out=gi)
                self.first_hh.into(gh, h, self.first_hh.bias)
            else:
                lin_ih, lin_hh = self.upper[i - 1]
                lin_ih.into(gi, inp, lin_ih.bias)
                lin_hh.into(gh, h, lin_hh.bias)
            torch.add(gi_rz, gh_rz, out=rz).sigmoid_()
            n = torch.addcmul(gi_n, reset, gh_n).tanh_()
            inp = torch.lerp(n, h, update)  # (1 - z) n + z h
            hs.append(inp)
        return self.head(inp), (torch.stack(hs),)

    def _step_rnn(self, x: Tensor, h0: Tensor, work: list) -> tuple[Tensor, State]:
        hs: list[Tensor] = []
        inp = x
        for i, h in enumerate(h0.unbind(0)):
            xh, pre = work[i]
            if i == 0:
                self.first_hh.into(pre, h, self.table.index_select(0, x))
            else:
                lin = self.upper[i - 1][0]
                lin.into(pre, torch.cat((inp, h), 1, out=xh), lin.bias)
            inp = torch.relu(pre) if self.relu else torch.tanh(pre)
            hs.append(inp)
        return self.head(inp), (torch.stack(hs),)
