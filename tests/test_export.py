"""charrnn export: safetensors as a model file (read without torch), the ONNX and TorchScript step."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import one_line_error, saved_model

import charrnn
from charrnn.cli import app
from charrnn.errors import CharRNNError
from charrnn.exporting.safetensors_io import read_model, write_safetensors

safetensors_numpy = pytest.importorskip("safetensors.numpy")


def test_safetensors_holds_the_weights_config_and_vocab_and_little_else(runner, trained: str) -> None:
    result = runner.invoke(app, ["export", trained])  # named after the run, in the current folder
    assert result.exit_code == 0, result.output
    path = Path("tiny.safetensors")
    assert result.output.startswith("wrote tiny.safetensors")
    model = charrnn.load(trained, engine="torch")
    params = sum(t.numel() * 4 for t in model._sampler._model.state_dict().values())
    # best.pt also carries Adam's two moments: the export is the weights, and a small header.
    assert params <= path.stat().st_size <= params * 1.03
    assert path.stat().st_size < Path("checkpoints/tiny/best.pt").stat().st_size / 2
    arrays = safetensors_numpy.load_file(str(path))  # the reference reader agrees
    state = model._sampler._model.state_dict()
    assert set(arrays) == set(state)
    assert all(np.array_equal(arrays[k], state[k].numpy()) for k in state)
    cfg, _, vocab, meta = read_model(path)
    assert meta["run"] == "tiny" and float(meta["best_val"]) > 0
    assert cfg == model.config and vocab == model.vocab


def test_sample_eval_and_load_read_safetensors_as_they_read_the_run(runner, trained: str, corpus: Path) -> None:
    assert runner.invoke(app, ["export", trained, "--out", "m.safetensors"]).exit_code == 0
    args = ["--length", "80", "--seed", "3", "--prime", "The "]
    want = runner.invoke(app, ["sample", trained, *args]).output
    for engine in ("numpy", "torch"):
        got = runner.invoke(app, ["sample", "m.safetensors", "--engine", engine, *args])
        assert got.exit_code == 0 and got.output == want, (engine, got.output)
    run_eval = runner.invoke(app, ["eval", trained, str(corpus), "--json"])
    file_eval = runner.invoke(app, ["eval", "m.safetensors", str(corpus), "--json"])
    assert file_eval.exit_code == 0, file_eval.output
    assert json.loads(file_eval.output)["bits_per_char"] == pytest.approx(json.loads(run_eval.output)["bits_per_char"])
    model = charrnn.load("m.safetensors", engine="numpy")
    assert model.generate("The ", length=80, seed=3) == charrnn.load(trained).generate("The ", length=80, seed=3)
    info = runner.invoke(app, ["info", "m.safetensors"])
    assert info.exit_code == 0 and f"exported from run '{trained}' at step" in info.stdout
    assert "B=" not in info.stdout  # no training settings are made up for a weights-only file


def test_generating_from_safetensors_on_numpy_never_imports_torch(runner, trained: str) -> None:
    path = charrnn.export(trained, out="m.safetensors")
    code = (
        "import sys, charrnn\n"
        f"m = charrnn.load({str(path.resolve())!r}, engine='numpy')\n"
        "assert len(m.generate('The ', length=40, seed=1)) > 0\n"
        "print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_safetensors_written_by_the_package_are_read_by_charrnn(runner, trained: str) -> None:
    charrnn.export(trained, out="ours.safetensors")
    arrays, meta = read_model(Path("ours.safetensors"))[1], read_model(Path("ours.safetensors"))[3]
    safetensors_numpy.save_file(arrays, "theirs.safetensors", metadata=meta)
    theirs = charrnn.load("theirs.safetensors", engine="numpy").generate("a", length=50, seed=2)
    assert theirs == charrnn.load(trained).generate("a", length=50, seed=2)


def _damage(path: Path, out: Path, header_edit=None, raw: bytes | None = None) -> None:
    data = path.read_bytes()
    if raw is not None:
        out.write_bytes(raw)
        return
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header_edit(header)
    new = json.dumps(header).encode()
    body = data[8 + n :]
    if header_edit is _shrink_head:  # head.bias is the last tensor: drop its last element's bytes
        body = body[:-4]
    out.write_bytes(len(new).to_bytes(8, "little") + new + body)


def _shrink_head(h: dict) -> None:
    h["head.bias"]["shape"] = [h["head.bias"]["shape"][0] - 1]
    h["head.bias"]["data_offsets"][1] -= 4


@pytest.mark.parametrize(
    ("header_edit", "raw", "message"),
    [
        (None, b"\x01\x02", "truncated"),
        (None, (10**12).to_bytes(8, "little") + b"{}", "header claims"),
        (lambda h: h["head.bias"].update(data_offsets=[0, 10**9]), None, "outside the file"),
        (lambda h: h["head.bias"].update(dtype="Q7"), None, "unknown dtype"),
        (lambda h: h.pop("head.bias"), None, "beyond its tensors"),
        (_shrink_head, None, "does not match its config"),
        (lambda h: h["__metadata__"].pop("vocab"), None, "no charrnn metadata"),
    ],
)
def test_damaged_safetensors_are_refused_in_one_line(runner, trained: str, header_edit, raw, message: str) -> None:
    charrnn.export(trained, out="good.safetensors")
    _damage(Path("good.safetensors"), Path("bad.safetensors"), header_edit, raw)
    for engine in ("numpy", "torch"):
        one_line_error(runner.invoke(app, ["sample", "bad.safetensors", "--engine", engine]), message)


def _reference_steps(model, ids: torch.Tensor, steps: int):
    """(logits, state) after each of `steps` steps of the model's own forward, from a random state."""
    torch.manual_seed(0)
    state = tuple(torch.randn(model.cfg.num_layers, ids.shape[0], model.cfg.hidden_size) for _ in model.init_state(1))
    start, out = state, []
    with torch.no_grad():
        for t in range(steps):
            logits, state = model((ids + t) % model.cfg.vocab_size, state)
            out.append((logits[:, 0].numpy(), [s.numpy() for s in state]))
    return start, out


