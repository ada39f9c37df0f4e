"""Per-unit activations of a CharRNN over a text, streamed in chunks with carried state.

An activation "kind" is one named per-unit quantity of a recurrent layer:
LSTM kinds have input, forget, output (gates), cell and hidden; GRU kinds
reset, update (gates) and hidden; RNN kinds hidden; gated-feedback kinds also
feedback (one gate per source layer). A chunk holds every kind of every layer
for some positions of the text; consumers (statistics in `charrnn.neurons.unitstats`,
`Recorder` here) see each position once, so long files never need all their
activations in memory at once.

How one chunk's activations are computed is charrnn.neurons.layers; only the kinds the
consumers need are computed (a consumer's `needs`).
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from charrnn.config import Unknown
from charrnn.data.vocab import Vocab, unknown_error
from charrnn.errors import CharRNNError
from charrnn.models.charrnn import CharRNN
from charrnn.neurons.layers import stack_activations

# Kinds that are sigmoid gates, with values in [0, 1]; gate statistics use these.
GATE_KINDS = ("input", "forget", "output", "reset", "update", "feedback")
# Kinds bounded by 1 in absolute value; others (cell) are scaled by their own range.
BOUNDED_KINDS = GATE_KINDS + ("hidden",)
# Parallel streams are only used when each gets at least this many characters.
MIN_STREAM_CHARS = 10_000
# Multiply-adds of one step's recurrent matmul worth a thread (see step_threads).
STEP_MACS_PER_THREAD = 4_000_000


def activation_kinds(model: CharRNN) -> dict[str, int]:
    """The model's activation kinds, in report order -> units per layer (e.g. {'cell': 512})."""
    with torch.no_grad():
        x = model.embed(torch.zeros(1, 1, dtype=torch.long))
        _, _, acts = stack_activations(model.stack, x, model.init_state(1))
    return {kind: int(value.shape[-1]) for kind, value in acts.items()}


def check_selection(kinds: dict[str, int], num_layers: int, layer: int, kind: str, unit: int) -> None:
    """Raise CharRNNError if (layer, kind, unit) does not exist in a model with these kinds."""
    if kind not in kinds:
        raise CharRNNError(f"this model has no '{kind}' activations: choose {', '.join(kinds)}.")
    if not 0 <= layer < num_layers:
        raise CharRNNError(f"layer {layer} is out of range: the model has layers 0-{num_layers - 1}.")
    if not 0 <= unit < kinds[kind]:
        raise CharRNNError(f"unit {unit} is out of range: '{kind}' has units 0-{kinds[kind] - 1} per layer.")


def encode_text(text: str, vocab: Vocab, unknown: Unknown = "error") -> tuple[str, np.ndarray]:
    """Text -> (the text kept, ids (N,) int64).

    unknown='error' raises CharRNNError listing characters outside the vocabulary;
    'skip' drops them. Raises CharRNNError for an empty text.
    """
    missing = vocab.missing(text)
    if missing and unknown == "skip":
        dropped = set(missing)
        text = "".join(ch for ch in text if ch not in dropped)
    elif missing:
        raise unknown_error(missing, "pass --unknown skip to drop them.")
    if not text:
        raise CharRNNError("the text is empty: give some characters the model knows.")
    return text, np.asarray(vocab.encode(text), dtype=np.int64)


@dataclass
class Chunk:
    """Activations of some positions of the text, each position seen once per pass."""

    pos: np.ndarray  # (M,) text positions of the rows
    acts: dict[str, np.ndarray]  # kind -> (L, M, U) float32
    logits: np.ndarray  # (M, V) float32, scores of the next character


class Consumer(Protocol):
    def add(self, chunk: Chunk) -> None: ...


