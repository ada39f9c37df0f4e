"""The NumPy network: a stacked lstm/gru/rnn stepped with NumPy's BLAS (no torch).

The step is the arithmetic of charrnn.sample.fused_step.FusedStepper (embedding folded
into the first layer's input projection, one matmul over [input, h] for each further
LSTM/RNN layer); its logits match the torch step to float rounding.
charrnn.sample.numpy_int8 holds the same network with int8 weights.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from charrnn.config import ModelConfig

GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # gate blocks of H rows per kind


def nonfinite_arrays(w: dict[str, np.ndarray]) -> list[str]:
    """Names of the arrays holding NaN or infinity, in order."""
    return [name for name, a in w.items() if not np.isfinite(a).all()]


# --------------------------------------------------------------------------------------
# The step


def _sigmoid_(x: np.ndarray) -> np.ndarray:
    """In place: sigmoid(x) = (1 + tanh(x / 2)) / 2, which never overflows."""
    x *= 0.5
    np.tanh(x, out=x)
    x *= 0.5
    x += 0.5
    return x


class Dense:
    """x @ W^T with W (N, K) held as float32, transposed once so that NumPy's BLAS reads it
    row-major; `charrnn.sample.numpy_int8.Int8Dense` is the same with int8 weights."""

    def __init__(self, weight: np.ndarray) -> None:
        self.w_t = np.ascontiguousarray(weight.T, dtype=np.float32)

    def into(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out (B, N) = x (B, K) @ W^T; returns out."""
        return np.dot(x, self.w_t, out=out)


