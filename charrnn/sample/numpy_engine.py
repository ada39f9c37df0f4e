"""Sampling without torch: a NumPy step for lstm, gru and rnn runs on the CPU.

`import torch` alone takes 2.5-3.8 s on the 2-core EPYC this project is measured
on: longer than sampling a paragraph. For the common case -- `charrnn sample` of
a stacked lstm/gru/rnn run with fp32 weights on the CPU -- this module reads the
weights straight from the checkpoint (torch's zip format, through an unpickler
that admits tensors and plain data only, as `torch.load(weights_only=True)` does)
and steps the network with NumPy's BLAS, so the first character appears in well
under a second.

`load` reads the file through charrnn.ptfile (the checks both readers share: what
each member may cost, every field's type) and returns None for anything it does not
handle (another kind, a damaged or unfamiliar file, tensors that do not fit the
config): the torch path then takes over with its own checks and error messages.

The step is the arithmetic of charrnn.sample.fast_step.FusedStepper (embedding folded
into the first layer's input projection, one matmul over [input, h] for each
further LSTM/RNN layer); its logits match the torch step to float rounding. `draw`
is charrnn's one sampling draw, which the torch path uses too: for the same seed
both engines write the same characters.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from charrnn import ptfile
from charrnn.config import FUSED_MODELS, ModelConfig, SampleConfig
from charrnn.errors import CharRNNError
from charrnn.limits import TooLargeError
from charrnn.data.vocab import Vocab

# Longest prime the numpy path steps through before `--engine auto` prefers torch, whose
# fused forward reads a long prime in one pass (stepping costs ~1 ms a character for 2x512).
MAX_PRIME = 1000
_GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def sampling_context(prime: str, vocab: Vocab) -> str:
    """The text fed before the first draw: the prime, read as the start of a line.

    A model trained on carried state rarely sees the zero state mid-text: starting
    the prime after a newline keeps it on familiar ground (a trained 2x512 LSTM
    primed with "ROMEO:" from zero state wrote noise; after a newline, verse).
    Without a prime: a newline, or the first symbol when the vocabulary has none.
    """
    if "\n" not in vocab.chars:
        return prime or vocab.chars[0]
    return prime if prime.startswith("\n") else "\n" + prime


class StopTail:
    """Tells when the generated text ends with `stop` ('' never stops)."""

    def __init__(self, stop: str) -> None:
        self.stop = stop
        self.tail = ""

    def reached(self, ch: str) -> bool:
        if not self.stop:
            return False
        self.tail = (self.tail + ch)[-len(self.stop) :]
        return self.tail == self.stop


# --------------------------------------------------------------------------------------
# Reading a checkpoint without torch


def read_array(archive: ptfile.Archive, ref: ptfile.TensorRecord) -> np.ndarray:
    """The tensor as a new contiguous float32 array; other dtypes raise ValueError, and so does
    a record outside its storage (open_archive refuses those already: checked again here)."""
    if ref.dtype != "float32":
        raise ValueError("not a float32 tensor")
    buffer = np.frombuffer(archive.read(ref.storage), dtype=np.float32)
    if len(ref.shape) != len(ref.stride) or min((ref.offset, *ref.shape, *ref.stride)) < 0:
        raise ValueError("malformed tensor record")
    if ref.extent() > buffer.size:
        raise ValueError("tensor lies outside its storage")
    view = np.lib.stride_tricks.as_strided(
        buffer[ref.offset :], shape=ref.shape, strides=[s * 4 for s in ref.stride], writeable=False
    )
    return np.ascontiguousarray(view, dtype=np.float32)


def _expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of a FusedStack model (charrnn.models.charrnn.CharRNN)."""
    V, E, H, G = cfg.vocab_size, cfg.embedding_size, cfg.hidden_size, _GATES[cfg.model] * cfg.hidden_size
    shapes = {"embed.weight": (V, E), "head.weight": (V, H), "head.bias": (V,)}
    for i in range(cfg.num_layers):
        prefix = f"stack.layers.{i}."
        shapes.update({prefix + "weight_ih_l0": (G, E if i == 0 else H), prefix + "weight_hh_l0": (G, H),
                       prefix + "bias_ih_l0": (G,), prefix + "bias_hh_l0": (G,)})
    return shapes


def load(path: Path, weights: str = "fp32") -> tuple[NumpyNet, Vocab] | None:
    """The network and vocabulary of checkpoint `path`, its products in `weights` (fp32 or
    int8), or None when this path cannot serve it (another kind, a damaged or unfamiliar
    file: then `charrnn.checkpoint.load_checkpoint` reads it, or says what is wrong).

    Raises CharRNNError for a file that declares more bytes than its tensors need or more
    than this machine has (charrnn.limits.TooLargeError: torch would refuse it too, after a
    3 s import), and for weights the engine cannot run (int8 of non-finite weights). The
    returned network's `nonfinite` names the weights holding NaN or infinity.
    """
    try:
        with open(path, "rb") as f:
            archive = ptfile.open_archive(f, str(path))
            loaded = _read(archive, ptfile.read_fields(archive.payload, str(path)))
    except TooLargeError:
        raise
    except MemoryError:
        raise _out_of_memory(path)
    except Exception:  # noqa: BLE001 - damaged or unfamiliar: the torch path reads it or says why
        return None
    if loaded is None:
        return None
    cfg, arrays, vocab = loaded
    try:
        return make_net(cfg, arrays, weights), vocab
    except MemoryError:
        raise _out_of_memory(path)


