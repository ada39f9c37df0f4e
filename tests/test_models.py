"""Peephole LSTM and gated-feedback stacks: reductions to the plain kinds, reference
implementations, shapes, chunking, gradients. Tiny sizes, CPU, float64 where compared."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import Tensor

from charrnn.config import MODELS, ModelConfig
from charrnn.models import scripted
from charrnn.models.charrnn import CharRNN, FusedStack
from charrnn.models.custom import GatedFeedbackStack, PeepholeLSTMStack

NEW_KINDS = ("peephole-lstm", "gf-rnn", "gf-gru", "gf-lstm")
GF_PLAIN = {"gf-rnn": "rnn", "gf-gru": "gru", "gf-lstm": "lstm"}
B, T, E, H = 3, 7, 5, 4
BIG = 1e4  # sigmoid(+-1e4) is exactly 1.0 / 0.0 in float32 and float64


def make(kind: str, layers: int = 2, dropout: float = 0.0, hidden: int = H, embed: int = E) -> Any:
    """A float64 stack of `kind` (Any: the tests reach into its parameters)."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=11,
        model=kind,
        num_layers=layers,
        hidden_size=hidden,
        embed_size=embed,
        dropout=dropout,
    )
    return CharRNN(cfg).stack.double()


def rand_state(kind: str, layers: int = 2) -> tuple[Tensor, ...]:
    n = 2 if kind.endswith("lstm") else 1
    return tuple(torch.randn(layers, B, H, dtype=torch.float64) for _ in range(n))


def blocks(kind: str) -> tuple[int, int]:
    """(unit blocks n, own-gate blocks k) of a GF kind."""
    return {"gf-rnn": (1, 0), "gf-gru": (3, 2), "gf-lstm": (4, 3)}[kind]


# ---------------------------------------------------------------- reference implementations


def peephole_reference(stack: Any, x: Tensor, state: tuple[Tensor, ...]):
    """Gers & Schmidhuber written out step by step."""
    hs, cs = [], []
    for layer, h, c in zip(stack.layers, state[0], state[1]):
        outs = []
        for t in range(x.size(1)):
            g = x[:, t] @ layer.weight_ih.t() + layer.bias + h @ layer.weight_hh.t()
            gi, gf, gc, go = g.chunk(4, 1)
            i = torch.sigmoid(gi + layer.peephole[0] * c)  # sees c(t-1)
            f = torch.sigmoid(gf + layer.peephole[1] * c)
            c = f * c + i * torch.tanh(gc)
            o = torch.sigmoid(go + layer.peephole[2] * c)  # sees c(t)
            h = o * torch.tanh(c)
            outs.append(h)
        x = torch.stack(outs, 1)
        hs.append(h)
        cs.append(c)
    return x, (torch.stack(hs), torch.stack(cs))


def gf_reference(stack: Any, kind: str, x: Tensor, state: tuple[Tensor, ...]):
    """Chung et al. 2015, eqs. for g_{i->j} and the gated sum, one pair (i, j) at a time."""
    n, k = blocks(kind)
    L = stack.num_layers
    h, c = list(state[0]), list(state[-1])
    outs = []
    for t in range(x.size(1)):
        h_star = torch.cat(h, 1)  # (B, L*H)
        below, new_h, new_c = x[:, t], [], []
        for j in range(L):
            w = stack.weight_in0.t() if j == 0 else stack.weight_in[j - 1]
            xw = below @ w + stack.bias_in[j]
            fb = 0.0
            for i in range(L):
                u_g = torch.cat([stack.weight_rec[s][:, k * H + L * H + j * L + i] for s in range(L)])
                g = torch.sigmoid(xw[:, n * H + i] + h_star @ u_g)  # (B,)
                u = stack.weight_rec[i][:, k * H + j * H : k * H + (j + 1) * H]
                fb = fb + g.unsqueeze(1) * (h[i] @ u)
            own = h[j] @ stack.weight_rec[j][:, : k * H]
            if kind == "gf-rnn":
                hj = torch.tanh(xw[:, :H] + fb)
            elif kind == "gf-gru":
                r = torch.sigmoid(xw[:, :H] + own[:, :H])
                z = torch.sigmoid(xw[:, H : 2 * H] + own[:, H:])
                cand = torch.tanh(xw[:, 2 * H : 3 * H] + r * (fb + stack.bias_hn[j]))
                hj = (1 - z) * cand + z * h[j]
            else:
                i_, f_ = (
                    torch.sigmoid(xw[:, :H] + own[:, :H]),
                    torch.sigmoid(xw[:, H : 2 * H] + own[:, H : 2 * H]),
                )
                o_ = torch.sigmoid(xw[:, 3 * H : 4 * H] + own[:, 2 * H :])
                new_c.append(f_ * c[j] + i_ * torch.tanh(xw[:, 2 * H : 3 * H] + fb))
                hj = o_ * torch.tanh(new_c[-1])
            new_h.append(hj)
            below = hj
        h, c = new_h, new_c or c
        outs.append(h[-1])
    state_out = (torch.stack(h), torch.stack(c)) if kind == "gf-lstm" else (torch.stack(h),)
    return torch.stack(outs, 1), state_out


