"""int8 weights on the NumPy engine: exact integer kernels, the fused layers, the CLI option."""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import saved_model

from charrnn.cli import app
from charrnn.sample import numpy_engine as npsample
from charrnn.sample import numpy_int8 as npint8
from charrnn.sample import numpy_net

pytestmark = pytest.mark.skipif(not npint8.available(), reason="numba is not installed")


@pytest.mark.parametrize("rows,cols,streams", [(7, 100, 1), (64, 128, 5), (33, 300, 4)])
def test_integer_dot_products_are_exact_on_every_kernel(rows: int, cols: int, streams: int) -> None:
    """The AVX2 loops (where the CPU has them; one stream or four at a time) and the plain
    loops give the true integer sums."""
    rng = np.random.default_rng(rows)
    dense = npint8.Int8Dense(rng.standard_normal((rows, cols)).astype(np.float32))
    xu = rng.integers(1, 128, (streams, dense.q.shape[1])).astype(np.uint8)
    want = xu.astype(np.int64) @ dense.q.astype(np.int64).T
    plain = npint8._jit(npint8._dot_rows_plain)
    for kernel in {npint8._dot_rows, plain}:
        for b in range(streams):
            acc = np.zeros((4, rows), np.int32)
            kernel(xu, b, dense.q, 0, rows, acc)
            np.testing.assert_array_equal(acc[0], want[b])
    if streams >= 4:
        acc = np.zeros((4, rows), np.int32)
        npint8._dot_rows4(xu, streams - 4, dense.q, 0, rows, acc)
        np.testing.assert_array_equal(acc, want[streams - 4 :])


def test_int8_product_is_within_quantization_error() -> None:
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((96, 200)) * 0.1).astype(np.float32)
    x = np.tanh(rng.standard_normal((4, 200))).astype(np.float32)
    x[2] = 0.0  # an all-zero row stays exactly zero
    out = npint8.Int8Dense(weight).into(x, np.empty((4, 96), np.float32))
    want = x @ weight.T
    assert np.abs(out - want).max() < 0.02 * np.abs(want).max()
    assert not out[2].any()


def test_fitted_tanh_and_sigmoid() -> None:
    v = np.linspace(-30, 30, 200_001).astype(np.float32)
    tanh = np.array([npint8._tanh(t) for t in v[::50]])
    assert np.abs(tanh - np.tanh(v[::50].astype(np.float64))).max() < 1e-5
    sig = np.array([npint8._sigmoid(t) for t in v[::50]])
    assert np.abs(sig - 1 / (1 + np.exp(-v[::50].astype(np.float64)))).max() < 1e-5


class _UnfusedInt8(numpy_net.NumpyNet):
    """The fp32 engine's NumPy gates on int8 products: what Int8Net's compiled layers fuse."""

    product = npint8.Int8Dense


@pytest.mark.parametrize(
    "kind,layers,embed", [("lstm", 2, 0), ("lstm", 3, 8), ("gru", 2, 0), ("gru", 1, 8), ("rnn", 2, 5)]
)
def test_fused_layers_match_numpy_gates_on_the_same_products(
    tmp_path: Path, kind: str, layers: int, embed: int
) -> None:
    """Step by step from one state: the compiled layers agree with NumPy's gates on the same
    int8 products up to the tanh fit (1e-5), except where that nudge moves a 7-bit rounding
    of the next product's input; and with fp32 up to int8's own error."""
    model, path = saved_model(tmp_path, kind, layers, embed=embed)
    net, _ = npsample.load(path, "int8")
    assert isinstance(net, npint8.Int8Net)
    fp32, _ = npsample.load(path)
    unfused = _UnfusedInt8(net.cfg, {k: v.detach().numpy() for k, v in model.state_dict().items()})
    rng = np.random.default_rng(3)
    state = net.zero_state(3)
    agree = []
    for _ in range(40):
        x = rng.integers(0, net.cfg.vocab_size, 3)
        fused, next_state = net.step(x, state)
        same_products, _ = unfused.step(x, state)
        exact, _ = fp32.step(x, state)
        scale = np.abs(exact).max()
        agree.append(np.abs(fused - same_products) < 1e-4)
        assert np.abs(fused - same_products).max() < 0.05 * scale
        assert np.abs(fused - exact).max() < 0.05 * scale
        state = next_state
    assert np.mean(agree) > 0.9


def test_sample_int8_repeats_for_a_seed_and_eval_measures_its_cost(runner, corpus: Path, trained: str) -> None:
    args = ["sample", trained, "-n", "300", "--seed", "9", "--weights", "int8", "--prime", "The"]
    first, second = runner.invoke(app, args), runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert first.stdout == second.stdout and len(first.stdout) == len("The") + 300 + 1
    on_torch = runner.invoke(app, [*args, "--engine", "torch"])  # fbgemm's int8: another valid draw
    assert on_torch.exit_code == 0 and len(on_torch.stdout) == len(first.stdout)

    scores = {}
    for weights in ("fp32", "int8"):
        result = runner.invoke(app, ["eval", trained, str(corpus), "--json", "--weights", weights])
        assert result.exit_code == 0, result.output
        scores[weights] = json.loads(result.stdout)
    assert scores["int8"]["engine"] == "numpy, int8" and scores["fp32"]["engine"] == "torch, fp32"
    assert abs(scores["int8"]["nats_per_char"] - scores["fp32"]["nats_per_char"]) < 0.02
    numpy_fp32 = json.loads(runner.invoke(app, ["eval", trained, str(corpus), "--json", "--engine", "numpy"]).stdout)
    assert numpy_fp32["nats_per_char"] == pytest.approx(scores["fp32"]["nats_per_char"], abs=1e-4)


def test_without_numba_int8_falls_back_to_torch_or_says_what_runs(runner, trained: str, monkeypatch) -> None:
    monkeypatch.setattr(npint8, "available", lambda: False)
    result = runner.invoke(app, ["sample", trained, "-n", "50", "--seed", "1", "--weights", "int8"])
    assert result.exit_code == 0 and len(result.stdout) == 51  # torch's int8 kernel serves
    result = runner.invoke(app, ["sample", trained, "--engine", "numpy", "--weights", "int8"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: --engine numpy runs fp32 weights on the CPU (int8 there needs numba")
    assert len(result.stderr.strip().splitlines()) == 1
