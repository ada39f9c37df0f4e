"""What every fast one-character step shares: weight modes, the packed products, the base class.

The steps themselves: charrnn.sample.fused_step (lstm, gru, rnn), charrnn.sample.custom_step
(peephole-lstm, gf-*), charrnn.sample.variant_step (mlstm, mogrifier-lstm, ln-lstm);
charrnn.sample.fast_step picks one for a model.

Sampling one stream reads every weight once per character, so the step is bound
by memory traffic and by per-op overhead (microseconds per torch call from Python),
not by arithmetic. Every fast step therefore:

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
(charrnn.sample.custom_step); mlstm, mogrifier-lstm, ln-lstm (charrnn.sample.variant_step).
Any other stack steps through
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
import warnings
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from charrnn.models.charrnn import CharRNN, State

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


def int8_engine() -> str | None:
    engine = torch.backends.quantized.engine
    if engine in _INT8_ENGINES and engine in torch.backends.quantized.supported_engines:
        return engine
    return None


def _has_fbgemm_fp16() -> bool:
    return torch.backends.quantized.engine in ("x86", "fbgemm") and hasattr(torch.ops.quantized, "linear_prepack_fp16")


def available_weight_modes(device: torch.device | str) -> list[str]:
    """The weight modes `build_stepper` accepts for a model on `device`."""
    kind = torch.device(device).type
    if kind == "cpu":
        return ["fp32", "bf16"] + (["int8"] if int8_engine() else [])
    if kind == "cuda":
        return ["fp32", "bf16"]
    return ["fp32"]


class Linear:
    """out (B, N) fp32 = base + [x1, x2, ...] @ [W1 | W2 | ...]^T, W held in one weight mode.

    The weights (each (N, Ki)) are concatenated once; a single one is used as it
    is, so fp32 shares the model's tensor. One long matmul per layer beats two short
    ones for one stream (benchmarks/RESULTS.md, "Sampling kernels"). `into` writes into a caller's
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
            # matrix-vector product then streams the weights at the memory's read bandwidth,
            # faster than through the transposed view (benchmarks/RESULTS.md, "Sampling kernels").
            self.weight_t = weight.t().contiguous() if weight.is_cpu else weight.t()
        elif mode == "bf16" and weight.is_cpu and _has_fbgemm_fp16() and weight.abs().max() < 6e4:
            # The bf16-rounded weights, held as fp16 (exact for |w| >= 6e-5, off by under
            # 3e-8 below): on CPUs without native bf16, fbgemm's fp16 kernel beats torch's bf16 matmul.
            self.mode = "fp16-packed"
            self.packed = torch.ops.quantized.linear_prepack_fp16(weight.bfloat16().float(), None)
        elif mode == "bf16":
            self.weight = weight.bfloat16()
        elif mode == "int8":
            self.packed = prepack_int8(weight)
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


def prepack_int8(weight: Tensor) -> object:
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


def gate_order(hidden: int, blocks: list[int]) -> Tensor:
    """Row index that reorders gate blocks of `hidden` rows: [0, 1, 3, 2] puts block 3 third."""
    return torch.cat([torch.arange(b * hidden, (b + 1) * hidden) for b in blocks])


class FastStepper:
    """Base of the hand-written steps: weights prepared once, buffers kept per batch size.

    Subclasses set `table` (the folded first layer), `lins` (every Linear, for
    weight_bytes) and `head`, and implement `_buffers(batch)` and `_step`. The
    buffers hold gate pre-activations only: returned logits and states are always
    new tensors, so a caller may keep any of them. One stepper serves one thread.
    """

    table: Tensor
    lins: list[Linear]
    head: Linear

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
