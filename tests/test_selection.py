"""select_target: flags, then environment, then mosaic.toml, then defaults; data in, data out."""

from __future__ import annotations

import getpass
import json
import os
import socket
from pathlib import Path
from types import MappingProxyType

import httpx
import pytest
from click.testing import CliRunner

from mosaicsync.cli import cli
from mosaicsync.config import Config, Target, load_config
from mosaicsync.contract import DEFAULT_API_URL, LOCAL_API_URL
from mosaicsync.credentials import ApiKey
from mosaicsync.errors import AuthError, ConfigError
from mosaicsync.selection import Selection, select_target, user_at_host
from tests.conftest import KEY_A, LocalServer

STAGING = "https://staging.example/v1/project"
ELSEWHERE = "http://127.0.0.1:9999/v1/project"


def config(app_project: str | None = "pod-16f", **targets: Target) -> Config:
    root = Path("/srv/site")
    return Config(
        path=root / "mosaic.toml",
        project_dir=root,
        name="site",
        project_id=app_project,
        static_root=root / "public",
        static_ignore=(),
        migrations_dir=root / "migrations",
        targets=MappingProxyType(targets),
    )


EXAMPLE = config(
    local=Target("local", None, "wave-x7k"),
    staging=Target("staging", STAGING, "bolt-9zz"),
    bare=Target("bare", None, "tide-3q"),
)


def no_lookup(url: str) -> ApiKey:
    raise AssertionError(f"the stored key was looked up for {url}")


# -- the precedence table, one row per case ------------------------------------------------------
# (flags, env) -> (target, target_source, api_url, api_url_source, project_id, project_source)
ROWS = [
    pytest.param(
        {},
        {},
        (None, "default", DEFAULT_API_URL, "default", "pod-16f", "[app] project_id"),
        id="nothing-set",
    ),
    pytest.param(
        {},
        {"MOSAIC_API_URL": ELSEWHERE + "/", "MOSAIC_PROJECT": "env-1a"},
        (None, "default", ELSEWHERE, "MOSAIC_API_URL", "env-1a", "MOSAIC_PROJECT"),
        id="env-over-mosaic-toml",
    ),
    pytest.param(
        {"api_url": STAGING + "//", "project": "flag-2b"},
        {"MOSAIC_API_URL": ELSEWHERE, "MOSAIC_PROJECT": "env-1a"},
        (None, "default", STAGING, "--api-url", "flag-2b", "--project"),
        id="flags-over-env",
    ),
    pytest.param(
        {},
        {"MOSAIC_TARGET": "staging", "MOSAIC_API_URL": ELSEWHERE},
        (
            "staging",
            "MOSAIC_TARGET",
            STAGING,
            "[targets.staging] api_url",
            "bolt-9zz",
            "[targets.staging] project_id",
        ),
        id="env-target-its-url-over-MOSAIC_API_URL",
    ),
    pytest.param(
        {"target": "local"},
        {"MOSAIC_TARGET": "staging", "MOSAIC_API_URL": ELSEWHERE},
        (
            "local",
            "--target",
            LOCAL_API_URL,
            "[targets.local] (the local platform)",
            "wave-x7k",
            "[targets.local] project_id",
        ),
        id="flag-target-over-env-target-local-means-the-local-platform",
    ),
    pytest.param(
        {"target": "bare"},
        {"MOSAIC_API_URL": ELSEWHERE},
        ("bare", "--target", ELSEWHERE, "MOSAIC_API_URL", "tide-3q", "[targets.bare] project_id"),
        id="target-without-url-uses-MOSAIC_API_URL",
    ),
    pytest.param(
        {"target": "bare"},
        {},
        ("bare", "--target", DEFAULT_API_URL, "default", "tide-3q", "[targets.bare] project_id"),
        id="target-without-url-or-env",
    ),
    pytest.param(
        {"target": "local", "api_url": STAGING, "project": "flag-2b"},
        {"MOSAIC_PROJECT": "env-1a"},
        ("local", "--target", STAGING, "--api-url", "flag-2b", "--project"),
        id="flags-over-the-target",
    ),
    pytest.param(
        {"target": "staging"},
        {"MOSAIC_PROJECT": "env-1a"},
        (
            "staging",
            "--target",
            STAGING,
            "[targets.staging] api_url",
            "env-1a",
            "MOSAIC_PROJECT",
        ),
        id="MOSAIC_PROJECT-over-the-target",
    ),
    pytest.param(
        {"target": ""},
        {"MOSAIC_TARGET": "  ", "MOSAIC_API_URL": " ", "MOSAIC_PROJECT": ""},
        (None, "default", DEFAULT_API_URL, "default", "pod-16f", "[app] project_id"),
        id="empty-values-are-unset",
    ),
]


