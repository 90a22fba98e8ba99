"""What a support ticket or `doctor` needs to know about this machine, never a secret."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from mosaicsync import __version__
from mosaicsync.errors import MosaicError


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mosaicsync"


def record_last_error(exc: MosaicError, redacted_message: str) -> None:
    """Keep the last failure (already redacted) so `ticket --diagnostics` can attach it."""
    try:
        path = cache_dir() / "last-error.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "code": exc.reference,
                    "exit_code": exc.exit_code,
                    "message": redacted_message,
                }
            )
        )
    except OSError:
        pass  # diagnostics must never turn into a second failure


def last_error() -> dict[str, Any] | None:
    try:
        return json.loads((cache_dir() / "last-error.json").read_text())
    except (OSError, ValueError):
        return None


def diagnostics_text() -> str:
    error = last_error()
    lines = [
        "--- diagnostics (mosaicsync) ---",
        f"mosaicsync {__version__}",
        f"python {platform.python_version()} ({sys.implementation.name})",
        f"os {platform.system()} {platform.release()} {platform.machine()}",
    ]
    if error:
        lines.append(
            f"last error ({error.get('at')}): [{error.get('code')}] {error.get('message')}"
        )
    return "\n".join(lines)


def run_doctor(session: Any) -> dict[str, Any]:
    """Each check is {name, ok, detail}; the first failure does not hide the others."""
    from mosaicsync.api import ROUTES
    from mosaicsync.credentials import credentials_path, resolve_api_key
    from mosaicsync.wire import Pool, TransportError

    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"name": name, "ok": ok, "detail": detail})

    check("mosaicsync", True, f"{__version__} on Python {platform.python_version()}")
    config = None
    try:
        config = session.config_or_none()
        if config is None:
            check("config", True, "no mosaic.toml here (only needed inside a project)")
        else:
            check("config", True, f"{config.path} (static root {config.static_root})")
    except MosaicError as exc:
        check("config", False, exc.message)
    try:
        url = session.api_url_for(config)
        check("api url", True, url)
    except MosaicError as exc:
        check("api url", False, exc.message)
        return {"ok": False, "checks": checks}
    try:
        key = resolve_api_key(url)
        check("api key", True, f"from {key.source}")
    except MosaicError as exc:
        check("api key", False, f"{exc.message} ({exc.hint or credentials_path()})")
        key = None
    # One raw request rather than `MosaicClient.call`: doctor reports the status and the Date
    # header as they are, after one attempt, and also asks without a key.
    probe = ROUTES["list_projects"]
    started = time.time()
    pool = Pool(timeout=10, connect_timeout=10)
    try:
        headers = {"X-API-Key": key.value} if key else {}
        response = pool.send(probe.method, url + probe.path, headers, None)
        ms = (time.time() - started) * 1000
        check("reachable", True, f"{url} answered {response.status} in {ms:.0f} ms")
        if key:
            ok = response.status == 200
            check("key accepted", ok, "yes" if ok else f"HTTP {response.status}")
        date = response.headers.get("date")
        if date:
            skew = parsedate_to_datetime(date).timestamp() - (started + time.time()) / 2
            check("clock skew", abs(skew) < 60, f"{skew:+.1f} s against the platform")
    except TransportError as exc:
        check("reachable", False, f"{url}: {exc.describe}")
    finally:
        pool.close()
    if config is not None:
        try:
            check("project", True, session.project_id(config))
        except MosaicError as exc:
            check("project", False, f"{exc.message}; {exc.hint}")
    return {"ok": all(c["ok"] for c in checks), "checks": checks}
