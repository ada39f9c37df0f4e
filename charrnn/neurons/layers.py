"""Activations of one recurrent stack over one chunk: every layer's gates, cells and hidden states.

`stack_activations` is the stack's forward that also reports its activations, as
{kind: (L, B, T, U)}, for the kinds asked for. Stacks that implement
`forward_with_activations(x, state) -> (out, state, acts)` report their own; for the fused
torch layers, hidden states come from the fused kernel itself, GRU gates from one batched
recomputation, and LSTM gates and cells from a lean step loop. charrnn.neurons.activations
streams a whole text through these.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import cast

import torch
from torch import Tensor, nn

from charrnn.errors import CharRNNError
from charrnn.models.charrnn import FusedStack
from charrnn.neurons.precision import STEP_MIN_HIDDEN, Product

Acts = dict[str, Tensor]  # kind -> (L, B, T, U)
State = tuple[Tensor, ...]


def _want(names: tuple[str, ...], kinds: Collection[str] | None) -> set[str]:
    return set(names) if kinds is None else {n for n in names if n in kinds}


def fused_layer_activations(
    layer: nn.Module, x: Tensor, state: State, kinds: Collection[str] | None = None, precision: str = "fp32"
) -> tuple[Tensor, State, dict[str, Tensor]]:
    """Run one single-layer batch-first nn.LSTM / nn.GRU / nn.RNN and report its activations.

    x (B, T, In); state (h, c) for LSTM or (h,), each (B, H). Returns out (B, T, H), the new
    state and {kind: (B, T, H)} for the kinds asked for (all by default).

    Hidden states alone come from the fused kernel (the inference forward itself). Gates
    depend only on x_t and h_{t-1}, so they are recomputed for the whole chunk in one batched
    matmul from the kernel's outputs, and LSTM cells follow c_t = f_t c_{t-1} + i_t g_t, one
    multiply-add per step. LSTM layers of STEP_MIN_HIDDEN units or more use
    lstm_layer_activations instead, a lean step loop that does the matmul once, in `precision`
    (fp32, bf16 or int8: charrnn.neurons.precision); every other layer runs in fp32.
    """
    names: tuple[str, ...]
    if isinstance(layer, nn.LSTM):
        names = ("input", "forget", "output", "cell", "hidden")
    elif isinstance(layer, nn.GRU):
        names = ("reset", "update", "hidden")
    elif isinstance(layer, nn.RNN):
        names = ("hidden",)
    else:
        raise CharRNNError(f"cannot read activations of a {type(layer).__name__} layer.")
    want = _want(names, kinds)
    stepped = bool(want - {"hidden"}) or precision != "fp32"  # hidden alone in fp32: the fused kernel
    if isinstance(layer, nn.LSTM) and stepped and layer.hidden_size >= STEP_MIN_HIDDEN:
        out, new_state, every = lstm_layer_activations(layer, x, state, precision)
        return out, new_state, {k: every[k] for k in names if k in want}
    h0 = state[0]
    if isinstance(layer, nn.LSTM):
        out, (h_n, c_n) = layer(x, (h0[None], state[1][None]))
        new_state: State = (h_n[0], c_n[0])
    else:
        out, h_n = layer(x, h0[None])
        new_state = (h_n[0],)
    acts: dict[str, Tensor] = {"hidden": out}
    if not want - {"hidden"}:
        return out, new_state, {"hidden": out}
    w_ih, w_hh = cast(Tensor, layer.weight_ih_l0), cast(Tensor, layer.weight_hh_l0)
    b_ih: Tensor | None = getattr(layer, "bias_ih_l0", None)
    b_hh: Tensor | None = getattr(layer, "bias_hh_l0", None)
    H = w_hh.shape[1]
    h_prev = torch.cat([h0[:, None], out[:, :-1]], dim=1)  # (B, T, H): h_{t-1} for every t
    if isinstance(layer, nn.GRU):  # r and u; the candidate is not a kind
        rows = slice(0, 2 * H)
        z = nn.functional.linear(x, w_ih[rows], None if b_ih is None else b_ih[rows])
        z = z + nn.functional.linear(h_prev, w_hh[rows], None if b_hh is None else b_hh[rows])
        rz = torch.sigmoid(z)
        acts.update({"reset": rz[..., :H], "update": rz[..., H:]})
    elif isinstance(layer, nn.LSTM):  # a small LSTM: gates recomputed, cells by c = f c + i g
        z = nn.functional.linear(x, w_ih, b_ih) + nn.functional.linear(h_prev, w_hh, b_hh)  # i f g o
        i, f, o = torch.sigmoid(z[..., :H]), torch.sigmoid(z[..., H : 2 * H]), torch.sigmoid(z[..., 3 * H :])
        ig = (i * torch.tanh(z[..., 2 * H : 3 * H])).transpose(0, 1).contiguous()  # (T, B, H)
        ft = f.transpose(0, 1).contiguous()
        cells = torch.empty_like(ig)
        c = state[1]
        for t in range(ig.shape[0]):
            c = torch.addcmul(ig[t], ft[t], c, out=cells[t])
        acts.update({"input": i, "forget": f, "output": o, "cell": cells.transpose(0, 1)})
    return out, new_state, {k: acts[k] for k in names if k in want}


def lstm_layer_activations(
    layer: nn.LSTM, x: Tensor, state: State, precision: str = "fp32"
) -> tuple[Tensor, State, dict[str, Tensor]]:
    """Step one single-layer batch-first nn.LSTM, keeping its gates and cells.

    x (B, T, In); state (h, c), each (B, H). Returns out (B, T, H), the new state and
    {kind: (B, T, H)}. The input projections of the whole chunk are one matmul; each step
    is one matmul and a few in-place elementwise operations on time-major buffers. The
    candidate rows are scaled by 2 so that one sigmoid serves all four blocks, since
    tanh(z) = 2 sigmoid(2z) - 1; tanh(c) is computed the same way (torch's tanh takes about
    four times a sigmoid on these small tensors). Faster than the fused kernel plus a
    recomputation of the gates from its outputs for wide layers (see STEP_MIN_HIDDEN). The
    products run in `precision` (fp32, bf16, int8; charrnn.neurons.precision.Product).
    """
    H = layer.hidden_size
    w_ih, w_hh = _products(layer, precision)
    B, T, _ = x.shape
    # Time-major from the start: free when x is the previous layer's output (a transposed view).
    gates = w_ih(x.transpose(0, 1).reshape(T * B, -1)).view(T, B, 4 * H)  # i f g o
    cells, hidden = x.new_empty(T, B, H), x.new_empty(T, B, H)
    ig, tanh_c = x.new_empty(B, H), x.new_empty(B, H)
    h, c = state
    for t in range(T):
        z = w_hh.accumulate(gates[t], h)
        z.sigmoid_()
        g = z[:, 2 * H : 3 * H].mul_(2.0).sub_(1.0)  # tanh of the candidate
        torch.mul(z[:, :H], g, out=ig)
        c = torch.addcmul(ig, z[:, H : 2 * H], c, out=cells[t])
        torch.mul(c, 2.0, out=tanh_c).sigmoid_().mul_(2.0).sub_(1.0)  # tanh(c), as for g
        h = torch.mul(z[:, 3 * H :], tanh_c, out=hidden[t])
    acts = {"input": gates[..., :H], "forget": gates[..., H : 2 * H], "output": gates[..., 3 * H :]}
    acts = {k: v.transpose(0, 1) for k, v in {**acts, "cell": cells, "hidden": hidden}.items()}
    return acts["hidden"], (h.clone(), c.clone()), acts


def _products(layer: nn.LSTM, precision: str) -> tuple[Product, Product]:
    """The layer's input and recurrent products for lstm_layer_activations, candidate rows
    scaled by 2, biases summed; made once per layer, precision and weight version (packing
    int8 weights takes longer than a chunk's steps of a small batch)."""
    params = [cast(Tensor, p) for p in layer.parameters()]
    key = (precision, tuple((p.data_ptr(), p._version) for p in params))
    cached = getattr(layer, "_charrnn_products", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    H = layer.hidden_size
    w_ih, w_hh = cast(Tensor, layer.weight_ih_l0), cast(Tensor, layer.weight_hh_l0)
    scale = torch.ones(4 * H, dtype=w_ih.dtype, device=w_ih.device)
    scale[2 * H : 3 * H] = 2.0
    bias = None
    if layer.bias:
        bias = (cast(Tensor, layer.bias_ih_l0) + cast(Tensor, layer.bias_hh_l0)) * scale
    with torch.no_grad():
        products = (Product(w_ih * scale[:, None], bias, precision), Product(w_hh * scale[:, None], None, precision))
    object.__setattr__(layer, "_charrnn_products", (key, products))
    return products


def stack_activations(
    stack: nn.Module, x: Tensor, state: State, kinds: Collection[str] | None = None, precision: str = "fp32"
) -> tuple[Tensor, State, Acts]:
    """The stack's forward that also reports activations.

    x (B, T, E); state tuple of (L, B, H). Returns out (B, T, H), the new state
    and {kind: (L, B, T, U)} for the kinds asked for (all by default); `precision` is that of
    wide LSTM layers (charrnn.neurons.precision.resolve_precision gives it). Raises
    CharRNNError for a stack that cannot report them.
    """
    reporting = getattr(stack, "forward_with_activations", None)
    if reporting is not None:
        out, new_state, every = cast(tuple[Tensor, State, Acts], reporting(x, state))
        return out, new_state, {k: v for k, v in every.items() if kinds is None or k in kinds}
    if not isinstance(stack, FusedStack):
        raise CharRNNError(f"the {type(stack).__name__} stack cannot report its activations.")
    per_layer: list[dict[str, Tensor]] = []
    new: list[list[Tensor]] = [[] for _ in state]
    for i, layer in enumerate(stack.layers):
        if i > 0:
            x = stack.drop(x)
        x, layer_state, acts = fused_layer_activations(layer, x, tuple(s[i] for s in state), kinds, precision)
        for part, s in zip(new, layer_state):
            part.append(s)
        per_layer.append(acts)
    stacked = {kind: torch.stack([a[kind] for a in per_layer]) for kind in per_layer[0]}
    return x, tuple(torch.stack(parts) for parts in new), stacked
