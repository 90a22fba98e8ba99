"""Which target, API URL, project and API key a command uses, and where each came from.

Each is the first of these that is set (README: "Deploying to production", "Commands"):

    target    --target, MOSAIC_TARGET; else none: the default platform
    API URL   --api-url, the target's api_url (for a target named "local" without one, the
              local platform), MOSAIC_API_URL; else DEFAULT_API_URL
    project   --project, MOSAIC_PROJECT, the target's project_id (`[app] project_id` without
              a target); else none, an error for the commands that need one
    API key   MOSAIC_API_KEY, the key stored for the API URL (`mosaicsync login`); else AuthError

Targets live in mosaic.toml: without one, a target name selects nothing. A repository is not the
user's choice: MOSAIC_API_KEY goes to a URL that only mosaic.toml names when that URL is Mosaic's
own or loopback, or when the user confirmed it (a key stored for it, --api-url, MOSAIC_API_URL).
Plain http is refused for any host but loopback, wherever the URL came from.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Callable, Mapping
from typing import NamedTuple
from urllib.parse import urlsplit

from mosaicsync.config import Config, Target, resolve_target_name
from mosaicsync.contract import DEFAULT_API_URL, LOCAL_API_URL, is_loopback_host
from mosaicsync.credentials import (
    API_URL_ENV,
    KEY_ENV,
    ApiKey,
    normalize_api_url,
    resolve_api_key,
)
from mosaicsync.errors import AuthError, ConfigError

PROJECT_ENV = "MOSAIC_PROJECT"


class Selection(NamedTuple):
    """Where a command acts; each `*_source` names the flag, variable or table it came from."""

    target: str | None  # None: the default platform
    target_source: str
    api_url: str
    api_url_source: str
    project_id: str | None
    project_source: str | None
    api_key: ApiKey | None = None  # only when asked for; its repr never shows the key

    def require_project(self) -> str:
        """The project id; a ConfigError saying how to choose one if there is none."""
        if self.project_id:
            return self.project_id
        flag = f" --target {self.target}" if self.target else ""
        raise ConfigError(
            "no project selected" + (f" for target '{self.target}'" if self.target else ""),
            hint=f"run `mosaicsync link PROJECT_ID{flag}` "
            f"(or `mosaicsync link --create NAME{flag}`), or pass --project / set {PROJECT_ENV}",
        )


def select_target(
    config: Config | None,
    env: Mapping[str, str],
    *,
    target: str | None = None,
    api_url: str | None = None,
    project: str | None = None,
    key_lookup: Callable[[str], ApiKey] | None = None,
) -> Selection:
    """What the flags, `env` and `config` select; the API key too when given `key_lookup`.

    `key_lookup` finds the stored key for an API URL (credentials.stored_api_key) and is called
    only when `env` has no MOSAIC_API_KEY. Nothing here reads os.environ or the disk itself.
    """
    name = resolve_target_name(target, env)
    if not name:
        target_source = "default"
    elif config is None:
        name, target_source = None, "default (no mosaic.toml to define targets in)"
    else:
        target_source = "--target" if target else "MOSAIC_TARGET"
    chosen = config.target(name) if config is not None else None

    url, url_source = _api_url(api_url, chosen, env)
    _refuse_plain_http(url, url_source)
    project_id, project_source = _project(project, chosen, name is not None, env)
    key = resolve_api_key(url, env, key_lookup) if key_lookup is not None else None
    if key is not None and key_lookup is not None and key.source == KEY_ENV:
        _check_env_key_destination(name, url, url_source, env, key_lookup)
    return Selection(
        target=name,
        target_source=target_source,
        api_url=url,
        api_url_source=url_source,
        project_id=project_id,
        project_source=project_source,
        api_key=key,
    )


def _api_url(flag: str | None, target: Target | None, env: Mapping[str, str]) -> tuple[str, str]:
    if flag:
        return normalize_api_url(flag, source="--api-url"), "--api-url"
    if target is not None and target.api_url:
        where = f"[targets.{target.name}] api_url"
        return normalize_api_url(target.api_url, source=where), where
    if target is not None and target.name == "local":
        # What `mosaicsync dev` records: the local platform on its default port.
        return LOCAL_API_URL, "[targets.local] (the local platform)"
    value = env.get(API_URL_ENV, "").strip()
    if value:
        return normalize_api_url(value, source=API_URL_ENV), API_URL_ENV
    return DEFAULT_API_URL, "default"


def is_loopback_url(url: str) -> bool:
    """Whether `url`'s host is this machine: 127.0.0.0/8, ::1, localhost or *.localhost."""
    return is_loopback_host(urlsplit(url).hostname or "")


def _refuse_plain_http(url: str, url_source: str) -> None:
    """Plain http leaves this machine only in clear, API key included: loopback only."""
    if urlsplit(url).scheme == "http" and not is_loopback_url(url):
        raise ConfigError(
            f"{url_source}: {url} is plain http to a host other than this machine, "
            "so the API key would travel in clear",
            hint="use the platform's https URL; http is accepted for 127.0.0.1, ::1 and localhost",
        )


def _check_env_key_destination(
    target: str | None,
    url: str,
    url_source: str,
    env: Mapping[str, str],
    key_lookup: Callable[[str], ApiKey],
) -> None:
    """Refuse to send MOSAIC_API_KEY to a URL that only the repository's mosaic.toml names.

    Allowed: a URL from --api-url or MOSAIC_API_URL, Mosaic's own, loopback, or one the user
    stored a key for with `mosaicsync login --api-url URL` (their choice, outside the repository).
    """
    if url_source in ("--api-url", API_URL_ENV, "default"):
        return
    if url == DEFAULT_API_URL or is_loopback_url(url):
        return
    # The target's api_url wins over MOSAIC_API_URL; the same URL there confirms it.
    if env.get(API_URL_ENV, "").strip().rstrip("/") == url:
        return
    try:
        key_lookup(url)
    except AuthError:
        pass
    else:
        return
    where = f"target '{target}'" if target else "mosaic.toml"
    raise ConfigError(
        f"{where} sends requests to {url} ({url_source}), a URL that only the repository names; "
        f"the key from {KEY_ENV} is not sent there",
        hint=f"if you trust it, run `mosaicsync login --api-url {url}` to store a key for it, "
        f"or confirm it with --api-url {url} or {API_URL_ENV}={url}",
    )


def _project(
    flag: str | None, target: Target | None, named: bool, env: Mapping[str, str]
) -> tuple[str | None, str | None]:
    if flag:
        return flag, "--project"
    value = env.get(PROJECT_ENV, "").strip()
    if value:
        return value, PROJECT_ENV
    # A named target never borrows [app] project_id: a project on one platform does not exist
    # on another, so deploying there would act on whatever happens to share the id.
    if target is not None and target.project_id:
        where = f"[targets.{target.name}]" if named else "[app]"
        return target.project_id, f"{where} project_id"
    return None, None


def user_at_host() -> str:
    """`user@host`: who deployed or applied a migration; the uid when the user has no name."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (a container's bare uid)
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"
