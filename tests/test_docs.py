"""The README keeps its promises: the two commands first, every fidelity gap listed."""

from __future__ import annotations

from pathlib import Path

import pytest

from mosaicsync.local.fidelity import GAPS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_starts_with_the_two_commands() -> None:
    head = README.split("\n## ", 1)[0]
    assert "make demo" in head and "make test" in head


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("title", [title for title, _ in GAPS])
def test_every_fidelity_gap_is_in_the_readme(title: str) -> None:
    assert f"**{title}.**" in README