@pytest.mark.parametrize(("flags", "env", "expected"), ROWS)
def test_precedence(flags: dict, env: dict, expected: tuple) -> None:
    chosen = select_target(EXAMPLE, env, **flags)
    assert (
        chosen.target,
        chosen.target_source,
        chosen.api_url,
        chosen.api_url_source,
        chosen.project_id,
        chosen.project_source,
    ) == expected
    assert chosen.api_key is None


def test_the_environment_is_only_what_is_passed_in(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "MOSAIC_TARGET": "local",
        "MOSAIC_API_URL": ELSEWHERE,
        "MOSAIC_PROJECT": "env-1a",
        "MOSAIC_API_KEY": "mk_from_os_environ_0000",
    }.items():
        monkeypatch.setenv(name, value)
    chosen = select_target(EXAMPLE, {}, key_lookup=lambda url: ApiKey("mk_stored_1111", "file"))
    assert (chosen.target, chosen.api_url, chosen.project_id) == (None, DEFAULT_API_URL, "pod-16f")
    assert chosen.api_key == ApiKey("mk_stored_1111", "file")


def test_a_target_name_without_a_mosaic_toml_selects_the_default_platform() -> None:
    chosen = select_target(None, {"MOSAIC_TARGET": "local"})
    assert chosen.target is None and chosen.target_source.startswith("default")
    assert (chosen.api_url, chosen.project_id, chosen.project_source) == (
        DEFAULT_API_URL,
        None,
        None,
    )


def test_an_unknown_target_names_the_defined_ones() -> None:
    with pytest.raises(ConfigError, match="the targets defined are: bare, local, staging"):
        select_target(EXAMPLE, {"MOSAIC_TARGET": "prod"})


# -- the API key ---------------------------------------------------------------------------------


def test_the_key_is_looked_up_for_the_selected_url() -> None:
    asked: list[str] = []

    def lookup(url: str) -> ApiKey:
        asked.append(url)
        return ApiKey("mk_local_0123456789", "credentials.toml")

    chosen = select_target(
        EXAMPLE, {"MOSAIC_API_URL": ELSEWHERE}, target="local", key_lookup=lookup
    )
    assert asked == [LOCAL_API_URL]
    assert chosen.api_key == ApiKey("mk_local_0123456789", "credentials.toml")


def test_MOSAIC_API_KEY_wins_over_the_stored_key() -> None:
    env = {"MOSAIC_API_KEY": " mk_env_0123456789 "}
    chosen = select_target(EXAMPLE, env, key_lookup=no_lookup)
    assert chosen.api_key == ApiKey("mk_env_0123456789", "MOSAIC_API_KEY")


def test_no_key_is_an_auth_error_from_the_lookup() -> None:
    def lookup(url: str) -> ApiKey:
        raise AuthError(f"no API key for {url}")

    with pytest.raises(AuthError, match=f"no API key for {DEFAULT_API_URL}"):
        select_target(EXAMPLE, {}, key_lookup=lookup)


def test_the_key_is_never_in_the_repr() -> None:
    chosen = select_target(EXAMPLE, {"MOSAIC_API_KEY": "mk_env_0123456789"}, key_lookup=no_lookup)
    assert "0123456789" not in repr(chosen)


# -- where a key from the environment may go ---------------------------------------------------

ENV_KEY = {"MOSAIC_API_KEY": "mk_env_0123456789"}


def no_stored_key(url: str) -> ApiKey:
    raise AuthError(f"no API key for {url}")


