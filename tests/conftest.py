"""Fixtures shared by the test suite: a real local platform in a subprocess, on a free port."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mosaicsync.local.process import LocalProcess

KEY_A = "mk_test_account_a"
KEY_B = "mk_test_account_b"


def make_traversable(path: Path) -> None:
    """Let PostgreSQL, run as `nobody` when the tests run as root, pass through pytest's 0700
    temp dirs, so clusters stay in the test's data dir instead of /var/lib/mosaicsync."""
    if os.geteuid() != 0:
        return
    for p in [path, *path.parents]:
        if p == Path(tempfile.gettempdir()) or p == p.parent:
            break
        mode = p.stat().st_mode
        if mode & 0o011 != 0o011:
            os.chmod(p, (mode & 0o7777) | 0o011)


_PYCACHE: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    """The suite starts the CLI and the platform as subprocesses about a thousand times. Where
    the machine turns the bytecode cache off (PYTHONDONTWRITEBYTECODE, as some CI images do),
    each of them would compile the package again (0.2 s of CPU per command): they share a
    cache in a temp dir instead, never in the checkout, removed at the end."""
    turned_off = os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None
    if turned_off and "PYTHONPYCACHEPREFIX" not in os.environ:
        _PYCACHE.append(tempfile.mkdtemp(prefix="mosaicsync-pycache-"))
        os.environ["PYTHONPYCACHEPREFIX"] = _PYCACHE[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The files with `heavy` tests first, each file's tests still together and in order.

    `make test-all` runs on two workers, each file on one (`--dist loadfile`, in this order):
    the longest file then starts at once instead of running alone at the end."""
    heavy = {item.path for item in items if item.get_closest_marker("heavy")}
    items.sort(key=lambda item: item.path not in heavy)


def pytest_unconfigure(config: pytest.Config) -> None:
    for path in _PYCACHE:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never see the user's keys or config, and never write to the real home."""
    make_traversable(tmp_path)
    for name in list(os.environ):
        if name.startswith("MOSAIC_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


class LocalServer(LocalProcess):
    """A running `mosaicsync local`; `stop()` also proves its PostgreSQL is gone."""

    def __init__(self, data_dir: Path, args: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")}
        env["MOSAIC_LOCAL_FAST_DB"] = "1"
        super().__init__(data_dir=data_dir, args=args, env=env)

    @property
    def api(self) -> str:
        return self.api_url

    def start(self, timeout: float = 60.0) -> LocalServer:
        super().start(timeout)
        return self

    def stop(self, timeout: float = 20.0) -> int | None:
        code = super().stop(timeout)
        assert not postgres_running_for(self.data_dir), "PostgreSQL outlived the platform"
        return code

    def client(self, key: str | None = KEY_A) -> httpx.Client:
        headers = {"X-API-Key": key} if key else {}
        return httpx.Client(base_url=self.api, headers=headers, timeout=30)


def python_against(
    code: str, cwd: Path, server: LocalServer, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run `python -c code args` in `cwd` against `server` with the account key; it must exit
    0 (the code runs the command itself, with whatever it watches patched in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")}
    env.update(MOSAIC_API_URL=server.api, MOSAIC_API_KEY=KEY_A)
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120, input="",
    )  # fmt: skip
    assert out.returncode == 0, f"{args}: {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def postgres_running_for(data_dir: Path) -> bool:
    """True if a postgres process whose command line names this data dir is alive."""
    needle = str(data_dir)
    deadline = time.monotonic() + 5
    while True:
        alive = False
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                # Any process's arguments, including a test's CLI run given bytes that are not
                # UTF-8 on purpose: never a decode error here.
                raw = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                cmd = raw.decode("utf-8", "surrogateescape")
            except OSError:
                continue
            if "postgres" in cmd and needle in cmd:
                alive = True
                break
            if "postgres" in cmd and "/var/lib/mosaicsync/clusters/" in cmd:
                marker = data_dir / "pg-location"
                if marker.exists() and marker.read_text().strip() in cmd:
                    alive = True
                    break
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


@pytest.fixture(scope="session")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """One platform for the session, with two fixed keys (two accounts) and a movable clock."""
    data = tmp_path_factory.mktemp("platform") / "data"
    make_traversable(data.parent)
    server = LocalServer(
        data,
        [
            "--api-key",
            KEY_A,
            "--api-key",
            KEY_B,
            "--allow-clock-override",
            "--statement-timeout",
            "2",
            "--max-rows",
            "1000",
            "--emails-per-day",
            "3",
            "--rate-limit",
            "0",
            # The whole suite is one account; the cap itself is tested on its own platform.
            "--projects-per-account",
            "0",
        ],
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1, signed by themselves: a TLS server no default
    trust store accepts."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key