def plan_streams(n: int, batch_size: int, min_chars: int = MIN_STREAM_CHARS) -> int:
    """Parallel streams for a text of n characters: each gets at least min_chars.

    Each stream starts from a zero state, so short texts run as one stream,
    exactly as the model reads them in order.
    """
    return max(1, min(batch_size, n // max(min_chars, 1)))


def iter_chunks(
    model: CharRNN,
    ids: np.ndarray,
    chunk_len: int = 256,
    streams: int = 1,
    kinds: Collection[str] | None = None,
    precision: str = "fp32",
) -> Iterator[Chunk]:
    """Run ids (N,) through the model in chunks of chunk_len steps, state carried.

    With streams B > 1 the text is cut into B consecutive segments run side by
    side (each from a zero state), which is faster for long files; positions
    then arrive in segment order, each exactly once. `kinds` limits the chunks'
    activations to those kinds (all by default): fewer kinds, less work. `precision` is that
    of the products of wide LSTM layers (charrnn.neurons.precision; resolve "auto" first).
    """
    n = len(ids)
    B = max(1, min(streams, n))
    seg = -(-n // B)  # ceil: the last segment is padded at its end, after every real position
    grid = np.zeros(B * seg, dtype=np.int64)
    grid[:n] = ids
    tokens = torch.from_numpy(grid.reshape(B, seg))
    positions = np.arange(B * seg).reshape(B, seg)
    threads = torch.get_num_threads()
    torch.set_num_threads(step_threads(B, model.cfg.hidden_size, threads))
    try:
        yield from _chunks(model, tokens, positions, n, chunk_len, kinds, precision)
    finally:
        torch.set_num_threads(threads)


def step_threads(streams: int, hidden_size: int, threads: int) -> int:
    """Threads for a time step of `streams` x `hidden_size`: one per STEP_MACS_PER_THREAD of its
    recurrent matmul, at most `threads`. Every step ends at a barrier of all threads; when the
    step is small, or the cores are shared, waiting there costs more than the work shared
    (a 1x64 LSTM over 45k characters took 128 s with 2 threads on 2 busy cores, 7 s with one)."""
    macs = streams * hidden_size * 4 * hidden_size
    return max(1, min(threads, macs // STEP_MACS_PER_THREAD))


def _chunks(
    model: CharRNN,
    tokens: torch.Tensor,
    positions: np.ndarray,
    n: int,
    chunk_len: int,
    kinds: Collection[str] | None,
    precision: str,
) -> Iterator[Chunk]:
    B, seg = tokens.shape
    with torch.inference_mode():
        state = model.init_state(B)
        for start in range(0, seg, chunk_len):
            x = tokens[:, start : start + chunk_len]  # (B, T)
            out, state, acts = stack_activations(model.stack, model.embed(x), state, kinds, precision)
            logits = model.head(out).reshape(-1, model.head.out_features)  # (B*T, V)
            pos = positions[:, start : start + chunk_len].reshape(-1)
            flat = {k: v.reshape(v.shape[0], -1, v.shape[-1]).numpy() for k, v in acts.items()}  # (L, B*T, U)
            if pos[-1] >= n:  # padding, only at the end of the last segment: drop its rows
                keep = pos < n
                pos, flat = pos[keep], {k: v[:, keep] for k, v in flat.items()}
                logits = logits[torch.from_numpy(keep)]
            yield Chunk(pos=pos, acts=flat, logits=logits.numpy())


def needed_kinds(consumers: list[Consumer]) -> set[str] | None:
    """The kinds the consumers read (their `needs`), or None (every kind) if one does not say."""
    wanted: set[str] = set()
    for consumer in consumers:
        needs = getattr(consumer, "needs", None)
        if needs is None:
            return None
        wanted |= set(needs)
    return wanted


def run_text(
    model: CharRNN,
    ids: np.ndarray,
    consumers: list[Consumer],
    chunk_len: int = 256,
    streams: int = 1,
    progress: Callable[[int], None] | None = None,
    precision: str = "fp32",
) -> None:
    """Feed every chunk of ids to each consumer; progress(characters done) after each chunk.

    Only the kinds the consumers need are computed (see needed_kinds), in `precision`
    (fp32, bf16 or int8; see iter_chunks).
    """
    for chunk in iter_chunks(model, ids, chunk_len, streams, needed_kinds(consumers), precision):
        for consumer in consumers:
            consumer.add(chunk)
        if progress is not None:
            progress(len(chunk.pos))


@dataclass
class Recorder:
    """Keeps every kind's activations, in text order, for positions start <= pos < limit.

    With `directory`, the arrays are .npy memory maps there (for exports of long
    texts); top_k > 0 also keeps the top_k next-character predictions.
    """

    kinds: dict[str, int]
    num_layers: int
    limit: int
    top_k: int = 0
    directory: Path | None = None
    start: int = 0
    values: dict[str, np.ndarray] = field(init=False)
    top_ids: np.ndarray = field(init=False)  # (N, K) int64
    top_probs: np.ndarray = field(init=False)  # (N, K) float32

    @property
    def needs(self) -> set[str]:
        return set(self.kinds)

    def __post_init__(self) -> None:
        n = self.limit - self.start
        self.values = {k: self._array(k, (self.num_layers, n, u)) for k, u in self.kinds.items()}
        self.top_ids = np.zeros((n, self.top_k), np.int64)
        self.top_probs = np.zeros((n, self.top_k), np.float32)

    def _array(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if self.directory is None:
            return np.zeros(shape, np.float32)
        path = str(self.directory / f"{name}.npy")
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)

    def add(self, chunk: Chunk) -> None:
        keep = (chunk.pos >= self.start) & (chunk.pos < self.limit)
        if not keep.any():
            return
        pos = chunk.pos[keep] - self.start
        for kind in self.values:
            self.values[kind][:, pos] = chunk.acts[kind][:, keep]
        if self.top_k:
            probs = torch.softmax(torch.from_numpy(chunk.logits[keep]), dim=-1)
            top = torch.topk(probs, min(self.top_k, probs.shape[-1]), dim=-1)
            self.top_ids[pos, : top.indices.shape[1]] = top.indices.numpy()
            self.top_probs[pos, : top.values.shape[1]] = top.values.numpy()


def write_npz(path: Path, text: str, vocab: Vocab, model_kind: str, recorder: Recorder) -> None:
    """Save the recorded activations as an .npz (readable with np.load, no pickle).

    Arrays: text (0-d str), chars (N,) and vocab (V,) one-character strings,
    start (0-d int, text position of the first row),
    model (0-d str), one (L, N, U) float32 array per kind, and top_chars /
    top_probs (N, K) when predictions were recorded.
    """
    path = Path(path)
    shown = text[recorder.start : recorder.limit]
    arrays: dict[str, np.ndarray] = {
        "text": np.array(shown),
        "chars": np.array(list(shown), dtype="<U1"),
        "vocab": np.array(vocab.chars, dtype="<U1"),
        "model": np.array(model_kind),
        "start": np.array(recorder.start),
    }
    if recorder.top_k:
        arrays["top_chars"] = np.array(vocab.chars, dtype="<U1")[recorder.top_ids]
        arrays["top_probs"] = recorder.top_probs
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".charrnn-export-", dir=path.parent))
    try:
        with zipfile.ZipFile(tmp / "out.npz", "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, value in arrays.items():
                np.save(tmp / f"{name}.npy", value)
                zf.write(tmp / f"{name}.npy", f"{name}.npy")
            for kind, value in recorder.values.items():
                if isinstance(value, np.memmap):
                    value.flush()
                    zf.write(recorder.directory / f"{kind}.npy", f"{kind}.npy")  # type: ignore[operator]
                else:
                    np.save(tmp / f"{kind}.npy", value)
                    zf.write(tmp / f"{kind}.npy", f"{kind}.npy")
        (tmp / "out.npz").replace(path)
    except OSError as exc:
        raise CharRNNError(f"cannot write '{path}': {exc.strerror or exc}.")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