class NumpyNet:
    """A stacked lstm/gru/rnn from its fp32 weights; `step` advances B streams by one symbol.

    `product` holds each weight matrix (here fp32: Dense; charrnn.sample.numpy_int8.Int8Net uses
    int8); the first layer's folded input table and the biases stay fp32 (a row lookup,
    no product). State: a list over layers of (h,) or, for LSTM, (h, c) arrays of shape (B, H).
    """

    product: Callable[[np.ndarray], Any] = Dense

    def __init__(self, cfg: ModelConfig, w: dict[str, np.ndarray]) -> None:
        product = self.product
        self.nonfinite = nonfinite_arrays(w)  # the caller warns: such a network samples noise
        self.cfg = cfg
        self.kind = cfg.model
        H = self.hidden = cfg.hidden_size
        self.layers = cfg.num_layers
        # LSTM gate rows i, f, g, o -> i, f, o, g: one sigmoid covers the first 3H.
        order = np.r_[0 : 2 * H, 3 * H : 4 * H, 2 * H : 3 * H] if self.kind == "lstm" else slice(None)
        p = [
            [w[f"stack.layers.{i}.{n}"][order] for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
            for i in range(self.layers)
        ]
        w_ih0, w_hh0, b_ih0, b_hh0 = p[0]
        # (V, G): embedding row -> first layer's input projection and bias. GRU keeps b_hh on
        # the recurrent side, where its n-part is scaled by the reset gate.
        self.table = w["embed.weight"] @ w_ih0.T + (b_ih0 if self.kind == "gru" else b_ih0 + b_hh0)
        self.first_hh = product(w_hh0)  # h -> (B, G)
        self.first_bias = b_hh0 if self.kind == "gru" else None
        self.upper = []  # per further layer: ([x, h] product, bias), or for GRU (ih, b_ih, hh, b_hh)
        for w_ih, w_hh, b_ih, b_hh in p[1:]:
            if self.kind == "gru":
                self.upper.append((product(w_ih), b_ih, product(w_hh), b_hh))
            else:
                self.upper.append((product(np.concatenate([w_ih, w_hh], 1)), b_ih + b_hh))
        self.head = product(w["head.weight"])  # h -> (B, V)
        self.head_b = w["head.bias"]
        self._work: dict[int, list[tuple[np.ndarray, ...]]] = {}

    def zero_state(self, batch: int = 1) -> list[tuple[np.ndarray, ...]]:
        n = 2 if self.kind == "lstm" else 1
        return [tuple(np.zeros((batch, self.hidden), np.float32) for _ in range(n)) for _ in range(self.layers)]

    def _buffers(self, batch: int) -> list[tuple[np.ndarray, ...]]:
        H, G = self.hidden, GATES[self.kind] * self.hidden
        if self.kind == "gru":
            return [(np.empty((batch, G), np.float32), np.empty((batch, G), np.float32)) for _ in range(self.layers)]
        return [(np.empty((batch, 2 * H), np.float32), np.empty((batch, G), np.float32)) for _ in range(self.layers)]

    def step(self, x: np.ndarray, state: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, list]:
        """x (B,) ids -> logits (B, V) float32 and the new state (new arrays)."""
        work = self._work.get(len(x))
        if work is None:
            work = self._work[len(x)] = self._buffers(len(x))
        step_layer = {"lstm": self._lstm, "gru": self._gru, "rnn": self._rnn}[self.kind]
        inp: np.ndarray = x
        new = []
        for i in range(self.layers):
            layer_state = step_layer(i, inp, state[i], work[i])
            inp = layer_state[0]
            new.append(layer_state)
        logits = self.head.into(inp, np.empty((len(x), len(self.head_b)), np.float32))
        logits += self.head_b
        return logits, new

    def _project(self, i: int, inp: np.ndarray, h: np.ndarray, buf: tuple[np.ndarray, ...]) -> np.ndarray:
        """Pre-activations (B, G) of an lstm/rnn layer: input projection + h @ W_hh^T + biases."""
        xh, g = buf
        if i == 0:
            self.first_hh.into(h, g)
            g += self.table[inp]
            return g
        H = self.hidden
        xh[:, :H] = inp
        xh[:, H:] = h
        product, bias = self.upper[i - 1]
        product.into(xh, g)
        g += bias
        return g

    def _lstm(self, i: int, inp: np.ndarray, hc: tuple[np.ndarray, ...], buf: tuple) -> tuple[np.ndarray, ...]:
        H = self.hidden
        g = self._project(i, inp, hc[0], buf)
        _sigmoid_(g[:, : 3 * H])
        np.tanh(g[:, 3 * H :], out=g[:, 3 * H :])
        c = g[:, H : 2 * H] * hc[1]
        c += g[:, :H] * g[:, 3 * H :]
        h = np.tanh(c)
        h *= g[:, 2 * H : 3 * H]
        return h, c

    def _rnn(self, i: int, inp: np.ndarray, hs: tuple[np.ndarray, ...], buf: tuple) -> tuple[np.ndarray, ...]:
        return (np.tanh(self._project(i, inp, hs[0], buf)),)

    def _gru(self, i: int, inp: np.ndarray, hs: tuple[np.ndarray, ...], buf: tuple) -> tuple[np.ndarray, ...]:
        H, h = self.hidden, hs[0]
        gi, gh = buf  # rows r, z, n
        if i == 0:
            gi[:] = self.table[inp]
            self.first_hh.into(h, gh)
            gh += self.first_bias
        else:
            w_ih, b_ih, w_hh, b_hh = self.upper[i - 1]
            w_ih.into(inp, gi)
            gi += b_ih
            w_hh.into(h, gh)
            gh += b_hh
        rz = _sigmoid_(gi[:, : 2 * H] + gh[:, : 2 * H])
        n = rz[:, :H] * gh[:, 2 * H :]
        n += gi[:, 2 * H :]
        np.tanh(n, out=n)
        out = h - n  # h' = n + z (h - n)
        out *= rz[:, H:]
        out += n
        return (out,)


@np.errstate(all="ignore")  # NaN from non-finite weights: the caller warns once
def score(net: NumpyNet, tokens: np.ndarray, batch_size: int, seq_len: int) -> float:
    """Mean cross-entropy (nats/char) of `tokens` through `net.step`, state carried across
    chunks: the streams and chunks of charrnn.training.loop.evaluate, on the step that samples."""
    from charrnn.data.batching import eval_chunks

    total, count = 0.0, 0
    state = None
    for x, y in eval_chunks(tokens, batch_size, seq_len):
        if state is None:
            state = net.zero_state(len(x))
        for t in range(x.shape[1]):
            logits, state = net.step(np.ascontiguousarray(x[:, t]), state)
            z = logits.astype(np.float64)
            z -= z.max(axis=1, keepdims=True)
            log_norm = np.log(np.exp(z).sum(axis=1))
            total += float((log_norm - z[np.arange(len(z)), y[:, t]]).sum())
            count += len(z)
    return total / max(count, 1)
