"""The fast sampling step: same numbers as the model's forward, reduced-precision modes close."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from charrnn.config import ModelConfig
from charrnn.errors import CharRNNError
from charrnn.models.charrnn import CharRNN, FusedStack, State
from charrnn.sample import fast_step as fastpath
from charrnn.sample import step_base
from charrnn.sample.fast_step import (
    FastStepper,
    ModelStepper,
    Stepper,
    available_weight_modes,
    build_stepper,
)

KINDS = ("lstm", "gru", "rnn")
# Kinds of charrnn.models.custom, with their own hand-written steps.
CUSTOM_KINDS = ("peephole-lstm", "gf-rnn", "gf-gru", "gf-lstm")
# Kinds of charrnn.models.variants.
VARIANT_KINDS = ("mlstm", "mogrifier-lstm", "ln-lstm")
ALL_KINDS = KINDS + CUSTOM_KINDS + VARIANT_KINDS
VOCAB = 11
LOW_PRECISION = [m for m in ("bf16", "int8") if m in available_weight_modes("cpu")]


def make_model(kind: str, layers: int = 2, hidden: int = 16, embed: int = 0, seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=VOCAB, model=kind, num_layers=layers, hidden_size=hidden, embed_size=embed)
    return CharRNN(cfg).eval()


def random_state(model: CharRNN, batch: int) -> State:
    """A non-zero state, so the recurrent weights matter from the first step."""
    return tuple(torch.randn_like(s) * 0.5 for s in model.init_state(batch))


def step_through(stepper: Stepper, x: Tensor, state: State) -> tuple[Tensor, State]:
    """x (B, T) -> logits (B, T, V) by calling stepper.step once per position."""
    outs = []
    for t in range(x.shape[1]):
        logits, state = stepper.step(x[:, t], state)
        outs.append(logits)
    return torch.stack(outs, 1), state


def assert_state_close(a: State, b: State, atol: float) -> None:
    assert len(a) == len(b)
    for sa, sb in zip(a, b):
        assert sa.shape == sb.shape
        torch.testing.assert_close(sa, sb, atol=atol, rtol=0)


def assert_steps_match_forward(stepper, model, x: Tensor, state, atol: float, rtol: float | None) -> Tensor:
    """Step `stepper` through x one symbol at a time; logits and final state equal the model's forward.

    rtol None keeps assert_close's default tolerances for the logits. Returns the forward's logits.
    """
    with torch.no_grad():
        want, want_state = model(x, state)
    got, got_state = step_through(stepper, x, state)
    assert got.dtype == torch.float32 and got.shape == want.shape
    if rtol is None:
        torch.testing.assert_close(got, want)
    else:
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
    assert_state_close(got_state, want_state, atol=atol)
    return want


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("layers,embed", [(1, 0), (3, 8)])
def test_fp32_step_equals_forward(kind: str, layers: int, embed: int) -> None:
    model = make_model(kind, layers, embed=embed)
    stepper = build_stepper(model, "fp32")
    assert isinstance(stepper, FastStepper)
    x = torch.randint(0, VOCAB, (3, 15))
    state = random_state(model, 3)
    want = assert_steps_match_forward(stepper, model, x, state, atol=1e-5, rtol=1e-5)
    whole, _ = stepper.forward(x, state)
    torch.testing.assert_close(whole, want, atol=1e-6, rtol=1e-6)


def test_rnn_relu_step_equals_forward() -> None:
    model = make_model("rnn", 2)
    stack = model.stack
    assert isinstance(stack, FusedStack)
    for i, old in enumerate(list(stack.layers)):
        assert isinstance(old, nn.RNN)
        new = nn.RNN(old.input_size, old.hidden_size, nonlinearity="relu", batch_first=True)
        new.load_state_dict(old.state_dict())
        stack.layers[i] = new
    x = torch.randint(0, VOCAB, (2, 10))
    state = random_state(model, 2)
    with torch.no_grad():
        want, _ = model(x, state)
    got, _ = step_through(build_stepper(model, "fp32"), x, state)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("prime", [1, 7])  # stepped, and one fused forward
def test_prefill_then_step_equals_forward(kind: str, prime: int) -> None:
    model = make_model(kind, 2)
    stepper = build_stepper(model, "fp32")
    x = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        want, want_state = model(x, model.init_state(2))
    logits, state = stepper.prefill(x[:, :prime], model.init_state(2))
    torch.testing.assert_close(logits, want[:, prime - 1], atol=1e-5, rtol=1e-5)
    got, state = step_through(stepper, x[:, prime:], state)
    torch.testing.assert_close(got, want[:, prime:], atol=1e-5, rtol=1e-5)
    assert_state_close(state, want_state, atol=1e-5)


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("weights", LOW_PRECISION)
def test_low_precision_close_and_deterministic(kind: str, weights: str) -> None:
    model = make_model(kind, 2, hidden=32)
    x = torch.randint(0, VOCAB, (2, 20))
    state = random_state(model, 2)
    with torch.no_grad():
        want, want_state = model(x, state)
    stepper = build_stepper(model, weights)
    got, got_state = step_through(stepper, x, state)
    tol = 0.02 if weights == "bf16" else 0.08
    if kind == "ln-lstm" and weights == "int8":
        # The layer norm divides the recurrent product by its own spread, small in an untrained
        # model: the product's int8 rounding comes out larger.
        tol = 0.25
    torch.testing.assert_close(got, want, atol=tol, rtol=0)
    assert_state_close(got_state, want_state, atol=tol)
    again, again_state = step_through(build_stepper(model, weights), x, state)
    assert torch.equal(again, got)
    assert all(torch.equal(a, b) for a, b in zip(again_state, got_state))
    whole, _ = stepper.forward(x, state)  # the same numbers as a whole sequence
    assert torch.equal(whole, got)
    wrapped, _ = fastpath.quantize_model(model, weights)(x, state)  # what `eval --weights` runs
    assert torch.equal(wrapped, got)


@pytest.mark.parametrize("weights", ["fp32", *LOW_PRECISION])
def test_building_and_stepping_warn_nothing(weights: str) -> None:
    model = make_model("lstm", 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stepper = build_stepper(model, weights)
        stepper.step(torch.zeros(1, dtype=torch.long), model.init_state(1))
    assert [str(w.message) for w in caught] == []


def test_nothing_reaches_stderr_in_a_fresh_process() -> None:
    """C++ warnings (printed once per process) bypass Python's filters: check the terminal."""
    code = (
        "import torch\n"
        "from charrnn.config import ModelConfig\n"
        "from charrnn.models.charrnn import CharRNN\n"
        "from charrnn.sample.fast_step import build_stepper, available_weight_modes\n"
        "m = CharRNN(ModelConfig(vocab_size=5, num_layers=2, hidden_size=8)).eval()\n"
        "for w in available_weight_modes('cpu'):\n"
        "    s = build_stepper(m, w)\n"
        "    s.step(torch.zeros(2, dtype=torch.long), m.init_state(2))\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_low_precision_shrinks_weights() -> None:
    model = make_model("lstm", 2, hidden=64)
    sizes = {w: build_stepper(model, w).weight_bytes() for w in ["fp32", *LOW_PRECISION]}
    head = model.head.weight.numel() * 4  # the head stays fp32
    if "bf16" in sizes:
        assert sizes["bf16"] - head == (sizes["fp32"] - head) // 2
    if "int8" in sizes:
        assert sizes["int8"] - head == (sizes["fp32"] - head) // 4


def test_seeded_sampling_gives_the_same_characters() -> None:
    """The fast fp32 step draws exactly the characters the model's own forward draws."""
    model = make_model("lstm", 2, hidden=32)

    def sample(stepper: Stepper) -> list[int]:
        gen = torch.Generator().manual_seed(7)
        logits, state = stepper.prefill(torch.tensor([[1, 2, 3]]), model.init_state(1))
        out = []
        for _ in range(200):
            nxt = torch.multinomial(torch.softmax(logits / 0.8, -1), 1, generator=gen)[:, 0]
            out.append(int(nxt))
            logits, state = stepper.step(nxt, state)
        return out

    assert sample(build_stepper(model, "fp32")) == sample(ModelStepper(model))


class WrappedStack(nn.Module):
    """A stack that is not a FusedStack, as a kind without a fast step has."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        return self.inner(x, state)


def test_kind_without_fast_step_falls_back_to_forward() -> None:
    model = make_model("lstm", 2)
    assert isinstance(model.stack, FusedStack)
    model.stack = WrappedStack(model.stack)
    stepper = build_stepper(model, "fp32")
    assert isinstance(stepper, ModelStepper)
    assert_steps_match_forward(
        stepper, model, torch.randint(0, VOCAB, (2, 8)), random_state(model, 2), atol=1e-6, rtol=None
    )
    with pytest.raises(CharRNNError, match="use fp32"):
        build_stepper(model, "bf16")


@pytest.mark.parametrize("weights", ["fp32", *LOW_PRECISION])
def test_returned_states_are_never_overwritten(weights: str) -> None:
    """The step keeps buffers per batch size; what it returns must stay the caller's."""
    for kind in ALL_KINDS:
        model = make_model(kind, 2)
        stepper = build_stepper(model, weights)
        x = torch.randint(0, VOCAB, (2, 4))
        state = random_state(model, 2)
        logits, first = stepper.step(x[:, 0], state)
        kept = [logits.clone(), *(s.clone() for s in first)]
        stepper.step(x[:, 1], first)
        stepper.step(x[:, 2], state)
        assert all(torch.equal(a, b) for a, b in zip(kept, [logits, *first])), kind
        again, again_state = stepper.step(x[:, 0], state)  # the same input, the same output
        assert torch.equal(again, logits), kind
        assert all(torch.equal(a, b) for a, b in zip(again_state, first)), kind


def test_unknown_weight_mode_is_an_error() -> None:
    with pytest.raises(CharRNNError, match="fp32") as err:
        build_stepper(make_model("lstm", 1), "fp8")
    assert "\n" not in str(err.value)


def test_int8_without_a_quantized_engine_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(step_base, "int8_engine", lambda: None)
    assert available_weight_modes("cpu") == ["fp32", "bf16"]
    with pytest.raises(CharRNNError, match="use fp32 or bf16"):
        build_stepper(make_model("gru", 1), "int8")


def test_modes_per_device() -> None:
    assert available_weight_modes("cpu")[:2] == ["fp32", "bf16"]
    assert available_weight_modes("cuda") == ["fp32", "bf16"]
    assert available_weight_modes("mps") == ["fp32"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_step_equals_forward(kind: str) -> None:
    model = make_model(kind, 2).cuda()
    x = torch.randint(0, VOCAB, (2, 10), device="cuda")
    state = tuple(s.cuda() for s in random_state(model, 2))
    with torch.no_grad():
        want, _ = model(x, state)
    got, _ = step_through(build_stepper(model, "fp32"), x, state)
    # TF32 may be on for CUDA matmuls; the tolerance allows it.
    torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)
    low, _ = step_through(build_stepper(model, "bf16"), x, state)
    torch.testing.assert_close(low, want, atol=0.05, rtol=0)
    with pytest.raises(CharRNNError, match="use fp32 or bf16"):
        build_stepper(model, "int8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_graph_step_equals_eager_step(kind: str) -> None:
    model = make_model(kind, 2).cuda()
    graphed = build_stepper(model, "fp32", cuda_graph=True)
    eager = build_stepper(model, "fp32")
    assert isinstance(graphed, fastpath.CudaGraphStepper)
    for batch in (3, 1):  # one graph per batch size
        x = torch.randint(0, VOCAB, (batch, 8), device="cuda")
        state = tuple(s.cuda() for s in random_state(model, batch))
        want, want_state = step_through(eager, x, state)
        got, got_state = step_through(graphed, x, state)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert_state_close(got_state, want_state, atol=1e-5)
        # A state from elsewhere (not the graph's buffers) is copied in.
        logits, _ = graphed.step(x[:, 0], state)
        again, _ = eager.step(x[:, 0], state)
        torch.testing.assert_close(logits, again, atol=1e-5, rtol=1e-5)
