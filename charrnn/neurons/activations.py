"""Per-unit activations of a CharRNN over a text, streamed in chunks with carried state.

An activation "kind" is one named per-unit quantity of a recurrent layer:
LSTM kinds have input, forget, output (gates), cell and hidden; GRU kinds
reset, update (gates) and hidden; RNN kinds hidden; gated-feedback kinds also
feedback (one gate per source layer). A chunk holds every kind of every layer
for some positions of the text; consumers (statistics in `charrnn.neurons.unitstats`,
`Recorder` here) see each position once, so long files never need all their
activations in memory at once.

Stacks that implement `forward_with_activations(x, state) -> (out, state, acts)`
report their own; for the fused torch layers the cell equations are re-run here
step by step from the layer weights (the hidden outputs equal the fused kernel's).
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, cast

import numpy as np
import torch
from torch import Tensor, nn

from charrnn.config import Unknown
from charrnn.data.vocab import Vocab, unknown_error
from charrnn.errors import CharRNNError
from charrnn.models.charrnn import CharRNN, FusedStack

# Kinds that are sigmoid gates, with values in [0, 1]; gate statistics use these.
GATE_KINDS = ("input", "forget", "output", "reset", "update", "feedback")
# Kinds bounded by 1 in absolute value; others (cell) are scaled by their own range.
BOUNDED_KINDS = GATE_KINDS + ("hidden",)
# Parallel streams are only used when each gets at least this many characters.
MIN_STREAM_CHARS = 10_000

Acts = dict[str, Tensor]  # kind -> (L, B, T, U)
State = tuple[Tensor, ...]


def fused_layer_activations(layer: nn.Module, x: Tensor, state: State) -> tuple[Tensor, State, dict[str, Tensor]]:
    """Step one single-layer batch-first nn.LSTM / nn.GRU / nn.RNN by hand.

    x (B, T, In); state (h, c) for LSTM or (h,), each (B, H).
    Returns out (B, T, H), the new state and {kind: (B, T, H)}.
    """
    w_ih, w_hh = cast(Tensor, layer.weight_ih_l0), cast(Tensor, layer.weight_hh_l0)
    b_ih: Tensor | None = getattr(layer, "bias_ih_l0", None)
    b_hh: Tensor | None = getattr(layer, "bias_hh_l0", None)
    if b_hh is None:
        b_hh = torch.zeros(w_hh.shape[0], dtype=x.dtype, device=x.device)
    xw = nn.functional.linear(x, w_ih, b_ih)  # (B, T, G*H), all input projections at once
    if not isinstance(layer, nn.GRU):
        xw = xw + b_hh  # GRU keeps b_hh inside the reset product; the others just add it
    w_hh_t = w_hh.t()
    B, T, _ = x.shape
    H = w_hh.shape[1]
    names: tuple[str, ...]
    if isinstance(layer, nn.LSTM):
        names = ("input", "forget", "output", "cell", "hidden")
    elif isinstance(layer, nn.GRU):
        names = ("reset", "update", "hidden")
    elif isinstance(layer, nn.RNN):
        names = ("hidden",)
    else:
        raise CharRNNError(f"cannot read activations of a {type(layer).__name__} layer.")
    acts = {name: x.new_empty(B, T, H) for name in names}
    h = state[0]
    c = state[1] if isinstance(layer, nn.LSTM) else h
    for t in range(T):
        if isinstance(layer, nn.LSTM):
            z = torch.addmm(xw[:, t], h, w_hh_t)  # (B, 4H): i, f, g, o
            s = torch.sigmoid(z)
            i, f, o = s[:, :H], s[:, H : 2 * H], s[:, 3 * H :]
            c = f * c + i * torch.tanh(z[:, 2 * H : 3 * H])
            h = o * torch.tanh(c)
            acts["input"][:, t], acts["forget"][:, t], acts["output"][:, t] = i, f, o
            acts["cell"][:, t] = c
        elif isinstance(layer, nn.GRU):
            hw = torch.addmm(b_hh, h, w_hh_t)  # (B, 3H): r, z, n
            rz = torch.sigmoid(xw[:, t, : 2 * H] + hw[:, : 2 * H])
            r, u = rz[:, :H], rz[:, H:]
            n = torch.tanh(xw[:, t, 2 * H :] + r * hw[:, 2 * H :])
            h = (1 - u) * n + u * h
            acts["reset"][:, t], acts["update"][:, t] = r, u
        else:
            z = torch.addmm(xw[:, t], h, w_hh_t)
            h = torch.relu(z) if getattr(layer, "nonlinearity", "tanh") == "relu" else torch.tanh(z)
        acts["hidden"][:, t] = h
    new_state = (h, c) if isinstance(layer, nn.LSTM) else (h,)
    return acts["hidden"], new_state, acts


def stack_activations(stack: nn.Module, x: Tensor, state: State) -> tuple[Tensor, State, Acts]:
    """The stack's forward that also reports activations.

    x (B, T, E); state tuple of (L, B, H). Returns out (B, T, H), the new state
    and {kind: (L, B, T, U)}. Raises CharRNNError for a stack that cannot report them.
    """
    reporting = getattr(stack, "forward_with_activations", None)
    if reporting is not None:
        return cast(tuple[Tensor, State, Acts], reporting(x, state))
    if not isinstance(stack, FusedStack):
        raise CharRNNError(f"the {type(stack).__name__} stack cannot report its activations.")
    per_layer: list[dict[str, Tensor]] = []
    new: list[list[Tensor]] = [[] for _ in state]
    for i, layer in enumerate(stack.layers):
        if i > 0:
            x = stack.drop(x)
        x, layer_state, acts = fused_layer_activations(layer, x, tuple(s[i] for s in state))
        for part, s in zip(new, layer_state):
            part.append(s)
        per_layer.append(acts)
    stacked = {kind: torch.stack([a[kind] for a in per_layer]) for kind in per_layer[0]}
    return x, tuple(torch.stack(parts) for parts in new), stacked


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


def iter_chunks(model: CharRNN, ids: np.ndarray, chunk_len: int = 256, streams: int = 1) -> Iterator[Chunk]:
    """Run ids (N,) through the model in chunks of chunk_len steps, state carried.

    With streams B > 1 the text is cut into B consecutive segments run side by
    side (each from a zero state), which is faster for long files; positions
    then arrive in segment order, each exactly once.
    """
    n = len(ids)
    B = max(1, min(streams, n))
    seg = -(-n // B)  # ceil: the last segment is padded at its end, after every real position
    grid = np.zeros(B * seg, dtype=np.int64)
    grid[:n] = ids
    tokens = torch.from_numpy(grid.reshape(B, seg))
    positions = np.arange(B * seg).reshape(B, seg)
    state = model.init_state(B)
    with torch.no_grad():
        for start in range(0, seg, chunk_len):
            x = tokens[:, start : start + chunk_len]  # (B, T)
            out, state, acts = stack_activations(model.stack, model.embed(x), state)
            logits = model.head(out)  # (B, T, V)
            pos = positions[:, start : start + chunk_len].reshape(-1)
            keep = pos < n
            yield Chunk(
                pos=pos[keep],
                acts={k: v.reshape(v.shape[0], -1, v.shape[-1]).numpy()[:, keep] for k, v in acts.items()},
                logits=logits.reshape(-1, logits.shape[-1]).numpy()[keep],
            )


def run_text(
    model: CharRNN,
    ids: np.ndarray,
    consumers: list[Consumer],
    chunk_len: int = 256,
    streams: int = 1,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Feed every chunk of ids to each consumer; progress(characters done) after each chunk."""
    for chunk in iter_chunks(model, ids, chunk_len, streams):
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
