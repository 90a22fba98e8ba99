"""The command's entry point: the cycle collector is tuned before the command's modules are
imported, for both ways of starting it."""

from __future__ import annotations

import ast
import gc
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_both_ways_of_starting_the_command_go_through_run() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["mosaicsync"] == "mosaicsync.__main__:run"


def test_the_collector_is_tuned_before_the_imports_and_what_they_built_is_set_apart() -> None:
    # A fresh interpreter, as `python -m mosaicsync --help` starts: the threshold is read at
    # the moment the commands' module is looked for, the frozen count once the command ran.
    code = (
        "import gc, sys\n"
        "seen = {}\n"
        "class Spy:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'mosaicsync.cli':\n"
        "            seen['threshold'] = gc.get_threshold()\n"
        "sys.meta_path.insert(0, Spy())\n"
        "import atexit\n"
        "import mosaicsync.__main__ as entry\n"
        "sys.argv = ['mosaicsync', '--help']\n"
        "def report():\n"
        "    seen['frozen'] = gc.get_freeze_count()\n"
        "    print(repr(seen))\n"
        "atexit.register(report)  # `run` ends the process: its exit handlers still run\n"
        "entry.run()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    seen = ast.literal_eval(out.stdout.splitlines()[-1])
    assert seen["threshold"][0] >= 10_000
    assert seen["frozen"] > 10_000  # the modules, classes and functions of the command


@pytest.fixture(autouse=True)
def _collector_left_as_found() -> None:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


LEAVE = (
    "import atexit, sys, threading, time\n"
    "from pathlib import Path\n"
    "import mosaicsync.__main__ as entry\n"
    "out = Path(sys.argv[1])\n"
    "def late():\n"
    "    time.sleep(0.3)  # still running when the command returns\n"
    "    (out / 'thread').write_text('joined')\n"
    "threading.Thread(target=late).start()\n"
    "atexit.register(lambda: (out / 'atexit').write_text('ran'))\n"
    "sys.argv = ['mosaicsync', *sys.argv[2:]]\n"
    "entry.run()\n"
    "(out / 'after').write_text('run returned')\n"
)


@pytest.mark.parametrize(("args", "code"), [(["--help"], 0), (["no-such-command"], 2)])
def test_the_command_leaves_after_its_threads_and_exit_handlers_with_its_exit_code(
    tmp_path: Path, args: list[str], code: int
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", LEAVE, str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == code, out.stderr
    assert (tmp_path / "thread").read_text() == "joined"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert not (tmp_path / "after").exists()  # the process ended in `run`
    if code == 0:
        assert "Commands:" in out.stdout and "deploy" in out.stdout  # flushed through a pipe
