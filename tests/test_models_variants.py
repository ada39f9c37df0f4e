"""mlstm, mogrifier-lstm and ln-lstm: the stacks against the papers' equations written out, the
reductions to the plain LSTM, gradients, and the sampling step against the forward."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from charrnn.config import ModelConfig
from charrnn.models.charrnn import CharRNN
from charrnn.models.variants import MOGRIFIER_ROUNDS, VariantStack
from charrnn.sample.fast_step import available_weight_modes, build_stepper
from charrnn.sample.variant_step import LNLSTMStepper, MLSTMStepper, MogrifierStepper

VARIANT_KINDS = ("mlstm", "mogrifier-lstm", "ln-lstm")
B, T, E, H = 3, 7, 5, 4


def make(kind: str, layers: int = 2, hidden: int = H, embed: int = E, dropout: float = 0.0) -> Any:
    """A float64 stack of `kind` with every parameter away from its init (gains of 1, zero biases)."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=11, model=kind, num_layers=layers, hidden_size=hidden, embed_size=embed, dropout=dropout
    )
    stack = CharRNN(cfg).stack.double()
    with torch.no_grad():
        for p in stack.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return stack


def rand_state(layers: int = 2) -> tuple[Tensor, Tensor]:
    return torch.randn(layers, B, H, dtype=torch.float64), torch.randn(layers, B, H, dtype=torch.float64)


def lstm_cell(gates: Tensor, c: Tensor, norm_c=lambda c: c) -> tuple[Tensor, Tensor]:
    i, f, g, o = gates.chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(norm_c(c)), c


def layer_norm(v: Tensor, gain: Tensor, bias: Tensor | float = 0.0) -> Tensor:
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    return (v - mean) / torch.sqrt(var + 1e-5) * gain + bias


