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


def _layout_block() -> list[str]:
    text = README
    start = text.index("### Layout")
    block = text[text.index("```text\n", start) + 8 :]
    return block[: block.index("```")].splitlines()


def test_the_readme_layout_lists_exactly_the_modules_of_the_tree() -> None:
    listed: set[str] = set()
    stack: list[tuple[int, str]] = []  # (indent, folder) of the folders we are inside
    for line in _layout_block():
        name = line.strip().split(" ", 1)[0]
        if not name or line.startswith(("templates/",)):
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = "".join(folder for _, folder in stack) + name
        if name.endswith("/"):
            stack.append((indent, name))
        else:
            listed.add(path)
    package = ROOT / "mosaicsync"
    actual = {
        path.relative_to(ROOT).as_posix()
        for path in package.rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
    }
    assert len(actual) > 40
    assert listed == actual, (
        f"missing from the README's layout: {sorted(actual - listed)}; "
        f"listed but not in the tree: {sorted(listed - actual)}"
    )


def test_the_readme_benchmark_table_is_the_latest_full_run() -> None:
    from bench import report

    _, scenarios, _ = report.load(ROOT / "bench" / "results" / "full.json")
    readme = (ROOT / "README.md").read_text()
    assert report.readme_with_table(readme, scenarios) == readme, (
        "run `python -m bench.report bench/results/full.json --readme README.md`"
    )