@pytest.mark.parametrize(("kind", "layers", "embed"), [("lstm", 2, 0), ("gru", 2, 5), ("rnn", 3, 7)])
def test_onnx_and_torchscript_steps_match_charrnn(tmp_path: Path, kind: str, layers: int, embed: int) -> None:
    ort = pytest.importorskip("onnxruntime")
    model, path = saved_model(tmp_path, kind, layers=layers, embed=embed)
    onnx_file = charrnn.export(path, format="onnx", out=tmp_path / "step.onnx")
    ts_file = charrnn.export(path, format="torchscript", out=tmp_path / "step.ts")
    ids = torch.tensor([[1], [4], [7]])  # batch 3 (the export traced batch 2)
    start, want = _reference_steps(model, ids, 4)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == (["ids", "h", "c"] if kind == "lstm" else ["ids", "h"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still loads
        scripted = torch.jit.load(str(ts_file))
    onnx_state = [s.numpy() for s in start]
    ts_state = list(start)
    worst = 0.0
    for t, (logits, state) in enumerate(want):
        step_ids = ((ids[:, 0] + t) % model.cfg.vocab_size).numpy()
        got, *onnx_state = session.run(None, dict(zip(names, [step_ids, *onnx_state])))
        with torch.no_grad():
            ts_logits, *ts_state = scripted(torch.from_numpy(step_ids), *ts_state)
        for a, b in [(got, logits), (ts_logits.numpy(), logits), *zip(onnx_state, state)]:
            worst = max(worst, float(np.abs(a - b).max()))
    print(f"{kind}: largest difference {worst:.1e}")
    assert worst < 1e-5  # float32 rounding only


def test_onnx_export_of_other_kinds_names_the_kinds_supported(runner, tmp_path: Path) -> None:
    _, path = saved_model(tmp_path, "peephole-lstm", layers=1, hidden=8)
    one_line_error(runner.invoke(app, ["export", str(path), "--format", "onnx", "--out", "x.onnx"]), "lstm, gru, rnn")
    # safetensors serves every kind, read back on the torch engine
    assert runner.invoke(app, ["export", str(path), "--out", "p.safetensors"]).exit_code == 0
    assert runner.invoke(app, ["sample", "p.safetensors", "--length", "20"]).exit_code == 0


def test_onnx_export_without_onnx_says_what_to_install(runner, trained: str, monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    one_line_error(runner.invoke(app, ["export", trained, "--format", "onnx"]), "pip install 'charrnn[export]'")


def test_the_onnxruntime_loop_in_the_docs_runs(runner, trained: str, capsys) -> None:
    pytest.importorskip("onnxruntime")
    charrnn.export(trained, format="onnx", out="tiny.onnx")
    docs = (Path(__file__).resolve().parents[1] / "docs" / "export.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", docs, re.S).group(1)
    assert "charrnn" not in code
    exec(compile(code, "docs/export.md", "exec"), {})
    text = capsys.readouterr().out
    assert text.startswith("The ") and len(text.rstrip("\n")) == 204


def test_writing_a_tensor_of_an_unknown_dtype_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CharRNNError, match="dtype"):
        write_safetensors(tmp_path / "x.safetensors", {"a": np.zeros(2, np.complex64)}, {})
