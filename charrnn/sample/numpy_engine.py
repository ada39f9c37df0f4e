"""Sampling without torch: a NumPy step for lstm, gru and rnn runs on the CPU.

`import torch` alone takes seconds on a small CPU: longer than sampling a paragraph
(benchmarks/RESULTS.md, "Sampling kernels"). For the common case -- `charrnn sample` of
a stacked lstm/gru/rnn run with fp32 weights on the CPU -- this module reads the
weights straight from the checkpoint (torch's zip format, through an unpickler
that admits tensors and plain data only, as `torch.load(weights_only=True)` does)
and steps the network with NumPy's BLAS, so the first character appears in well
under a second.

`load` reads the file through charrnn.ptfile (the checks both readers share: what
each member may cost, every field's type) and returns None for anything it does not
handle (another kind, a damaged or unfamiliar file, tensors that do not fit the
config): the torch path then takes over with its own checks and error messages.

The network is charrnn.sample.numpy_net (fp32) or charrnn.sample.numpy_int8 (int8);
the draw is charrnn.sample.draw, the one every engine uses.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np

from charrnn import ptfile
from charrnn.config import FUSED_MODELS, ModelConfig, SampleConfig, printable
from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError
from charrnn.exporting.safetensors_io import is_safetensors, read_model
from charrnn.limits import TooLargeError
from charrnn.sample.draw import draw_streams, draw_text, sampling_context
from charrnn.sample.numpy_net import GATES, NumpyNet, nonfinite_arrays, score  # noqa: F401  (score: the NumPy scorer)

# Longest prime the numpy path steps through before `--engine auto` prefers torch, whose
# fused forward reads a long prime in one pass (stepping costs ~1 ms a character for 2x512).
MAX_PRIME = 1000


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
    V, E, H, G = cfg.vocab_size, cfg.embedding_size, cfg.hidden_size, GATES[cfg.model] * cfg.hidden_size
    shapes = {"embed.weight": (V, E), "head.weight": (V, H), "head.bias": (V,)}
    for i in range(cfg.num_layers):
        prefix = f"stack.layers.{i}."
        shapes.update(
            {
                prefix + "weight_ih_l0": (G, E if i == 0 else H),
                prefix + "weight_hh_l0": (G, H),
                prefix + "bias_ih_l0": (G,),
                prefix + "bias_hh_l0": (G,),
            }
        )
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
    if is_safetensors(path):  # weights only, read by NumPy: its errors are final
        loaded = _read_safetensors(path)
        if loaded is None:
            return None
        cfg, arrays, vocab = loaded
        return make_net(cfg, arrays, weights), vocab
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


def _read_safetensors(path: Path) -> tuple[ModelConfig, dict[str, np.ndarray], Vocab] | None:
    """(config, weights, vocabulary) of a safetensors model, None for a kind this engine does not
    serve; CharRNNError for weights that do not fit the config."""
    cfg, arrays, vocab, _ = read_model(path)
    if cfg.model not in FUSED_MODELS:
        return None
    expected = _expected_shapes(cfg)
    for name in sorted(set(expected) | set(arrays)):
        got = arrays[name].shape if name in arrays else None
        if got != expected.get(name):
            raise CharRNNError(
                f"'{path}' does not match its config: tensor '{printable(name)[:60]}' has shape {got}, "
                f"the config needs {expected.get(name)}."
            )
    return cfg, {name: arrays[name] for name in expected}, vocab


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


class NumpyStreams:
    """B streams of a NumpyNet (charrnn.sample.draw.Streams): the state, a list over layers
    of (h,) or (h, c) arrays (B, H), stepped as one batch."""

    def __init__(self, net: NumpyNet, state: list[tuple[np.ndarray, ...]]) -> None:
        self.net = net
        self.state = state

    def step(self, ids: np.ndarray) -> np.ndarray:
        logits, self.state = self.net.step(np.ascontiguousarray(ids, dtype=np.int64), self.state)
        return logits

    def keep(self, rows: np.ndarray) -> None:
        self.state = [tuple(a[rows] for a in layer) for layer in self.state]


@np.errstate(all="ignore")  # NaN from non-finite weights: the caller warns once
def open_streams(net: NumpyNet, vocab: Vocab, prime: str, n: int) -> tuple[np.ndarray, NumpyStreams]:
    """`n` streams that have read `prime` (read once, then copied): their logits (n, V) and streams."""
    state = net.zero_state(1)
    for i in vocab.encode(sampling_context(prime, vocab)):
        logits, state = net.step(np.array([i]), state)
    streams = NumpyStreams(net, state)
    streams.keep(np.zeros(n, np.int64))
    return np.repeat(logits, n, 0), streams


def generate_many(
    net: NumpyNet,
    vocab: Vocab,
    prime: str,
    cfg: SampleConfig,
    seeds: list[int | None],
    emit: Callable[[int, str], None],
) -> list[str]:
    """As `generate` for len(seeds) samples stepped as one batch, sample i drawn with seeds[i]."""
    logits, streams = open_streams(net, vocab, prime, len(seeds))
    return draw_streams(logits, streams, vocab, cfg, seeds, emit)
