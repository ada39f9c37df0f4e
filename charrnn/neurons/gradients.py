"""How far back the loss reaches: gradient norms through the carried state, by lag.

For a target position t of a text, the loss at t is the cross-entropy of the model's
guess for character t+1 after reading characters 0..t. For a lag k, the gradient of
that loss with respect to the state the model carries from step t-k to step t-k+1
(each layer's h, and c for LSTM kinds) says how much that memory still matters k
characters later: it is what truncated BPTT cuts at a boundary. A vanilla RNN's norm
falls by orders of magnitude within tens of steps (vanishing gradients, Bengio et al.
1994; Pascanu et al. 2013); an LSTM's cell carries it much further.

    positions  t_1 .. t_P  drawn (seeded) from [K, N-2]
    each row b of a batch:   state S(t_b-K-1) --read t_b-K .. t_b--> loss(t_b)
                                      S(t_b-K) ... S(t_b-1)   <- gradients, lags K .. 1

The state at the start of every window is the model's own after reading the text before
it (up to CONTEXT_CHARS characters) without gradients; several target positions share one
backward pass (one per row of the batch). For a one-layer model the carried state is the hidden state, so these
are the norms of d loss(t) / d h(t-k). In deeper models a lower layer also feeds the
layer above at the same step; that path goes through the upper layer's carried state,
reported in its own row.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from charrnn.config import Unknown
from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError
from charrnn.files import atomic_write
from charrnn.models.charrnn import CharRNN
from charrnn.neurons.activations import encode_text

State = tuple[torch.Tensor, ...]
STATE_NAMES = ("hidden", "cell")  # names of the carried state's parts, in state order
# Characters read (without gradients, from a zero state) before each window, so that it
# starts from a state the text put there, without reading a long file from its start; the
# windows of the first CONTEXT_CHARS characters start from the text's own state.
CONTEXT_CHARS = 1000


@dataclass
class GradientNorms:
    """Norms of d loss(t) / d state(t-k) for k = 1..K at P target positions."""

    lags: np.ndarray  # (K,) 1..K
    positions: np.ndarray  # (P,) target positions t in the text
    values: dict[str, np.ndarray]  # "hidden" (and "cell") -> (P, L, K) float32 per-position norms
    model: str = ""  # the model kind

    @property
    def num_layers(self) -> int:
        return int(next(iter(self.values.values())).shape[1])

    def mean(self, state: str) -> np.ndarray:
        """(L, K) the norms of `state` averaged over positions."""
        return self.values[state].mean(axis=0)

    def save(self, path: Path) -> None:
        """Write to a .csv or .npz file; see `export_gradients`."""
        export_gradients(self, path)


def gradient_norms(
    model: CharRNN,
    ids: np.ndarray,
    max_lag: int = 100,
    positions: int = 64,
    seed: int = 0,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> GradientNorms:
    """The norms of d loss(t) / d state(t-k), k = 1..max_lag, at `positions` target positions
    of ids (N,) drawn with `seed` (all of them when fewer fit). One backward per batch of
    `batch_size` positions; progress(positions done, positions in all) after each. The model
    is put in eval mode (no dropout) and computes where its weights are.
    Raises CharRNNError when the text is shorter than max_lag + 2 characters."""
    n = len(ids)
    if max_lag < 1 or positions < 1:
        raise CharRNNError("--max-lag and --positions must be at least 1.")
    if n < max_lag + 2:
        raise CharRNNError(
            f"the text has {n} characters: --max-lag {max_lag} needs at least {max_lag + 2}; "
            "use a longer text or a smaller --max-lag."
        )
    candidates = np.arange(max_lag, n - 1)  # t - max_lag >= 0 and t + 1 < n
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(candidates, size=min(positions, len(candidates)), replace=False))
    model.eval()
    starts = window_states(model, ids, chosen - max_lag - 1)
    L = model.cfg.num_layers
    names = STATE_NAMES[: model.cfg.state_size]
    values = {name: np.zeros((len(chosen), L, max_lag), np.float32) for name in names}
    tokens = torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(model.head.weight.device)
    for lo in range(0, len(chosen), batch_size):
        rows = chosen[lo : lo + batch_size]
        start = tuple(s[:, lo : lo + batch_size] for s in starts)
        norms = _window_norms(model, tokens, rows, start, max_lag)  # each (B, L, K)
        for name, value in zip(names, norms):
            values[name][lo : lo + len(rows)] = value
        if progress is not None:
            progress(len(rows), len(chosen))
    return GradientNorms(np.arange(1, max_lag + 1), chosen, values, model.cfg.model)


def text_gradients(
    model: CharRNN,
    vocab: Vocab,
    text: str,
    max_lag: int = 100,
    positions: int = 64,
    seed: int = 0,
    unknown: Unknown = "error",
    progress: Callable[[int, int], None] | None = None,
) -> GradientNorms:
    """`gradient_norms` over a text; unknown="skip" drops characters outside the vocabulary."""
    _, ids = encode_text(text, vocab, unknown)
    return gradient_norms(model, ids, max_lag, positions, seed, progress=progress)


def window_states(model: CharRNN, ids: np.ndarray, after: np.ndarray, context: int = CONTEXT_CHARS) -> State:
    """The state after reading ids[0..a] for each a in `after` (sorted; -1 = the zero state),
    without gradients: a tuple of (L, P, H). Where a >= context, the state after reading
    only the `context` characters up to a, from a zero state, all such rows in one batch."""
    tokens = torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(model.head.weight.device)
    near, far = after[after < context], after[after >= context]
    found: list[State] = []
    with torch.no_grad():
        state, done = model.init_state(1), 0  # the first rows: one stream from the text's start
        for a in near.tolist():
            if a + 1 > done:
                _, state = model.stack(model.embed(tokens[done : a + 1].unsqueeze(0)), state)
                done = a + 1
            found.append(state)
        if len(far):
            index = torch.from_numpy(far[:, None] - context + 1 + np.arange(context)[None, :])  # (F, context)
            _, state = model.stack(model.embed(tokens[index.to(tokens.device)]), model.init_state(len(far)))
            found.append(state)
    return tuple(torch.cat([s[i] for s in found], dim=1) for i in range(model.cfg.state_size))


def _window_norms(model: CharRNN, tokens: torch.Tensor, rows: np.ndarray, start: State, K: int) -> list[np.ndarray]:
    """Per row: run steps t-K .. t from `start` one at a time, then one backward of the
    summed losses at t; returns per state part (B, L, K) norms, lag k at index k-1."""
    index = torch.from_numpy(rows[:, None] - K + np.arange(K + 1)[None, :])  # (B, K+1)
    x = tokens[index.to(tokens.device)]  # (B, K+1)
    y = tokens[torch.from_numpy(rows + 1).to(tokens.device)]  # (B,)
    carried: list[torch.Tensor] = []
    with torch.enable_grad():
        state = tuple(s.detach().clone().requires_grad_(True) for s in start)
        emb = model.embed(x)  # (B, K+1, E)
        for s in range(K + 1):
            out, state = model.stack(emb[:, s : s + 1], state)
            if s < K:
                carried.extend(state)
        loss = F.cross_entropy(model.head(out[:, 0]), y, reduction="sum")  # rows are independent
        grads = torch.autograd.grad(loss, carried, allow_unused=True)
    parts = len(start)
    result = []
    for p in range(parts):
        per_step = [g if g is not None else torch.zeros_like(c) for g, c in zip(grads[p::parts], carried[p::parts])]
        norms = torch.stack(per_step).norm(dim=-1)  # (K, L, B) for steps t-K .. t-1
        result.append(norms.flip(0).permute(2, 1, 0).cpu().numpy())  # (B, L, K), lag 1 first
    return result


def decay_lag(curve: np.ndarray, factor: float) -> int | None:
    """The first lag k at which `curve` (K,) has fallen below curve[k=1] / factor; None if never."""
    below = np.nonzero(curve < curve[0] / factor)[0]
    return int(below[0]) + 1 if len(below) else None


def shown_lags(max_lag: int) -> list[int]:
    """The lags a table shows: 1, 2, 5, 10, 20, 50, 100, ... up to max_lag, and max_lag."""
    lags, k = [], 1
    while k < max_lag:
        lags.extend(m * k for m in (1, 2, 5) if m * k < max_lag)
        k *= 10
    return lags + [max_lag]


def series(report: GradientNorms) -> list[tuple[str, np.ndarray]]:
    """(label, mean curve (K,)) per layer and state part, e.g. ("layer 0 h", ...)."""
    return [
        (f"layer {layer} {name[0]}", report.mean(name)[layer])
        for layer in range(report.num_layers)
        for name in report.values
    ]


def export_gradients(report: GradientNorms, path: Path) -> None:
    """Write the report to `path`: .csv, one row per (state, layer, lag) with the mean and
    median norm over positions; or .npz with lags (K,), positions (P,), per state part the
    per-position norms (P, L, K) and their mean '<state>_mean' (L, K), and model (0-d str).
    Raises CharRNNError for another suffix or when the file cannot be written."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["state", "layer", "lag", "mean_norm", "median_norm"])
        for name, value in report.values.items():
            mean, median = value.mean(axis=0), np.median(value, axis=0)
            for layer in range(value.shape[1]):
                for i, lag in enumerate(report.lags.tolist()):
                    writer.writerow([name, layer, lag, f"{mean[layer, i]:.6e}", f"{median[layer, i]:.6e}"])
        data = text.getvalue().encode("utf-8")
    elif suffix == ".npz":
        arrays = {"lags": report.lags, "positions": report.positions, "model": np.array(report.model)}
        for name, value in report.values.items():
            arrays[name] = value
            arrays[f"{name}_mean"] = value.mean(axis=0)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        data = buffer.getvalue()
    else:
        raise CharRNNError(f"cannot export gradients to '{path}': give a .csv or .npz file name.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(data))
    except OSError as exc:
        raise CharRNNError(f"cannot write '{path}': {exc.strerror or exc}.")
