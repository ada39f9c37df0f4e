"""Fast one-character steps for sampling, with fp32, bf16 or int8 weights.

Sampling one stream reads every weight once per character, so the step is bound
by memory traffic and by per-op overhead (2-7 us per torch call from Python on
a 2-core EPYC), not by arithmetic. Every fast step therefore:

- folds the embedding into the first layer: one (V, G) table of E @ W_ih^T + b,
  so the first layer's input projection is a row gather instead of a matmul;
- concatenates W_ih | W_hh of each further layer once, so a layer is one matmul
  over [input, h] (GRU keeps two: its candidate multiplies the recurrent part by
  the reset gate; gated-feedback stacks keep theirs, see `GatedFeedbackStepper`);
- writes gate pre-activations into buffers kept per batch size, whose gate
  views are cut once, and applies each nonlinearity in place: an LSTM layer is
  seven torch calls (gate rows reordered i, f, o, g so one sigmoid covers three);
- runs in inference mode with no autograd bookkeeping and no torch-function dispatch.

Kinds: lstm, gru, rnn (`FusedStepper`), peephole-lstm (`PeepholeStepper`),
gf-rnn, gf-gru, gf-lstm (`GatedFeedbackStepper`). Any other stack steps through
`model(x[:, None])` (`ModelStepper`, fp32 only).

Weight modes (the head and the embedding table stay fp32 in every mode):
- fp32: exact to float rounding (matches `CharRNN.forward` to ~1e-6).
- bf16: recurrent weights rounded to bf16. On an x86 CPU they are held in
  fbgemm's packed half-precision format (every bf16 value of a trained model is
  exact there) and multiplied in fp32, which beats torch's bf16 matmul on CPUs
  without native bf16; elsewhere a plain bf16 matmul.
- int8: fbgemm/qnnpack dynamic quantization (int8 weights, one scale per output
  row; activations quantized per call), CPU only.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from charrnn.errors import CharRNNError
from charrnn.model import CharRNN, FusedStack, State

WEIGHT_MODES = ("fp32", "bf16", "int8")
# Quantized engines whose dynamic int8 linear runs on this CPU (x86 builds have the first two).
_INT8_ENGINES = ("x86", "fbgemm", "qnnpack")
# Primes up to this many symbols are fed by stepping rather than by one fused forward.
_STEP_PREFILL = 4
# Stacks of charrnn.recurrent with a hand-written step (class name -> stepper, filled below).
_CUSTOM_STEPPERS: dict[str, type[FastStepper]] = {}


class Stepper(Protocol):
    """What sampling calls: `prefill` the prime once, then `step` one symbol at a time.

    `forward` runs a whole sequence with the stepper's weights (to measure a weight
    mode's loss). Logits are fp32; states are tuples of (L, B, H) tensors.
    """

    weights: str

    def weight_bytes(self) -> int: ...

    def prefill(self, x: Tensor, state: State) -> tuple[Tensor, State]: ...

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]: ...

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]: ...


# Calling a torch.ops kernel with a packed-weight ScriptObject first looks up
# `__torch_function__` on it, which throws and catches a C++ exception: ~15 us per
# call, more than the int8 matmul itself. Plain tensors never need torch-function
# dispatch here, so the step switches it off for subclasses (a thread-local flag).
_skip_torch_function: Callable[[], contextlib.AbstractContextManager[object]] = getattr(
    torch._C, "DisableTorchFunctionSubclass", contextlib.nullcontext
)


def _int8_engine() -> str | None:
    engine = torch.backends.quantized.engine
    if engine in _INT8_ENGINES and engine in torch.backends.quantized.supported_engines:
        return engine
    return None


def _has_fbgemm_fp16() -> bool:
    return torch.backends.quantized.engine in ("x86", "fbgemm") and hasattr(
        torch.ops.quantized, "linear_prepack_fp16"
    )


def available_weight_modes(device: torch.device | str) -> list[str]:
    """The weight modes `build_stepper` accepts for a model on `device`."""
    kind = torch.device(device).type
    if kind == "cpu":
        return ["fp32", "bf16"] + (["int8"] if _int8_engine() else [])
    if kind == "cuda":
        return ["fp32", "bf16"]
    return ["fp32"]


class _Linear:
    """out (B, N) fp32 = base + [x1, x2, ...] @ [W1 | W2 | ...]^T, W held in one weight mode.

    The weights (each (N, Ki)) are concatenated once; a single one is used as it
    is, so fp32 shares the model's tensor. One long matmul per layer measured ~20%
    faster than two short ones for one stream. `into` writes into a caller's
    buffer (one torch call in fp32, two for the packed kernels); `__call__`
    returns a new tensor.
    """

    def __init__(self, weights: list[Tensor], bias: Tensor | None, mode: str) -> None:
        weight = torch.cat(weights, 1) if len(weights) > 1 else weights[0]
        weight = weight.detach().float()  # (N, K1 + K2 + ...)
        self.mode = mode
        self.bias = bias.detach().float() if bias is not None else None
        # Bytes of weight read per call, the bias aside.
        self.nbytes = weight.numel() * {"fp32": 4, "bf16": 2, "int8": 1}[mode]
        self.packed: object = None
        self.reduce_range = False
        if mode == "fp32":
            # (K, N) as addmm takes it. On the CPU a contiguous copy: for one stream the
            # matrix-vector product then streams the weights at the memory's read bandwidth
            # (12 GB/s on the 2-core EPYC) instead of ~9 GB/s through the transposed view.
            self.weight_t = weight.t().contiguous() if weight.is_cpu else weight.t()
        elif mode == "bf16" and weight.is_cpu and _has_fbgemm_fp16() and weight.abs().max() < 6e4:
            # The bf16-rounded weights, held as fp16 (exact for |w| >= 6e-5, off by under
            # 3e-8 below): fbgemm's fp16 kernel is ~2x faster than torch's bf16 matmul on AVX2.
            self.mode = "fp16-packed"
            self.packed = torch.ops.quantized.linear_prepack_fp16(weight.bfloat16().float(), None)
        elif mode == "bf16":
            self.weight = weight.bfloat16()
        elif mode == "int8":
            self.packed = _prepack_int8(weight)
            # fbgemm needs 7-bit activations to avoid overflow; qnnpack warns when asked to.
            self.reduce_range = torch.backends.quantized.engine != "qnnpack"
        else:
            raise AssertionError(mode)

    def _product(self, x: Tensor) -> Tensor:
        """x @ W^T for the reduced-precision modes: (B, N), fp32 or bf16."""
        if self.mode == "fp16-packed":
            return torch.ops.quantized.linear_dynamic_fp16(x, self.packed)
        if self.mode == "int8":
            return torch.ops.quantized.linear_dynamic(x, self.packed, self.reduce_range)
        return F.linear(x.to(self.weight.dtype), self.weight)

    def into(self, out: Tensor, x: Tensor, base: Tensor | None) -> Tensor:
        """out (B, N) = base + x (B, K) @ W^T; base (B, N) or (N,) or None."""
        if self.mode == "fp32":
            if base is None:
                return torch.mm(x, self.weight_t, out=out)
            return torch.addmm(base, x, self.weight_t, out=out)
        y = self._product(x)
        return out.copy_(y) if base is None else torch.add(base, y, out=out)

    def __call__(self, x: Tensor) -> Tensor:
        """x (B, K) -> a new (B, N) fp32 tensor: x @ W^T + bias."""
        if self.mode == "fp32":
            if self.bias is None:
                return x @ self.weight_t
            return torch.addmm(self.bias, x, self.weight_t)
        y = self._product(x).float()
        return y.add_(self.bias) if self.bias is not None else y


def _prepack_int8(weight: Tensor) -> object:
    """Symmetric per-row int8 weight, packed for quantized::linear_dynamic."""
    if weight.device.type != "cpu":
        raise AssertionError("int8 weights are CPU only")
    scales = (weight.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()
    zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        # torch 2.13 marks quantized-tensor creation deprecated; it remains the only
        # packed int8 CPU kernel in torch (torchao's int8 runs 10x slower on CPU).
        warnings.filterwarnings("ignore", message=r".*quantize_per_channel", category=UserWarning)
        qweight = torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(qweight, None)


def _gate_order(hidden: int, blocks: list[int]) -> Tensor:
    """Row index that reorders gate blocks of `hidden` rows: [0, 1, 3, 2] puts block 3 third."""
    return torch.cat([torch.arange(b * hidden, (b + 1) * hidden) for b in blocks])


class FastStepper:
    """Base of the hand-written steps: weights prepared once, buffers kept per batch size.

    Subclasses set `table` (the folded first layer), `lins` (every _Linear, for
    weight_bytes) and `head`, and implement `_buffers(batch)` and `_step`. The
    buffers hold gate pre-activations only: returned logits and states are always
    new tensors, so a caller may keep any of them. One stepper serves one thread.
    """

    table: Tensor
    lins: list[_Linear]
    head: _Linear

    def __init__(self, model: CharRNN, weights: str) -> None:
        self.model = model
        self.kind = model.cfg.model
        self.weights = weights
        self.hidden = model.cfg.hidden_size
        self.layers = model.cfg.num_layers
        self._work: dict[int, Any] = {}  # batch size -> buffers and their views

    def weight_bytes(self) -> int:
        """Bytes of weights read per step (table rows aside): the memory-bound floor."""
        return sum(lin.nbytes for lin in [*self.lins, self.head])

    def prefill(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, T) ids -> logits (B, V) after the last one, and the state.

        Runs the model's fp32 forward, which batches the input projection over T; a
        prime of up to _STEP_PREFILL symbols is stepped instead, as one fused call
        costs more to set up than that many steps (~9 ms vs ~1.5 ms for 2x512).
        """
        with torch.inference_mode():
            if 0 < x.shape[1] <= _STEP_PREFILL:
                for t in range(x.shape[1]):
                    logits, state = self.step(x[:, t], state)
                return logits, state
            logits, state = self.model(x, state)
            return logits[:, -1].float(), state

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, T) ids -> logits (B, T, V) computed with this stepper's weights, and the state.

        For measuring a weight mode's loss; fp32 runs the model's own forward.
        """
        with torch.inference_mode():
            if self.weights == "fp32":
                return self.model(x, state)
            outs = []
            for t in range(x.shape[1]):
                logits, state = self.step(x[:, t], state)
                outs.append(logits)
            return torch.stack(outs, 1), state

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B,) ids -> logits (B, V) fp32 for the next symbol, and the new state."""
        if not torch.is_inference_mode_enabled():  # entering it costs ~2 us: only when needed
            with torch.inference_mode():
                return self.step(x, state)
        work = self._work.get(x.shape[0])
        if work is None:
            work = self._work[x.shape[0]] = self._buffers(x.shape[0])
        with _skip_torch_function():
            return self._step(x, state, work)

    def _empty(self, batch: int, width: int) -> Tensor:
        return torch.empty(batch, width, device=self.table.device)

    def _buffers(self, batch: int) -> Any:
        raise NotImplementedError

    def _step(self, x: Tensor, state: State, work: Any) -> tuple[Tensor, State]:
        raise NotImplementedError


