"""Fast one-character steps for the kinds of charrnn.models.variants: mlstm, mogrifier-lstm, ln-lstm.

The tricks of charrnn.sample.step_base applied to each cell's equations: the first layer's
input term folded into a gather table where it depends on the character alone (mlstm,
ln-lstm: a layer norm of one row is that row's own), gate rows reordered i, f, o, g so one
sigmoid covers three, buffers kept per batch size, every weight mode. Each step equals the
stack's forward to float rounding (tests/test_models_variants.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from charrnn.models.charrnn import CharRNN, State
from charrnn.models.variants import LN_EPS
from charrnn.sample.step_base import FastStepper, Linear, gate_order


def _lstm_update(gates: Tensor, c: Tensor, hidden: int) -> tuple[Tensor, Tensor]:
    """gates (B, 4H) pre-activations in rows i, f, o, g, activated in place -> (o, the new c)."""
    gates[:, : 3 * hidden].sigmoid_()
    in_gate, forget, out_gate, cell = gates.split(hidden, 1)
    cell.tanh_()
    return out_gate, torch.mul(forget, c).addcmul_(in_gate, cell)


class _VariantStepper(FastStepper):
    """Shared set-up: the layers, the gate order i, f, o, g, the fp32 head."""

    def __init__(self, model: CharRNN, weights: str) -> None:
        super().__init__(model, weights)
        self.cells = list(model.stack.layers)
        self.order = gate_order(self.hidden, [0, 1, 3, 2])
        self.head = Linear([model.head.weight], model.head.bias, "fp32")

    def _buffers(self, batch: int) -> list[Tensor]:
        return [self._empty(batch, 4 * self.hidden) for _ in range(self.layers)]

    def _rows(self, t: Tensor) -> Tensor:
        """The 4H gate rows of `t` in the step's order i, f, o, g."""
        return t.detach()[self.order]


class MLSTMStepper(_VariantStepper):
    """The step of mlstm: input rows [gates (4H) | W_mx (H)], m = W_mx x * W_mh h, gates += W_m m."""

    def __init__(self, model: CharRNN, weights: str) -> None:
        super().__init__(model, weights)
        H = self.hidden
        with torch.no_grad():
            ins = []
            for m in self.cells:
                w = m.weight_ih.detach()
                ins.append(
                    (torch.cat([self._rows(w[: 4 * H]), w[4 * H :]]), torch.cat([self._rows(m.bias), w.new_zeros(H)]))
                )
            self.table = torch.addmm(ins[0][1], model.embed.weight, ins[0][0].t())  # (V, 5H)
            self.inputs = [Linear([w], b, weights) for w, b in ins[1:]]
            self.mh = [Linear([m.weight_mh], None, weights) for m in self.cells]
            self.mg = [Linear([self._rows(m.weight_mg)], None, weights) for m in self.cells]
        self.lins = [*self.inputs, *self.mh, *self.mg]

    def _step(self, x: Tensor, state: State, work: list[Tensor]) -> tuple[Tensor, State]:
        H = self.hidden
        hs: list[Tensor] = []
        cs: list[Tensor] = []
        inp = x
        for i, (h, c) in enumerate(zip(state[0].unbind(0), state[1].unbind(0))):
            xw = self.table.index_select(0, x) if i == 0 else self.inputs[i - 1](inp)
            m = self.mh[i](h).mul_(xw[:, 4 * H :])
            out_gate, c = _lstm_update(self.mg[i].into(work[i], m, xw[:, : 4 * H]), c, H)
            inp = torch.tanh(c).mul_(out_gate)
            hs.append(inp)
            cs.append(c)
        return self.head(inp), (torch.stack(hs), torch.stack(cs))


