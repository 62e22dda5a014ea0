"""results/README.md is bench/results_readme.py's output: it cannot drift from the result files."""

from __future__ import annotations

import shlex

import pytest
from conftest import REPO

WORD_LIMIT = 1500  # issue 47: tables, figures and commands, not a lab notebook


@pytest.fixture
def results_readme(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import results_readme

    return results_readme


def test_committed_readme_is_the_generators_output(results_readme, tmp_path):
    out = tmp_path / "README.md"
    results_readme.main(["--out", str(out)])
    committed = (REPO / "results" / "README.md").read_text()
    assert out.read_text() == committed, "results/README.md is stale: run python bench/results_readme.py"
    assert len(committed.split()) < WORD_LIMIT
    assert "python bench/results_readme.py" in committed.splitlines()[2]


def test_a_result_file_records_the_command_that_made_it(monkeypatch):
    """The benches write runtime.command_line() into their JSON: settings, python, arguments, re-typable."""
    from keras_resnet import runtime

    monkeypatch.setattr(runtime, "_STARTED_WITH", {"TF_ENABLE_ONEDNN_OPTS": "0"})
    typed = ["bench/bench_serving.py", "--paths=train.py,plain keras", "--json", "x.json"]
    monkeypatch.setattr("sys.argv", typed)
    line = runtime.command_line()
    assert line.startswith(
        "TF_ENABLE_ONEDNN_OPTS=0 python bench/bench_serving.py '--paths=train.py,plain keras'"
    )
    assert shlex.split(line) == ["TF_ENABLE_ONEDNN_OPTS=0", "python", *typed]


def test_readmes_model_table_is_the_shipped_records(monkeypatch, tmp_path):
    """README's table of shipped nets is bench/models_table.py's output from the records shipped."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import models_table

    readme = tmp_path / "README.md"
    readme.write_text((REPO / "README.md").read_text())
    models_table.main(["--readme", str(readme)])
    assert readme.read_text() == (REPO / "README.md").read_text(), "run python bench/models_table.py"