class FusedStepper(FastStepper):
    """The step of lstm, gru and rnn models (a FusedStack of torch modules)."""

    def __init__(self, model: CharRNN, weights: str) -> None:
        super().__init__(model, weights)
        H = self.hidden
        stack = model.stack
        assert isinstance(stack, FusedStack)
        layers = list(stack.layers)
        self.relu = self.kind == "rnn" and getattr(layers[0], "nonlinearity", "tanh") == "relu"
        # LSTM gate rows i, f, g, o -> i, f, o, g: one sigmoid over the first 3H.
        order = _gate_order(H, [0, 1, 3, 2]) if self.kind == "lstm" else None
        with torch.no_grad():
            params = []  # per layer: weight_ih, weight_hh, bias_ih, bias_hh, rows reordered
            for layer in layers:
                names = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
                p = [getattr(layer, n) for n in names]
                params.append([t.detach()[order] if order is not None else t.detach() for t in p])
            w_ih0, w_hh0, b_ih0, b_hh0 = params[0]
            # (V, G): embedding row -> first layer's input projection + bias. GRU keeps b_hh
            # on the recurrent side, where its n-part is scaled by the reset gate.
            table_bias = b_ih0 if self.kind == "gru" else b_ih0 + b_hh0
            self.table = torch.addmm(table_bias, model.embed.weight.detach(), w_ih0.t())
            self.first_hh = _Linear([w_hh0], b_hh0 if self.kind == "gru" else None, weights)
            # Layers >= 1: one linear over [input, h] (LSTM, RNN), or separate ih / hh (GRU).
            self.upper: list[tuple[_Linear, ...]] = []
            for w_ih, w_hh, b_ih, b_hh in params[1:]:
                if self.kind == "gru":
                    ih, hh = _Linear([w_ih], b_ih, weights), _Linear([w_hh], b_hh, weights)
                    self.upper.append((ih, hh))
                else:
                    self.upper.append((_Linear([w_ih, w_hh], b_ih + b_hh, weights),))
            self.head = _Linear([model.head.weight], model.head.bias, "fp32")
        self.lins = [self.first_hh, *(lin for lins in self.upper for lin in lins)]

    def _buffers(self, batch: int) -> list[tuple[Tensor, ...]]:
        """Per layer: its buffers, then views of them that the step reads."""
        H = self.hidden
        work = []
        for i in range(self.layers):
            xh = self._empty(batch, 2 * H)  # [input, h] of layers >= 1
            if self.kind == "lstm":
                g = self._empty(batch, 4 * H)  # rows i, f, o, g
                work.append((xh, g, g[:, : 3 * H], *g.split(H, 1)))
            elif self.kind == "gru":
                gi, gh = self._empty(batch, 3 * H), self._empty(batch, 3 * H)
                rz = self._empty(batch, 2 * H)
                gi_rz, gi_n = gi.split([2 * H, H], 1)
                gh_rz, gh_n = gh.split([2 * H, H], 1)
                work.append((gi, gh, rz, gi_rz, gi_n, gh_rz, gh_n, *rz.chunk(2, 1)))
            else:
                work.append((xh, self._empty(batch, H)))
        return work

    def _step(self, x: Tensor, state: State, work: list) -> tuple[Tensor, State]:
        if self.kind == "lstm":
            return self._step_lstm(x, state[0], state[1], work)
        if self.kind == "gru":
            return self._step_gru(x, state[0], work)
        return self._step_rnn(x, state[0], work)

    def _step_lstm(self, x: Tensor, h0: Tensor, c0: Tensor, work: list) -> tuple[Tensor, State]:
        hs: list[Tensor] = []
        cs: list[Tensor] = []
        inp = x
        for i, (h, c) in enumerate(zip(h0.unbind(0), c0.unbind(0))):
            xh, gates, sig, in_gate, forget, out_gate, cell = work[i]
            if i == 0:  # (B, 4H): table row (input projection + bias) + h @ W_hh^T
                self.first_hh.into(gates, h, self.table.index_select(0, x))
            else:
                lin = self.upper[i - 1][0]
                lin.into(gates, torch.cat((inp, h), 1, out=xh), lin.bias)
            sig.sigmoid_()
            cell.tanh_()
            c = torch.mul(forget, c).addcmul_(in_gate, cell)
            inp = torch.tanh(c).mul_(out_gate)
            hs.append(inp)
            cs.append(c)
        return self.head(inp), (torch.stack(hs), torch.stack(cs))

    def _step_gru(self, x: Tensor, h0: Tensor, work: list) -> tuple[Tensor, State]:
        hs: list[Tensor] = []
        inp = x
        for i, h in enumerate(h0.unbind(0)):
            gi, gh, rz, gi_rz, gi_n, gh_rz, gh_n, reset, update = work[i]  # rows r, z, n
            if i == 0:
                torch.index_select(self.table, 0, x, out=gi)
                self.first_hh.into(gh, h, self.first_hh.bias)
            else:
                lin_ih, lin_hh = self.upper[i - 1]
                lin_ih.into(gi, inp, lin_ih.bias)
                lin_hh.into(gh, h, lin_hh.bias)
            torch.add(gi_rz, gh_rz, out=rz).sigmoid_()
            n = torch.addcmul(gi_n, reset, gh_n).tanh_()
            inp = torch.lerp(n, h, update)  # (1 - z) n + z h
            hs.append(inp)
        return self.head(inp), (torch.stack(hs),)

    def _step_rnn(self, x: Tensor, h0: Tensor, work: list) -> tuple[Tensor, State]:
        hs: list[Tensor] = []
        inp = x
        for i, h in enumerate(h0.unbind(0)):
            xh, pre = work[i]
            if i == 0:
                self.first_hh.into(pre, h, self.table.index_select(0, x))
            else:
                lin = self.upper[i - 1][0]
                lin.into(pre, torch.cat((inp, h), 1, out=xh), lin.bias)
            inp = torch.relu(pre) if self.relu else torch.tanh(pre)
            hs.append(inp)
        return self.head(inp), (torch.stack(hs),)


