"""Data from the platform reaches a terminal as text, never as control sequences.

A value holding ESC/OSC sequences would set the window title, clear the screen or write the
clipboard; a newline would fake table rows; a bidi override would reorder what is shown. Human
output shows each as a visible escape; `--json` keeps every value exact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from mosaicsync.output import printable, render_table
from tests.conftest import KEY_A, LocalServer
from tests.test_deploy import run_cli

TITLE = "\x1b]0;pwned\x07"
CLEAR = "\x1b[2J"
BIDI = "\u202e"
RAW = ("\x1b", "\x07", "\x9b", "\x7f", BIDI)

# One row whose cells hold a title-setting OSC, a clear-screen CSI, a newline and a bidi override.
QUERY = (
    "select E'\\033]0;pwned\\007' as title, E'\\033[2J' as clear, "
    "E'first\\nsecond' as lines, U&'\\202Egnp.exe' as bidi"
)
ROW = {"title": TITLE, "clear": CLEAR, "lines": "first\nsecond", "bidi": BIDI + "gnp.exe"}


def run_on_a_terminal(args: list[str], cwd: Path, server: LocalServer) -> tuple[int, str, str]:
    """The CLI with stdout on a pseudo-terminal (line endings untranslated), as a person runs it."""
    master, slave = os.openpty()
    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.OPOST
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")}
    env.update(MOSAIC_API_URL=server.api, MOSAIC_API_KEY=KEY_A)
    with subprocess.Popen(
        [sys.executable, "-m", "mosaicsync", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.PIPE,
    ) as proc:
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        os.close(master)
        stderr = proc.stderr.read() if proc.stderr else b""
        code = proc.wait(timeout=120)
    return code, b"".join(chunks).decode(), stderr.decode()


@pytest.fixture(scope="module")
def project(local_server: LocalServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    cwd = tmp_path_factory.mktemp("hardening")
    out = run_cli(["projects", "create", "Escapes", "--json"], cwd, local_server)
    return json.loads(out.stdout)["project"]["project_id"]


@pytest.mark.integration
def test_sql_table_shows_control_characters_as_escapes(
    tmp_path: Path, local_server: LocalServer, project: str
) -> None:
    code, stdout, stderr = run_on_a_terminal(
        ["sql", QUERY, "--project", project], tmp_path, local_server
    )
    assert code == 0, stderr
    assert not [c for c in RAW if c in stdout]
    # Header, rule, the one row and the count: the newline in a cell fakes no row.
    lines = stdout.rstrip("\r\n").split("\n")
    assert len(lines) == 4 and lines[-1] == "(1 row)", stdout
    row = lines[2]
    for shown in ("\\x1b]0;pwned\\x07", "\\x1b[2J", "first\\x0asecond", "\\u202egnp.exe"):
        assert shown in row
    # --json keeps the exact values.
    out = run_cli(["sql", QUERY, "--json", "--project", project], tmp_path, local_server)
    assert json.loads(out.stdout) == [ROW]


@pytest.mark.integration
def test_projects_list_shows_control_characters_as_escapes(
    tmp_path: Path, local_server: LocalServer
) -> None:
    # The local platform refuses control characters in names (C0, C1, line separators); a bidi
    # override still gets through it, and the client must not trust any platform to refuse it.
    name = f"invoice {BIDI}fdp.exe"
    created = run_cli(["projects", "create", name, "--json"], tmp_path, local_server)
    project = json.loads(created.stdout)["project"]
    assert project["name"] == name
    listed = json.loads(run_cli(["projects", "list", "--json"], tmp_path, local_server).stdout)
    assert name in [p["name"] for p in listed["projects"]]
    out = run_cli(["projects", "list"], tmp_path, local_server)
    assert not [c for c in RAW if c in out.stdout + out.stderr]
    lines = out.stdout.rstrip("\n").split("\n")
    assert [line.split()[0] for line in lines] == [p["project_id"] for p in listed["projects"]]
    [line] = [line for line in lines if line.startswith(project["project_id"])]
    assert "invoice \\u202efdp.exe" in line


def test_printable_escapes_c0_del_c1_and_bidi() -> None:
    text = "a\x00b\tc\rd\ne\x1bf\x7fg\x85h\x9bi\u200ej\u202ek\u2066l\u2028m"
    assert printable(text) == (
        "a\\x00b\\x09c\\x0dd\\x0ae\\x1bf\\x7fg\\x85h\\x9bi\\u200ej\\u202ek\\u2066l\\u2028m"
    )
    assert printable("one\ntwo\x1b", lines=True) == "one\ntwo\\x1b"
    assert printable("café ✓ 名前 \\ plain") == "café ✓ 名前 \\ plain"


def test_render_table_keeps_each_row_on_one_line_and_aligned() -> None:
    table = render_table([{"col\x1b": "a\nb", "x": None}, {"col\x1b": BIDI, "x": {"k": "\x07"}}])
    lines = table.split("\n")
    assert len(lines) == 5 and lines[-1] == "(2 rows)"
    assert lines[0].startswith("col\\x1b")
    assert not [c for c in RAW if c in table]
    assert len({len(line) for line in lines[:-1]}) == 1  # the escapes count in the widths
