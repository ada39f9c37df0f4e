"""Corpora from several sources: folders, glob patterns and files joined into one stream."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import TINY_TRAIN, one_line_error
from typer.testing import CliRunner

from charrnn.cli import app
from charrnn.data.corpus import SEPARATOR, prepare, resolve_sources
from charrnn.errors import CharRNNError


def _tree(root: Path) -> None:
    (root / "notes" / "sub").mkdir(parents=True)
    (root / "notes" / ".hidden").mkdir()
    (root / "notes" / "b.txt").write_text("bravo text\n" * 200)
    (root / "notes" / "sub" / "a.txt").write_text("alpha words\n" * 200)
    (root / "notes" / ".secret.txt").write_text("SECRET")
    (root / "notes" / ".hidden" / "x.txt").write_text("HIDDEN")
    (root / "extra.md").write_text("extra markdown\n" * 200)


def test_a_folder_means_its_visible_files_sorted_and_a_glob_is_expanded(tmp_path: Path) -> None:
    _tree(tmp_path)
    sources = [str(tmp_path / "notes"), str(tmp_path / "*.md"), str(tmp_path / "extra.md")]  # extra.md twice
    files = resolve_sources(sources, tmp_path / "data")
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["notes/b.txt", "notes/sub/a.txt", "extra.md"]


def test_files_are_joined_by_the_separator_in_the_prepared_stream(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("abc")
    (tmp_path / "b.txt").write_text("xyz")
    data = prepare(resolve_sources([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], tmp_path), tmp_path / "data")
    assert "".join(data.vocab.chars[i] for i in data.tokens) == "abc" + SEPARATOR + "xyz"
    assert [size for _, size in data.files] == [3, 3]


@pytest.mark.parametrize("pattern", ["nothing/*.txt", "empty"])
def test_a_source_matching_no_file_is_an_error_naming_it(tmp_path: Path, pattern: str) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CharRNNError, match="matches no file"):
        resolve_sources([str(tmp_path / pattern)], tmp_path)


def test_an_undecodable_file_in_a_folder_is_one_error_line_naming_it(runner: CliRunner, tmp_path: Path) -> None:
    _tree(tmp_path)
    (tmp_path / "notes" / "c.bin").write_bytes(b"\xff\xfe\x00binary")
    result = runner.invoke(app, ["prepare", "notes"])
    one_line_error(result, "c.bin")


def test_training_on_a_folder_records_its_files_and_resume_names_a_changed_one(
    runner: CliRunner, tmp_path: Path
) -> None:
    _tree(tmp_path)
    result = runner.invoke(app, ["train", "notes", "extra.md", "--name", "multi", "--max-steps", "10", *TINY_TRAIN])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "checkpoints" / "multi" / "config.json").read_text())
    assert [Path(f["path"]).name for f in config["corpus"]["files"]] == ["b.txt", "a.txt", "extra.md"]
    listed = json.loads(runner.invoke(app, ["runs", "--json"]).stdout)
    assert [Path(s).name for s in listed[0]["sources"]] == ["notes", "extra.md"]  # all given, not the first file

    result = runner.invoke(app, ["train", "--resume", "multi", "--max-steps", "15", "--quiet"])
    assert result.exit_code == 0, result.output

    (tmp_path / "notes" / "new.txt").write_text("new file\n")
    result = runner.invoke(app, ["train", "--resume", "multi", "--max-steps", "20", "--quiet"])
    one_line_error(result, "file added")
    assert "new.txt" in result.stderr
    os.remove(tmp_path / "notes" / "new.txt")
    (tmp_path / "notes" / "b.txt").write_text("changed\n")
    result = runner.invoke(app, ["train", "--resume", "multi", "--max-steps", "20", "--quiet"])
    one_line_error(result, "file changed")


def test_the_api_trains_on_a_list_of_sources(tmp_path: Path) -> None:
    import charrnn

    _tree(tmp_path)
    done = charrnn.train(
        [str(tmp_path / "notes"), str(tmp_path / "extra.md")],
        name="api",
        runs_dir=tmp_path / "runs",
        data_dir=tmp_path / "data",
        max_steps=5,
        hidden_size=16,
        num_layers=1,
        batch_size=2,
        seq_len=8,
    )
    assert done.result.step == 5
