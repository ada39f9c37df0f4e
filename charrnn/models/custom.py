"""Recurrent stacks beyond torch's fused modules: peephole LSTM and gated-feedback RNNs.

Stacks for the kinds below; charrnn.models.charrnn picks them by `ModelConfig.model`:

- `peephole-lstm` (Gers & Schmidhuber 2000): the input and forget gates see c(t-1),
  the output gate sees c(t), through per-unit (diagonal) weights.
- `gf-rnn`, `gf-gru`, `gf-lstm` (Chung, Gulcehre, Cho & Bengio 2015): layer j receives
  the previous-step hidden states of all layers i, each connection i->j scaled by a
  scalar global reset gate
      g_{i->j} = sigmoid(w_g^{i->j} . x_t^j + u_g^{i->j} . h*_{t-1} + b_g^{i->j}),
  x_t^j being the layer's input at t and h*_{t-1} all layers' hidden states at t-1.
  The gated sum  sum_i g_{i->j} U_{i->j} h_{t-1}^i  replaces the recurrent term of the
  tanh unit, of the GRU candidate (inside the reset gate r) and of the LSTM cell
  candidate; the other gates keep the ordinary recurrence of their own layer.
  With g_{j->j} = 1 and g_{i->j} = 0 for i != j a GF model is the stacked model.

Gate and weight layout follows torch: LSTM rows i, f, g, o; GRU rows r, z, n with
h = (1 - z) n + z h(t-1). Input projections of all T steps are one matmul per layer
where the input is known in advance (every peephole layer, the first GF layer; a GF
layer above needs the layer below at the same step). The time loops are TorchScript
functions (charrnn.models.scripted says how they are scripted and run).

The file stays whole: the scripted loops and the stacks that call them share their
gate layouts.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from charrnn.config import ModelConfig
from charrnn.models.scripted import LoopLSTMStack, script, uniform_

State = tuple[Tensor, ...]
Acts = dict[str, Tensor]

# GF unit kinds, as the integer the scripted loop branches on.
_RNN, _GRU, _LSTM = 0, 1, 2
_GF_KINDS = {"gf-rnn": _RNN, "gf-gru": _GRU, "gf-lstm": _LSTM}
# Blocks of H rows in a layer's input projection, and in its own-layer recurrence.
_IN_BLOCKS = {_RNN: 1, _GRU: 3, _LSTM: 4}
_OWN_BLOCKS = {_RNN: 0, _GRU: 2, _LSTM: 3}
_ACT_NAMES = {
    _RNN: ("hidden",),
    _GRU: ("reset", "update", "hidden"),
    _LSTM: ("input", "forget", "output", "cell", "hidden"),
}


def _peephole_loop(
    xw: Tensor, w_hh: Tensor, peep: Tensor, h: Tensor, c: Tensor, record: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """xw (B, T, 4H) input projection + bias, w_hh (H, 4H), peep (3, H), h and c (B, H).

    Returns out (B, T, H), h (B, H), c (B, H), acts (5, B, T, H) or empty when not record.
    """
    p_i, p_f, p_o = peep[0], peep[1], peep[2]
    outs: list[Tensor] = []
    acts: list[Tensor] = []
    # unbind, not xw[:, t]: the backward of indexing allocates a (B, T, 4H) zero tensor per step
    for x_t in xw.unbind(1):
        gi, gf, gc, go = torch.addmm(x_t, h, w_hh).chunk(4, 1)  # each (B, H)
        i = torch.sigmoid(gi + p_i * c)
        f = torch.sigmoid(gf + p_f * c)
        c = f * c + i * torch.tanh(gc)
        o = torch.sigmoid(go + p_o * c)
        h = o * torch.tanh(c)
        outs.append(h)
        if record:
            acts.append(torch.stack([i, f, o, c, h]))
    out = torch.stack(outs, 1)
    act = torch.stack(acts, 2) if record else torch.empty(0)
    return out, h, c, act


def _gf_loop(
    kind: int,
    x0w: Tensor,
    w_in: Tensor,
    b_in: Tensor,
    w_rec: Tensor,
    b_hn: Tensor,
    masks: Tensor,
    h: Tensor,
    c: Tensor,
    record: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One gated-feedback stack over T steps.

    x0w (B, T, K) first layer's input projection + bias, K = nH + L (unit blocks, then
    the L gate logits i->0); w_in (L-1, H, K), b_in (L-1, K) for the layers above;
    w_rec (L, H, kH + L*H + L*L): source layer i's own-gate recurrence, its feedback
    U_{i->j} for every j, its share of every gate logit; b_hn (L, H) GRU bias inside r;
    masks (T, L-1, B, H) inter-layer dropout or empty; h, c (L, B, H) (c empty unless LSTM).
    Returns out (B, T, H), h, c, acts (T, A, L, B, H), gates (T, L, B, L) [t, j, b, i].
    """
    L, B, H = h.size(0), h.size(1), h.size(2)
    k = w_rec.size(2) - L * H - L * L  # own-gate columns
    n = x0w.size(2) - L  # unit columns of the input projection
    # Pieces come from unbind/split, never from indexing inside the loop: the backward of
    # indexing writes into a zero tensor of the full source size, once per use.
    in_sizes = [H] * (n // H) + [L]
    x0ws = x0w.unbind(1)
    w_ins, b_ins = w_in.unbind(0), b_in.unbind(0)
    outs: list[Tensor] = []
    acts: list[Tensor] = []
    gates: list[Tensor] = []
    for t in range(len(x0ws)):
        h_prev = h.unbind(0)
        c_prev = c.unbind(0)
        rec = torch.bmm(h, w_rec)  # (L, B, K_rec), row i from source layer i
        own_all, fb_all, glog_all = rec.split_with_sizes([k, L * H, L * L], 2)
        owns = own_all.unbind(0)  # per layer j: (B, kH)
        fbs = fb_all.reshape(L, B, L, H).unbind(2)  # per target j: (L, B, H), U_{i->j} h^i
        glogs = glog_all.sum(0).view(B, L, L).unbind(1)  # per target j: (B, L) from h*_{t-1}
        hs: list[Tensor] = []
        cs: list[Tensor] = []
        step_acts: list[Tensor] = []
        step_gates: list[Tensor] = []
        for j in range(L):
            if j == 0:
                xw = x0ws[t]
            else:
                below = hs[j - 1]
                if masks.numel() > 0:
                    below = below * masks[t, j - 1]
                xw = torch.addmm(b_ins[j - 1], below, w_ins[j - 1])  # (B, K)
            xs = xw.split_with_sizes(in_sizes, 1)
            g = torch.sigmoid(xs[-1] + glogs[j])  # (B, L): g_{i->j}
            fbj = (g.t().unsqueeze(2) * fbs[j]).sum(0)  # (B, H)
            if kind == 0:
                hj = torch.tanh(xs[0] + fbj)
                if record:
                    step_acts.append(hj.unsqueeze(0))
            elif kind == 1:
                own_r, own_z = owns[j].chunk(2, 1)
                r = torch.sigmoid(xs[0] + own_r)
                z = torch.sigmoid(xs[1] + own_z)
                cand = torch.tanh(xs[2] + r * (fbj + b_hn[j]))
                hj = (1.0 - z) * cand + z * h_prev[j]
                if record:
                    step_acts.append(torch.stack([r, z, hj]))
            else:
                own_i, own_f, own_o = owns[j].chunk(3, 1)
                i = torch.sigmoid(xs[0] + own_i)
                f = torch.sigmoid(xs[1] + own_f)
                o = torch.sigmoid(xs[3] + own_o)
                cj = f * c_prev[j] + i * torch.tanh(xs[2] + fbj)
                hj = o * torch.tanh(cj)
                cs.append(cj)
                if record:
                    step_acts.append(torch.stack([i, f, o, cj, hj]))
            hs.append(hj)
            step_gates.append(g)
        h = torch.stack(hs)
        if kind == 2:
            c = torch.stack(cs)
        outs.append(hs[L - 1])
        if record:
            acts.append(torch.stack(step_acts, 1))  # (A, L, B, H)
            gates.append(torch.stack(step_gates))  # (L, B, L)
    out = torch.stack(outs, 1)
    if record:
        return out, h, c, torch.stack(acts), torch.stack(gates)
    return out, h, c, torch.empty(0), torch.empty(0)


peephole_loop = script(_peephole_loop)
gf_loop = script(_gf_loop)


class PeepholeLayer(nn.Module):
    """Weights of one peephole-LSTM layer (gate rows i, f, g, o as in torch)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        h = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * h, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * h, h))
        self.bias = nn.Parameter(torch.empty(4 * h))
        self.peephole = nn.Parameter(torch.empty(3, h))  # rows: i and f see c(t-1), o sees c(t)
        uniform_(list(self.parameters()), h)  # forget-gate bias included, as the fused LSTM

    def run(self, x: Tensor, h: Tensor, c: Tensor, record: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        xw = torch.nn.functional.linear(x, self.weight_ih, self.bias)  # (B, T, 4H)
        return peephole_loop(xw, self.weight_hh.t(), self.peephole, h, c, record)


class PeepholeLSTMStack(LoopLSTMStack):
    """Stacked peephole LSTM layers, dropout on the input of every layer after the first."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        sizes = [cfg.embedding_size] + [cfg.hidden_size] * (cfg.num_layers - 1)
        self.layers = nn.ModuleList(PeepholeLayer(n, cfg.hidden_size) for n in sizes)
        self.drop = nn.Dropout(cfg.dropout)


class GatedFeedbackStack(nn.Module):
    """GF-RNN / GF-GRU / GF-LSTM (Chung et al. 2015); see the module docstring.

    With n unit blocks (tanh 1: h; GRU 3: r, z, n; LSTM 4: i, f, g, o) and k own-layer
    gate blocks (tanh 0; GRU 2: r, z; LSTM 3: i, f, o), K = nH + L input columns:
      weight_in0 (K, E)          first layer's input weights: unit rows, then w_g^{i->0}
      weight_in (L-1, H, K)      the same for layers 1.., laid out (in, out) for addmm;
                                 absent when L = 1
      bias_in (L, K)             per layer: unit biases, then the gate biases b_g^{i->j}
      weight_rec (L, H, kH + L*H + L*L)  per source layer i, (in, out): its own gates'
                                 recurrence, U_{i->j} for j = 0..L-1, then its part of
                                 u_g^{i'->j} at column j*L + i'
      bias_hn (L, H)             GRU only: candidate bias inside the reset gate
    The recurrent weights of all layers are one tensor so that each step is one bmm.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.kind = _GF_KINDS[cfg.model]
        L, H, E = cfg.num_layers, cfg.hidden_size, cfg.embedding_size
        self.num_layers, self.hidden_size = L, H
        K = _IN_BLOCKS[self.kind] * H + L
        self.weight_in0 = nn.Parameter(torch.empty(K, E))
        if L > 1:  # absent, not empty, for one layer: DDP rejects parameters without grads
            self.weight_in = nn.Parameter(torch.empty(L - 1, H, K))
        self.bias_in = nn.Parameter(torch.empty(L, K))
        self.weight_rec = nn.Parameter(torch.empty(L, H, _OWN_BLOCKS[self.kind] * H + L * H + L * L))
        if self.kind == _GRU:
            self.bias_hn = nn.Parameter(torch.empty(L, H))
        uniform_(list(self.parameters()), H)  # forget-gate bias included, as the fused LSTM
        self.dropout = cfg.dropout

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, T, E), state (h,) or (h, c) each (L, B, H) -> out (B, T, H), new state."""
        out, state, _ = self._run(x, state, record=False)
        return out, state

    def forward_with_activations(self, x: Tensor, state: State) -> tuple[Tensor, State, Acts]:
        """As forward, plus unit activations (L, B, T, H) per kind name and
        'feedback': the global reset gates (L, B, T, L), indexed [j, b, t, i] for i->j."""
        return self._run(x, state, record=True)

    def _run(self, x: Tensor, state: State, record: bool) -> tuple[Tensor, State, Acts]:
        B, T = x.shape[:2]
        L, H = self.num_layers, self.hidden_size
        x0w = torch.nn.functional.linear(x, self.weight_in0, self.bias_in[0])  # (B, T, K)
        w_in = self.weight_in if L > 1 else x.new_empty(0, H, x0w.size(2))
        b_hn = self.bias_hn if self.kind == _GRU else x.new_empty(0)
        masks = x.new_empty(0)
        if self.training and self.dropout > 0 and L > 1:
            keep = 1.0 - self.dropout
            masks = x.new_empty(T, L - 1, B, H).bernoulli_(keep).div_(keep)
        c0 = state[1] if self.kind == _LSTM else x.new_empty(0)
        with torch.jit.optimized_execution(False):
            out, h, c, acts, gates = gf_loop(
                self.kind,
                x0w,
                w_in,
                self.bias_in[1:],
                self.weight_rec,
                b_hn,
                masks,
                state[0],
                c0,
                record,
            )
        new_state = (h, c) if self.kind == _LSTM else (h,)
        if not record:
            return out, new_state, {}
        # acts (T, A, L, B, H) -> per name (L, B, T, H); gates (T, L, B, L) -> (L, B, T, L)
        names = _ACT_NAMES[self.kind]
        named = {name: acts[:, n].permute(1, 2, 0, 3) for n, name in enumerate(names)}
        named["feedback"] = gates.permute(1, 2, 0, 3)
        return out, new_state, named