def assert_same(a, b, tol: float = 1e-12) -> None:
    (out_a, st_a), (out_b, st_b) = a, b
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=tol)
    assert len(st_a) == len(st_b)
    for x, y in zip(st_a, st_b):
        torch.testing.assert_close(x, y, rtol=0, atol=tol)


# ---------------------------------------------------------------- reductions and references


def test_peephole_with_zero_peepholes_is_the_fused_lstm() -> None:
    # Equal up to float64 rounding: torch adds b_ih and b_hh separately and its matmuls
    # sum in another order, so bit equality is not defined; the gap is ~1e-16.
    peep, fused = make("peephole-lstm"), make("lstm")
    with torch.no_grad():
        for p, f in zip(peep.layers, fused.layers):
            p.weight_ih.copy_(f.weight_ih_l0)
            p.weight_hh.copy_(f.weight_hh_l0)
            p.bias.copy_(f.bias_ih_l0 + f.bias_hh_l0)
            p.peephole.zero_()
    x, state = torch.randn(B, T, E, dtype=torch.float64), rand_state("lstm")
    assert_same(peep(x, state), fused(x, state))
    assert isinstance(fused, FusedStack)  # torch's nn.LSTM, one module per layer


def test_peephole_matches_reference() -> None:
    stack = make("peephole-lstm", layers=3)
    x, state = torch.randn(B, T, E, dtype=torch.float64), rand_state("lstm", 3)
    assert_same(stack(x, state), peephole_reference(stack, x, state))


@pytest.mark.parametrize("kind", sorted(GF_PLAIN))
@pytest.mark.parametrize("layers", [1, 3])
def test_gf_matches_reference(kind: str, layers: int) -> None:
    stack = make(kind, layers=layers)
    x, state = torch.randn(B, T, E, dtype=torch.float64), rand_state(kind, layers)
    assert_same(stack(x, state), gf_reference(stack, kind, x, state))


def load_plain_into_gf(gf: Any, plain: Any, kind: str, diagonal: float) -> None:
    """Copy a plain stack's weights into `gf`; force g_{j->j} = sigmoid(diagonal),
    g_{i->j} = 0 for i != j. Weights of gated-out connections stay random."""
    n, k = blocks(kind)
    L = gf.num_layers
    own_rows = {"gf-rnn": [], "gf-gru": [0, 1], "gf-lstm": [0, 1, 3]}[kind]
    cand = {"gf-rnn": 0, "gf-gru": 2, "gf-lstm": 2}[kind]
    with torch.no_grad():
        for j, layer in enumerate(plain.layers):
            w_ih, w_hh = layer.weight_ih_l0, layer.weight_hh_l0
            b_ih, b_hh = layer.bias_ih_l0.clone(), layer.bias_hh_l0.clone()
            if kind == "gf-gru":
                gf.bias_hn[j] = b_hh[2 * H :]  # torch keeps b_hn inside r, as GF-GRU does
                b_hh[2 * H :] = 0
            if j == 0:
                gf.weight_in0[: n * H] = w_ih
            else:
                gf.weight_in[j - 1][:, : n * H] = w_ih.t()
            gf.bias_in[j, : n * H] = b_ih + b_hh
            gf.bias_in[j, n * H :] = -BIG
            gf.bias_in[j, n * H + j] = diagonal
            w_rec = gf.weight_rec[j]
            for slot, row in enumerate(own_rows):
                w_rec[:, slot * H : (slot + 1) * H] = w_hh[row * H : (row + 1) * H].t()
            w_rec[:, k * H + j * H : k * H + (j + 1) * H] = w_hh[cand * H : (cand + 1) * H].t()
            assert w_rec.shape[1] == k * H + L * H + L * L


