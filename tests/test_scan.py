"""The walk, the ignore rules and the hash cache, on real files in tmp_path."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import unicodedata
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pathspec import GitIgnoreSpec

from mosaicsync import scan as scan_module
from mosaicsync.errors import ConfigError, ScanError
from mosaicsync.hashcache import HashCache
from mosaicsync.ignore import (
    CONFIG_SOURCE,
    DEFAULT_IGNORES,
    SECRET_IGNORES,
    IgnoreRules,
    load_ignore_rules,
)
from mosaicsync.scan import (
    POOL_MIN_SIZE,
    RACY_WINDOW_NS,
    hash_file,
    scan,
    scan_paths,
    vetting,
)


def write(root: Path, rel: str, data: bytes | str = b"x") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def settle() -> None:
    """Wait until freshly written files are old enough for the cache to vouch for them."""
    time.sleep(RACY_WINDOW_NS / 1e9 + 0.02)


def rules_for(root: Path, extra: tuple[str, ...] = (), **kwargs: bool) -> IgnoreRules:
    return load_ignore_rules(root, root, extra, **kwargs)


def paths(root: Path, rules: IgnoreRules | None = None) -> list[str]:
    return [file.path for file in scan(root, rules or rules_for(root)).files]


def skipped(root: Path, rules: IgnoreRules | None = None) -> dict[str, str]:
    return {item.path: item.reason for item in scan(root, rules or rules_for(root)).skipped}


# --- default ignores -----------------------------------------------------------------------------


def test_default_ignores_keep_secrets_and_clutter_out_but_keep_well_known(tmp_path: Path) -> None:
    for rel in [
        "index.html",
        ".well-known/security.txt",
        ".well-known/acme-challenge/token",
        ".env",
        ".env.production",
        ".envrc",
        "sub/.env.local",
        ".git/config",
        ".git/objects/ab/cdef",
        "id_rsa",
        "id_ed25519.pub",
        "server.pem",
        "certs/SERVER.PEM",
        "tls.key",
        ".npmrc",
        "node_modules/lib/index.js",
        "__pycache__/x.pyc",
        ".DS_Store",
        "mosaic.toml",
        ".mosaicignore",
        ".mosaicsync/hashcache",
        "page.html.swp",
        "notes.txt~",
        ".#index.html",
        "#index.html#",
    ]:
        write(tmp_path, rel)
    result = scan(tmp_path, rules_for(tmp_path))
    assert [f.path for f in result.files] == [
        ".well-known/acme-challenge/token",
        ".well-known/security.txt",
        "index.html",
    ]
    reasons = {item.path: item.reason for item in result.skipped}
    assert reasons[".env"] == "default: .env*"
    assert reasons[".env.production"] == "default: .env*"
    assert reasons["sub/.env.local"] == "default: .env*"
    assert reasons[".git/"] == "default: .git/"
    assert reasons["node_modules/"] == "default: node_modules/"
    assert reasons["id_rsa"] == "default: id_rsa*"
    assert reasons["server.pem"] == "default: *.pem"
    assert reasons["certs/SERVER.PEM"] == "default: *.pem"  # a case-insensitive disk would ship it
    assert reasons[".mosaicsync/"] == "default: .mosaicsync/"
    assert reasons["mosaic.toml"] == "default: mosaic.toml"
    # A skipped directory is reported once, not file by file.
    assert not [
        path for path in reasons if path.startswith((".git/", "node_modules/")) and path[-1] != "/"
    ]


def test_defaults_are_one_tuple_holding_the_secret_subset() -> None:
    assert set(SECRET_IGNORES) <= set(DEFAULT_IGNORES)
    assert not any(".well-known" in pattern for pattern in DEFAULT_IGNORES)
    for pattern in [".git/", ".env", ".env.*", ".env*", "*.pem", "*.key", "id_rsa*", ".npmrc"]:
        assert pattern in SECRET_IGNORES
    # Each default is a real rule: a line starting with "#" would silently be a comment.
    for pattern in DEFAULT_IGNORES:
        assert [p.include for p in GitIgnoreSpec.from_lines([pattern]).patterns] == [True]


# Credential files of common tools, where they sit in a home folder or a project, at the root and
# nested, in another case; none may be published, and no `!pattern` can re-include one.
TOOL_CREDENTIALS = [
    ".git-credentials",
    "site/.git-credentials",
    ".pgpass",
    "db/.PGPASS",
    ".htpasswd",
    "admin/.htpasswd",
    ".bash_history",
    "home/.zsh_history",
    ".psql_history",
    ".aws/credentials",
    "home/.aws/credentials",
    ".ssh/id_ed25519",
    ".ssh/config",
    "home/.SSH/authorized_keys",
    ".kube/config",
    "home/.kube/config",
    ".docker/config.json",
    "home/.docker/config.json",
    "credentials.toml",
    ".config/mosaicsync/credentials.toml",
    ".config/gcloud/application_default_credentials.json",
    ".config/gh/hosts.yml",
    ".gem/credentials",
    ".cargo/credentials.toml",
    "infra/terraform.tfstate",
    "infra/prod.tfvars",
    "sftp-config.json",
    ".vscode/sftp.json",
    ".netrc",
]
# Look-alikes that are ordinary site files and must stay published.
SITE_FILES = [
    "index.html",
    "config.json",
    "data/credentials.html",
    "docker/config.json",
    "aws/credentials.md",
    "history.html",
    "ssh/index.html",
    "kube.css",
    ".well-known/security.txt",
]


def test_credential_files_of_common_tools_are_never_published(tmp_path: Path) -> None:
    for rel in TOOL_CREDENTIALS + SITE_FILES:
        write(tmp_path, rel)
    rules = load_ignore_rules(tmp_path, tmp_path, ["!*", "!.*", "!**/*"])
    assert sorted(paths(tmp_path, rules)) == sorted(SITE_FILES)
    assert sorted(paths(tmp_path)) == sorted(SITE_FILES)
    reasons = skipped(tmp_path, rules)
    for rel in TOOL_CREDENTIALS:
        parts = rel.split("/")
        prefixes = ["/".join(parts[:i]) + "/" for i in range(1, len(parts))]
        [why] = [reasons[p] for p in [*prefixes, rel] if p in reasons]
        assert why.startswith("default: "), (rel, why)


def test_ignored_directories_are_never_entered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "index.html")
    for n in range(20):
        write(tmp_path, f"node_modules/pkg{n}/index.js")
        write(tmp_path, f".git/objects/{n:02x}/blob")
    entered: list[str] = []
    real_scandir = os.scandir

    def recording_scandir(path: str) -> Any:
        entered.append(os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", recording_scandir)
    assert paths(tmp_path) == ["index.html"]
    assert entered == [str(tmp_path.resolve())]


# --- .mosaicignore and [static] ignore -----------------------------------------------------------


def test_layers_report_the_rule_and_its_source(tmp_path: Path) -> None:
    project = tmp_path
    public = project / "public"
    write(public, ".mosaicignore", "# drafts stay home\ndrafts/\n*.psd\n!keep.psd\n")
    write(project, ".mosaicignore", "*.log\n")
    for rel in [
        "index.html",
        "drafts/a.html",
        "art.psd",
        "keep.psd",
        "debug.log",
        "x.bak",
        "top.txt",
    ]:
        write(public, rel)
    write(public, "sub/top.txt")
    rules = load_ignore_rules(public, project, ["*.bak", "/top.txt"])
    result = scan(public, rules)
    assert [f.path for f in result.files] == ["index.html", "keep.psd", "sub/top.txt"]
    assert {item.path: item.reason for item in result.skipped} == {
        ".mosaicignore": "default: .mosaicignore",
        "drafts/": "public/.mosaicignore: drafts/",
        "art.psd": "public/.mosaicignore: *.psd",
        "debug.log": ".mosaicignore: *.log",
        "x.bak": f"{CONFIG_SOURCE}: *.bak",
        "top.txt": f"{CONFIG_SOURCE}: /top.txt",
    }


def test_mosaicignore_at_the_root_of_a_project_that_is_its_own_static_root(tmp_path: Path) -> None:
    write(tmp_path, ".mosaicignore", "drafts/\n")
    write(tmp_path, "drafts/x.html")
    write(tmp_path, "index.html")
    assert skipped(tmp_path)["drafts/"] == ".mosaicignore: drafts/"


def test_a_user_can_reinclude_a_default_that_is_not_a_secret(tmp_path: Path) -> None:
    write(tmp_path, ".DS_Store")
    write(tmp_path, ".mosaicignore", "!.DS_Store\n")
    assert paths(tmp_path) == [".DS_Store"]


def test_a_negation_cannot_reinclude_a_secret(tmp_path: Path) -> None:
    write(tmp_path, ".env", "TOKEN=1")
    write(tmp_path, "server.pem")
    write(tmp_path, ".git/config")
    write(tmp_path, ".mosaicignore", "!.env\n!*.pem\n!.git/\n")
    reasons = skipped(tmp_path, rules_for(tmp_path, ("!.env",)))
    assert reasons[".env"].startswith("default: .env*")
    assert "cannot re-include" in reasons[".env"]
    assert set(reasons) >= {".env", "server.pem", ".git/"}
    assert paths(tmp_path) == []


def test_allow_secrets_lets_an_explicit_negation_through(tmp_path: Path) -> None:
    write(tmp_path, ".env")
    write(tmp_path, "id_rsa")
    assert paths(tmp_path, rules_for(tmp_path, ("!.env",), allow_secrets=True)) == [".env"]


def test_an_invalid_pattern_names_its_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, ".mosaicignore", "ok/\n[z-a]\n")
    with pytest.raises(ConfigError, match=r"\.mosaicignore line 2") as info:
        rules_for(tmp_path)
    assert info.value.hint
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ConfigError, match=r"mosaic\.toml \[static\] ignore: .*'!'"):
        load_ignore_rules(other, other, ["!"])


def test_match_with_parents_is_what_a_watcher_needs(tmp_path: Path) -> None:
    # As in git, a file inside an excluded directory cannot be re-included.
    write(tmp_path, ".mosaicignore", "drafts/\n!drafts/keep.html\n")
    write(tmp_path, "drafts/keep.html")
    rules = rules_for(tmp_path)
    assert rules.match("drafts/keep.html", False) is None  # a walk never gets this far
    assert rules.match_with_parents("drafts/keep.html", False) == ".mosaicignore: drafts/"
    assert rules.match_with_parents("a/.git/HEAD", False) == "default: .git/"
    assert rules.match_with_parents("css/site.css", False) is None
    assert paths(tmp_path, rules) == []


SEGMENTS = [
    "a",
    "B",
    ".env",
    ".ENV.local",
    "x.pem",
    "node_modules",
    ".git",
    "drafts",
    "keep.psd",
    "b.psd",
    ".well-known",
    "id_rsa",
    "f~",
    "top.txt",
    "é",
]
USER_LINES = ["drafts/", "*.psd", "!keep.psd", "!.env", "/top.txt", "a/**/b", "!node_modules/"]


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4),
    is_dir=st.booleans(),
    user=st.lists(st.sampled_from(USER_LINES), max_size=5),
)
def test_the_fast_matcher_agrees_with_pathspec(
    parts: list[str], is_dir: bool, user: list[str]
) -> None:
    rules = IgnoreRules([(DEFAULT_IGNORES, "default"), (user, CONFIG_SOURCE)])
    rel = "/".join(parts)
    key = rel + "/" if is_dir else rel
    everything = GitIgnoreSpec.from_lines([*DEFAULT_IGNORES, *user])
    secrets = GitIgnoreSpec.from_lines(SECRET_IGNORES)
    expected = secrets.match_file(key.lower()) or everything.check_file(key).include is True
    assert (rules.match(rel, is_dir) is not None) == expected


WALK_SEGMENTS = [*SEGMENTS, ".docker", "config.json", ".config", "gcloud", "gh", "hosts.yml"]
WALK_SEGMENTS += ["é.md"]
WALK_LINES = [*USER_LINES, "*.b", "build/", "docs/*.md", "**/tmp", "x?y", "[ab]c"]


@settings(max_examples=400, deadline=None)
@given(
    parts=st.lists(st.sampled_from(WALK_SEGMENTS), min_size=1, max_size=4),
    is_dir=st.booleans(),
    user=st.lists(st.sampled_from(WALK_LINES), max_size=5),
)
@example(parts=[".docker", "config.json"], is_dir=False, user=[])
@example(parts=["a", ".config", "gcloud"], is_dir=True, user=[])
@example(parts=["a", ".config", "gh", "hosts.yml"], is_dir=False, user=["*.b"])
@example(parts=["docs", "é.md"], is_dir=False, user=["docs/*.md"])
@example(parts=["a", "bc"], is_dir=False, user=["[ab]c"])
def test_a_walk_s_shortcut_gives_the_answer_of_the_whole_check(
    parts: list[str], is_dir: bool, user: list[str]
) -> None:
    # A walk checks each folder before going in, and then only the last part of a path needs the
    # patterns that match within one part; the answer must not change (same reason, too).
    rules = IgnoreRules([(DEFAULT_IGNORES, "default"), (user, CONFIG_SOURCE)])
    parents = ["/".join(parts[:depth]) for depth in range(1, len(parts))]
    if any(rules.match(parent, True) is not None for parent in parents):
        return  # a walk never gets there
    rel = "/".join(parts)
    assert rules.match(rel, is_dir, True) == rules.match(rel, is_dir)
    assert rules.match_with_parents(rel, is_dir) == rules.match(rel, is_dir)


def test_the_walk_shortcut_is_used_only_without_a_re_including_pattern() -> None:
    plain = IgnoreRules([(DEFAULT_IGNORES, "default"), (["*.psd"], CONFIG_SOURCE)])
    assert plain._all.split is not None
    tail, _ = plain._all.split
    assert tail.match("x.pem") and tail.match("node_modules/") and not tail.match("index.html")
    negated = IgnoreRules([(DEFAULT_IGNORES, "default"), (["!keep.psd"], CONFIG_SOURCE)])
    assert negated._all.split is None
    assert negated._secrets is not None and negated._secrets.split is not None


# --- symlinks ------------------------------------------------------------------------------------


def test_symlinks_inside_the_root_are_followed(tmp_path: Path) -> None:
    target = write(tmp_path, "css/site.css", "body{}")
    (tmp_path / "alias.css").symlink_to("css/site.css")
    (tmp_path / "styles").symlink_to("css", target_is_directory=True)
    files = {f.path: f for f in scan(tmp_path, rules_for(tmp_path)).files}
    assert sorted(files) == ["alias.css", "css/site.css", "styles/site.css"]
    assert files["alias.css"].abs_path == target.resolve()
    assert files["styles/site.css"].abs_path == target.resolve()
    assert files["alias.css"].sha256 == hashlib.sha256(b"body{}").hexdigest()


def test_a_symlink_leaving_the_root_is_an_error_naming_it(tmp_path: Path) -> None:
    root = tmp_path / "public"
    write(root, "index.html")
    write(tmp_path, "secret.txt")
    (root / "assets").mkdir()
    (root / "assets" / "leak.txt").symlink_to("../../secret.txt")
    with pytest.raises(ScanError) as info:
        scan(root, rules_for(root))
    assert "assets/leak.txt" in info.value.message
    assert "../../secret.txt" in info.value.message
    assert "remove the link" in (info.value.hint or "")
    assert ".mosaicignore" in (info.value.hint or "")


def test_a_dangling_symlink_is_an_error_unless_ignored(tmp_path: Path) -> None:
    write(tmp_path, "index.html")
    (tmp_path / "gone.html").symlink_to("nowhere.html")
    with pytest.raises(ScanError, match=r"gone\.html -> nowhere\.html.*dangles"):
        scan(tmp_path, rules_for(tmp_path))
    write(tmp_path, ".mosaicignore", "gone.html\n")
    result = scan(tmp_path, rules_for(tmp_path))
    assert [f.path for f in result.files] == ["index.html"]
    assert any(item.path == "gone.html" for item in result.skipped)


@pytest.mark.parametrize(
    ("link", "target"),
    [("self", "."), ("a/up", ".."), ("a/b/c/back", "../../.."), ("me", "me")],
)
def test_symlink_loops_are_refused(tmp_path: Path, link: str, target: str) -> None:
    write(tmp_path, "a/b/c/page.html")
    (tmp_path / link).symlink_to(target)
    with pytest.raises(ScanError, match="loops") as info:
        scan(tmp_path, rules_for(tmp_path))
    assert link in info.value.message


def test_mutually_linked_directories_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "a/x.txt")
    write(tmp_path, "b/y.txt")
    (tmp_path / "a" / "to_b").symlink_to("../b")
    (tmp_path / "b" / "to_a").symlink_to("../a")
    with pytest.raises(ScanError, match="loops"):
        scan(tmp_path, rules_for(tmp_path))


def test_a_link_to_a_secret_does_not_smuggle_it_out(tmp_path: Path) -> None:
    write(tmp_path, ".env", "TOKEN=1")
    write(tmp_path, ".git/config")
    (tmp_path / "env.txt").symlink_to(".env")
    (tmp_path / "gitconfig.txt").symlink_to(".git/config")
    reasons = skipped(tmp_path)
    assert reasons["env.txt"] == "links to .env, default: .env*"
    assert reasons["gitconfig.txt"] == "links to .git/config, default: .git/"
    (tmp_path / "repo").symlink_to(".git")
    assert skipped(tmp_path)["repo/"] == "links to .git, default: .git/"
    assert paths(tmp_path) == []
    present, gone = scan_paths(tmp_path, ["env.txt", "repo/config"], rules_for(tmp_path))
    assert present == [] and gone == ["env.txt", "repo/config"]


# --- paths ---------------------------------------------------------------------------------------


def test_names_are_nfc_normalized(tmp_path: Path) -> None:
    nfd = unicodedata.normalize("NFD", "café.html")
    write(tmp_path, nfd, "<p>")
    (file,) = scan(tmp_path, rules_for(tmp_path)).files
    assert file.path == unicodedata.normalize("NFC", "café.html")
    assert file.abs_path.read_bytes() == b"<p>"


def test_every_file_is_read_where_it_lies_and_plain_ones_share_one_source(
    tmp_path: Path,
) -> None:
    nfd_dir = unicodedata.normalize("NFD", "déjà")
    write(tmp_path, f"{nfd_dir}/page.html", "<p>moved</p>")
    write(tmp_path, "css/site.css", "body{}")
    write(tmp_path, "index.html", "<p>home</p>")
    (tmp_path / "styles").symlink_to("css", target_is_directory=True)
    files = {f.path: f for f in scan(tmp_path, rules_for(tmp_path)).files}
    normalized = unicodedata.normalize("NFC", "déjà") + "/page.html"
    assert files[normalized].abs_path.read_bytes() == b"<p>moved</p>"
    assert files["styles/site.css"].abs_path.read_bytes() == b"body{}"
    plain = [files["css/site.css"], files["index.html"]]
    for f in plain:
        assert f.abs_path == tmp_path.resolve() / f.path
    # One string for all the plain files (a path each costs ~110 bytes a file at 100k files).
    assert plain[0].source is plain[1].source
    assert files[normalized].source is not plain[0].source


def test_names_that_collide_after_normalization_are_an_error(tmp_path: Path) -> None:
    write(tmp_path, unicodedata.normalize("NFD", "café.html"))
    write(tmp_path, unicodedata.normalize("NFC", "café.html"))
    with pytest.raises(ScanError, match="NFC"):
        scan(tmp_path, rules_for(tmp_path))


def test_paths_are_posix_and_relative_and_sorted(tmp_path: Path) -> None:
    for rel in ["z.txt", "a/b/c.txt", "a/a.txt", "m.html"]:
        write(tmp_path, rel)
    assert paths(tmp_path) == ["a/a.txt", "a/b/c.txt", "m.html", "z.txt"]


def test_a_missing_static_root_is_an_error_with_a_fix(tmp_path: Path) -> None:
    with pytest.raises(ScanError, match="does not exist") as info:
        scan(tmp_path / "public", rules_for(tmp_path))
    assert "[static] root" in (info.value.hint or "")


def test_special_files_are_skipped(tmp_path: Path) -> None:
    write(tmp_path, "index.html")
    os.mkfifo(tmp_path / "pipe")
    assert skipped(tmp_path)["pipe"] == "not a regular file"


def test_an_unreadable_file_is_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "index.html")

    def denied(path: str) -> tuple[str, int]:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(scan_module, "_read_digest", denied)
    with pytest.raises(ScanError, match=r"cannot read index\.html: Permission denied"):
        scan(tmp_path, rules_for(tmp_path))


def test_an_unreadable_directory_is_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "locked/page.html")
    real_scandir = os.scandir

    def scandir(path: str) -> Any:
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(ScanError, match=r"cannot read directory locked/") as info:
        scan(tmp_path, rules_for(tmp_path))
    assert "locked/ to .mosaicignore" in (info.value.hint or "")


def test_a_file_growing_while_it_is_read_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = write(tmp_path, "index.html", "short")
    real_read = scan_module._read_digest
    calls: list[str] = []

    def grow_while_reading(path: str) -> tuple[str, int]:
        if not calls:
            page.write_bytes(b"much longer now")
        calls.append(path)
        return real_read(path)

    monkeypatch.setattr(scan_module, "_read_digest", grow_while_reading)
    (file,) = scan(tmp_path, rules_for(tmp_path)).files
    assert (file.size, file.sha256) == (15, hashlib.sha256(b"much longer now").hexdigest())
    assert len(calls) == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_a_file_without_read_permission_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "private.html").chmod(0)
    with pytest.raises(ScanError, match=r"private\.html"):
        scan(tmp_path, rules_for(tmp_path))


# --- hashing and the cache -----------------------------------------------------------------------


def test_hash_file_is_sha256_of_the_raw_bytes_across_chunks(tmp_path: Path) -> None:
    data = os.urandom(scan_module.CHUNK * 2 + 123)
    assert hash_file(write(tmp_path, "big.bin", data)) == hashlib.sha256(data).hexdigest()
    assert hash_file(write(tmp_path, "empty.txt", b"")) == hashlib.sha256(b"").hexdigest()


def test_the_thread_pool_gives_the_same_hashes(tmp_path: Path) -> None:
    for n in range(6):
        write(tmp_path, f"big{n}.bin", os.urandom(POOL_MIN_SIZE + n))
        write(tmp_path, f"small{n}.txt", f"small {n}")
    one = scan(tmp_path, rules_for(tmp_path), workers=1)
    many = scan(tmp_path, rules_for(tmp_path), workers=4)
    assert one.files == many.files
    assert many.hashed == 12
    assert many.bytes_hashed == sum(f.size for f in many.files)


def test_an_unchanged_tree_reads_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, cache_path = tmp_path / "public", tmp_path / ".mosaicsync" / "hashcache"
    for n in range(50):
        write(root, f"dir{n % 5}/page{n}.html", f"page {n}")
    settle()
    cache = HashCache.load(cache_path)
    first = scan(root, rules_for(root), cache)
    assert first.hashed == 50
    cache.save()

    def refuse(path: str) -> tuple[str, int]:
        raise AssertionError(f"read {path}")

    monkeypatch.setattr(scan_module, "_read_digest", refuse)
    monkeypatch.setattr(scan_module, "open", refuse, raising=False)
    second = scan(root, rules_for(root), HashCache.load(cache_path))
    assert (second.hashed, second.bytes_hashed) == (0, 0)
    assert second.files == first.files


def test_a_same_size_rewrite_with_its_mtime_restored_is_detected(tmp_path: Path) -> None:
    page = write(tmp_path, "index.html", "version A")
    settle()
    cache = HashCache(tmp_path / "cache")
    before = scan(tmp_path, rules_for(tmp_path), cache).files[0]
    stat_before = page.stat()
    page.write_bytes(b"version B")  # same size, same inode
    os.utime(page, ns=(stat_before.st_atime_ns, stat_before.st_mtime_ns))
    assert page.stat().st_mtime_ns == stat_before.st_mtime_ns
    after = scan(tmp_path, rules_for(tmp_path), cache)
    assert after.hashed == 1
    assert after.files[0].sha256 == hashlib.sha256(b"version B").hexdigest() != before.sha256


def test_a_file_replaced_by_rename_is_detected(tmp_path: Path) -> None:
    page = write(tmp_path, "index.html", "version A")
    settle()
    cache = HashCache(tmp_path / "cache")
    scan(tmp_path, rules_for(tmp_path), cache)
    mtime = page.stat().st_mtime_ns
    write(tmp_path, "new.tmp", "version B")
    os.utime(tmp_path / "new.tmp", ns=(mtime, mtime))
    os.replace(tmp_path / "new.tmp", page)
    after = scan(tmp_path, rules_for(tmp_path), cache)
    assert after.files[0].sha256 == hashlib.sha256(b"version B").hexdigest()


def test_a_file_changed_just_before_the_scan_is_not_trusted_yet(tmp_path: Path) -> None:
    # Within one tick of a coarse filesystem clock a rewrite can leave the stat unchanged.
    write(tmp_path, "index.html", "fresh")
    cache = HashCache(tmp_path / "cache")
    assert scan(tmp_path, rules_for(tmp_path), cache).hashed == 1
    assert "index.html" not in cache
    settle()
    assert scan(tmp_path, rules_for(tmp_path), cache).hashed == 1
    assert scan(tmp_path, rules_for(tmp_path), cache).hashed == 0


@pytest.mark.parametrize(
    "content",
    [
        b"not a cache at all",
        b"",
        b"mosaicsync-hashcache 999 00000000\n",
        b"\xff\xfe garbage \x00\x00",
        b"mosaicsync-hashcache 1 deadbeef\nindex.html\x001 2 3 4 " + b"a" * 64,
    ],
)
def test_a_corrupt_or_foreign_cache_is_ignored(tmp_path: Path, content: bytes) -> None:
    write(tmp_path, "public/index.html", "hi")
    cache_path = write(tmp_path, ".mosaicsync/hashcache", content)
    settle()
    cache = HashCache.load(cache_path)
    assert len(cache) == 0
    result = scan(tmp_path / "public", rules_for(tmp_path / "public"), cache)
    assert result.files[0].sha256 == hashlib.sha256(b"hi").hexdigest()
    cache.save()
    assert len(HashCache.load(cache_path)) == 1


def test_a_truncated_cache_is_ignored(tmp_path: Path) -> None:
    root = tmp_path / "public"
    for n in range(10):
        write(root, f"p{n}.html", str(n))
    settle()
    cache = HashCache(tmp_path / "cache")
    scan(root, rules_for(root), cache)
    cache.save()
    data = cache.path.read_bytes()
    cache.path.write_bytes(data[: len(data) - 20])
    assert len(HashCache.load(cache.path)) == 0


def test_entries_of_deleted_files_are_dropped(tmp_path: Path) -> None:
    root = tmp_path / "public"
    write(root, "keep.html")
    write(root, "old/gone.html")
    settle()
    cache = HashCache(tmp_path / ".mosaicsync" / "hashcache")
    scan(root, rules_for(root), cache)
    assert "old/gone.html" in cache
    (root / "old" / "gone.html").unlink()
    scan(root, rules_for(root), cache)
    cache.save()
    reloaded = HashCache.load(cache.path)
    assert "keep.html" in reloaded and "old/gone.html" not in reloaded
    # No temp file left behind (the folder's own .gitignore aside).
    assert sorted(os.listdir(cache.path.parent)) == [".gitignore", "hashcache"]


def test_a_cache_that_cannot_be_written_is_no_error(tmp_path: Path) -> None:
    write(tmp_path, ".mosaicsync", "a file where the cache dir should be")
    cache = HashCache(tmp_path / ".mosaicsync" / "hashcache")
    cache.store("a.html", (1, 2, 3, 4), "0" * 64)
    cache.save()
    assert os.listdir(tmp_path) == [".mosaicsync"]


def test_names_that_need_escaping_round_trip_through_the_cache(tmp_path: Path) -> None:
    root = tmp_path / "public"
    names = ["space here.txt", "ünï.txt", "a b c d.txt", 'quote"d.txt']
    for name in names:
        write(root, name, name)
    settle()
    cache = HashCache(tmp_path / "cache")
    first = scan(root, rules_for(root), cache)
    cache.save()
    second = scan(root, rules_for(root), HashCache.load(cache.path))
    assert second.hashed == 0 and second.files == first.files
    # Names the scanner refuses never reach the cache, but the file format still escapes them.
    odd = HashCache(tmp_path / "odd")
    for n, name in enumerate(["tab\there.txt", "new\nline.txt", "back\\slash"]):
        odd.store(name, (n, n, n, n), "a" * 64)
    odd.save()
    again = HashCache.load(odd.path)
    assert again.lookup("new\nline.txt", (1, 1, 1, 1)) == "a" * 64
    assert again.lookup("back\\slash", (2, 2, 2, 2)) == "a" * 64


def test_the_cache_loads_and_saves_100k_entries_quickly(tmp_path: Path) -> None:
    cache = HashCache(tmp_path / "cache")
    for n in range(100_000):
        cache.store(
            f"assets/dir{n % 300}/file-{n}.png", (n, 1_700_000_000 * 10**9 + n, n, n), "f" * 64
        )
    started = time.perf_counter()
    cache.save()
    loaded = HashCache.load(cache.path)
    elapsed = time.perf_counter() - started
    assert len(loaded) == 100_000
    assert loaded.lookup("assets/dir7/file-7.png", (7, 1_700_000_000 * 10**9 + 7, 7, 7)) == "f" * 64
    assert elapsed < 1.5  # about 0.15 s on a laptop; generous for a loaded CI machine


# --- scan_paths ----------------------------------------------------------------------------------


def test_scan_paths_rechecks_only_what_it_is_given(tmp_path: Path) -> None:
    root = tmp_path
    write(root, "index.html", "a")
    write(root, "css/site.css", "b")
    write(root, "drafts/x.html")
    write(root, ".mosaicignore", "drafts/\n")
    settle()
    rules = rules_for(root)
    cache = HashCache(tmp_path / ".mosaicsync" / "hashcache")
    scan(root, rules, cache)
    write(root, "index.html", "changed")
    (root / "css" / "site.css").unlink()
    write(root, "img/new/a.png", "png")
    present, gone = scan_paths(
        root,
        ["index.html", "css/site.css", "img/new", "drafts/x.html", ".env", "never/was.txt"],
        rules,
        cache,
    )
    assert [(f.path, f.sha256) for f in present] == [
        ("img/new/a.png", hashlib.sha256(b"png").hexdigest()),
        ("index.html", hashlib.sha256(b"changed").hexdigest()),
    ]
    assert gone == [".env", "css/site.css", "drafts/x.html", "never/was.txt"]
    assert "css/site.css" not in cache


def test_scan_paths_follows_links_like_the_full_walk(tmp_path: Path) -> None:
    root = tmp_path / "public"
    write(root, "css/site.css", "x")
    write(tmp_path, "outside.txt")
    (root / "styles").symlink_to("css")
    (root / "leak.txt").symlink_to("../outside.txt")
    present, gone = scan_paths(root, ["styles/site.css"], rules_for(root))
    assert [f.path for f in present] == ["styles/site.css"] and gone == []
    with pytest.raises(ScanError, match=r"leak\.txt"):
        scan_paths(root, ["leak.txt"], rules_for(root))


def test_scan_paths_accepts_a_name_in_another_unicode_form(tmp_path: Path) -> None:
    write(tmp_path, unicodedata.normalize("NFD", "résumé.html"), "cv")
    (file,), gone = scan_paths(
        tmp_path, [unicodedata.normalize("NFC", "résumé.html")], rules_for(tmp_path)
    )
    assert file.path == unicodedata.normalize("NFC", "résumé.html") and gone == []


def test_scan_paths_refuses_paths_outside_the_root(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        scan_paths(tmp_path, ["../etc/passwd"], rules_for(tmp_path))


def test_the_cache_forgets_a_deleted_file_even_when_another_took_its_place(
    tmp_path: Path,
) -> None:
    root = tmp_path / "public"
    write(root, "a.txt", "a")
    write(root, "b.txt", "b")
    settle()
    cache = HashCache(tmp_path / "hashes")
    scan(root, rules_for(root), cache)
    assert "a.txt" in cache and "b.txt" in cache and len(cache) == 2
    (root / "a.txt").unlink()
    write(root, "c.txt", "c")
    settle()
    scan(root, rules_for(root), cache)  # as many files as before, one of them new
    assert "a.txt" not in cache and "b.txt" in cache and "c.txt" in cache and len(cache) == 2


# --- paths vetted by an earlier walk -------------------------------------------------------------


class _Counting(IgnoreRules):
    """Rules that count the paths they are asked about."""

    asked: list[str]

    def match(self, rel_path: str, is_dir: bool, walked: bool = False) -> str | None:
        self.asked.append(rel_path + ("/" if is_dir else ""))
        return super().match(rel_path, is_dir, walked)


def counting(root: Path, extra: tuple[str, ...] = ()) -> _Counting:
    rules = _Counting([(DEFAULT_IGNORES, "default"), (list(extra), CONFIG_SOURCE)])
    rules.asked = []
    return rules


def test_a_walk_under_the_same_rules_asks_them_only_about_new_paths(tmp_path: Path) -> None:
    root, cache_path = tmp_path / "public", tmp_path / "hashes"
    for n in range(20):
        write(root, f"d{n % 3}/sub/p{n}.html", str(n))
    write(root, ".env", "SECRET=1")
    settle()
    cache = HashCache.load(cache_path)
    first = scan(root, counting(root), cache)
    cache.save()
    write(root, "d1/new.html", "new")
    write(root, "d9/newer.html", "newer")
    rules = counting(root)
    second = scan(root, rules, HashCache.load(cache_path))
    # Known files and the folders that hold them are kept unasked; the new ones and what
    # was skipped before (`.env` is in no cache) are judged.
    assert sorted(rules.asked) == [".env", "d1/new.html", "d9/", "d9/newer.html"]
    assert [f.path for f in second.files] == sorted(
        [f.path for f in first.files] + ["d1/new.html", "d9/newer.html"]
    )
    assert [s.path for s in second.skipped] == [".env"]


def test_nothing_new_builds_no_ignore_regex(tmp_path: Path) -> None:
    root, cache_path = tmp_path / "public", tmp_path / "hashes"
    write(root, "a/index.html", "hi")
    settle()
    cache = HashCache.load(cache_path)
    scan(root, rules_for(root), cache)
    cache.save()
    rules = rules_for(root)
    assert len(scan(root, rules, HashCache.load(cache_path)).files) == 1
    assert "_all" not in vars(rules) and "_secrets" not in vars(rules)


@pytest.mark.parametrize(
    ("before", "after", "skipped_after"),
    [
        # --allow-secrets once, then a plain deploy: the secret is held back again.
        ({"allow_secrets": True}, {}, [".env"]),
        # A pattern changed in [static] ignore applies to files the cache knows.
        ({"extra": ("*.txt",)}, {"extra": ("*.bak",)}, [".env", "old.bak"]),
    ],
)
def test_other_rules_judge_every_path_again(
    tmp_path: Path, before: dict[str, Any], after: dict[str, Any], skipped_after: list[str]
) -> None:
    root, cache_path = tmp_path / "public", tmp_path / "hashes"
    write(root, "index.html", "hi")
    write(root, ".env", "SECRET=1")
    write(root, "old.bak", "b")
    settle()
    cache = HashCache.load(cache_path)
    first = scan(root, rules_for(root, **before), cache)
    cache.save()
    assert "old.bak" in [f.path for f in first.files]
    again = scan(root, rules_for(root, **after), HashCache.load(cache_path))
    assert sorted(s.path for s in again.skipped) == skipped_after
    assert [f.path for f in again.files] == sorted(
        {"index.html", "old.bak", ".env"} - set(skipped_after)
    )


def test_a_watcher_under_other_rules_withdraws_the_promise(tmp_path: Path) -> None:
    root, cache_path = tmp_path / "public", tmp_path / "hashes"
    write(root, "index.html", "hi")
    settle()
    cache = HashCache.load(cache_path)
    scan(root, rules_for(root), cache)
    assert cache.vetted_paths(vetting(rules_for(root)))
    write(root, "new.html", "new")
    settle()
    scan_paths(root, ["new.html"], rules_for(root, allow_secrets=True), cache)
    # Paths kept under two rules: none is vouched for until a full walk.
    assert cache.vetted == ""
    assert not cache.vetted_paths(vetting(rules_for(root)))
    scan(root, rules_for(root), cache)
    assert cache.vetted == vetting(rules_for(root))


def test_a_cache_written_before_vetting_keeps_its_hashes(tmp_path: Path) -> None:
    payload = b"index.html\x001 2 3 4 " + b"a" * 64
    old = b"mosaicsync-hashcache 1 %08x\n" % zlib.crc32(payload) + payload
    cache_path = write(tmp_path, "hashes", old)
    cache = HashCache.load(cache_path)
    assert cache.lookup("index.html", (1, 2, 3, 4)) == "a" * 64
    assert cache.vetted == "" and not cache.vetted_paths(vetting(rules_for(tmp_path)))


def test_a_walk_of_a_project_without_patterns_imports_no_pathspec(tmp_path: Path) -> None:
    """pathspec turns the user's patterns into regexes; with none, and every path known, a
    command never needs it (importing it costs each start ~15 ms)."""
    write(tmp_path, "public/index.html", "hi")
    settle()
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from mosaicsync.hashcache import HashCache\n"
        "from mosaicsync.ignore import load_ignore_rules\n"
        "from mosaicsync.scan import scan\n"
        f"root = Path({str(tmp_path / 'public')!r})\n"
        f"cache = HashCache.load(Path({str(tmp_path / 'hashes')!r}))\n"
        "found = scan(root, load_ignore_rules(root, root), cache)\n"
        "cache.save()\n"
        "print(len(found.files), 'pathspec' in sys.modules)\n"
    )
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        for _ in range(2)
    ]
    # The first walk judges every path (and needs pathspec); the second knows them all.
    assert [run.stdout.split() for run in runs] == [["1", "True"], ["1", "False"]]
