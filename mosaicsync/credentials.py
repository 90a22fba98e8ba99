"""The API key and the API URL: where each comes from, how keys are stored, how secrets are masked.

The key is looked up in `MOSAIC_API_KEY`, then in the credentials file that `mosaicsync login`
writes (`$XDG_CONFIG_HOME/mosaicsync/credentials.toml`, mode 0600), which holds one key per API URL
because a local platform's key and Mosaic's differ. Which API URL a command uses is decided in
`selection`.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mosaicsync.atomic import write_atomic
from mosaicsync.contract import DEFAULT_API_URL
from mosaicsync.errors import AuthError, ConfigError

KEY_ENV = "MOSAIC_API_KEY"
API_URL_ENV = "MOSAIC_API_URL"
LOGIN_HINT = "run `mosaicsync login` or set MOSAIC_API_KEY"
MASK = "***"

_FILE_HEADER = "# Written by `mosaicsync login`: one API key per platform URL. Keep it private.\n\n"


@dataclass(frozen=True, repr=False)
class ApiKey:
    """An API key and where it came from; its repr never shows the key, so it is safe to log."""

    value: str
    source: str

    def __repr__(self) -> str:
        shown = self.value[:4] if len(self.value) > 8 else ""
        return f"ApiKey(source={self.source!r}, value={shown}…(redacted))"

    __str__ = __repr__


def credentials_path() -> Path:
    """The credentials file: under `$XDG_CONFIG_HOME` (a relative value is ignored, as XDG says)."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "mosaicsync" / "credentials.toml"


def api_url_problem(url: str) -> str | None:
    """Why `url` cannot be an API base URL, or None; shared with mosaic.toml's validation."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "is not an http(s) URL"
    if not parts.hostname:
        return "has no host name"
    if parts.username is not None or parts.password is not None:
        return "holds a user name or password; the API key goes in MOSAIC_API_KEY or `login`"
    if parts.query or parts.fragment:
        return "has a query string or fragment; give the base URL only"
    return None


def normalize_api_url(url: str, *, source: str) -> str:
    """`url` without spaces or trailing slashes; a ConfigError naming `source` if it is unusable."""
    problem = api_url_problem(url)
    if problem:
        raise ConfigError(
            f"{source}: {redact(url.strip())!r} {problem}",
            hint=f"use the platform's base URL, e.g. {DEFAULT_API_URL}",
        )
    return url.strip().rstrip("/")


def resolve_api_key(
    api_url: str,
    env: Mapping[str, str] | None = None,
    stored: Callable[[str], ApiKey] | None = None,
) -> ApiKey:
    """The key for `api_url`: MOSAIC_API_KEY in `env` (default: os.environ), else the stored key
    (`stored`, default: the credentials file); AuthError if neither."""
    value = (os.environ if env is None else env).get(KEY_ENV, "").strip()
    if value:
        return ApiKey(value, KEY_ENV)
    return (stored or stored_api_key)(api_url)


def stored_api_key(api_url: str) -> ApiKey:
    """The key that `mosaicsync login` stored for `api_url`; AuthError if there is none."""
    path = credentials_path()
    url = api_url.strip().rstrip("/")
    keys = _read_keys(path, check_private=True)
    if url in keys:
        return ApiKey(keys[url], str(path))
    elsewhere = f" (the credentials file has keys for: {', '.join(sorted(keys))})" if keys else ""
    raise AuthError(f"no API key for {url}{elsewhere}", hint=LOGIN_HINT)


def all_stored_keys() -> list[str]:
    """Every key of the credentials file, for the search of published files; no file, no keys.
    A broken or unsafe file is reported by the commands that use a key, not here."""
    try:
        return list(_read_keys(credentials_path(), check_private=False).values())
    except (AuthError, ConfigError):
        return []


def save_api_key(api_url: str, key: str) -> Path:
    """Store `key` for `api_url`, replacing any old one, in a file that is 0600 from the start."""
    url = normalize_api_url(api_url, source="API URL")
    key = key.strip()
    if not key or any(ch.isspace() for ch in key):
        raise ConfigError(
            "the API key is empty or holds spaces", hint="paste the key from the dashboard"
        )
    path = credentials_path()
    keys = _read_keys(path, check_private=False)
    keys[url] = key
    _write_keys(path, keys)
    return path


def delete_api_key(api_url: str | None = None) -> bool:
    """Forget the key for `api_url`, or every key when None; True if something was removed."""
    path = credentials_path()
    if api_url is None:
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True
    keys = _read_keys(path, check_private=False)
    if keys.pop(api_url.strip().rstrip("/"), None) is None:
        return False
    if keys:
        _write_keys(path, keys)
    else:
        path.unlink()
    return True


def _read_keys(path: Path, *, check_private: bool) -> dict[str, str]:
    """The `[keys]` table of the credentials file, by normalized URL; {} if there is no file."""
    try:
        # Opened once, then checked by descriptor, so the file checked is the file read.
        with path.open("rb") as f:
            if check_private:
                _check_private(path, os.fstat(f.fileno()))
            data = f.read()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise AuthError(f"cannot read {path}: {exc.strerror}", hint=LOGIN_HINT) from None
    broken = ConfigError(
        f"{path} is not a valid credentials file",
        hint=f"delete {path} and run `mosaicsync login` again",
    )
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        # The parser's message may quote the file, and the file holds keys: say only where.
        raise broken from None
    table = doc.get("keys", {})
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise broken
    return {url.strip().rstrip("/"): key for url, key in table.items()}


def _check_private(path: Path, st: os.stat_result) -> None:
    """Refuse a credentials file that other users can read or that another user owns, like ssh."""
    if st.st_mode & 0o077:
        raise AuthError(
            f"{path} is accessible by other users (mode {stat.S_IMODE(st.st_mode):04o}), "
            "so mosaicsync will not use the keys in it",
            hint=f"chmod 600 {path}",
        )
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise AuthError(
            f"{path} belongs to another user, so mosaicsync will not use the keys in it",
            hint=f"delete {path} and run `mosaicsync login` again",
        )


def _write_keys(path: Path, keys: dict[str, str]) -> None:
    """Replace the file atomically with a new one that is 0600 from its first byte."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    import tomli_w  # writing only: every command reads this file, `login` writes it

    text = _FILE_HEADER + tomli_w.dumps({"keys": dict(sorted(keys.items()))})
    # The mode is set when the temp file is created: the key is never readable by others, not
    # even for the moment between writing and a chmod.
    write_atomic(path, text, mode=0o600)


