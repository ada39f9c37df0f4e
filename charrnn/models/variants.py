"""LSTM variants reported to model characters better than the plain LSTM: mlstm, mogrifier-lstm, ln-lstm.

Each keeps the LSTM's state (h, c) and gates i, f, g, o (rows in torch's order), and
changes what feeds the gates:

- `mlstm`, the multiplicative LSTM (Krause, Lu, Murray & Renals 2016): an intermediate
  state m = (W_mx x) * (W_mh h(t-1)) replaces h(t-1) as the gates' recurrent input, so
  each input character picks its own recurrent transition.
      gates = W_x x + b + W_m m
- `mogrifier-lstm` (Melis, Kočiský & Blunsom 2020): before the LSTM step, x and h(t-1)
  gate each other for MOGRIFIER_ROUNDS rounds, x first:
      x <- 2 sigmoid(Q_k h) * x   (rounds 1, 3, 5)      h <- 2 sigmoid(R_k x) * h   (rounds 2, 4)
  then the plain LSTM step on the modulated x and h; the carried h is the unmodulated one.
  Q and R are full rank and have no bias.
- `ln-lstm`, the layer-normalised LSTM (Ba, Kiros & Hinton 2016): both gate terms are
  normalised over their 4H values, and so is the cell before the output tanh.
      gates = LN(W_x x; g_x, b) + LN(W_h h; g_h)       h = o * tanh(LN(c; g_c, b_c))

Input projections of all T steps are one matmul per layer where the input is known in
advance (mlstm, ln-lstm); the mogrifier's input depends on h(t-1), so its layers step
everything. The time loops are TorchScript functions (charrnn.models.scripted); each
returns out (B, T, H), h, c (B, H) and, when recording, acts (5, B, T, H) in the order
of charrnn.models.scripted.LSTM_ACTS.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from charrnn.config import ModelConfig
from charrnn.models.dropout import SequenceDropout
from charrnn.models.scripted import LoopLSTMStack, script, uniform_

State = tuple[Tensor, ...]
Acts = dict[str, Tensor]

MOGRIFIER_ROUNDS = 5  # the paper's best on its character-level tasks
LN_EPS = 1e-5  # written out in _ln_lstm_loop: TorchScript does not read module constants


def _lstm_gates(pre: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gate pre-activations (B, 4H) in rows i, f, g, o and c(t-1) -> i, f, o, c(t)."""
    gi, gf, gc, go = pre.chunk(4, 1)
    i, f, o = torch.sigmoid(gi), torch.sigmoid(gf), torch.sigmoid(go)
    return i, f, o, f * c + i * torch.tanh(gc)


