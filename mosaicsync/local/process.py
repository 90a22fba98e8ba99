"""Run `mosaicsync local` as a child process: for the demo, the benchmarks and the tests.

A child process (not a thread) so that a test exercises the real command, its signal handling
and its shutdown, and so a crash in the platform cannot take the caller down with it.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from mosaicsync.contract import API_PREFIX
from mosaicsync.local.pg.cluster import die_with_parent

LISTENING = re.compile(r"^Listening on (http://\S+)")
# The banner's outbox link carries the per-start operator token.
OUTBOX_TOKEN = re.compile(r"^\s+Outbox\s+\S*[?&]token=([\w-]+)")


def platform_tempdir(prefix: str) -> Path:
    """A temp dir for a throwaway platform (demo, benchmarks); delete it when done.

    As root, PostgreSQL runs as `nobody`, which must pass through to the cluster inside: the dir
    is then 0711 (no listing), or the cluster would land under /var/lib/mosaicsync instead.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        os.chmod(path, 0o711)
    return path


class LocalProcessError(Exception):
    """The platform did not start; the message carries its output."""


@dataclass
class LocalProcess:
    """`start()` waits for "Listening on URL"; `stop()` sends SIGINT and waits for a clean exit."""

    data_dir: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None
    log_path: Path | None = None
    # 0 picks a free port; a fixed one lets a restarted platform come back where clients expect.
    listen_port: int = 0
    proc: subprocess.Popen | None = None
    base_url: str = ""
    operator_token: str = ""
    stdout_lines: list[str] = field(default_factory=list)
    _pump_thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def api_url(self) -> str:
        return self.base_url + API_PREFIX

    @property
    def local_auth(self) -> dict[str, str]:
        """Query parameters that open `/_local/` outbox and tickets as the operator."""
        return {"token": self.operator_token}

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def start(self, timeout: float = 60.0) -> LocalProcess:
        env = self.env if self.env is not None else dict(os.environ)
        self.log_path = self.log_path or self.data_dir.parent / f"{self.data_dir.name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mosaicsync", "local", "--port", str(self.listen_port),
                 "--data", str(self.data_dir), *self.args],
                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                env={**env, "PYTHONUNBUFFERED": "1"}, text=True,
                # A killed test run or demo must not leave the platform (and its database) behind.
                preexec_fn=die_with_parent(),
            )  # fmt: skip
        lines: queue.Queue[str | None] = queue.Queue()
        self._pump_thread = threading.Thread(target=self._pump, args=(lines,), daemon=True)
        self._pump_thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            self.stdout_lines.append(line)
            token = OUTBOX_TOKEN.match(line)
            if token:
                self.operator_token = token.group(1)
            match = LISTENING.match(line)
            if match:
                self.base_url = match.group(1)
                return self
        self.stop()
        raise LocalProcessError(
            "the local platform did not start:\n"
            + "\n".join(self.stdout_lines)
            + "\n"
            + self.log_text()
        )

    def _pump(self, lines: queue.Queue[str | None]) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    def log_text(self) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")
        return ""

    def stop(self, timeout: float = 20.0) -> int | None:
        """Stop the platform (and with it its PostgreSQL); returns its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        if self._pump_thread is not None:
            self._pump_thread.join(timeout=5)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None
        return code

    def __enter__(self) -> LocalProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
