"""Export a trained run: `export(run_or_path, format, out)` -> the file written.

- safetensors: the weights with the model config and vocabulary as metadata
  (charrnn.exporting.safetensors_io); `charrnn sample`, `eval`, `info` and `charrnn.load` read it.
- onnx, torchscript: the one-character step of an lstm/gru/rnn run
  (charrnn.exporting.step_module: ids and state in, logits and state out; batch dimension free).

Nothing is imported at module level: charrnn.checkpoint and the NumPy engine import
charrnn.exporting.safetensors_io, and importing it runs this file first, which must not load torch.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from charrnn.errors import CharRNNError

__all__ = ["export"]

ONNX_OPSET = 17


def export(
    run_or_path: str | Path,
    format: str = "safetensors",
    out: str | Path | None = None,
    runs_dir: str | Path = "checkpoints",
) -> Path:
    """Write run `run_or_path` (name in `runs_dir`, run folder, .pt or .safetensors file) as
    `format` to `out` (default: <run name>.<format> in the current folder).
    Raises CharRNNError."""
    from charrnn.config import FUSED_MODELS
    from charrnn.rundir import RunPaths, resolve_checkpoint

    suffixes = {"safetensors": ".safetensors", "onnx": ".onnx", "torchscript": ".torchscript.pt"}
    if format not in suffixes:
        raise CharRNNError(f"unknown export format '{format}': use one of {', '.join(suffixes)}.")
    source = resolve_checkpoint(str(run_or_path), Path(runs_dir))
    # A run's checkpoints (best.pt, last.pt, step-N.pt) are named after their run folder.
    run = source.parent.name if source.suffix == ".pt" and RunPaths(source.parent).config.is_file() else None
    target = Path(out) if out is not None else Path((run or source.stem) + suffixes[format])
    if target.resolve() == source.resolve():
        raise CharRNNError(f"--out '{target}' is the checkpoint being exported: choose another file.")
    if format == "onnx":
        _require_onnx()
    from charrnn.checkpoint import build_model, load_checkpoint
    from charrnn.exporting.safetensors_io import model_metadata, write_safetensors

    ckpt = load_checkpoint(source)
    model = build_model(ckpt)
    if format == "safetensors":
        best = ckpt.progress.get("best_val")
        best = float(best) if isinstance(best, (int, float)) and best == best and abs(best) != float("inf") else None
        tensors = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        step = ckpt.progress.get("step")
        step = int(step) if isinstance(step, (int, float)) and step == step and abs(step) != float("inf") else None
        write_safetensors(target, tensors, model_metadata(ckpt.model_config, ckpt.vocab, run, best, step))
        return target
    if ckpt.model_config.model not in FUSED_MODELS:
        raise CharRNNError(
            f"{format} export serves kinds {', '.join(FUSED_MODELS)}; this run is {ckpt.model_config.model}: "
            "export it as safetensors instead."
        )
    from charrnn.exporting.step_module import io_names, step_module

    step = step_module(model)
    example = _example_inputs(ckpt.model_config)
    try:
        if format == "onnx":
            meta = model_metadata(ckpt.model_config, ckpt.vocab, None, None)
            _write_onnx(step, example, io_names(ckpt.model_config.model), meta, target)
        else:
            _write_torchscript(step, example, target)
    except OSError as exc:
        raise CharRNNError(f"cannot write '{target}': {exc.strerror or exc}.")
    return target


def _require_onnx() -> None:
    import importlib.util

    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise CharRNNError(f"ONNX export needs {' and '.join(missing)}: pip install 'charrnn[export]'.")


def _example_inputs(cfg: Any) -> tuple[Any, ...]:
    import torch

    state = torch.zeros(cfg.num_layers, 2, cfg.hidden_size)
    ids = torch.zeros(2, dtype=torch.long)
    return (ids, state, state.clone()) if cfg.model == "lstm" else (ids, state)


def _write_onnx(
    step: Any, example: tuple[Any, ...], names: tuple[list[str], list[str]], meta: dict[str, str], target: Path
) -> None:
    import io

    import onnx
    import torch

    from charrnn.files import atomic_write

    inputs, outputs = names
    # The legacy TorchScript-based exporter (dynamo=False): one graph, batch dimension named
    # "batch" on every input and output; see docs/export.md for why not the dynamo exporter.
    axes = {"ids": {0: "batch"}, **{n: {1: "batch"} for n in inputs[1:] + outputs[1:]}, "logits": {0: "batch"}}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter says it is legacy
        torch.onnx.export(
            step,
            example,
            buffer,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    graph = onnx.load_from_string(buffer.getvalue())
    for key, value in meta.items():  # the vocabulary and config, for a sampler without charrnn
        graph.metadata_props.add(key=key, value=value)
    atomic_write(target, lambda f: f.write(graph.SerializeToString()))


def _write_torchscript(step: Any, example: tuple[Any, ...], target: Path) -> None:
    import torch

    from charrnn.files import atomic_write

    # Traced, not scripted: the step has no data-dependent control flow (the layer loop is
    # unrolled), and torch.jit.script rejects indexing a ParameterList by the loop variable.
    # torch.jit is deprecated in favour of torch.export (it warns); the trace still loads
    # with torch.jit.load, in Python and in C++ (libtorch), which is what this format is for.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(step, example, check_trace=False)
        atomic_write(target, lambda f: torch.jit.save(traced, f))