class MogrifierStepper(_VariantStepper):
    """The step of mogrifier-lstm: the rounds of Q and R products, then one LSTM product over [x, h].

    The input is modulated by the state, so nothing folds into a table: `table` is the embedding.
    """

    def __init__(self, model: CharRNN, weights: str) -> None:
        super().__init__(model, weights)
        with torch.no_grad():
            self.table = model.embed.weight.detach()
            self.q = [[Linear([w], None, weights) for w in m.weight_q] for m in self.cells]
            self.r = [[Linear([w], None, weights) for w in m.weight_r] for m in self.cells]
            self.gates = [
                Linear([self._rows(m.weight_ih), self._rows(m.weight_hh)], self._rows(m.bias), weights)
                for m in self.cells
            ]
        self.lins = [*(lin for q in self.q for lin in q), *(lin for r in self.r for lin in r), *self.gates]

    def _step(self, x: Tensor, state: State, work: list[Tensor]) -> tuple[Tensor, State]:
        H = self.hidden
        hs: list[Tensor] = []
        cs: list[Tensor] = []
        inp = self.table.index_select(0, x)
        for i, (h, c) in enumerate(zip(state[0].unbind(0), state[1].unbind(0))):
            hm = h
            for k in range(len(self.q[i])):
                inp = self.q[i][k](hm).sigmoid_().mul_(2.0).mul_(inp)
                if k < len(self.r[i]):
                    hm = self.r[i][k](inp).sigmoid_().mul_(2.0).mul_(hm)
            lin = self.gates[i]
            out_gate, c = _lstm_update(lin.into(work[i], torch.cat((inp, hm), 1), lin.bias), c, H)
            inp = torch.tanh(c).mul_(out_gate)
            hs.append(inp)
            cs.append(c)
        return self.head(inp), (torch.stack(hs), torch.stack(cs))


class LNLSTMStepper(_VariantStepper):
    """The step of ln-lstm: gates = LN(W_x x) (a table row for the first layer) + LN(W_h h)."""

    def __init__(self, model: CharRNN, weights: str) -> None:
        super().__init__(model, weights)
        with torch.no_grad():
            first = self.cells[0]
            # A layer norm over all 4H rows does not care about their order: reorder the output.
            self.table = self._rows(first.input_term(model.embed.weight).t()).t().contiguous()  # (V, 4H)
            self.inputs = [Linear([self._rows(m.weight_ih)], None, weights) for m in self.cells[1:]]
            self.recurrent = [Linear([self._rows(m.weight_hh)], None, weights) for m in self.cells]
            self.norms = [
                tuple(self._rows(p) for p in (m.gain_ih, m.bias, m.gain_hh)) + (m.gain_c.detach(), m.bias_c.detach())
                for m in self.cells
            ]
        self.lins = [*self.inputs, *self.recurrent]

    def _step(self, x: Tensor, state: State, work: list[Tensor]) -> tuple[Tensor, State]:
        H = self.hidden
        hs: list[Tensor] = []
        cs: list[Tensor] = []
        inp = x
        for i, (h, c) in enumerate(zip(state[0].unbind(0), state[1].unbind(0))):
            gain_ih, bias, gain_hh, gain_c, bias_c = self.norms[i]
            if i == 0:
                xw = self.table.index_select(0, x)
            else:
                xw = F.layer_norm(self.inputs[i - 1](inp), (4 * H,), gain_ih, bias, LN_EPS)
            rec = F.layer_norm(self.recurrent[i](h), (4 * H,), gain_hh, None, LN_EPS)
            out_gate, c = _lstm_update(torch.add(xw, rec, out=work[i]), c, H)
            inp = torch.tanh(F.layer_norm(c, (H,), gain_c, bias_c, LN_EPS)).mul_(out_gate)
            hs.append(inp)
            cs.append(c)
        return self.head(inp), (torch.stack(hs), torch.stack(cs))


# stack kind -> its step
STEPPERS: dict[str, type[FastStepper]] = {
    "mlstm": MLSTMStepper,
    "mogrifier-lstm": MogrifierStepper,
    "ln-lstm": LNLSTMStepper,
}