def reference_step(kind: str, layer: Any, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """One step of one layer, written from the papers' equations."""
    if kind == "mlstm":  # Krause et al. 2016
        Hn = h.shape[-1]
        w_x, w_mx = layer.weight_ih[: 4 * Hn], layer.weight_ih[4 * Hn :]
        m = (x @ w_mx.T) * (h @ layer.weight_mh.T)
        return lstm_cell(x @ w_x.T + layer.bias + m @ layer.weight_mg.T, c)
    if kind == "mogrifier-lstm":  # Melis et al. 2020: rounds 1, 3, 5 change x; 2, 4 change h
        hm = h
        for r in range(1, MOGRIFIER_ROUNDS + 1):
            if r % 2:
                x = 2 * torch.sigmoid(hm @ layer.weight_q[r // 2].T) * x
            else:
                hm = 2 * torch.sigmoid(x @ layer.weight_r[r // 2 - 1].T) * hm
        return lstm_cell(x @ layer.weight_ih.T + hm @ layer.weight_hh.T + layer.bias, c)
    # Ba et al. 2016
    gates = layer_norm(x @ layer.weight_ih.T, layer.gain_ih, layer.bias) + layer_norm(
        h @ layer.weight_hh.T, layer.gain_hh
    )
    return lstm_cell(gates, c, lambda c: layer_norm(c, layer.gain_c, layer.bias_c))


def reference(kind: str, stack: Any, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    hs, cs = [], []
    for i, layer in enumerate(stack.layers):
        h, c = state[0][i], state[1][i]
        outs = []
        for t in range(x.shape[1]):
            h, c = reference_step(kind, layer, x[:, t], h, c)
            outs.append(h)
        x = torch.stack(outs, 1)
        hs.append(h)
        cs.append(c)
    return x, (torch.stack(hs), torch.stack(cs))


@pytest.mark.parametrize("kind", VARIANT_KINDS)
@pytest.mark.parametrize("layers", [1, 3])
def test_stack_follows_the_papers_equations(kind: str, layers: int) -> None:
    stack = make(kind, layers=layers)
    assert isinstance(stack, VariantStack)
    x, state = torch.randn(B, T, E, dtype=torch.float64), rand_state(layers)
    out, new = stack(x, state)
    want, want_state = reference(kind, stack, x, state)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    for got, ref in zip(new, want_state):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


def test_mogrifier_with_zero_q_and_r_is_the_fused_lstm() -> None:
    # 2 sigmoid(0) = 1: no round changes x or h, what is left is the plain LSTM.
    mog = make("mogrifier-lstm", layers=2)
    torch.manual_seed(0)
    fused = CharRNN(ModelConfig(vocab_size=11, model="lstm", num_layers=2, hidden_size=H, embed_size=E)).stack.double()
    with torch.no_grad():
        for layer, plain in zip(mog.layers, fused.layers):
            layer.weight_q.zero_()
            layer.weight_r.zero_()
            plain.weight_ih_l0.copy_(layer.weight_ih)
            plain.weight_hh_l0.copy_(layer.weight_hh)
            plain.bias_ih_l0.copy_(layer.bias)
            plain.bias_hh_l0.zero_()
    x, state = torch.randn(B, T, E, dtype=torch.float64), rand_state()
    out, new = mog(x, state)
    want, want_state = fused(x, state)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(new[1], want_state[1])


@pytest.mark.parametrize("kind", VARIANT_KINDS)
def test_gradcheck(kind: str) -> None:
    stack = make(kind, layers=2, hidden=2, embed=3)
    names = [name for name, _ in stack.named_parameters()]
    x = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    state = tuple(torch.randn(2, 2, 2, dtype=torch.float64, requires_grad=True) for _ in range(2))

    def run(x: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
        params = dict(zip(names, tensors[2:]))
        out, new = torch.func.functional_call(stack, params, (x, tuple(tensors[:2])))
        return (out, *new)

    params = tuple(p.detach().clone().requires_grad_() for p in stack.parameters())
    assert torch.autograd.gradcheck(run, (x, *state, *params))


@pytest.mark.parametrize("kind", VARIANT_KINDS)
def test_activations_and_chunks(kind: str) -> None:
    stack = make(kind, layers=2)
    x, state = torch.randn(B, T, E, dtype=torch.float64), rand_state()
    out, new = stack(x, state)
    out2, new2, acts = stack.forward_with_activations(x, state)
    torch.testing.assert_close(out2, out, rtol=0, atol=0)
    assert list(acts) == ["input", "forget", "output", "cell", "hidden"]
    assert all(a.shape == (2, B, T, H) for a in acts.values())
    torch.testing.assert_close(acts["hidden"][-1], out, rtol=0, atol=0)
    torch.testing.assert_close(acts["cell"][:, :, -1], new2[1], rtol=0, atol=0)
    for gate in ("input", "forget", "output"):
        assert ((acts[gate] > 0) & (acts[gate] < 1)).all()
    first, mid = stack(x[:, :3], state)
    rest, end = stack(x[:, 3:], mid)
    torch.testing.assert_close(torch.cat([first, rest], 1), out)
    torch.testing.assert_close(end[1], new[1])


@pytest.mark.parametrize("kind", VARIANT_KINDS)
def test_locked_dropout_between_layers_only_in_training(kind: str) -> None:
    stack = make(kind, layers=2, dropout=0.5)
    x, state = torch.randn(B, T, E, dtype=torch.float64), rand_state()
    stack.eval()
    torch.testing.assert_close(stack(x, state)[0], stack(x, state)[0], rtol=0, atol=0)
    stack.train()
    assert not torch.equal(stack(x, state)[0], stack.eval()(x, state)[0])


@pytest.mark.parametrize(
    ("kind", "stepper"), [("mlstm", MLSTMStepper), ("mogrifier-lstm", MogrifierStepper), ("ln-lstm", LNLSTMStepper)]
)
def test_sampling_step_is_the_hand_written_one_and_equals_the_forward(kind: str, stepper: type) -> None:
    torch.manual_seed(3)
    model = CharRNN(ModelConfig(vocab_size=11, model=kind, num_layers=3, hidden_size=16, embed_size=8)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randint(0, 11, (4, 9))
    state = tuple(torch.randn_like(s) * 0.5 for s in model.init_state(4))
    with torch.no_grad():
        want, want_state = model(x, state)
    for weights in available_weight_modes("cpu"):
        step = build_stepper(model, weights)
        assert isinstance(step, stepper)
        s, outs = state, []
        for t in range(x.shape[1]):
            logits, s = step.step(x[:, t], s)
            outs.append(logits)
        got = torch.stack(outs, 1)
        tol = {"fp32": 1e-5, "bf16": 0.05, "int8": 0.1}[weights]
        assert (got - want).abs().max() < tol * max(1.0, want.abs().max().item()), weights
        assert (s[1] - want_state[1]).abs().max() < tol * 4, weights
        # softmax agrees on the likeliest next character in fp32 everywhere
        if weights == "fp32":
            assert torch.equal(got.argmax(-1), want.argmax(-1))
            assert F.softmax(got, -1).sub(F.softmax(want, -1)).abs().max() < 1e-5


def test_every_loop_is_scripted() -> None:
    # scripted.script falls back to the Python function when TorchScript refuses it: slower, silently.
    from charrnn.models import variants

    for loop in (variants.mlstm_loop, variants.mogrifier_loop, variants.ln_lstm_loop):
        assert isinstance(loop, torch.jit.ScriptFunction), loop
