"""`mosaicsync dev` when its platform child dies: it stops with an error naming the log, instead
of retrying a platform that will never come back."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.conftest import make_traversable
from tests.test_watch import Run, make_site


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: the ppid follows the last ")".
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to find the child")
def test_dev_stops_with_an_error_naming_the_log_when_the_platform_dies(tmp_path: Path) -> None:
    make_traversable(tmp_path)
    site = tmp_path / "site"
    make_site(site, None, "prod-abc")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")}
    env.update(
        MOSAIC_LOCAL_FAST_DB="1",
        XDG_CONFIG_HOME=str(tmp_path / "xdg-config"),
        XDG_DATA_HOME=str(tmp_path / "xdg-data"),
    )
    run = Run(["dev", "--port", "0", "--data", str(tmp_path / "data")], site, env)
    try:
        run.wait_for("dev", timeout=60)
        run.wait_for("watching")
        (platform,) = _children(run.proc.pid)
        os.kill(platform, signal.SIGKILL)
        assert run.proc.wait(timeout=30) == 8
    finally:
        run.stop()
    error = [e for e in run.events if e.get("status") == "error"]
    assert len(error) == 1, run.events
    assert error[0]["error"]["exit_code"] == 8
    assert "stopped unexpectedly" in error[0]["error"]["error"]
    assert str(tmp_path / "data.log") in error[0]["error"]["hint"]
    assert json.dumps(run.events).count("api-key") == 0
