"""Which target, API URL, project and API key a command uses, and where each came from.

Each is the first of these that is set (README: "Deploying to production", "Commands"):

    target    --target, MOSAIC_TARGET; else none: the default platform
    API URL   --api-url, the target's api_url (for a target named "local" without one, the
              local platform), MOSAIC_API_URL; else DEFAULT_API_URL
    project   --project, MOSAIC_PROJECT, the target's project_id (`[app] project_id` without
              a target); else none, an error for the commands that need one
    API key   MOSAIC_API_KEY, the key stored for the API URL (`mosaicsync login`); else AuthError

Targets live in mosaic.toml: without one, a target name selects nothing.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mosaicsync.config import Config, Target, resolve_target_name
from mosaicsync.contract import DEFAULT_API_URL, LOCAL_API_URL
from mosaicsync.credentials import API_URL_ENV, ApiKey, normalize_api_url, resolve_api_key
from mosaicsync.errors import ConfigError

PROJECT_ENV = "MOSAIC_PROJECT"


@dataclass(frozen=True)
class Selection:
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
    project_id, project_source = _project(project, chosen, name is not None, env)
    key = resolve_api_key(url, env, key_lookup) if key_lookup is not None else None
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