class PeepholeStepper(FastStepper):
    """The step of peephole-lstm (charrnn.recurrent.PeepholeLSTMStack), gate rows i, f, g, o.

    i and f see c(t-1) and o sees c(t) through per-unit weights, so o's sigmoid waits
    for the new cell: two sigmoids per layer instead of one.
    """

    def __init__(self, model: CharRNN, weights: str) -> None:
        super().__init__(model, weights)
        layers = list(model.stack.layers)
        with torch.no_grad():
            first = layers[0]
            self.table = torch.addmm(first.bias, model.embed.weight, first.weight_ih.t()).detach()
            self.first_hh = _Linear([first.weight_hh], None, weights)
            self.upper = [_Linear([m.weight_ih, m.weight_hh], m.bias, weights) for m in layers[1:]]
            # Per layer: (2, H) peepholes of i and f, (H,) of o.
            self.peep = [(m.peephole.detach()[:2], m.peephole.detach()[2]) for m in layers]
            self.head = _Linear([model.head.weight], model.head.bias, "fp32")
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
    """The step of gf-rnn, gf-gru and gf-lstm (charrnn.recurrent.GatedFeedbackStack).

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
            cols = torch.cat([_gate_order(H, [0, 1, 3, 2]), torch.arange(4 * H, 4 * H + L)])
        with torch.no_grad():
            bias_in = stack.bias_in.detach()[:, cols]  # (L, K)
            w_in0 = stack.weight_in0.detach()[cols]  # (K, E)
            self.table = torch.addmm(bias_in[0], model.embed.weight.detach(), w_in0.t())
            # weight_in is laid out (in, out): its transpose is the (N, K) a _Linear takes.
            self.upper = [
                _Linear([stack.weight_in[j - 1].detach()[:, cols].t()], bias_in[j], weights)
                for j in range(1, L)
            ]
            self.weight_rec = stack.weight_rec.detach()  # (L, H, Krec)
            self.rec = [_Linear([w.t()], None, weights) for w in self.weight_rec.unbind(0)]
            self.bias_hn = stack.bias_hn.detach().unbind(0) if self.gf_kind == 1 else ()
            self.head = _Linear([model.head.weight], model.head.bias, "fp32")
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


_CUSTOM_STEPPERS.update(PeepholeLSTMStack=PeepholeStepper, GatedFeedbackStack=GatedFeedbackStepper)


def _stepper_class(model: CharRNN) -> type[FastStepper] | None:
    """The hand-written step for `model`'s stack, or None."""
    if isinstance(model.stack, FusedStack):
        return FusedStepper
    # A custom stack exists only once charrnn.recurrent is imported: no import here.
    recurrent = sys.modules.get("charrnn.recurrent")
    name = type(model.stack).__name__
    if recurrent is not None and type(model.stack) is getattr(recurrent, name, None):
        return _CUSTOM_STEPPERS.get(name)
    return None