def _mlstm_loop(
    xg: Tensor, xm: Tensor, w_mh: Tensor, w_mg: Tensor, h: Tensor, c: Tensor, record: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """xg (B, T, 4H) gates' input projection + bias, xm (B, T, H) W_mx x; w_mh (H, H) and
    w_mg (H, 4H) laid out (in, out)."""
    outs: list[Tensor] = []
    acts: list[Tensor] = []
    xms = xm.unbind(1)
    xgs = xg.unbind(1)  # unbind, not xg[:, t]: indexing's backward allocates (B, T, 4H) per step
    for t in range(len(xgs)):
        m = xms[t] * torch.mm(h, w_mh)
        i, f, o, c = _lstm_gates(torch.addmm(xgs[t], m, w_mg), c)
        h = o * torch.tanh(c)
        outs.append(h)
        if record:
            acts.append(torch.stack([i, f, o, c, h]))
    act = torch.stack(acts, 2) if record else torch.empty(0)
    return torch.stack(outs, 1), h, c, act


def _mogrifier_loop(
    x: Tensor, w_q: Tensor, w_r: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Tensor, h: Tensor, c: Tensor, record: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """x (B, T, I) the layer's input; w_q (Q, H, I), w_r (Q-1, I, H), w_ih (I, 4H), w_hh (H, 4H)
    laid out (in, out); bias (4H)."""
    qs, rs = w_q.unbind(0), w_r.unbind(0)
    outs: list[Tensor] = []
    acts: list[Tensor] = []
    for x_t in x.unbind(1):
        hm = h
        for k in range(len(qs)):
            x_t = 2.0 * torch.sigmoid(torch.mm(hm, qs[k])) * x_t
            if k < len(rs):
                hm = 2.0 * torch.sigmoid(torch.mm(x_t, rs[k])) * hm
        i, f, o, c = _lstm_gates(torch.addmm(torch.addmm(bias, x_t, w_ih), hm, w_hh), c)
        h = o * torch.tanh(c)
        outs.append(h)
        if record:
            acts.append(torch.stack([i, f, o, c, h]))
    act = torch.stack(acts, 2) if record else torch.empty(0)
    return torch.stack(outs, 1), h, c, act


def _ln_lstm_loop(
    xw: Tensor, w_hh: Tensor, g_hh: Tensor, g_c: Tensor, b_c: Tensor, h: Tensor, c: Tensor, record: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """xw (B, T, 4H) the normalised input term with the gate bias; w_hh (H, 4H) (in, out);
    g_hh (4H) gain of the recurrent term; g_c, b_c (H) gain and bias of the cell's norm."""
    H = h.size(1)
    outs: list[Tensor] = []
    acts: list[Tensor] = []
    for x_t in xw.unbind(1):
        rec = torch.layer_norm(torch.mm(h, w_hh), [4 * H], g_hh, None, 1e-5)  # 1e-5: LN_EPS
        i, f, o, c = _lstm_gates(x_t + rec, c)
        h = o * torch.tanh(torch.layer_norm(c, [H], g_c, b_c, 1e-5))
        outs.append(h)
        if record:
            acts.append(torch.stack([i, f, o, c, h]))
    act = torch.stack(acts, 2) if record else torch.empty(0)
    return torch.stack(outs, 1), h, c, act


mlstm_loop = script(_mlstm_loop)
mogrifier_loop = script(_mogrifier_loop)
ln_lstm_loop = script(_ln_lstm_loop)


class MLSTMLayer(nn.Module):
    """weight_ih (5H, I): gate rows i, f, g, o, then W_mx; bias (4H) of the gates;
    weight_mh (H, H); weight_mg (4H, H) from m to the gates."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        h = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(5 * h, input_size))
        self.bias = nn.Parameter(torch.empty(4 * h))
        self.weight_mh = nn.Parameter(torch.empty(h, h))
        self.weight_mg = nn.Parameter(torch.empty(4 * h, h))
        uniform_(list(self.parameters()), h)

    def run(self, x: Tensor, h: Tensor, c: Tensor, record: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        H = self.weight_mh.size(0)
        xg, xm = F.linear(x, self.weight_ih).split([4 * H, H], 2)
        return mlstm_loop(xg + self.bias, xm, self.weight_mh.t(), self.weight_mg.t(), h, c, record)


class MogrifierLayer(nn.Module):
    """weight_q (Q, I, H): x <- 2 sigmoid(weight_q[k] @ h) * x; weight_r (Q-1, H, I):
    h <- 2 sigmoid(weight_r[k] @ x) * h; then the LSTM's weight_ih (4H, I), weight_hh (4H, H), bias."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        h, q = hidden_size, (MOGRIFIER_ROUNDS + 1) // 2
        self.weight_q = nn.Parameter(torch.empty(q, input_size, h))
        self.weight_r = nn.Parameter(torch.empty(MOGRIFIER_ROUNDS - q, h, input_size))
        self.weight_ih = nn.Parameter(torch.empty(4 * h, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * h, h))
        self.bias = nn.Parameter(torch.empty(4 * h))
        uniform_(list(self.parameters()), h)

    def run(self, x: Tensor, h: Tensor, c: Tensor, record: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        w_q, w_r = self.weight_q.transpose(1, 2), self.weight_r.transpose(1, 2)
        return mogrifier_loop(x, w_q, w_r, self.weight_ih.t(), self.weight_hh.t(), self.bias, h, c, record)


class LNLSTMLayer(nn.Module):
    """weight_ih (4H, I), weight_hh (4H, H); gain_ih and bias (4H) of the input term's norm
    (its bias is the gates' bias), gain_hh (4H) of the recurrent term's; gain_c, bias_c (H)
    of the cell's. Gains start at 1, norm biases at 0."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        h = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * h, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * h, h))
        uniform_([self.weight_ih, self.weight_hh], h)
        self.gain_ih = nn.Parameter(torch.ones(4 * h))
        self.bias = nn.Parameter(torch.zeros(4 * h))
        self.gain_hh = nn.Parameter(torch.ones(4 * h))
        self.gain_c = nn.Parameter(torch.ones(h))
        self.bias_c = nn.Parameter(torch.zeros(h))

    def input_term(self, x: Tensor) -> Tensor:
        """LN(x W_ih^T) * gain_ih + bias for x (..., I): (..., 4H)."""
        return F.layer_norm(F.linear(x, self.weight_ih), (self.bias.numel(),), self.gain_ih, self.bias, LN_EPS)

    def run(self, x: Tensor, h: Tensor, c: Tensor, record: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        xw = self.input_term(x)
        return ln_lstm_loop(xw, self.weight_hh.t(), self.gain_hh, self.gain_c, self.bias_c, h, c, record)


LAYERS: dict[str, type[nn.Module]] = {"mlstm": MLSTMLayer, "mogrifier-lstm": MogrifierLayer, "ln-lstm": LNLSTMLayer}


class VariantStack(LoopLSTMStack):
    """Stacked layers of one kind of LAYERS; dropout (cfg.dropout_mask) on every layer's input
    after the first, as the fused stack."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        layer = LAYERS[cfg.model]
        sizes = [cfg.embedding_size] + [cfg.hidden_size] * (cfg.num_layers - 1)
        self.layers = nn.ModuleList(layer(n, cfg.hidden_size) for n in sizes)
        self.drop = SequenceDropout(cfg.dropout, cfg.dropout_mask)
