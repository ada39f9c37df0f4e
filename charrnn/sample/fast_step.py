"""Fast one-character steps for sampling: which step serves a model, in which weight mode.

See charrnn.sample.step_base for what the steps share and the weight modes.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor, nn

from charrnn.errors import CharRNNError
from charrnn.limits import int8_nonfinite_error
from charrnn.models.charrnn import CharRNN, FusedStack, State
from charrnn.sample.fused_step import FusedStepper
from charrnn.sample.step_base import WEIGHT_MODES, FastStepper, Stepper, available_weight_modes


def _stepper_class(model: CharRNN) -> type[FastStepper] | None:
    """The hand-written step for `model`'s stack, or None."""
    if isinstance(model.stack, FusedStack):
        return FusedStepper
    # A custom stack exists only once its module is imported: no import here.
    recurrent = sys.modules.get("charrnn.models.custom")
    name = type(model.stack).__name__
    if recurrent is not None and type(model.stack) is getattr(recurrent, name, None):
        from charrnn.sample import custom_step as fastpath_custom

        return fastpath_custom.STEPPERS.get(name)
    cells = sys.modules.get("charrnn.models.variants")
    if cells is not None and type(model.stack) is cells.VariantStack:
        from charrnn.sample import variant_step

        return variant_step.STEPPERS.get(model.cfg.model)
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