@pytest.mark.parametrize("kind", sorted(GF_PLAIN))
def test_gf_with_cross_layer_gates_closed_is_the_stacked_model(kind: str) -> None:
    # g_{j->j} = 1, g_{i->j} = 0 (i != j): exactly the stacked model (float64 rounding only).
    gf, plain = make(kind, layers=3), make(GF_PLAIN[kind], layers=3)
    load_plain_into_gf(gf, plain, kind, diagonal=BIG)
    x, state = torch.randn(B, T, E, dtype=torch.float64), rand_state(kind, 3)
    assert_same(gf(x, state), plain(x, state))
    _, _, acts = gf.forward_with_activations(x, state)
    assert torch.equal(acts["feedback"], torch.eye(3, dtype=torch.float64)[:, None, None, :].expand(3, B, T, 3))


@pytest.mark.parametrize("kind", sorted(GF_PLAIN))
def test_gf_with_all_gates_closed_has_no_candidate_recurrence(kind: str) -> None:
    # All g_{i->j} = 0: the stacked model whose candidate (tanh unit, GRU n, LSTM g)
    # has no recurrent weights; the other gates keep theirs.
    gf, plain = make(kind, layers=2), make(GF_PLAIN[kind], layers=2)
    load_plain_into_gf(gf, plain, kind, diagonal=-BIG)
    cand = {"gf-rnn": 0, "gf-gru": 2, "gf-lstm": 2}[kind]
    with torch.no_grad():
        for layer in plain.layers:
            layer.weight_hh_l0[cand * H : (cand + 1) * H] = 0
    x, state = torch.randn(B, T, E, dtype=torch.float64), rand_state(kind, 2)
    assert_same(gf(x, state), plain(x, state))


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_gradcheck(kind: str) -> None:
    # Every weight, the input and the initial state; 2 layers of 2 units keep it quick.
    stack = make(kind, layers=2, hidden=2, embed=3)
    names = [name for name, _ in stack.named_parameters()]
    x = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    n_state = 2 if kind.endswith("lstm") else 1
    state = tuple(torch.randn(2, 2, 2, dtype=torch.float64, requires_grad=True) for _ in range(n_state))

    def run(x: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
        params = dict(zip(names, tensors[len(state) :]))
        out, new = torch.func.functional_call(stack, params, (x, tuple(tensors[: len(state)])))
        return (out, *new)

    params = tuple(p.detach().clone().requires_grad_() for p in stack.parameters())
    assert torch.autograd.gradcheck(run, (x, *state, *params))


# ---------------------------------------------------------------- shapes, chunks, gradients


@pytest.mark.parametrize("kind", NEW_KINDS)
@pytest.mark.parametrize("layers", [1, 3])
def test_shapes_and_activations(kind: str, layers: int) -> None:
    stack = make(kind, layers=layers)
    assert isinstance(stack, GatedFeedbackStack if kind.startswith("gf") else PeepholeLSTMStack)
    x, state = torch.randn(B, T, E, dtype=torch.float64), rand_state(kind, layers)
    out, new = stack(x, state)
    assert out.shape == (B, T, H)
    assert [s.shape for s in new] == [(layers, B, H)] * len(state)
    out2, new2, acts = stack.forward_with_activations(x, state)
    assert_same((out, new), (out2, new2), tol=0)
    names = {
        "rnn": ["hidden"],
        "gru": ["reset", "update", "hidden"],
        "lstm": ["input", "forget", "output", "cell", "hidden"],
    }[kind.split("-")[-1]]
    assert list(acts) == names + (["feedback"] if kind.startswith("gf") else [])
    for name in names:
        assert acts[name].shape == (layers, B, T, H)
    torch.testing.assert_close(acts["hidden"][-1], out, rtol=0, atol=0)
    torch.testing.assert_close(acts["hidden"][:, :, -1], new[0], rtol=0, atol=0)
    if "cell" in acts:
        torch.testing.assert_close(acts["cell"][:, :, -1], new[1], rtol=0, atol=0)
    if "feedback" in acts:
        assert acts["feedback"].shape == (layers, B, T, layers)
        assert ((acts["feedback"] > 0) & (acts["feedback"] < 1)).all()


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_chunked_forward_equals_full_forward(kind: str) -> None:
    torch.manual_seed(1)
    model = CharRNN(ModelConfig(vocab_size=11, model=kind, num_layers=2, hidden_size=H, dropout=0.3))
    model.eval()  # dropout off
    x = torch.randint(0, 11, (B, 10))
    full, full_state = model(x, model.init_state(B))
    state, parts = model.init_state(B), []
    for chunk in x.split([3, 1, 6], 1):
        logits, state = model(chunk, state)
        parts.append(logits)
    assert_same((torch.cat(parts, 1), state), (full, full_state), tol=1e-6)


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("layers", [1, 2])
def test_every_kind_trains_through_charrnn(kind: str, layers: int) -> None:
    torch.manual_seed(2)
    cfg = ModelConfig(vocab_size=11, model=kind, num_layers=layers, hidden_size=H, dropout=0.2)
    model = CharRNN(cfg)
    x = torch.randint(0, 11, (B, 6))
    logits, state = model(x, model.init_state(B))
    assert logits.shape == (B, 6, 11)
    assert len(state) == cfg.state_size and all(s.shape == (layers, B, H) for s in state)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.flatten()).backward()
    # every parameter gets a gradient (DistributedDataParallel requires it)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_dropout_between_gf_layers_only_in_training() -> None:
    stack = make("gf-gru", layers=2, dropout=0.5)
    x, state = torch.randn(B, T, E, dtype=torch.float64), rand_state("gf-gru")
    stack.eval()
    assert_same(stack(x, state), stack(x, state), tol=0)
    stack.train()
    assert not torch.equal(stack(x, state)[0], stack.eval()(x, state)[0])