# Each pattern keeps its first group and masks the rest of the match.
_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    # Mosaic API keys wherever they appear.
    # (Not the masked preview of a finding, `mk_Ab…9z`, which holds two characters of one.)
    (
        re.compile(r"(?<![A-Za-z0-9_])mk_(?![A-Za-z0-9_\-]{1,3}…)[A-Za-z0-9_\-]+"),
        lambda m: "mk_" + MASK,
    ),
    # The password of any URL with userinfo (postgresql://user:password@host/db). A match starts
    # only where a run of scheme characters starts: tried at every letter of a long run (a hex
    # literal in a migration), the scheme would be rescanned each time, quadratic in the run.
    (
        re.compile(
            r"(?<![a-zA-Z0-9+.\-])([0-9+.\-]*[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@\"'<>]*:)"
            r"[^\s\"'<>]*(@)"
        ),
        lambda m: m.group(1) + MASK + m.group(2),
    ),
    # Signatures and one-time tokens in query strings (presigned uploads, magic links).
    (
        re.compile(r"(?i)([?&;](?:sig|signature|x-amz-signature|token)=)[^&\s\"'#<>]*"),
        lambda m: m.group(1) + MASK,
    ),
    # The password field of the database endpoint's JSON.
    (
        re.compile(r"(\"password\"\s*:\s*\")(?:[^\"\\]|\\.)*(\")"),
        lambda m: m.group(1) + MASK + m.group(2),
    ),
)


def redact(text: str, *secrets: str) -> str:
    """`text` with each of `secrets`, any mk_ key, URL passwords and signed query values masked."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    for pattern, mask in _SECRET_PATTERNS:
        text = pattern.sub(mask, text)
    return text
