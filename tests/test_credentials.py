"""The API key and URL: lookup order, the 0600 file, per-URL keys, logout, and redaction."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from mosaicsync import credentials
from mosaicsync.contract import DEFAULT_API_URL, LOCAL_API_URL
from mosaicsync.credentials import (
    ApiKey,
    credentials_path,
    delete_api_key,
    redact,
    resolve_api_key,
    save_api_key,
)
from mosaicsync.errors import AuthError, ConfigError

PROD_KEY = "mk_prod_0123456789abcdef"
LOCAL_KEY = "mk_local_fedcba9876543210"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- where the file is ---------------------------------------------------------------------------


def test_path_follows_xdg_config_home(tmp_path: Path) -> None:
    assert credentials_path() == tmp_path / "xdg-config" / "mosaicsync" / "credentials.toml"


def test_path_defaults_to_dot_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert credentials_path() == tmp_path / "home" / ".config" / "mosaicsync" / "credentials.toml"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/dir")  # ignored, as the XDG spec says
    assert credentials_path() == tmp_path / "home" / ".config" / "mosaicsync" / "credentials.toml"


# -- the key -------------------------------------------------------------------------------------


def test_saved_key_is_found_and_the_file_is_0600() -> None:
    path = save_api_key(DEFAULT_API_URL, PROD_KEY)
    assert path == credentials_path()
    assert mode(path) == 0o600
    assert resolve_api_key(DEFAULT_API_URL) == ApiKey(PROD_KEY, str(path))


def test_file_is_0600_from_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    # With no umask to help, and no chmod allowed, the file can only be private if it was
    # created with mode 0600.
    def no_chmod(*args: object, **kwargs: object) -> None:
        raise AssertionError("the key file must be created 0600, not chmod-ed afterwards")

    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(os, "fchmod", no_chmod)
    old = os.umask(0)
    try:
        path = save_api_key(DEFAULT_API_URL, PROD_KEY)
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["credentials.toml"]


def test_env_wins_over_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    save_api_key(DEFAULT_API_URL, PROD_KEY)
    monkeypatch.setenv("MOSAIC_API_KEY", " mk_from_env_123456 ")
    assert resolve_api_key(DEFAULT_API_URL) == ApiKey("mk_from_env_123456", "MOSAIC_API_KEY")


def test_empty_env_is_not_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    save_api_key(DEFAULT_API_URL, PROD_KEY)
    monkeypatch.setenv("MOSAIC_API_KEY", "")
    assert resolve_api_key(DEFAULT_API_URL).value == PROD_KEY


def test_keys_are_per_api_url() -> None:
    save_api_key(DEFAULT_API_URL, PROD_KEY)
    save_api_key(LOCAL_API_URL + "/", LOCAL_KEY)
    assert resolve_api_key(DEFAULT_API_URL).value == PROD_KEY
    assert resolve_api_key(LOCAL_API_URL).value == LOCAL_KEY
    assert resolve_api_key(LOCAL_API_URL + "//").value == LOCAL_KEY
    save_api_key(LOCAL_API_URL, "mk_local_rotated_000000")
    assert resolve_api_key(LOCAL_API_URL).value == "mk_local_rotated_000000"
    assert resolve_api_key(DEFAULT_API_URL).value == PROD_KEY


def test_no_key_says_how_to_get_one() -> None:
    with pytest.raises(AuthError) as info:
        resolve_api_key(DEFAULT_API_URL)
    assert info.value.message == f"no API key for {DEFAULT_API_URL}"
    assert info.value.hint == "run `mosaicsync login` or set MOSAIC_API_KEY"


def test_no_key_for_this_url_names_the_urls_that_have_one() -> None:
    save_api_key(LOCAL_API_URL, LOCAL_KEY)
    with pytest.raises(AuthError) as info:
        resolve_api_key(DEFAULT_API_URL)
    assert LOCAL_API_URL in info.value.message
    assert LOCAL_KEY not in str(info.value)


@pytest.mark.parametrize("bits", [0o640, 0o604, 0o660, 0o644, 0o610])
def test_a_file_others_can_read_is_refused(bits: int) -> None:
    path = save_api_key(DEFAULT_API_URL, PROD_KEY)
    path.chmod(bits)
    with pytest.raises(AuthError) as info:
        resolve_api_key(DEFAULT_API_URL)
    assert info.value.hint == f"chmod 600 {path}"
    assert f"{bits:04o}" in info.value.message
    assert PROD_KEY not in str(info.value)


def test_the_env_key_still_works_beside_an_open_file(monkeypatch: pytest.MonkeyPatch) -> None:
    save_api_key(DEFAULT_API_URL, PROD_KEY).chmod(0o644)
    monkeypatch.setenv("MOSAIC_API_KEY", LOCAL_KEY)
    assert resolve_api_key(DEFAULT_API_URL).value == LOCAL_KEY


def test_saving_again_makes_an_open_file_private() -> None:
    path = save_api_key(DEFAULT_API_URL, PROD_KEY)
    path.chmod(0o644)
    save_api_key(LOCAL_API_URL, LOCAL_KEY)
    assert mode(path) == 0o600
    assert resolve_api_key(DEFAULT_API_URL).value == PROD_KEY


def test_a_broken_file_is_reported_without_its_content() -> None:
    path = credentials_path()
    path.parent.mkdir(parents=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, f'[keys]\n"{DEFAULT_API_URL}" = {PROD_KEY}\n'.encode())
    os.close(fd)
    with pytest.raises(ConfigError) as info:
        resolve_api_key(DEFAULT_API_URL)
    assert PROD_KEY not in str(info.value) and PROD_KEY not in (info.value.hint or "")
    assert info.value.hint == f"delete {path} and run `mosaicsync login` again"


@pytest.mark.parametrize("bad", ["", "   ", "mk_a b"])
def test_save_refuses_an_empty_key(bad: str) -> None:
    with pytest.raises(ConfigError):
        save_api_key(DEFAULT_API_URL, bad)
    assert not credentials_path().exists()


def test_logout_one_url() -> None:
    save_api_key(DEFAULT_API_URL, PROD_KEY)
    save_api_key(LOCAL_API_URL, LOCAL_KEY)
    assert delete_api_key(LOCAL_API_URL + "/") is True
    assert delete_api_key(LOCAL_API_URL) is False
    with pytest.raises(AuthError):
        resolve_api_key(LOCAL_API_URL)
    assert resolve_api_key(DEFAULT_API_URL).value == PROD_KEY
    assert mode(credentials_path()) == 0o600


def test_logout_of_the_last_url_removes_the_file() -> None:
    save_api_key(LOCAL_API_URL, LOCAL_KEY)
    assert delete_api_key(LOCAL_API_URL) is True
    assert not credentials_path().exists()


def test_logout_everywhere() -> None:
    assert delete_api_key() is False
    save_api_key(DEFAULT_API_URL, PROD_KEY)
    save_api_key(LOCAL_API_URL, LOCAL_KEY)
    assert delete_api_key() is True
    assert not credentials_path().exists()
    assert delete_api_key(DEFAULT_API_URL) is False


def test_repr_never_shows_the_key() -> None:
    key = ApiKey(PROD_KEY, "MOSAIC_API_KEY")
    for shown in (repr(key), str(key), f"{key}", f"{key!r}", repr([key]), repr({"k": key})):
        assert PROD_KEY not in shown
        assert PROD_KEY[4:] not in shown
    assert repr(key) == "ApiKey(source='MOSAIC_API_KEY', value=mk_p…(redacted))"
    assert "mk_a" not in repr(ApiKey("mk_abc", "x"))  # too short to show any of it


# -- the key, with the environment and the store passed in ---------------------------------------


def test_key_lookup_takes_its_environment_and_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOSAIC_API_KEY", "mk_from_os_environ_000")
    stored = {LOCAL_API_URL: ApiKey(LOCAL_KEY, "store")}
    assert resolve_api_key(LOCAL_API_URL, {}, stored.__getitem__) == ApiKey(LOCAL_KEY, "store")
    env = {"MOSAIC_API_KEY": PROD_KEY}
    assert resolve_api_key(LOCAL_API_URL, env, stored.__getitem__) == ApiKey(
        PROD_KEY, "MOSAIC_API_KEY"
    )


# -- redaction -----------------------------------------------------------------------------------

REDACTIONS = [
    ("X-API-Key: mk_live_abc123", "X-API-Key: mk_***"),
    ('{"key": "mk_a-b_c"}', '{"key": "mk_***"}'),
    ("use mk_xxxxx here", "use mk_*** here"),
    ("not a key: token_mk_abc", "not a key: token_mk_abc"),
    (
        "postgresql://tenant_pod_16f:s3cr%40t@db.mosaic.site:5432/tenant_pod_16f",
        "postgresql://tenant_pod_16f:***@db.mosaic.site:5432/tenant_pod_16f",
    ),
    ("postgres://u:p@ss@h/db now", "postgres://u:***@h/db now"),
    (
        '"database_url":"postgresql://u:pw@h/d","x":1',
        '"database_url":"postgresql://u:***@h/d","x":1',
    ),
    ("postgresql://u@h/db", "postgresql://u@h/db"),
    (
        "PUT http://127.0.0.1:8787/_storage/pod-16f/a.png?expires=1700&sig=9f8e7d&size=3",
        "PUT http://127.0.0.1:8787/_storage/pod-16f/a.png?expires=1700&sig=***&size=3",
    ),
    (
        "https://s3.mosaic.site/bucket/x?signature=abc",
        "https://s3.mosaic.site/bucket/x?signature=***",
    ),
    ("/dashboard?token=xyz&email=a@b.c", "/dashboard?token=***&email=a@b.c"),
    ('{"password": "xxxxx", "port": 5432}', '{"password": "***", "port": 5432}'),
    ("nothing secret here", "nothing secret here"),
]


@pytest.mark.parametrize(("text", "expected"), REDACTIONS)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_redact_explicit_secrets() -> None:
    text = "login failed for key abc123secret with password hunter22 (hunter22)"
    assert redact(text, "abc123secret", "hunter22", "") == (
        "login failed for key *** with password *** (***)"
    )


def test_redact_a_database_response() -> None:
    response = (
        '{"project_id": "pod-16f", "database_url": '
        '"postgresql://tenant_pod_16f:Zq9xv2@db.mosaic.site:5432/tenant_pod_16f", '
        '"password": "Zq9xv2"}'
    )
    masked = redact(response)
    assert "Zq9xv2" not in masked
    assert "tenant_pod_16f" in masked


def test_the_mask_is_one_constant() -> None:
    assert credentials.MASK in redact("mk_abc")


def _redact_seconds(text: str) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        redact(text, "hunter2")
        best = min(best, time.perf_counter() - start)
    return best


def test_redaction_of_long_literals_costs_linear_time() -> None:
    # `migrate up --dry-run` redacts the SQL it shows; a long hex literal made the URL pattern
    # rescan the run from every letter in it: quadratic, seconds per MB.
    small = _redact_seconds("INSERT INTO b VALUES ('\\x" + "ab" * 2_000 + "');\n")
    big = _redact_seconds("INSERT INTO b VALUES ('\\x" + "ab" * 8_000 + "');\n")
    assert big < 8 * small + 0.02, (small, big)
    # Still masked, with a run of scheme characters before and after the URL.
    assert (
        redact("x 1.ab2+postgres://u:pw@h/db y")
        == f"x 1.ab2+postgres://u:{credentials.MASK}@h/db y"
    )


def test_a_credentials_file_nested_thousands_deep_is_a_broken_file() -> None:
    # tomllib recurses once per level: 5,000 levels raised RecursionError, a traceback.
    path = credentials_path()
    path.parent.mkdir(parents=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, ("x = " + "[" * 5000 + "]" * 5000 + "\n").encode())
    os.close(fd)
    with pytest.raises(ConfigError, match="is not a valid credentials file"):
        resolve_api_key(DEFAULT_API_URL)
