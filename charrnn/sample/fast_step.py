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

Kinds: lstm, gru, rnn (`FusedStepper`); peephole-lstm and gf-rnn, gf-gru, gf-lstm
(charrnn.sample.custom_step). Any other stack steps through
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
from charrnn.limits import int8_nonfinite_error
from charrnn.models.charrnn import CharRNN, FusedStack, State

WEIGHT_MODES = ("fp32", "bf16", "int8")
# Quantized engines whose dynamic int8 linear runs on this CPU (x86 builds have the first two).
_INT8_ENGINES = ("x86", "fbgemm", "qnnpack")
# Primes up to this many symbols are fed by stepping rather than by one fused forward.
_STEP_PREFILL = 4


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


def _stepper_class(model: CharRNN) -> type[FastStepper] | None:
    """The hand-written step for `model`'s stack, or None."""
    if isinstance(model.stack, FusedStack):
        return FusedStepper
    # A custom stack exists only once charrnn.models.custom is imported: no import here.
    recurrent = sys.modules.get("charrnn.models.custom")
    name = type(model.stack).__name__
    if recurrent is not None and type(model.stack) is getattr(recurrent, name, None):
        from charrnn.sample import custom_step as fastpath_custom

        return fastpath_custom.STEPPERS.get(name)
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
    if weights == "int8":  # NaN or inf has no int8 scale: fbgemm would step NaN silently
        bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise int8_nonfinite_error(bad)
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
