"""Fast one-character steps for the kinds of charrnn.models.custom: peephole-lstm and gf-*.

The same tricks as the fused kinds' step in charrnn.sample.fast_step (embedding folded into
a gather table, concatenated matrix products, gate buffers reused, every weight
mode), applied to the stacks' own equations; each step equals the stack's forward
to float rounding (tests/test_sample_steps.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from charrnn.models.charrnn import CharRNN, State
from charrnn.sample.step_base import FastStepper, Linear, gate_order


class PeepholeStepper(FastStepper):
    """The step of peephole-lstm (charrnn.models.custom.PeepholeLSTMStack), gate rows i, f, g, o.

    i and f see c(t-1) and o sees c(t) through per-unit weights, so o's sigmoid waits
    for the new cell: two sigmoids per layer instead of one.
    """

    def __init__(self, model: CharRNN, weights: str) -> None:
        super().__init__(model, weights)
        layers = list(model.stack.layers)
        with torch.no_grad():
            first = layers[0]
            self.table = torch.addmm(first.bias, model.embed.weight, first.weight_ih.t()).detach()
            self.first_hh = Linear([first.weight_hh], None, weights)
            self.upper = [Linear([m.weight_ih, m.weight_hh], m.bias, weights) for m in layers[1:]]
            # Per layer: (2, H) peepholes of i and f, (H,) of o.
            self.peep = [(m.peephole.detach()[:2], m.peephole.detach()[2]) for m in layers]
            self.head = Linear([model.head.weight], model.head.bias, "fp32")
        self.lins = [self.first_hh, *self.upper]

    def _buffers(self, batch: int) -> list[tuple[Tensor, ...]]:
        H = self.hidden
        work = []
        for _ in range(self.layers):
            gates = self._empty(batch, 4 * H)
            in_forget = gates[:, : 2 * H]
            # (B, 2, H) view of the i and f rows, for one peephole addcmul over both
            xh = self._empty(batch, 2 * H)
            work.append((xh, gates, in_forget, in_forget.view(batch, 2, H), *gates.split(H, 1)))
        return work

    def _step(self, x: Tensor, state: State, work: list) -> tuple[Tensor, State]:
        hs: list[Tensor] = []
        cs: list[Tensor] = []
        inp = x
        for i, (h, c) in enumerate(zip(state[0].unbind(0), state[1].unbind(0))):
            xh, gates, in_forget, in_forget3, in_gate, forget, cell, out_gate = work[i]
            if i == 0:
                self.first_hh.into(gates, h, self.table.index_select(0, x))
            else:
                lin = self.upper[i - 1]
                lin.into(gates, torch.cat((inp, h), 1, out=xh), lin.bias)
            peep_if, peep_o = self.peep[i]
            in_forget3.addcmul_(peep_if, c.unsqueeze(1)).sigmoid_()  # i, f += p * c(t-1)
            cell.tanh_()
            c = torch.mul(forget, c).addcmul_(in_gate, cell)
            out_gate.addcmul_(peep_o, c).sigmoid_()  # o sees c(t)
            inp = torch.tanh(c).mul_(out_gate)
            hs.append(inp)
            cs.append(c)
        return self.head(inp), (torch.stack(hs), torch.stack(cs))


class GatedFeedbackStepper(FastStepper):
    """The step of gf-rnn, gf-gru and gf-lstm (charrnn.models.custom.GatedFeedbackStack).

    Per step: the recurrent products of all source layers at once (one bmm in fp32,
    one packed matmul per source layer otherwise) into a (L, B, Krec) buffer whose
    own-gate, feedback and gate-logit views are cut once; then per target layer j
    its input projection (the table row for j = 0), the L global reset gates
    g_{i->j} (B, 1, L), and the gated feedback sum_i g_{i->j} U_{i->j} h^i as one
    (B, 1, L) @ (B, L, H) bmm. gf-lstm's unit rows are reordered i, f, o, g so that
    their own-gate part, laid out i, f, o, is added with one call.
    """

    def __init__(self, model: CharRNN, weights: str) -> None:
        super().__init__(model, weights)
        stack = model.stack
        L, H = self.layers, self.hidden
        self.gf_kind = int(stack.kind)  # 0 tanh, 1 GRU, 2 LSTM
        self.units = (1, 3, 4)[self.gf_kind] * H  # unit columns of an input projection
        self.own = (0, 2, 3)[self.gf_kind] * H  # own-gate columns of a recurrent product
        cols = torch.arange(self.units + L)
        if self.gf_kind == 2:
            cols = torch.cat([gate_order(H, [0, 1, 3, 2]), torch.arange(4 * H, 4 * H + L)])
        with torch.no_grad():
            bias_in = stack.bias_in.detach()[:, cols]  # (L, K)
            w_in0 = stack.weight_in0.detach()[cols]  # (K, E)
            self.table = torch.addmm(bias_in[0], model.embed.weight.detach(), w_in0.t())
            # weight_in is laid out (in, out): its transpose is the (N, K) a Linear takes.
            self.upper = [
                Linear([stack.weight_in[j - 1].detach()[:, cols].t()], bias_in[j], weights) for j in range(1, L)
            ]
            self.weight_rec = stack.weight_rec.detach()  # (L, H, Krec)
            self.rec = [Linear([w.t()], None, weights) for w in self.weight_rec.unbind(0)]
            self.bias_hn = stack.bias_hn.detach().unbind(0) if self.gf_kind == 1 else ()
            self.head = Linear([model.head.weight], model.head.bias, "fp32")
        self.lins = [*self.rec, *self.upper]

    def _buffers(self, batch: int) -> dict[str, Any]:
        L, H, own, units = self.layers, self.hidden, self.own, self.units
        rec = torch.empty(L, batch, self.weight_rec.shape[2], device=self.table.device)
        glog = self._empty(batch, L * L)  # gate logits from h*(t-1), column j * L + i
        layers = []
        for j in range(L):
            x = self._empty(batch, units + L)  # input projection: unit rows, then L gate logits
            gate = torch.empty(batch, 1, L, device=rec.device)
            fb = torch.empty(batch, 1, H, device=rec.device)
            mix = self._empty(batch, own) if own else x  # own-gate pre-activations (GRU, LSTM)
            layers.append(
                {
                    "x": x,
                    "x_gate": x[:, units:].unsqueeze(1),  # (B, 1, L)
                    "glog": glog.view(batch, L, L)[:, j : j + 1],  # (B, 1, L)
                    "gate": gate,
                    # U_{i->j} h^i of every source i, (B, L, H)
                    "fb_src": rec[:, :, own + j * H : own + (j + 1) * H].permute(1, 0, 2),
                    "fb": fb,
                    "fb2": fb.view(batch, H),
                    "own": rec[j, :, :own],
                    "x_own": x[:, :own],
                    "mix": mix,
                    "mix_parts": mix.split(H, 1),
                    "x_units": x[:, :units].split(H, 1),
                }
            )
        return {
            "rec": rec,
            "rec_rows": rec.unbind(0),
            "glog_src": rec[:, :, own + L * H :],  # (L, B, L * L), summed over sources
            "glog": glog,
            "layers": layers,
        }

    def _step(self, x: Tensor, state: State, work: dict[str, Any]) -> tuple[Tensor, State]:
        h_prev = state[0].unbind(0)
        c_prev = state[1].unbind(0) if self.gf_kind == 2 else ()
        if self.weights == "fp32":
            # (L, B, Krec), row i from layer i
            torch.bmm(state[0], self.weight_rec, out=work["rec"])
        else:
            for lin, h, out in zip(self.rec, h_prev, work["rec_rows"]):
                lin.into(out, h, None)
        torch.sum(work["glog_src"], 0, out=work["glog"])
        hs: list[Tensor] = []
        cs: list[Tensor] = []
        for j, buf in enumerate(work["layers"]):
            if j == 0:
                torch.index_select(self.table, 0, x, out=buf["x"])
            else:
                lin = self.upper[j - 1]
                lin.into(buf["x"], hs[j - 1], lin.bias)
            gate = torch.add(buf["x_gate"], buf["glog"], out=buf["gate"]).sigmoid_()  # g_{i->j}
            torch.bmm(gate, buf["fb_src"], out=buf["fb"])  # sum_i g_{i->j} U_{i->j} h^i
            fb, units = buf["fb2"], buf["x_units"]
            if self.gf_kind == 0:
                h = torch.add(units[0], fb).tanh_()
            elif self.gf_kind == 1:
                torch.add(buf["x_own"], buf["own"], out=buf["mix"]).sigmoid_()
                reset, update = buf["mix_parts"]
                cand = torch.addcmul(units[2], reset, fb.add_(self.bias_hn[j])).tanh_()
                h = torch.lerp(cand, h_prev[j], update)  # (1 - z) n + z h
            else:
                torch.add(buf["x_own"], buf["own"], out=buf["mix"]).sigmoid_()
                in_gate, forget, out_gate = buf["mix_parts"]
                cell = torch.add(units[3], fb).tanh_()
                c = torch.mul(forget, c_prev[j]).addcmul_(in_gate, cell)
                h = torch.tanh(c).mul_(out_gate)
                cs.append(c)
            hs.append(h)
        new_state = (torch.stack(hs), torch.stack(cs)) if cs else (torch.stack(hs),)
        return self.head(hs[-1]), new_state


# stack class name -> its step
STEPPERS: dict[str, type[FastStepper]] = {
    "PeepholeLSTMStack": PeepholeStepper,
    "GatedFeedbackStack": GatedFeedbackStepper,
}