class ModelStepper:
    """Steps through the model's own forward: for kinds without a hand-written step."""

    def __init__(self, model: CharRNN) -> None:
        self.model = model
        self.weights = "fp32"

    def weight_bytes(self) -> int:
        """Bytes of parameters read per step: all but the embedding, of which one row."""
        embed = set(map(id, self.model.embed.parameters()))
        params = (p for p in self.model.parameters() if id(p) not in embed)
        return sum(p.numel() * p.element_size() for p in params)

    @torch.inference_mode()
    def prefill(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        logits, state = self.model(x, state)  # (B, T, V)
        return logits[:, -1].float(), state

    @torch.inference_mode()
    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        return self.model(x, state)

    @torch.inference_mode()
    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        logits, state = self.model(x[:, None], state)  # (B, 1, V)
        return logits[:, 0].float(), state


class CudaGraphStepper:
    """A FastStepper whose step is captured in a CUDA graph, once per batch size.

    One step is ~40 small kernels; replaying them as one graph removes the
    per-kernel launch cost that bounds eager single-stream sampling on a GPU.
    The returned state tensors are the graph's own buffers, updated in place by
    the next step (clone them to keep a snapshot); passing them back in, as a
    sampling loop does, costs no copy. The returned logits are a fresh tensor.
    """

    def __init__(self, inner: FastStepper) -> None:
        self.inner = inner
        self.weights = inner.weights
        # batch size -> (graph, x buffer, state buffers, logits buffer)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, Tensor, State, Tensor]] = {}

    def weight_bytes(self) -> int:
        return self.inner.weight_bytes()

    def prefill(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        return self.inner.prefill(x, state)

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        return self.inner.forward(x, state)

    @torch.inference_mode()
    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B,) ids -> logits (B, V) fp32 and the new state (the graph's buffers)."""
        entry = self.graphs.get(x.shape[0])
        if entry is None:
            entry = self._capture(state)
            self.graphs[x.shape[0]] = entry
        graph, x_buf, state_buf, logits = entry
        x_buf.copy_(x)
        for dst, src in zip(state_buf, state):
            if src is not dst:
                dst.copy_(src)
        graph.replay()
        return logits.clone(), state_buf

    def _capture(self, state: State) -> tuple[torch.cuda.CUDAGraph, Tensor, State, Tensor]:
        x_buf = torch.zeros(state[0].shape[1], dtype=torch.long, device=state[0].device)
        state_buf = tuple(s.clone() for s in state)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up runs (lazy inits) outside the capture
            for _ in range(2):
                self.inner.step(x_buf, state_buf)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits, new_state = self.inner.step(x_buf, state_buf)
            for dst, src in zip(state_buf, new_state):
                dst.copy_(src)  # stream order: after every read of the old state
        return graph, x_buf, state_buf, logits


def build_stepper(model: CharRNN, weights: str = "fp32", cuda_graph: bool = False) -> Stepper:
    """The fastest stepper for `model` (in eval mode: dropout is not applied).

    weights: "fp32", "bf16" or "int8" (see the module docstring). Kinds without a
    hand-written step get the model's own forward and accept fp32 only. With
    cuda_graph on a CUDA device the fast step is replayed from a CUDA graph.
    Raises CharRNNError for a mode this device or this kind cannot run, naming
    the modes that work.
    """
    device = model.head.weight.device
    cls = _stepper_class(model)
    fast = cls is not None
    modes = available_weight_modes(device) if fast else ["fp32"]
    if weights not in modes:
        raise CharRNNError(_mode_error(weights, modes, device, model.cfg.model, fast))
    if cls is None:
        return ModelStepper(model)
    stepper = cls(model, weights)
    if cuda_graph and device.type == "cuda":
        return CudaGraphStepper(stepper)
    return stepper


class SteppedModel(nn.Module):
    """A CharRNN stand-in whose forward runs a stepper's weights: `eval --weights` scores it.

    forward(x (B, T), state) -> (logits (B, T, V), state); init_state as CharRNN's.
    """

    def __init__(self, model: CharRNN, stepper: Stepper) -> None:
        super().__init__()
        self.model = model
        self.cfg = model.cfg
        self.stepper = stepper
        self.train(model.training)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        return self.model.init_state(batch_size, device)

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        return self.stepper.forward(x, state)


def quantize_model(model: CharRNN, weights: str) -> SteppedModel:
    """`model` with its weights in mode `weights`, as a module; same errors as build_stepper."""
    return SteppedModel(model, build_stepper(model, weights))


def _mode_error(weights: str, modes: list[str], device: torch.device, kind: str, fast: bool) -> str:
    use = "use " + (f"{', '.join(modes[:-1])} or {modes[-1]}" if len(modes) > 1 else modes[0])
    if weights not in WEIGHT_MODES:
        return f"unknown --weights '{weights}': {use}."
    if not fast:
        return f"--weights {weights} is not available for {kind} models (no fast step): {use}."
    if weights == "int8" and device.type == "cpu":
        return f"--weights int8 needs a quantized CPU engine, which this torch build lacks: {use}."
    return f"--weights {weights} does not run on {device.type} here: {use}."