def test_the_environment_key_is_not_sent_to_a_url_that_only_the_repository_names() -> None:
    # A cloned repository's mosaic.toml would otherwise receive the user's production key.
    with pytest.raises(ConfigError) as caught:
        select_target(EXAMPLE, ENV_KEY, target="staging", key_lookup=no_stored_key)
    message = str(caught.value) + " " + (caught.value.hint or "")
    assert "staging" in message and STAGING in message
    assert f"mosaicsync login --api-url {STAGING}" in message
    assert "--api-url" in message and "MOSAIC_API_URL" in message
    assert "0123456789" not in message


@pytest.mark.parametrize(
    "flags, env",
    [
        pytest.param({"api_url": STAGING}, {}, id="--api-url"),
        pytest.param({}, {"MOSAIC_API_URL": STAGING}, id="MOSAIC_API_URL"),
    ],
)
def test_the_user_confirms_the_repository_url_outside_the_repository(
    flags: dict[str, str], env: dict[str, str]
) -> None:
    chosen = select_target(
        EXAMPLE, {**ENV_KEY, **env}, target="staging", key_lookup=no_stored_key, **flags
    )
    assert chosen.api_url == STAGING
    assert chosen.api_key == ApiKey("mk_env_0123456789", "MOSAIC_API_KEY")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9999/v1/project",
        "http://[::1]:8787/v1/project",
        "http://localhost:8787/v1/project",
        "http://site.localhost:8787/v1/project",
        DEFAULT_API_URL,
    ],
)
def test_the_environment_key_goes_to_a_repository_named_loopback_or_production_url(
    url: str,
) -> None:
    repo = config(dev=Target("dev", url, "wave-x7k"))
    chosen = select_target(repo, ENV_KEY, target="dev", key_lookup=no_stored_key)
    assert chosen.api_url == url
    assert chosen.api_key is not None and chosen.api_key.source == "MOSAIC_API_KEY"


def test_a_key_stored_for_the_repository_url_confirms_it() -> None:
    def stored(url: str) -> ApiKey:
        assert url == STAGING
        return ApiKey("mk_stored_1111", "credentials.toml")

    # The user ran `mosaicsync login --api-url STAGING`: the URL is their choice.
    chosen = select_target(EXAMPLE, {}, target="staging", key_lookup=stored)
    assert chosen.api_key == ApiKey("mk_stored_1111", "credentials.toml")
    chosen = select_target(EXAMPLE, ENV_KEY, target="staging", key_lookup=stored)
    assert chosen.api_url == STAGING


@pytest.mark.parametrize(
    "flags, env, target",
    [
        pytest.param({"api_url": "http://example.com/v1"}, {}, None, id="--api-url"),
        pytest.param({}, {"MOSAIC_API_URL": "http://example.com/v1"}, None, id="MOSAIC_API_URL"),
        pytest.param({}, {}, "plain", id="mosaic.toml"),
    ],
)
def test_plain_http_to_a_host_other_than_loopback_is_refused(
    flags: dict[str, str], env: dict[str, str], target: str | None
) -> None:
    repo = config(plain=Target("plain", "http://example.com/v1", None))
    for lookup in (None, lambda url: ApiKey("mk_stored_1111", "credentials.toml")):
        with pytest.raises(ConfigError, match=r"http://example\.com/v1.*in clear"):
            select_target(repo, env, target=target, key_lookup=lookup, **flags)