def _out_of_memory(path: Path) -> TooLargeError:
    return TooLargeError(f"reading checkpoint '{path}' ran out of memory: free some, or load it on a larger machine.")


def _read(archive: ptfile.Archive, fields: ptfile.Fields) -> tuple[ModelConfig, dict[str, np.ndarray], Vocab] | None:
    """(config, weights, vocabulary) of a checked archive, or None for a kind or layout this
    engine does not serve."""
    cfg, state = fields.model_config, archive.payload["model"]
    expected = _expected_shapes(cfg) if cfg.model in FUSED_MODELS else None
    if expected is None or set(state) != set(expected) or archive.byteorder != sys.byteorder:
        return None
    if any(state[name].shape != shape for name, shape in expected.items()):
        return None
    return cfg, {name: read_array(archive, ref) for name, ref in state.items()}, fields.vocab  # file order


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


@np.errstate(all="ignore")  # NaN from non-finite weights: the caller warns once
def make_net(cfg: ModelConfig, w: dict[str, np.ndarray], weights: str = "fp32") -> NumpyNet:
    """The NumPy network for a weight mode: fp32 here, int8 in charrnn.sample.numpy_int8 (needs numba)."""
    if weights == "fp32":
        return NumpyNet(cfg, w)
    if weights != "int8":
        raise CharRNNError(f"the NumPy engine runs fp32 and int8 weights, not {weights}: use --engine torch.")
    from charrnn.sample import numpy_int8 as npint8

    if not npint8.available():
        raise CharRNNError("int8 weights on the NumPy engine need numba (pip install numba), or use --engine torch.")
    return npint8.Int8Net(cfg, w)


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
        p = [[w[f"stack.layers.{i}.{n}"][order] for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
             for i in range(self.layers)]
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
        H, G = self.hidden, _GATES[self.kind] * self.hidden
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
    chunks: the streams and chunks of charrnn.train.loop.evaluate, on the step that samples."""
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


# --------------------------------------------------------------------------------------
# Drawing and generating


def draw(logits: np.ndarray, cfg: SampleConfig, rng: np.random.Generator) -> np.ndarray:
    """Next ids (B,) from logits (B, V): temperature (0 = greedy), then top-k, then top-p.

    Computed in float64 from the logits, so paths whose logits differ by float rounding
    draw the same ids from the same generator state.
    """
    if cfg.temperature < 1e-6:
        return logits.argmax(-1)
    z = (logits.astype(np.float64) - logits.max(-1, keepdims=True)) / cfg.temperature
    V = z.shape[-1]
    if cfg.top_k and cfg.top_k < V:
        kth = np.partition(z, V - cfg.top_k, axis=-1)[:, V - cfg.top_k : V - cfg.top_k + 1]
        z[z < kth] = -np.inf
    if cfg.top_p < 1.0:
        order = np.argsort(-z, axis=-1, kind="stable")
        probs = np.exp(np.take_along_axis(z, order, -1))  # the first is exp(0) = 1
        probs /= probs.sum(-1, keepdims=True)
        # Drop a symbol when the mass before it already reaches top_p (the first always stays).
        drop = (np.cumsum(probs, -1) - probs) >= cfg.top_p
        np.put_along_axis(z, order, np.where(drop, -np.inf, np.take_along_axis(z, order, -1)), -1)
    # The exponential race: argmax of p / Exp(1) draws index i with probability p_i.
    return (np.exp(z) / rng.standard_exponential(z.shape)).argmax(-1)


@np.errstate(all="ignore")  # NaN from non-finite weights: the caller warns once
def generate(net: NumpyNet, vocab: Vocab, prime: str, cfg: SampleConfig, emit: Callable[[str], None]) -> str:
    """As charrnn.sample.torch_engine.generate, on the NumPy step: `cfg.length` characters after `prime`."""
    state = net.zero_state(1)
    for i in vocab.encode(sampling_context(prime, vocab)):
        logits, state = net.step(np.array([i]), state)

    def step(ids: np.ndarray) -> np.ndarray:
        nonlocal state
        out, state = net.step(ids, state)
        return out

    return draw_text(logits, step, vocab, cfg, emit)


@np.errstate(all="ignore")  # NaN from non-finite weights: the caller warns once
def draw_text(
    logits: np.ndarray,
    step: Callable[[np.ndarray], np.ndarray],
    vocab: Vocab,
    cfg: SampleConfig,
    emit: Callable[[str], None],
) -> str:
    """The sampling loop every engine shares: draw from `logits` (1, V), emit the character,
    feed it to `step` (ids (1,) -> next logits, the network's state carried by the caller),
    for `cfg.length` characters or until the text ends with `cfg.stop`."""
    rng = np.random.default_rng(cfg.seed)  # None: fresh entropy
    out: list[str] = []
    stop = StopTail(cfg.stop)
    for _ in range(cfg.length):
        nxt = draw(logits, cfg, rng)
        ch = vocab.chars[int(nxt[0])]
        out.append(ch)
        emit(ch)
        if stop.reached(ch):
            break
        logits = step(nxt)
    return "".join(out)
