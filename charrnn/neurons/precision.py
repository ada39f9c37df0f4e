"""The arithmetic of the inspection commands: fp32, or bf16 or int8 products where they pay.

`cells`, `inspect`, `gates` and `view` step wide LSTM layers one time step at a time
(charrnn.neurons.layers.lstm_layer_activations), and almost all of that time is the recurrent
matmul. In fp32 that matmul alone runs at the speed of the fused inference kernel, so the
commands could at best match a forward pass. Int8 weights and activations (fbgemm, one scale
per weight row, the activations quantized per call) or bf16 make the products several times
faster where the CPU has the instructions (benchmarks/RESULTS.md, "Inspection throughput");
the activations then differ from the exact ones by about 0.01 (tested), far below what
colours or correlations show.

`resolve_precision` turns the user's choice (`--precision`, default auto) into the one used:
auto is bf16 on CPUs with AMX (bf16 tiles), else int8 where torch has an int8 engine, else
fp32; every layer that is not a wide LSTM on the CPU stays fp32, so auto is fp32 there.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from charrnn.errors import CharRNNError
from charrnn.models.charrnn import CharRNN, FusedStack
from charrnn.sample.step_base import Linear, int8_engine

Precision = Literal["auto", "fp32", "bf16", "int8"]
PRECISIONS = ("auto", "fp32", "bf16", "int8")

# LSTM layers this wide or wider report gates and cells from a step loop (one matmul per step);
# narrower ones from the fused kernel plus one batched recomputation of the gates, where the
# per-step overhead of a loop costs more than the second matmul (measured with
# benchmarks/bench_inspect.py --hidden-size 64 and 512; figures in its results).
STEP_MIN_HIDDEN = 256


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def steps_by_hand(model: CharRNN) -> bool:
    """Whether every layer of the model is a wide LSTM on the CPU: the layers a precision affects."""
    stack = model.stack
    if not isinstance(stack, FusedStack) or next(model.parameters()).device.type != "cpu":
        return False
    return all(isinstance(layer, nn.LSTM) and layer.hidden_size >= STEP_MIN_HIDDEN for layer in stack.layers)


def resolve_precision(model: CharRNN, requested: str) -> str:
    """The precision the inspection of `model` runs in for `requested` (see the module docstring).

    Raises CharRNNError for bf16 or int8 on a model they do not apply to, or int8 on a torch
    without an int8 engine.
    """
    if requested not in PRECISIONS:
        raise CharRNNError(f"unknown precision '{requested}': choose {', '.join(PRECISIONS)}.")
    eligible = steps_by_hand(model)
    if requested == "auto":
        if not eligible:
            return "fp32"
        if "amx_bf16" in cpu_flags():
            return "bf16"
        return "int8" if int8_engine() else "fp32"
    if requested != "fp32" and not eligible:
        cfg = model.cfg
        raise CharRNNError(
            f"--precision {requested} applies to lstm models of {STEP_MIN_HIDDEN} units or more on the CPU "
            f"(this is a {cfg.model} {cfg.num_layers}x{cfg.hidden_size}): use fp32 or auto."
        )
    if requested == "int8" and not int8_engine():
        raise CharRNNError("this torch has no int8 engine on this CPU: use --precision fp32 or bf16.")
    return requested


class Product:
    """x (M, K) -> x @ W^T (+ bias) with W (N, K) held in one precision; results are fp32.

    fp32 uses W as given; bf16 rounds W and x to bf16 (the product comes back in bf16, then
    joins fp32); int8 is charrnn.sample.step_base.Linear's fbgemm kernel.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, precision: str) -> None:
        self.precision = precision
        self.bias = bias
        self.int8 = Linear([weight], bias, "int8") if precision == "int8" else None
        self.weight_t = weight.t().to(torch.bfloat16 if precision == "bf16" else torch.float32)

    def __call__(self, x: Tensor) -> Tensor:
        """A new (M, N) fp32 tensor."""
        if self.int8 is not None:
            return self.int8(x)
        if self.precision == "bf16":
            y = torch.mm(x.to(torch.bfloat16), self.weight_t).float()
            return y if self.bias is None else y.add_(self.bias)
        return x @ self.weight_t if self.bias is None else torch.addmm(self.bias, x, self.weight_t)

    def accumulate(self, out: Tensor, x: Tensor) -> Tensor:
        """out (M, N) += x @ W^T, in place (the bias is not added)."""
        if self.int8 is not None:
            return self.int8.into(out, x, out)
        if self.precision == "bf16":
            return out.add_(torch.mm(x.to(torch.bfloat16), self.weight_t))
        return torch.addmm(out, x, self.weight_t, out=out)
