"""Unit tests of the local platform's pure mechanisms: paths, ETags, sizes, signing, limits."""

from __future__ import annotations

import ast
import posixpath
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mosaicsync.local
from mosaicsync.local.accounts import RateLimiter, generate_key, write_secret_file
from mosaicsync.local.atomic import atomic_file, write_atomic
from mosaicsync.local.clock import Clock
from mosaicsync.local.errors import ApiError
from mosaicsync.local.paths import clean_path, site_extension
from mosaicsync.local.sites import etag_matches
from mosaicsync.local.state import State
from mosaicsync.local.storage import ObjectStore, human_bytes


@given(st.text(min_size=1, max_size=60))
def test_clean_path_never_escapes(name: str) -> None:
    try:
        path = clean_path(name)
    except ApiError as exc:
        assert exc.status == 400
        return
    assert not path.startswith("/")
    assert "\\" not in path and "\0" not in path
    assert ".." not in path.split("/")
    assert posixpath.normpath(path) == path


@pytest.mark.parametrize("ok", ["index.html", "a/b/c.css", "café.txt", ".well-known/x.json"])
def test_clean_path_accepts(ok: str) -> None:
    assert clean_path(ok) == ok


def test_site_extension_is_case_insensitive_and_names_the_list() -> None:
    assert site_extension("A.HTML") == ".html"
    with pytest.raises(ApiError) as info:
        site_extension("a.php")
    assert ".webp" in info.value.message


def test_etag_matches_strong_weak_star_and_lists() -> None:
    assert etag_matches('"abc"', "abc")
    assert etag_matches('W/"abc"', "abc")
    assert etag_matches('"x", "abc"', "abc")
    assert etag_matches("*", "abc")
    assert not etag_matches('"abd"', "abc")


def test_human_bytes() -> None:
    assert human_bytes(0) == "0 B"
    assert human_bytes(1_200_000_000) == "1.2 GB"
    assert human_bytes(20 * 1000**3) == "20 GB"


def test_generated_keys_have_the_documented_prefix() -> None:
    keys = {generate_key() for _ in range(100)}
    assert len(keys) == 100 and all(k.startswith("mk_") and len(k) > 20 for k in keys)


def test_rate_limiter_allows_burst_then_429() -> None:
    limiter = RateLimiter(rate=5)
    for _ in range(10):
        limiter.check("k")
    with pytest.raises(ApiError) as info:
        limiter.check("k")
    assert info.value.status == 429 and int(info.value.headers["Retry-After"]) >= 1
    limiter.check("other-key")  # buckets are per key


def test_rate_limiter_off() -> None:
    limiter = RateLimiter(rate=0)
    for _ in range(1000):
        limiter.check("k")


@pytest.fixture
def store(tmp_path) -> ObjectStore:
    state = State(tmp_path / "s.sqlite3")
    yield ObjectStore(tmp_path / "objects", state, Clock(), b"k" * 32, quota=1000)
    state.close()


def query_of(url: str) -> dict[str, str]:
    from urllib.parse import parse_qs, urlsplit

    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def test_presign_binds_project_name_size_and_expiry(store: ObjectStore) -> None:
    signed = store.presign("pod-16f", "a/b.bin", 10, "http://h")
    q = query_of(signed["upload_url"])
    assert store.verify("pod-16f", "a/b.bin", q) == 10
    for project, path, change in [
        ("wave-x7k", "a/b.bin", {}),
        ("pod-16f", "a/c.bin", {}),
        ("pod-16f", "a/b.bin", {"size": "11"}),
        ("pod-16f", "a/b.bin", {"expires": str(int(q["expires"]) + 1000)}),
        ("pod-16f", "a/b.bin", {"sig": q["sig"][:-1] + ("A" if q["sig"][-1] != "A" else "B")}),
    ]:
        with pytest.raises(ApiError) as info:
            store.verify(project, path, {**q, **change})
        assert info.value.status == 403
    store.clock.advance(301)
    with pytest.raises(ApiError, match="expired"):
        store.verify("pod-16f", "a/b.bin", q)


def test_presign_checks_quota(store: ObjectStore) -> None:
    with pytest.raises(ApiError) as info:
        store.presign("pod-16f", "big.bin", 1001, "http://h")
    assert info.value.status == 403 and "quota" in info.value.message


def test_atomic_write_replaces_with_the_given_mode(tmp_path: Path) -> None:
    target = tmp_path / "conf"
    target.write_text("old")
    write_atomic(target, "new", mode=0o640)
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf"]


def test_atomic_file_failing_mid_write_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "object.bin"
    target.write_bytes(b"old content")
    with pytest.raises(RuntimeError), atomic_file(target, durable=False) as f:
        f.write(b"half of the new")
        raise RuntimeError("the client went away")
    assert target.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["object.bin"]


def test_secret_file_failing_to_write_leaves_no_temp_behind(tmp_path: Path) -> None:
    target = tmp_path / "api-key"
    write_secret_file(target, "mk_first")
    with pytest.raises(UnicodeEncodeError):
        write_secret_file(target, "mk_\udc80")  # a lone surrogate cannot be encoded
    assert target.read_text() == "mk_first\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api-key"]


def test_the_local_platform_shares_only_the_contract_with_the_client() -> None:
    local = Path(mosaicsync.local.__file__).parent
    outside = set()
    for source in local.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                shared = name in ("mosaicsync", "mosaicsync.contract")  # __version__, the contract
                own = name == "mosaicsync.local" or name.startswith("mosaicsync.local.")
                if name.split(".")[0] == "mosaicsync" and not (shared or own):
                    outside.add(f"{source.relative_to(local)}: {name}")
    assert not outside