def test_no_warning_reaches_the_user() -> None:
    # torch >= 2.9 deprecates torch.jit.script; scripting happens at import, inside _script.
    def double(x: Tensor) -> Tensor:
        return 2 * x

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scripted.script(double)
        for kind in NEW_KINDS:
            stack = make(kind)
            out, _ = stack(torch.randn(B, 2, E, dtype=torch.float64), rand_state(kind))
            out.sum().backward()
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_shapes_and_chunked_forward_equals_full(kind: str) -> None:
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=11, model=kind, num_layers=2, hidden_size=8, embed_size=5)).eval()
    x = torch.randint(0, 11, (3, 20))
    state = model.init_state(3)
    assert len(state) == (2 if kind == "lstm" else 1) and state[0].shape == (2, 3, 8)
    full, full_state = model(x, state)
    assert full.shape == (3, 20, 11)
    a, s = model(x[:, :7], state)
    b, s = model(x[:, 7:], s)
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=0, atol=1e-6)
    for got, want in zip(s, full_state):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_lstm_biases_keep_torchs_uniform_init() -> None:
    # No forget-gate bias of 1: it trained worse in the short runs charrnn plans.
    h = 64
    model = CharRNN(ModelConfig(vocab_size=5, hidden_size=h, num_layers=2))
    for layer in model.stack.layers:
        for bias in (layer.bias_ih_l0, layer.bias_hh_l0):
            assert bias.abs().max() <= h**-0.5
            assert bias[h : 2 * h].std() > 0.3 * h**-0.5  # random, not a constant