# -- bad values name where they came from --------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "env", "config_", "message"),
    [
        ({"api_url": "ftp://x/v1"}, {}, EXAMPLE, r"^--api-url: 'ftp://x/v1' is not an http"),
        ({}, {"MOSAIC_API_URL": "file:///etc/passwd"}, EXAMPLE, r"^MOSAIC_API_URL: 'file:///etc/"),
        (
            {"target": "x"},
            {},
            config(x=Target("x", "gopher://h", None)),
            r"^\[targets.x\] api_url: ",
        ),
    ],
)
def test_a_bad_api_url_names_its_source(
    flags: dict, env: dict, config_: Config, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        select_target(config_, env, **flags)


def test_an_api_url_with_a_password_is_refused_and_masked() -> None:
    with pytest.raises(ConfigError) as info:
        select_target(None, {}, api_url="https://me:hunter22@h/v1")
    assert "hunter22" not in str(info.value)


# -- no project ----------------------------------------------------------------------------------


def test_no_project_says_how_to_choose_one() -> None:
    chosen = select_target(config(app_project=None), {})
    assert (chosen.project_id, chosen.project_source) == (None, None)
    with pytest.raises(ConfigError) as info:
        chosen.require_project()
    assert info.value.message == "no project selected"
    assert info.value.hint == (
        "run `mosaicsync link PROJECT_ID` (or `mosaicsync link --create NAME`), "
        "or pass --project / set MOSAIC_PROJECT"
    )


def test_no_project_for_a_target_names_the_target() -> None:
    chosen = select_target(config(None, local=Target("local", None, None)), {}, target="local")
    with pytest.raises(ConfigError) as info:
        chosen.require_project()
    assert info.value.message == "no project selected for target 'local'"
    assert "`mosaicsync link PROJECT_ID --target local`" in (info.value.hint or "")


def test_a_target_never_borrows_the_app_project_id() -> None:
    # [app] project_id is production's; the same id on another platform is another project.
    chosen = select_target(config("pod-16f", local=Target("local", None, None)), {}, target="local")
    assert (chosen.project_id, chosen.project_source) == (None, None)
    with pytest.raises(ConfigError, match="no project selected for target 'local'"):
        chosen.require_project()


def test_a_selection_is_frozen() -> None:
    chosen = select_target(EXAMPLE, {})
    assert isinstance(chosen, Selection)
    with pytest.raises(AttributeError):
        chosen.project_id = "other-1a"  # type: ignore[misc]


# -- the commands go through it ------------------------------------------------------------------


@pytest.mark.integration
def test_link_records_the_project_under_the_target_that_MOSAIC_TARGET_selects(
    tmp_path: Path, local_server: LocalServer
) -> None:
    # The project is created on the target's platform, so its id belongs in that target's
    # table, never in [app] (production's).
    (tmp_path / "public").mkdir()
    path = tmp_path / "mosaic.toml"
    path.write_text(
        f'[app]\nproject_id = "pod-16f"\n\n[targets.stage]\napi_url = "{local_server.api}"\n'
    )
    env = {"MOSAIC_TARGET": "stage", "MOSAIC_API_KEY": KEY_A}
    args = ["link", "--create", "Staged", "--config", str(path), "--json"]
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 0, result.output
    created = json.loads(result.stdout)["project_id"]
    try:
        linked = load_config(path)
        assert linked.project_id == "pod-16f"
        assert linked.target("stage").project_id == created
    finally:
        with httpx.Client(base_url=local_server.api, headers={"X-API-Key": KEY_A}) as api:
            api.delete(f"/{created}").raise_for_status()


# -- user@host -----------------------------------------------------------------------------------


def test_user_at_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGNAME", "ada")
    assert user_at_host() == f"ada@{socket.gethostname()}"


def test_user_at_host_without_a_user_name_is_the_uid(monkeypatch: pytest.MonkeyPatch) -> None:
    def nameless() -> str:
        raise OSError("No username set in the environment")

    monkeypatch.setattr(getpass, "getuser", nameless)
    assert user_at_host() == f"{os.getuid()}@{socket.gethostname()}"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("localhost", True), ("pod-16f.localhost", True), ("127.0.0.2", True), ("[::1]", True),
     ("LOCALHOST.", True), ("localhost.evil.example", False), ("10.0.0.1", False),
     ("api.mosaic.site", False), ("", False)],
)  # fmt: skip
def test_one_loopback_rule_for_the_client_and_the_local_platform(host: str, loopback: bool) -> None:
    from mosaicsync.contract import is_loopback_host
    from mosaicsync.local.origin import host_allowed
    from mosaicsync.selection import is_loopback_url

    assert is_loopback_host(host) is loopback
    if host:
        assert is_loopback_url(f"https://{host}:8787/v1/project") is loopback
        assert host_allowed(f"{host}:8787", "127.0.0.1") is loopback
