"""results/README.md is bench/results_readme.py's output: it cannot drift from the result files."""

from __future__ import annotations

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
